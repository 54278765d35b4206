"""The DDPM U-Net: the network that predicts the noise eps_theta(x_t, t).

Ho, Jain & Abbeel (2020), section 4 and appendix B: "a U-Net backbone similar to an unmasked
PixelCNN++ with group normalization throughout ... Diffusion time t is specified by adding the
Transformer sinusoidal position embedding into each residual block ... self-attention at the
16 x 16 feature map resolution". The network is trained with L_simple (eq. 14) to output a tensor
of the same shape as its input, so any architecture with that signature would do; this one is
the paper's.

Shape of the computation, for a 32 x 32 input, base_channels C and channel_mults (1, 2, 2, 2):

    t ──sinusoid──> (B, C) ──MLP──> emb (B, 4C), added inside every residual block
    x (B, in, 32, 32) ──conv──> (B, C, 32, 32)
      level 0: ResBlocks -> (B, C, 32, 32)     ──downsample──> 16 x 16      "down0"
      level 1: ResBlocks -> (B, 2C, 16, 16)    ──downsample──> 8 x 8        "down1"
      level 2: ResBlocks -> (B, 2C, 8, 8)      ──downsample──> 4 x 4        "down2"
      level 3: ResBlocks -> (B, 2C, 4, 4)                                   "down3"
      middle:  ResBlock, self-attention, ResBlock -> (B, 2C, 4, 4)          "mid"
      level 3: ResBlocks on [h, skip] -> (B, 2C, 4, 4)   ──upsample──> 8    "up3"
      ...
      level 0: ResBlocks on [h, skip] -> (B, C, 32, 32)                     "up0"
    ──GroupNorm, SiLU, conv──> (B, out, 32, 32)

Every activation the contracting path produces (the input conv, each ResBlock, each downsample)
is kept and concatenated, last in first out, onto the input of one expanding-path ResBlock: that
is the "U". Level i works at resolution H / 2**i, so H and W must be divisible by 2**(levels - 1).

Two choices from improved-diffusion (Nichol & Dhariwal 2021), not the paper: the last conv of each
residual block, the attention output projection and the final conv start at zero, so that at
initialisation every block is the identity on its skip path and the network outputs exactly 0.

Every "GroupNorm, SiLU" goes through :func:`ddpm_teach.fused.group_norm_silu`, which is
``F.silu(norm(x))`` computed by one compiled kernel where torch has no fast one (channels_last on
the CPU, the layout in which the CPU's convolutions run fastest).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .fused import group_norm_silu, is_channels_last

__all__ = ["AttentionBlock", "Downsample", "ResBlock", "UNet", "Upsample", "timestep_embedding"]


def timestep_embedding(t: Tensor | int, dim: int, max_period: float = 10000.0) -> Tensor:
    """The Transformer sinusoidal embedding of step indices, as used by DDPM.

    With half = dim // 2 and frequencies w_i = max_period ** (-i / (half - 1)), i = 0..half-1
    (from 1 down to 1 / max_period, geometrically spaced):

        emb[:, i]        = sin(t * w_i)
        emb[:, half + i] = cos(t * w_i)

    An odd ``dim`` gets one extra column of zeros. Fast frequencies tell neighbouring steps
    apart; slow ones vary smoothly across the whole chain.

    Args:
        t: step indices, shape (B,) (or a Python int / 0-d tensor, treated as shape (1,)).
            Integer or floating values are accepted.
        dim: embedding width, at least 2.
        max_period: the slowest period, in steps.

    Returns:
        float32 tensor of shape (B, dim) on t's device.
    """
    dim = operator.index(dim)
    if dim < 2:
        raise ValueError(f"dim: expected an embedding width of at least 2, got {dim}")
    t = torch.as_tensor(t)
    if t.ndim == 0:
        t = t.reshape(1)
    if t.ndim != 1:
        raise ValueError(f"t: expected a 1-D tensor of step indices, got shape {tuple(t.shape)}")
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"t: expected integer or floating step indices, got dtype {t.dtype}")
    half = dim // 2
    exponent = torch.arange(half, device=t.device, dtype=torch.float32) / max(half - 1, 1)
    freqs = torch.exp(-math.log(max_period) * exponent)  # (half,)
    args = t.to(torch.float32)[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)  # (B, 2 * half)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def _zero_init(module: nn.Module) -> nn.Module:
    """Set a layer's parameters to zero (improved-diffusion); returns the layer."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """Residual block with the time embedding added between its two convolutions.

    x -> GroupNorm -> SiLU -> conv3x3 -> (+ Linear(SiLU(emb))) -> GroupNorm -> SiLU -> dropout
    -> conv3x3 (zero-initialised), plus a 1x1 conv on the skip path when the width changes.

    Shapes: x (B, in_channels, H, W), emb_act (B, emb_channels) -> (B, out_channels, H, W).
    ``emb_act`` is SiLU(emb), computed once by the U-Net and shared by every block.
    """

    def __init__(
        self, in_channels: int, out_channels: int, emb_channels: int, dropout: float, groups: int
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = nn.GroupNorm(groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_channels, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Conv2d(in_channels, out_channels, 1)
        )

    def forward(self, x: Tensor, emb_act: Tensor) -> Tensor:
        h = self.conv1(group_norm_silu(self.norm1, x))  # SiLU(GroupNorm(x)) -> (B, out, H, W)
        # The time embedding, the same shift at every pixel, is added inside the second norm:
        # SiLU(GroupNorm(h + emb_proj(emb))), one kernel where group_norm_silu has one.
        h = group_norm_silu(self.norm2, h, shift=self.emb_proj(emb_act))
        h = self.conv2(self.dropout(h))
        # In place: a conv's backward never reads its output (one fewer allocation per block).
        return h.add_(self.skip(x))


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H*W positions, with a residual connection.

    GroupNorm -> one 1x1 conv giving q, k, v -> softmax(q k^T / sqrt(C)) v -> 1x1 conv
    (zero-initialised) -> added to x. Shapes: (B, C, H, W) -> (B, C, H, W).

    Each way of computing it is picked by speed (docs/benchmarks.md). The attention itself, up
    to ``MATH_MAX_POSITIONS`` positions on the CPU, is the plain formula with an explicit
    (B, HW, HW) weight matrix (torch's fused CPU kernel costs 1.4x (fp32) to 4x (bf16) more
    there, forward + backward); otherwise ``F.scaled_dot_product_attention``, whose flash kernel
    never builds that matrix. The 1x1 convs are per-position linear maps: NCHW tensors go through
    ``conv2d``, one operator forward and backward (what counts on a GPU, where a small network's
    step is paced by operator launches); channels_last ones through ``F.linear`` on their free
    positions-major view (on the CPU a block is 1.2-1.4x faster at batch 8 that way).
    """

    #: Largest H * W for the explicit path on CPU (16 x 16); beyond it the fused kernel wins.
    MATH_MAX_POSITIONS = 256

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        h = group_norm_silu(self.norm, x, silu=False)
        if is_channels_last(x):
            return self._forward_channels_last(x, h)
        qkv = self.qkv(h)  # (B, 3C, H, W)
        if self._explicit(x):
            q, k, v = qkv.flatten(2).chunk(3, dim=1)  # each (B, C, HW); bmm reads them strided
            w = torch.softmax(q.transpose(1, 2) @ k * C**-0.5, dim=-1)  # (B, HW, HW)
            h = (v @ w.transpose(1, 2)).view(B, C, H, W)  # h[:, :, i] = sum_j w[i, j] v[:, :, j]
        else:
            # Positions-major (B, H*W, 3C), split into one head each of q, k, v: (B, 1, H*W, C).
            # One copy, which lets SDPA take its fused kernel (several times faster on CPU than
            # the strided fallback at 32 x 32); then one more back to NCHW.
            q, k, v = qkv.flatten(2).transpose(1, 2).contiguous().unsqueeze(1).chunk(3, dim=-1)
            h = F.scaled_dot_product_attention(q, k, v)  # (B, 1, H*W, C), scale 1/sqrt(C)
            h = h.squeeze(1).transpose(1, 2).reshape(B, C, H, W).contiguous()
        return self.proj(h).add_(x)  # in place on the conv's fresh output

    def _explicit(self, x: Tensor) -> bool:
        """Whether attention over x's positions takes the explicit formula (else SDPA)."""
        return x.device.type == "cpu" and x.shape[2] * x.shape[3] <= self.MATH_MAX_POSITIONS

    def _forward_channels_last(self, x: Tensor, h: Tensor) -> Tensor:
        """The same for channels_last x (normalised: h), through its positions-major view.

        (B, C, H, W) stored channels_last is (B*H*W, C) rows in memory, so the 1x1 convs become
        ``F.linear`` on that free view, q, k and v are (B, H*W, C) views of its output, and the
        result goes back as a view too: no copies, and no 1x1 convolutions through oneDNN.
        """
        B, C, H, W = x.shape
        rows = h.permute(0, 2, 3, 1).reshape(-1, C)  # (B*H*W, C), a view
        qkv = F.linear(rows, self.qkv.weight.flatten(1), self.qkv.bias)
        q, k, v = qkv.view(B, H * W, 3 * C).chunk(3, dim=-1)
        if self._explicit(x):
            w = torch.softmax(q @ k.transpose(1, 2) * C**-0.5, dim=-1)  # (B, HW, HW)
            h = w @ v  # (B, HW, C): h[:, i] = sum_j w[i, j] v[:, j]
        else:  # one head each: (B, 1, H*W, C), scale 1/sqrt(C)
            q, k, v = q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)
            h = F.scaled_dot_product_attention(q, k, v).squeeze(1)  # (B, HW, C)
        out = F.linear(h.reshape(-1, C), self.proj.weight.flatten(1), self.proj.bias)
        # The residual goes in place into the linear's fresh output (its backward never reads
        # it) before that is viewed as (B, C, H, W): in place on the view, autograd would copy
        # the whole base in the backward.
        out = out.add_(x.permute(0, 2, 3, 1).reshape(-1, C))  # x's rows: a view as well
        return out.view(B, H, W, C).permute(0, 3, 1, 2)  # channels_last strides, no copy


class Downsample(nn.Module):
    """Halve H and W with a stride-2 3x3 conv: (B, C, H, W) -> (B, C, H/2, W/2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W (nearest neighbour), then a 3x3 conv: (B, C, H, W) -> (B, C, 2H, 2W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        if (
            x.device.type == "cpu"
            and x.dtype == torch.float32
            and not x.is_contiguous(memory_format=torch.channels_last)
        ):
            # The same nearest-neighbour 2x, written as "repeat every column, then every row":
            # for float32 NCHW on the CPU faster than torch's interpolate kernel, forward and
            # backward (1.4x at 64 x 14 x 14); for bfloat16 (autocast) the kernel is 1.4-2.3x
            # faster than this (docs/benchmarks.md).
            x = x.repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2)
        else:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x)


class Level(nn.Module):
    """One resolution of the U-Net: ResBlocks, each optionally followed by self-attention, then
    an optional resample (Downsample on the way down, Upsample on the way up, None at the ends)."""

    def __init__(
        self, blocks: list[ResBlock], attention: bool, groups: int, resample: nn.Module | None
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attns = (
            nn.ModuleList(AttentionBlock(b.out_channels, groups) for b in blocks)
            if attention
            else None
        )
        self.resample = resample


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name}: expected a positive int, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name}: expected a positive int, got {value!r}") from None
    if value <= 0:
        raise ValueError(f"{name}: expected a positive int, got {value}")
    return value


class UNet(nn.Module):
    """The DDPM noise-prediction network eps_theta(x_t, t).

    Args:
        in_channels: channels of x (1 for MNIST, 3 for CIFAR-10).
        base_channels: width C of level 0; level i has width C * channel_mults[i].
            The time embedding MLP is 4C wide.
        channel_mults: one width multiplier per level; len(channel_mults) levels, level i at
            resolution H / 2**i. DDPM CIFAR-10: (1, 2, 2, 2) with C = 128.
        num_res_blocks: ResBlocks per level on the way down (the way up has one more, to take the
            downsample's skip).
        attention_levels: levels (0 = full resolution) whose ResBlocks are followed by
            self-attention. The middle always has one. DDPM: (1,), i.e. 16 x 16 on CIFAR-10.
        dropout: dropout rate inside every ResBlock (DDPM: 0.1 on CIFAR-10). Off in eval().
        skip_connections: False drops the encoder-to-decoder concatenations (the U-Net chapter's
            ablation); the decoder's ResBlocks then take only the upsampled path.
        out_channels: channels of the output; default in_channels (predicting eps). Use
            2 * in_channels for a learned variance (improved-diffusion).
        norm_groups: GroupNorm group count; must divide base_channels (every width is a multiple
            of it). Default: 32 (as in DDPM) or, for narrow nets, gcd(32, base_channels).

    ``forward(x, t)`` maps x (B, in_channels, H, W) and t (B,) to (B, out_channels, H, W).
    ``self.config`` holds the resolved arguments as a JSON-able dict: ``UNet(**model.config)``
    rebuilds the same architecture.
    """

    def __init__(
        self,
        in_channels: int,
        base_channels: int = 64,
        channel_mults: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attention_levels: Sequence[int] = (1,),
        dropout: float = 0.1,
        skip_connections: bool = True,
        out_channels: int | None = None,
        norm_groups: int | None = None,
    ) -> None:
        super().__init__()
        # ---- validate and resolve the arguments
        in_channels = _positive_int(in_channels, "in_channels")
        base_channels = _positive_int(base_channels, "base_channels")
        if isinstance(channel_mults, (str, bytes)) or not isinstance(channel_mults, Sequence):
            raise TypeError(f"channel_mults: expected a sequence of ints, got {channel_mults!r}")
        if len(channel_mults) == 0:
            raise ValueError("channel_mults: expected at least one level, got an empty sequence")
        mults = [_positive_int(m, f"channel_mults[{i}]") for i, m in enumerate(channel_mults)]
        num_res_blocks = _positive_int(num_res_blocks, "num_res_blocks")
        num_levels = len(mults)
        if isinstance(attention_levels, (str, bytes)) or not isinstance(attention_levels, Sequence):
            raise TypeError(
                f"attention_levels: expected a sequence of ints, got {attention_levels!r}"
            )
        try:
            if any(isinstance(a, bool) for a in attention_levels):
                raise TypeError
            attn_levels = sorted({operator.index(a) for a in attention_levels})
        except TypeError:
            raise TypeError(
                f"attention_levels: expected a sequence of ints, got {attention_levels!r}"
            ) from None
        bad = [a for a in attn_levels if not 0 <= a < num_levels]
        if bad:
            raise ValueError(
                f"attention_levels: levels must lie in 0..{num_levels - 1} for "
                f"{num_levels} channel_mults; got {bad}"
            )
        if (
            isinstance(dropout, bool)
            or not isinstance(dropout, (int, float))
            or not 0.0 <= dropout < 1.0
        ):
            raise ValueError(f"dropout: expected a rate in [0, 1), got {dropout!r}")
        out_channels = in_channels if out_channels is None else out_channels
        out_channels = _positive_int(out_channels, "out_channels")
        if norm_groups is None:
            norm_groups = math.gcd(32, base_channels)
        norm_groups = _positive_int(norm_groups, "norm_groups")
        if base_channels % norm_groups:
            raise ValueError(
                f"norm_groups: GroupNorm's {norm_groups} groups must divide base_channels="
                f"{base_channels} (every width is a multiple of base_channels); "
                f"try a divisor such as {math.gcd(norm_groups, base_channels)}"
            )
        self.config: dict[str, Any] = {
            "in_channels": in_channels,
            "base_channels": base_channels,
            "channel_mults": mults,
            "num_res_blocks": num_res_blocks,
            "attention_levels": attn_levels,
            "dropout": float(dropout),
            "skip_connections": bool(skip_connections),
            "out_channels": out_channels,
            "norm_groups": norm_groups,
        }
        self.in_channels, self.out_channels = in_channels, out_channels
        self.num_levels = num_levels
        self.skip_connections = bool(skip_connections)

        C, emb_ch, G = base_channels, 4 * base_channels, norm_groups

        def res(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, cout, emb_ch, float(dropout), G)

        # ---- time embedding: sinusoid (B, C) -> MLP -> (B, 4C)
        self.base_channels = C
        self.time_mlp = nn.Sequential(nn.Linear(C, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))

        # ---- contracting path; skip_widths records every activation pushed for the decoder
        self.input_conv = nn.Conv2d(in_channels, C, 3, padding=1)
        skip_widths = [C]
        ch = C
        self.down = nn.ModuleList()
        for level, mult in enumerate(mults):
            blocks = []
            for _ in range(num_res_blocks):
                blocks.append(res(ch, C * mult))
                ch = C * mult
                skip_widths.append(ch)
            last = level == num_levels - 1
            self.down.append(
                Level(blocks, level in attn_levels, G, None if last else Downsample(ch))
            )
            if not last:
                skip_widths.append(ch)

        # ---- bottleneck at the lowest resolution
        self.mid_block1 = res(ch, ch)
        self.mid_attn = AttentionBlock(ch, G)
        self.mid_block2 = res(ch, ch)

        # ---- expanding path: each ResBlock takes [h, one skip], consumed last in first out
        self.up = nn.ModuleList()
        for level in reversed(range(num_levels)):
            blocks = []
            for _ in range(num_res_blocks + 1):
                skip_ch = skip_widths.pop() if self.skip_connections else 0
                blocks.append(res(ch + skip_ch, C * mults[level]))
                ch = C * mults[level]
            self.up.append(
                Level(blocks, level in attn_levels, G, Upsample(ch) if level > 0 else None)
            )

        # ---- output head; zero-initialised so the untrained network predicts eps = 0
        self.out_norm = nn.GroupNorm(G, ch)
        self.out_conv = _zero_init(nn.Conv2d(ch, out_channels, 3, padding=1))

    # ------------------------------------------------------------------ helpers
    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of parameters (only those with requires_grad if ``trainable_only``)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def _check_input(self, x: Tensor, t: Tensor | int) -> Tensor:
        """Validate x (B, C, H, W); return t as a (B,) tensor on x's device."""
        if x.ndim != 4:
            raise ValueError(f"x: expected a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
        B, C, H, W = x.shape
        if self.in_channels != C:
            raise ValueError(
                f"x has {C} channels but this UNet was built with in_channels={self.in_channels}"
            )
        factor = 2 ** (self.num_levels - 1)
        if H % factor or W % factor:
            raise ValueError(
                f"H and W must be divisible by {factor} for {self.num_levels} levels; got {H}x{W}"
            )
        if isinstance(t, Tensor):  # non_blocking: a CPU t must not make the GPU sync
            t = t.to(x.device, non_blocking=True)
        else:
            t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0 or t.shape == (1,):
            t = t.reshape(1).expand(B)
        elif t.shape != (B,):
            raise ValueError(
                f"t: expected an int, a 0-d tensor or shape ({B},) to match x; "
                f"got shape {tuple(t.shape)}"
            )
        return t

    # ------------------------------------------------------------------ forward
    def forward(
        self, x: Tensor, t: Tensor | int, *, return_features: bool = False
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """Predict the noise in x_t.

        Args:
            x: x_t, shape (B, in_channels, H, W), H and W divisible by 2**(levels - 1).
            t: step indices, shape (B,), or an int / 0-d tensor used for the whole batch.
            return_features: also return the feature maps at each level (see
                :meth:`feature_maps`).

        Returns:
            (B, out_channels, H, W); with ``return_features``, the pair (output, features).
        """
        t = self._check_input(x, t)
        feats: dict[str, Tensor] = {}

        emb = timestep_embedding(t, self.base_channels).to(self.time_mlp[0].weight.dtype)
        # Every ResBlock projects SiLU(emb); apply the SiLU once here instead of in each block.
        emb_act = F.silu(self.time_mlp(emb))  # (B, 4C)

        h = self.input_conv(x)  # (B, C, H, W)
        skips = [h]
        for level, stage in enumerate(self.down):
            for i, block in enumerate(stage.blocks):
                h = block(h, emb_act)
                if stage.attns is not None:
                    h = stage.attns[i](h)
                skips.append(h)
            feats[f"down{level}"] = h  # (B, C * mults[level], H / 2**level, W / 2**level)
            if stage.resample is not None:
                h = stage.resample(h)
                skips.append(h)

        h = self.mid_block2(self.mid_attn(self.mid_block1(h, emb_act)), emb_act)
        feats["mid"] = h  # (B, C * mults[-1], H / 2**(levels-1), W / 2**(levels-1))

        for stage, level in zip(self.up, reversed(range(self.num_levels)), strict=True):
            for i, block in enumerate(stage.blocks):
                if self.skip_connections:
                    h = torch.cat([h, skips.pop()], dim=1)  # (B, width + skip width, ...)
                h = block(h, emb_act)
                if stage.attns is not None:
                    h = stage.attns[i](h)
            feats[f"up{level}"] = h  # (B, C * mults[level], H / 2**level, W / 2**level)
            if stage.resample is not None:
                h = stage.resample(h)

        out = self.out_conv(group_norm_silu(self.out_norm, h))  # (B, out_channels, H, W)
        return (out, feats) if return_features else out

    @torch.no_grad()
    def feature_maps(self, x: Tensor, t: Tensor | int) -> dict[str, Tensor]:
        """The activations at each level, for pictures (computed without gradients).

        Returns an ordered dict, in the order computed:
            "down{i}" for i = 0..levels-1: the last ResBlock (or attention) output of level i
                on the way down, shape (B, C * channel_mults[i], H / 2**i, W / 2**i);
            "mid": the bottleneck output, (B, C * channel_mults[-1], H / 2**(levels-1), ...);
            "up{i}" for i = levels-1..0: level i's output on the way up, before upsampling,
                shape (B, C * channel_mults[i], H / 2**i, W / 2**i).
        The same dict comes from ``model(x, t, return_features=True)[1]`` (with gradients).
        """
        return self.forward(x, t, return_features=True)[1]
