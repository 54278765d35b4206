"""Chapter 04 exercises: the U-Net.

timestep-embedding     the sinusoidal embedding of the step index t (DDPM's Transformer embedding)
skip-concat-channels   the input width of every ResBlock on the expanding path
downsampled-size       the spatial size after k stride-2 convolutions (which sizes a U-Net takes)

Unlike the earlier chapters' exercises these take plain ints and tuples besides tensors: widths and
sizes are integers, and an answer may be an int or a list of ints (compared as tensors).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..unet import Downsample, UNet
from . import exercise

# ------------------------------------------------------------------------- timestep-embedding
MAX_PERIOD = 10000.0


def _embedding_cases() -> list[dict[str, Any]]:
    # Small step indices: float32 and float64 implementations then agree to ~1e-6, and no
    # argument t * w_i (other than 0) lies within 0.05 of a zero of sin or cos, where a float32
    # rounding error would be large relative to the value (tests/test_exercises_ch04.py checks).
    return [
        {"t": torch.tensor([0, 1, 2, 3, 5, 8]), "dim": 8},
        {"t": torch.tensor([4, 10, 17]), "dim": 6},
        {"t": torch.tensor([0, 7, 20, 12]), "dim": 16},
    ]


def _sinusoid_args(t: Tensor, dim: int, denominator: int | None = None, sign: float = -1.0):
    """t * w_i, shape (B, dim // 2), with w_i = MAX_PERIOD ** (sign * i / denominator), float64."""
    half = dim // 2
    denominator = max(half - 1, 1) if denominator is None else denominator
    i = torch.arange(half, dtype=torch.float64)
    freqs = torch.exp(sign * math.log(MAX_PERIOD) * i / denominator)
    return t.to(torch.float64)[:, None] * freqs[None, :]


@exercise(
    "timestep-embedding",
    chapter="04",
    title="The sinusoidal time embedding",
    task=(
        "return the (B, dim) embedding of the step indices t (B,), dim even: with half = dim // 2 "
        "and frequencies w_i = 10000 ** (-i / (half - 1)) for i = 0..half-1, column i is "
        "sin(t * w_i) and column half + i is cos(t * w_i)."
    ),
    cases=_embedding_cases,
    hint="Return one row per step index and dim columns: the half sines, then the half cosines.",
)
def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    args = _sinusoid_args(t, dim)
    return torch.cat([args.sin(), args.cos()], dim=1)


@timestep_embedding.mistake(
    "sin-cos-swapped",
    "sines and cosines are swapped: the first half of the columns holds sin(t * w_i), the second "
    "half cos(t * w_i). (Either order would train equally well, but the network's weights, and "
    "this check, expect DDPM's.)",
)
def _(t, dim):
    args = _sinusoid_args(t, dim)
    return torch.cat([args.cos(), args.sin()], dim=1)


@timestep_embedding.mistake(
    "interleaved",
    "you interleaved sines and cosines (sin, cos, sin, cos, ...), the layout of the Transformer "
    "paper; DDPM's code concatenates them: all the sines first, then all the cosines "
    "(`torch.cat([sin, cos], dim=1)`).",
)
def _(t, dim):
    args = _sinusoid_args(t, dim)
    return torch.stack([args.sin(), args.cos()], dim=2).reshape(len(t), dim)


@timestep_embedding.mistake(
    "divided-by-half",
    "your frequencies are w_i = 10000 ** (-i / half) (the Transformer paper's 1 / 10000^(2i/d), "
    "also used by improved-diffusion); DDPM divides by half - 1, so that the slowest frequency is "
    "exactly 1 / 10000: w_i = 10000 ** (-i / (half - 1)).",
)
def _(t, dim):
    args = _sinusoid_args(t, dim, denominator=dim // 2)
    return torch.cat([args.sin(), args.cos()], dim=1)


@timestep_embedding.mistake(
    "rising-frequencies",
    "the sign of the exponent is flipped: your w_i = 10000 ** (+i / (half - 1)) grow up to 10000, "
    "so all but the first column oscillate faster than one cycle per step and look like noise. "
    "The frequencies fall from 1 to 1 / 10000: w_i = 10000 ** (-i / (half - 1)).",
)
def _(t, dim):
    args = _sinusoid_args(t, dim, sign=1.0)
    return torch.cat([args.sin(), args.cos()], dim=1)


@timestep_embedding.mistake(
    "paper-t",
    "you embedded t + 1, the paper's step number; the network is handed the code's index t "
    "(0..T-1) and embeds it as it is.",
)
def _(t, dim):
    args = _sinusoid_args(t + 1, dim)
    return torch.cat([args.sin(), args.cos()], dim=1)


@timestep_embedding.mistake(
    "sines-only",
    "every column is a sine: you took dim frequencies and no cosines. Take half = dim // 2 "
    "frequencies and return both sin(t * w_i) and cos(t * w_i); the pair pins down t * w_i "
    "where a sine alone cannot tell t * w_i from pi - t * w_i.",
)
def _(t, dim):
    return _sinusoid_args(t, 2 * dim, denominator=dim - 1).sin()


# ------------------------------------------------------------------------- skip-concat-channels
def _skip_cases() -> list[dict[str, Any]]:
    return [
        {"base_channels": 16, "channel_mults": (1, 2, 2), "num_res_blocks": 1},  # the cpu budget
        {"base_channels": 8, "channel_mults": (1, 2, 3), "num_res_blocks": 2},
        {"base_channels": 4, "channel_mults": (1, 3), "num_res_blocks": 1},
    ]


def _as_widths(out: Any) -> Any:
    # A list, tuple or tensor of ints; compared as a 1-D tensor.
    return torch.as_tensor(out)


@exercise(
    "skip-concat-channels",
    chapter="04",
    title="How wide is a decoder block's input?",
    task=(
        "return the input width (channels) of every ResBlock of the expanding path, in the order "
        "they run (deepest level first), as a list of ints. The contracting path pushes every "
        "activation it makes onto a stack: the input conv (base_channels wide), each ResBlock of "
        "level i (base_channels * channel_mults[i]) and each downsample (the width it was given); "
        "every level but the last ends with a downsample. Each level of the expanding path has "
        "num_res_blocks + 1 ResBlocks; each pops one skip and takes [h, skip] concatenated, and "
        "outputs base_channels * channel_mults[level]. h starts with the bottleneck's width, "
        "base_channels * channel_mults[-1]."
    ),
    cases=_skip_cases,
    normalize=_as_widths,
    hint=(
        "Return one width per expanding-path ResBlock: len(channel_mults) * (num_res_blocks + 1) "
        "ints, deepest level first."
    ),
)
def decoder_in_channels(
    base_channels: int, channel_mults: Sequence[int], num_res_blocks: int
) -> list[int]:
    with torch.random.fork_rng(devices=[]):  # building draws initial weights: keep the caller's RNG
        net = UNet(
            1, base_channels, channel_mults, num_res_blocks, attention_levels=(), norm_groups=1
        )
    return [block.in_channels for level in net.up for block in level.blocks]


def _pushed_widths(base: int, mults: Sequence[int], nrb: int) -> list[int]:
    """The widths of the skips the contracting path pushes, in the order it pushes them."""
    widths = [base]
    for level, mult in enumerate(mults):
        widths += [base * mult] * nrb
        if level < len(mults) - 1:
            widths.append(base * mult)
    return widths


def _decoder_widths(base, mults, nrb, take, blocks_per_level=None):
    """In-widths of the decoder when ``take(stack)`` returns the next skip's width (0: none)."""
    stack, ch, out = _pushed_widths(base, mults, nrb), base * mults[-1], []
    for level in reversed(range(len(mults))):
        for _ in range(nrb + 1 if blocks_per_level is None else blocks_per_level):
            out.append(ch + take(stack, ch))
            ch = base * mults[level]
    return out


@decoder_in_channels.mistake(
    "no-skips",
    "these are the input widths without skip connections (what UNet(..., "
    "skip_connections=False) builds): each expanding-path ResBlock also takes one activation "
    "from the contracting path, concatenated along the channels, so its input is the width of h "
    "plus the width of that skip.",
)
def _(base_channels, channel_mults, num_res_blocks):
    return _decoder_widths(base_channels, channel_mults, num_res_blocks, lambda s, ch: 0)


@decoder_in_channels.mistake(
    "first-in-first-out",
    "you took the skips first in, first out; the expanding path meets the deepest level first, so "
    "it takes them last in, first out, like a stack (`skips.pop()`): the first decoder block gets "
    "the last activation the contracting path made.",
)
def _(base_channels, channel_mults, num_res_blocks):
    return _decoder_widths(base_channels, channel_mults, num_res_blocks, lambda s, ch: s.pop(0))


@decoder_in_channels.mistake(
    "doubled",
    "you doubled the width of h, as if every skip were as wide as h. A skip keeps the width it had "
    "when it was pushed, so where a level meets the narrower level above it the sum is uneven: "
    "32 + 16 = 48 in the cpu-budget U-Net.",
)
def _(base_channels, channel_mults, num_res_blocks):
    return _decoder_widths(base_channels, channel_mults, num_res_blocks, lambda s, ch: ch)


@decoder_in_channels.mistake(
    "resblock-skips-only",
    "you pushed only the ResBlocks' outputs. The input conv's output and every downsample's "
    "output are pushed too, which is why each expanding level has num_res_blocks + 1 ResBlocks, "
    "one more than on the way down.",
)
def _(base_channels, channel_mults, num_res_blocks):
    stack = [base_channels * m for m in channel_mults for _ in range(num_res_blocks)]
    ch, out = base_channels * channel_mults[-1], []
    for level in reversed(range(len(channel_mults))):
        for _ in range(num_res_blocks):
            out.append(ch + stack.pop())
            ch = base_channels * channel_mults[level]
    return out


@decoder_in_channels.mistake(
    "output-widths",
    "you returned the output widths of the expanding-path ResBlocks (base_channels * "
    "channel_mults[level]); the exercise asks for their input widths: the width of h plus the "
    "width of the skip concatenated onto it.",
)
def _(base_channels, channel_mults, num_res_blocks):
    return [
        base_channels * channel_mults[level]
        for level in reversed(range(len(channel_mults)))
        for _ in range(num_res_blocks + 1)
    ]


# ------------------------------------------------------------------------- downsampled-size
def _size_cases() -> list[dict[str, Any]]:
    # Even and odd sizes, k = 0, and a size that reaches 1.
    pairs = [(28, 1), (28, 2), (28, 3), (7, 1), (5, 2), (32, 4), (1, 3), (28, 0), (13, 2)]
    return [{"size": size, "k": k} for size, k in pairs]


def _as_size(out: Any) -> Any:
    # An int, a 0-dim tensor or a one-element tensor; compared as a 0-dim tensor.
    return torch.as_tensor(out).reshape(())


@exercise(
    "downsampled-size",
    chapter="04",
    title="How big is a feature map after k downsamplings?",
    task=(
        "return the height (= width) of a size x size feature map after k Downsample layers, "
        "each a 3x3 convolution with stride 2 and padding 1, as an int. One convolution maps "
        "n pixels to floor((n + 2 * padding - kernel) / stride) + 1."
    ),
    cases=_size_cases,
    normalize=_as_size,
    hint="Return one number, the side length after all k layers.",
)
def downsampled_size(size: int, k: int) -> int:
    with torch.random.fork_rng(devices=[]), torch.no_grad():  # keep the caller's RNG untouched
        x, down = torch.zeros(1, 1, size, size), Downsample(1)
        for _ in range(k):
            x = down(x)
    return x.shape[-1]


def _iterate(size: int, k: int, step) -> Any:
    for _ in range(k):
        size = step(size)
    return size


@downsampled_size.mistake(
    "floor-halving",
    "you halved with floor division (n // 2). A 3x3 convolution with stride 2 and padding 1 keeps "
    "the last pixel of an odd size: floor((n + 2 - 3) / 2) + 1 = ceil(n / 2), so 7 becomes 4, "
    "not 3.",
)
def _(size, k):
    return _iterate(size, k, lambda n: n // 2)


@downsampled_size.mistake(
    "dropped-term",
    "your size is floor((n - 1) / 2) per layer, one short for every n (28 -> 13, 7 -> 3): "
    "either the padding (2 * 1 pixels) or the final + 1 of "
    "floor((n + 2 * padding - kernel) / stride) + 1 is missing. With padding 1, kernel 3, "
    "stride 2: 28 -> 14 -> 7 -> 4.",
)
def _(size, k):
    return _iterate(size, k, lambda n: (n - 1) // 2)


@downsampled_size.mistake(
    "no-rounding",
    "you divided without rounding (size / 2**k); a feature map has a whole number of pixels, and "
    "a stride-2 convolution over an odd size rounds up: 7 -> 4.",
)
def _(size, k):
    return size / 2**k


@downsampled_size.mistake(
    "k-minus-one",
    "you applied one layer too few (k - 1 of them): count the Downsample layers, not the "
    "levels between them. (A U-Net with L levels has L - 1 of them.)",
)
def _(size, k):
    return _iterate(size, max(k - 1, 0), lambda n: (n + 1) // 2)
