"""Training a denoiser: L_simple, AdamW, EMA weights, checkpoints and distributed data parallel.

Ho, Jain & Abbeel (2020), Algorithm 1 and eq. 14. Repeat:

    x_0 ~ q(x_0),   t ~ Uniform{1, ..., T},   eps ~ N(0, I)
    x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps                       (eq. 4)
    take a gradient step on  L_simple = || eps - eps_theta(x_t, t) ||^2              (eq. 14)

Two changes of that loop are options (``TrainConfig``), both used by the ``cpu`` budget: the loss
of step t may be weighted (Min-SNR-gamma, :func:`min_snr_weight`), and t may be drawn where the
loss is large instead of uniformly, each example weighted by 1 / (T p_t) so that the expected loss
is unchanged (importance sampling, :class:`LossAwareSampler`).

The network may instead predict x_0 or v (Salimans & Ho 2022): the target changes
(``NoiseSchedule.target``), the loss stays a plain mean squared error. The paper's recipe around
that loop, all kept here: Adam(W) with a linear learning-rate warm-up, gradient clipping at norm 1,
and an exponential moving average (EMA) of the weights, which is what gets sampled.

Reproducibility. Every random number of step k (which examples, which t, which eps, dropout) is
drawn from generators seeded by (seed, k) alone, and the data order is one fixed permutation per
epoch seeded by (seed, epoch). So a run stopped at step k and resumed from its checkpoint replays
exactly the same steps as a run that never stopped, and a run on W processes sees exactly the
same global batches as a run on one (each process takes its contiguous slice of the batch).
Exactly means on the same kind of device: a run may resume on another one, but CPU and CUDA draw
different noise from the same seed, and on CUDA cuDNN picks its convolution kernels by timing
them (``cudnn.benchmark``), so there a resumed run matches to rounding, not bit for bit.
With loss-aware t sampling the draw of t also depends on the sampler's memory of past losses,
which the checkpoint keeps, so resuming stays exact; but W processes compute those losses in
another summation order than one process, so once the sampler is warm their t may differ from a
one-process run's in a rare draw.

Distributed. Launched by ``torchrun`` (RANK and WORLD_SIZE set), the trainer joins the process
group (NCCL on CUDA, gloo on CPU), wraps the network in ``DistributedDataParallel`` (which averages
the gradients, so W slices of B/W give the gradient of the whole batch of B), and lets only rank 0
write files, draw samples and show progress.

Checkpoints hold the model, the EMA model, the optimiser, the step, the seeds that fix every later
random number, the loss-aware t sampler's memory (if any), the loss history and the config as a
plain dict; they are written atomically (a
temporary file in the same folder, then ``os.replace``), so a crash never leaves a half-written
``last.pt``. A NaN or infinite loss stops training with an error naming the step, before anything
more is written.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import operator
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from . import budgets, fused
from .budgets import Budget
from .mlp import MLPDenoiser
from .schedule import NoiseSchedule, check_prediction
from .unet import UNet

__all__ = [
    "CHECKPOINT_FORMAT",
    "COMPILE_MODES",
    "MODEL_KINDS",
    "SAMPLING_CHUNK_BYTES",
    "SCHEDULE_KINDS",
    "T_SAMPLINGS",
    "BF16Sampling",
    "Chunked",
    "LossAwareSampler",
    "NonFiniteLossError",
    "TrainConfig",
    "Trainer",
    "build_model",
    "ema_decay_at",
    "ema_update",
    "has_native_bf16",
    "load_checkpoint",
    "make_schedule",
    "min_snr_weight",
    "sampling_net",
    "save_preview",
    "train",
]

#: Written into every checkpoint; load_checkpoint refuses anything else.
CHECKPOINT_FORMAT = "ddpm-teach-checkpoint-1"

#: The networks the trainer can build from a config.
MODEL_KINDS = ("unet", "mlp")

#: The noise schedules :func:`make_schedule` knows.
SCHEDULE_KINDS = ("linear", "cosine")

#: What the learning rate does after the warm-up (see :meth:`Trainer.lr_at`).
LR_DECAYS = ("none", "cosine")

#: How the trainer draws t: uniformly (Algorithm 1) or by :class:`LossAwareSampler`.
T_SAMPLINGS = ("uniform", "loss-aware")

#: ``torch.compile`` modes ``TrainConfig.compile`` may name; True means "default".
#: "reduce-overhead" adds CUDA graphs on a GPU, for steps bound by kernel launches.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

# Config fields that must match to resume a run; the others (train_steps, out_dir, intervals,
# preview settings, compile, device) may change between the two halves (another device continues
# the run without replaying it exactly: see the module docstring).
_RESUME_FIELDS = (
    "data",
    "data_size",
    "data_seed",
    "hflip",
    "model",
    "model_kwargs",
    "schedule",
    "num_steps",
    "prediction",
    "min_snr_gamma",
    "batch_size",
    "lr",
    "warmup_steps",
    "lr_decay",
    "weight_decay",
    "grad_clip",
    "ema_decay",
    "ema_warmup",
    "t_sampling",
    "seed",
)


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; ``step`` is the first step where it did."""

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


# ================================================================================================
# Building blocks: schedule, model, EMA
# ================================================================================================


def make_schedule(kind: str = "linear", num_steps: int = 1000) -> NoiseSchedule:
    """The noise schedule named ``kind`` with T = ``num_steps``.

    "linear" is the paper's (beta from 1e-4 to 0.02 at T = 1000), with both end points scaled by
    1000 / T for other T, as improved-diffusion does, so that every T ends at about the same
    alpha_bar_T (about 4e-5); unscaled, T = 100 would keep alpha_bar_T = 0.37, far from noise.
    "cosine" is Nichol & Dhariwal's (their eq. 17), valid for any T.
    """
    if kind not in SCHEDULE_KINDS:
        raise ValueError(f"schedule: expected one of {SCHEDULE_KINDS}, got {kind!r}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps: expected a positive int (T), got {num_steps!r}")
    if kind == "cosine":
        return NoiseSchedule.cosine(num_steps)
    scale = 1000 / num_steps
    if 0.02 * scale >= 1:
        raise ValueError(
            f"num_steps: the linear schedule rescaled to T = {num_steps} would need beta_T = "
            f"{0.02 * scale:.3g} >= 1; use T >= 21 or schedule='cosine'"
        )
    return NoiseSchedule.linear(num_steps, 1e-4 * scale, 0.02 * scale)


def build_model(kind: str, **kwargs: Any) -> nn.Module:
    """``UNet(**kwargs)`` for "unet", ``MLPDenoiser(**kwargs)`` for "mlp"."""
    if kind == "unet":
        return UNet(**kwargs)
    if kind == "mlp":
        return MLPDenoiser(**kwargs)
    raise ValueError(f"model: expected one of {MODEL_KINDS}, got {kind!r}")


def has_native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes bfloat16 natively, so that bf16 autocast speeds training up.

    CUDA: compute capability 8.0 (Ampere) and later, whose tensor cores run bf16; older cards
    only emulate it (which ``torch.cuda.is_bf16_supported()`` counts as support by default).
    CPU: only with AVX512-BF16 or AMX instructions; elsewhere oneDNN emulates bf16, which cannot
    be faster than float32. With AVX512-BF16 (a 2-core EPYC, chapter 05's timing cell) a step of
    the ``cpu`` budget's U-Net ran 1.52x faster under autocast (154 ms instead of 233 ms at batch
    64, two threads).
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cpu":
        # Private helpers, present since torch 2.1; treat their absence as "no".
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return False


class BF16Sampling(nn.Module):
    """``model(x_t, t)`` evaluated under bfloat16 autocast and returned in x_t's dtype.

    How a network trained under bf16 autocast is sampled on a CPU with native bf16: the ``cpu``
    budget's U-Net drew 1,000 digits by DDIM-100 1.6x faster (83.6 against 135.3 s, two threads
    of a 2-core EPYC) with the same scores (90.8 % confident either way, digit-FID 11.16 against
    11.22; docs/benchmarks.md). The samplers see an ordinary model; the chain's arithmetic between
    network calls stays in x_t's dtype.

    Shapes: x_t (B, ...), t (B,) -> (B, ...), like ``model``. Autocast is for x_t's device.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        with torch.autocast(x_t.device.type, torch.bfloat16):
            return self.model(x_t, t).to(x_t.dtype)

    @staticmethod
    def applies(bf16: bool, device: torch.device | str) -> bool:
        """Whether a run configured with ``bf16`` samples under it on ``device``: only on a CPU
        that computes bf16 natively, where it was measured (on a GPU it is unmeasured)."""
        device = torch.device(device)
        return bf16 and device.type == "cpu" and has_native_bf16(device)


#: On a CPU, sampling calls a U-Net on at most this many bytes of first-level activations
#: (base_channels x H x W values per image) at a time: see :class:`Chunked`.
SAMPLING_CHUNK_BYTES = 6 << 20


class Chunked(nn.Module):
    """``model(x_t, t)`` evaluated in even chunks of at most ``max_batch`` samples, concatenated.

    Why, on a CPU: every call allocates its activations afresh, in blocks of tens of MiB for a
    large batch, which glibc maps from the operating system and unmaps again when they are
    freed, so each call faults all their pages in anew. One pass of the ``cpu`` budget's U-Net
    over 1,024 digits took 1.27 s and 392,000 page faults in one call, 0.50 s and none in calls
    of 128 (float32; bf16: 0.46 s against 0.25 s in calls of 256); whole DDIM chains ran
    1.4-2.0x faster (``bench.sampling_batch``, docs/benchmarks.md, "Sampling in chunks"). The
    samplers draw their noise for the whole batch, so the chunks change no random number; the
    samples were bit for bit those of one call in every measured run (convolution kernels could
    in principle round differently at another batch size).

    Shapes: x_t (B, ...), t (B,) or a scalar -> (B, ...), like ``model``.
    """

    def __init__(self, model: nn.Module, max_batch: int) -> None:
        super().__init__()
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch: expected a positive int, got {max_batch!r}")
        self.model, self.max_batch = model, max_batch

    def forward(self, x_t: Tensor, t: Tensor | int) -> Tensor:
        n = x_t.shape[0]
        calls = self.num_calls(n)
        if calls == 1:
            return self.model(x_t, t)
        # Even chunks, sizes differing by at most one: 256 images with at most 250 a call go as
        # 128 + 128, not 250 + 6. A t with one step per sample is split alongside; a scalar t (or
        # one of shape (1,)) stands for the whole batch and goes to every call as it is.
        xs = x_t.tensor_split(calls)
        per_sample = isinstance(t, Tensor) and t.ndim == 1 and t.shape[0] == n
        ts = t.tensor_split(calls) if per_sample else [t] * calls
        return torch.cat([self.model(x, s) for x, s in zip(xs, ts, strict=True)])

    def num_calls(self, n: int) -> int:
        """How many calls a batch of ``n`` takes (at least one)."""
        return max(1, -(-n // self.max_batch))


def sampling_net(
    model: nn.Module, shape: tuple[int, ...], device: torch.device | str, *, bf16: bool
) -> nn.Module:
    """``model`` as the samplers should call it to draw a batch of ``shape`` on ``device``.

    Under bf16 autocast when ``bf16`` (:class:`BF16Sampling`; callers decide with
    :meth:`BF16Sampling.applies`); on a CPU, a U-Net in calls of at most
    :data:`SAMPLING_CHUNK_BYTES` of first-level activations (:class:`Chunked`): at most 125
    digits a call in float32 and 250 in bf16 for the ``cpu`` budget's U-Net. GPUs get the whole
    batch at once, and so does anything that is not a :class:`~ddpm_teach.unet.UNet` itself
    (a compiled or DistributedDataParallel wrapper included: pass the module inside).
    """
    net = model
    if torch.device(device).type == "cpu" and isinstance(model, UNet) and len(shape) == 4:
        itemsize = 2 if bf16 else next(model.parameters()).element_size()
        per_image = model.base_channels * math.prod(shape[2:]) * itemsize
        max_batch = max(1, SAMPLING_CHUNK_BYTES // per_image)
        if shape[0] > max_batch:
            net = Chunked(net, max_batch)
    return BF16Sampling(net) if bf16 else net


def _model_kind(model: nn.Module) -> str:
    if isinstance(model, UNet):
        return "unet"
    if isinstance(model, MLPDenoiser):
        return "mlp"
    return "custom"


def min_snr_weight(
    schedule: NoiseSchedule, t: Tensor, prediction: str = "eps", gamma: float = 5.0
) -> Tensor:
    """Per-example loss weights of Min-SNR-gamma (Hang et al. 2023, "Efficient Diffusion
    Training via Min-SNR Weighting Strategy").

    Every parameterisation's squared error is the x_0 error times a factor of the signal-to-noise
    ratio SNR_t = alpha_bar_t / (1 - alpha_bar_t): ||eps - eps_hat||^2 = SNR_t ||x_0 - x0_hat||^2
    and ||v - v_hat||^2 = (SNR_t + 1) ||x_0 - x0_hat||^2. So L_simple weighs the x_0 error by
    SNR_t, which puts most of the effort into nearly clean steps that barely matter for samples.
    Min-SNR caps that weight at gamma: the x_0 error gets min(SNR_t, gamma), i.e. the loss of

        eps:  min(SNR_t, gamma) / SNR_t        (1 at noisy steps, < 1 once SNR_t > gamma)
        x0:   min(SNR_t, gamma)
        v:    min(SNR_t, gamma) / (SNR_t + 1)

    Args:
        schedule: the noise schedule. t: step indices, shape (B,). gamma: the cap (> 0).

    Returns:
        float64 weights, shape (B,), on the CPU (where the schedule keeps its tables).
    """
    check_prediction(prediction)
    if isinstance(gamma, bool) or not (isinstance(gamma, (int, float)) and 0 < gamma < math.inf):
        raise ValueError(f"gamma: expected a positive number (5 in the paper), got {gamma!r}")
    snr = schedule.snr(t)
    capped = snr.clamp(max=gamma)
    if prediction == "eps":
        return capped / snr
    if prediction == "x0":
        return capped
    return capped / (snr + 1.0)


def ema_decay_at(num_updates: int, decay: float, warmup: bool = True) -> float:
    """The EMA decay used for update number ``num_updates`` (0 for the first).

    With ``warmup`` it is min(decay, (1 + n) / (10 + n)) (as TensorFlow's ExponentialMovingAverage
    with num_updates): early on the average forgets the random initial weights quickly, which
    matters for short runs, where 0.999 ** steps of the average would still be initialisation.
    """
    if not warmup:
        return decay
    return min(decay, (1 + num_updates) / (10 + num_updates))


class LossAwareSampler:
    """Draw t where the loss is large, and weight each example so the expected loss is unchanged.

    Importance sampling of the time step, as Nichol & Dhariwal (2021, "Improved Denoising
    Diffusion Probabilistic Models", section 3.3) did for the variational bound: the training loss
    is the mean over t of L_t, and drawing t with probability p_t instead of 1/T, then weighting
    its loss by 1 / (T p_t), keeps the expectation:

        E_{t ~ p} [ L_t / (T p_t) ] = sum_t p_t L_t / (T p_t) = (1/T) sum_t L_t.

    The gradient's variance is smallest for p_t proportional to the root mean square of L_t, which
    is estimated from the last ``history`` losses seen at each t. Until every t has that many, t is
    drawn uniformly; afterwards p is mixed with a little of the uniform distribution
    (``uniform_share``) so that no step is starved. Steps whose (weighted) loss is near zero, like
    the nearly clean steps under Min-SNR weighting, are then drawn rarely, and the batch goes to
    the steps that still have something to learn.

    Args:
        num_steps: T, the number of steps t = 0 .. T-1.
        history: losses remembered per step (10 in the paper).
        uniform_share: weight of the uniform distribution in p (1e-3 in the paper's code).
    """

    def __init__(self, num_steps: int, history: int = 10, uniform_share: float = 1e-3) -> None:
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps: expected an int >= 1, got {num_steps!r}")
        if isinstance(history, bool) or not isinstance(history, int) or history < 1:
            raise ValueError(f"history: expected an int >= 1, got {history!r}")
        if not (
            isinstance(uniform_share, (int, float))
            and not isinstance(uniform_share, bool)
            and 0.0 < uniform_share <= 1.0
        ):
            raise ValueError(f"uniform_share: expected a number in (0, 1], got {uniform_share!r}")
        self.num_steps, self.history, self.uniform_share = num_steps, history, uniform_share
        self.losses = torch.zeros(num_steps, history, dtype=torch.float64)  # a ring per step
        self.counts = torch.zeros(num_steps, dtype=torch.long)  # losses seen per step
        self._p: Tensor | None = None  # cached until the next update

    @property
    def warm(self) -> bool:
        """Whether every step has ``history`` losses (before that, p is uniform)."""
        return bool((self.counts >= self.history).all())

    def probs(self) -> Tensor:
        """p_t for t = 0 .. T-1, float64, shape (T,), summing to 1."""
        if self._p is None:
            T = self.num_steps
            p = torch.full((T,), 1.0 / T, dtype=torch.float64)
            if self.warm:
                rms = self.losses.square().mean(1).sqrt()
                if rms.sum() > 0:
                    p = (1 - self.uniform_share) * rms / rms.sum() + self.uniform_share / T
            self._p = p
        return self._p

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(t, weights): n steps drawn from p, int64 (n,), and their weights 1 / (T p_t),
        float64 (n,); uniform draws (before the history is full) have weight 1."""
        if not self.warm:
            t = torch.randint(0, self.num_steps, (n,), generator=generator)
            return t, torch.ones(n, dtype=torch.float64)
        p = self.probs()
        t = torch.multinomial(p, n, replacement=True, generator=generator)
        return t, 1.0 / (self.num_steps * p[t])

    def update(self, t: Tensor, losses: Tensor) -> None:
        """Remember the (unweighted by 1 / (T p)) loss of each example at its step t; non-finite
        losses are skipped (the trainer stops on them anyway)."""
        t, losses = t.detach().cpu().long().flatten(), losses.detach().cpu().double().flatten()
        if t.shape != losses.shape:
            raise ValueError(
                f"losses: expected one per t, got {tuple(losses.shape)} for t {tuple(t.shape)}"
            )
        if len(t) and (t.min() < 0 or t.max() >= self.num_steps):
            raise ValueError(
                f"t: expected steps in 0..{self.num_steps - 1}, got {t.min().item()}.."
                f"{t.max().item()}"
            )
        # A loop, in order, because a batch may hold one step several times; on NumPy views of
        # the tables: a tensor index per example cost 1.2 ms a step for 64 losses, NumPy 0.07 ms.
        ring, counts = self.losses.numpy(), self.counts.numpy()
        for step, loss in zip(t.tolist(), losses.tolist(), strict=True):
            if math.isfinite(loss):
                ring[step, counts[step] % self.history] = loss
                counts[step] += 1
        self._p = None

    def state_dict(self) -> dict[str, Any]:
        return {"losses": self.losses.clone(), "counts": self.counts.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or not {"losses", "counts"} <= set(state):
            raise ValueError(
                "t sampler state: expected a dict with 'losses' and 'counts' (from state_dict), "
                f"got {type(state).__name__}"
                + (f" with keys {sorted(state)}" if isinstance(state, dict) else "")
            )
        losses, counts = state["losses"], state["counts"]
        if tuple(losses.shape) != tuple(self.losses.shape) or tuple(counts.shape) != (
            self.num_steps,
        ):
            raise ValueError(
                f"t sampler state: expected losses {tuple(self.losses.shape)} and counts "
                f"({self.num_steps},), got {tuple(losses.shape)} and {tuple(counts.shape)}"
            )
        self.losses = losses.detach().cpu().double().clone()
        self.counts = counts.detach().cpu().long().clone()
        self._p = None


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """theta_ema <- decay * theta_ema + (1 - decay) * theta, for every parameter; buffers copied.

    Both models must have the same architecture. One fused multi-tensor call (``lerp``) rather than
    a Python loop over parameters: on a GPU that is one kernel launch instead of hundreds.
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay: expected a number in [0, 1], got {decay!r}")
    ema_params = list(ema.parameters())
    params = [p.detach() for p in model.parameters()]
    if len(ema_params) != len(params):
        raise ValueError("ema: expected a copy of model (the parameter lists differ in length)")
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers(), strict=True):
        b_ema.copy_(b)


# ================================================================================================
# Configuration
# ================================================================================================


@dataclass
class TrainConfig:
    """Everything needed to rebuild a run: data, model, schedule, optimiser, seeds, outputs.

    Data:
        data: a name from ``ddpm_teach.data.DATASETS`` (or a label, when the trainer is handed a
            tensor). data_size: how many examples to load/generate (None: the loader's default).
        data_seed: seed of generated data. data_root, download: for the real image sets.
        hflip: random horizontal flips of images (DDPM used them on CIFAR-10; wrong for digits).
    Model:
        model: "unet", "mlp" or None (the MLP for 2-D points, the U-Net for images).
        model_kwargs: its arguments, except the data's channels / dimension, read from the data.
    Diffusion:
        schedule ("linear" | "cosine"), num_steps (T), prediction ("eps" | "x0" | "v"),
        min_snr_gamma (None: L_simple as in the paper; a number gamma: the Min-SNR-gamma weighting
        of Hang et al. 2023, see :func:`min_snr_weight`), t_sampling ("uniform" as in the paper,
        or "loss-aware": t drawn where the loss is large, see :class:`LossAwareSampler`).
    Optimisation:
        train_steps, batch_size (the global batch, over all processes), lr, warmup_steps (linear
        warm-up from 0), lr_decay ("none": flat after the warm-up; "cosine": half a cosine from lr
        down to 0 at train_steps), weight_decay (AdamW's; DDPM used none), grad_clip (max global norm, None
        for none), ema_decay, ema_warmup (see :func:`ema_decay_at`).
    Speed:
        bf16 (autocast to bfloat16 where the device computes it natively, see
        :func:`has_native_bf16`; elsewhere nothing, as emulated bf16 is slower), channels_last
        (that memory format for images; on the CPU only with :mod:`ddpm_teach.fused`'s GroupNorm
        kernel, otherwise NCHW with a warning), compile (False; True or a mode of
        ``COMPILE_MODES`` for ``torch.compile`` of the network), device (None: CUDA when
        available).
    Outputs:
        seed, out_dir (None: write nothing), log_every (steps between loss read-outs; each one
        synchronises with the GPU), sample_every, checkpoint_every (0: only at the end),
        num_samples (per preview; 0: none), sample_steps and sample_eta (DDIM previews; eta = 1 is
        ancestral sampling on the subsequence).
    """

    data: str = "eight-gaussians"
    data_size: int | None = None
    data_seed: int = 0
    data_root: str | None = None
    download: bool = False
    hflip: bool = False
    model: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    schedule: str = "linear"
    num_steps: int = 1000
    prediction: str = "eps"
    min_snr_gamma: float | None = None
    t_sampling: str = "uniform"
    train_steps: int = 1000
    batch_size: int = 128
    lr: float = 2e-4
    warmup_steps: int = 0
    lr_decay: str = "none"
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    ema_decay: float = 0.999
    ema_warmup: bool = True
    bf16: bool = False
    channels_last: bool = False
    compile: bool | str = False
    device: str | None = None
    seed: int = 0
    out_dir: str | None = None
    log_every: int = 50
    sample_every: int = 0
    checkpoint_every: int = 0
    num_samples: int = 64
    sample_steps: int = 100
    sample_eta: float = 1.0

    def __post_init__(self) -> None:
        def need_int(name: str, low: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")

        for name in ("train_steps", "warmup_steps", "log_every", "sample_every"):
            need_int(name, 0)
        for name in ("checkpoint_every", "num_samples", "seed", "data_seed"):
            need_int(name, 0)
        for name in ("batch_size", "num_steps", "sample_steps"):
            need_int(name, 1)
        if self.log_every == 0:
            raise ValueError("log_every: expected an int >= 1 (steps between loss read-outs)")
        if self.data_size is not None:
            need_int("data_size", 1)
        if self.model is not None and self.model not in MODEL_KINDS:
            raise ValueError(f"model: expected one of {MODEL_KINDS} or None, got {self.model!r}")
        if not isinstance(self.model_kwargs, dict):
            raise TypeError(
                f"model_kwargs: expected a dict, got {type(self.model_kwargs).__name__}"
            )
        if self.schedule not in SCHEDULE_KINDS:
            raise ValueError(f"schedule: expected one of {SCHEDULE_KINDS}, got {self.schedule!r}")
        check_prediction(self.prediction)
        if self.min_snr_gamma is not None and not (
            isinstance(self.min_snr_gamma, (int, float))
            and not isinstance(self.min_snr_gamma, bool)
            and 0 < self.min_snr_gamma < math.inf
        ):
            raise ValueError(
                f"min_snr_gamma: expected a positive number (5 in the paper) or None, got "
                f"{self.min_snr_gamma!r}"
            )
        if self.t_sampling not in T_SAMPLINGS:
            raise ValueError(f"t_sampling: expected one of {T_SAMPLINGS}, got {self.t_sampling!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr >= 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr: expected a finite number >= 0, got {self.lr!r}")
        if not (isinstance(self.compile, bool) or self.compile in COMPILE_MODES):
            raise ValueError(
                f"compile: expected True, False or a torch.compile mode {COMPILE_MODES}, "
                f"got {self.compile!r}"
            )
        if self.lr_decay not in LR_DECAYS:
            raise ValueError(f"lr_decay: expected one of {LR_DECAYS}, got {self.lr_decay!r}")
        if not 0.0 <= self.weight_decay:
            raise ValueError(f"weight_decay: expected a number >= 0, got {self.weight_decay!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(
                f"grad_clip: expected a positive max norm or None, got {self.grad_clip!r}"
            )
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay: expected a number in [0, 1), got {self.ema_decay!r}")
        if not 0.0 <= self.sample_eta:
            raise ValueError(f"sample_eta: expected a number >= 0, got {self.sample_eta!r}")
        if self.sample_steps > self.num_steps:
            raise ValueError(
                f"sample_steps: expected at most num_steps = {self.num_steps}, got {self.sample_steps}"
            )

    @classmethod
    def from_budget(
        cls, data: str, budget: Budget | str | None = None, **overrides: Any
    ) -> TrainConfig:
        """The config a run budget prescribes for data set ``data``; keyword arguments override.

        2-D toy sets get the MLP and the budget's ``toy_*`` numbers; image sets the U-Net.
        Previews every fifth of the run, checkpoints every tenth.
        """
        from .data import DATASETS, TOY_DATASETS

        if data not in DATASETS:
            raise ValueError(f"data: unknown data set {data!r}; expected one of {DATASETS}")
        b = budget if isinstance(budget, Budget) else budgets.budget(budget)
        toy = data in TOY_DATASETS
        # Intervals and warm-up follow the run's length, also when train_steps is overridden.
        steps = overrides.get("train_steps", b.train_steps_for(data))
        fields: dict[str, Any] = dict(
            data=data,
            data_size=b.data_size if data == "glyph-digits" else None,
            hflip=data == "cifar10",
            model="mlp" if toy else "unet",
            model_kwargs=b.mlp_kwargs() if toy else b.model_kwargs(),
            schedule=b.schedule,
            num_steps=b.num_steps,
            prediction=b.prediction,
            min_snr_gamma=None if toy else b.min_snr_gamma,
            t_sampling="uniform" if toy else b.t_sampling,
            train_steps=steps,
            batch_size=b.toy_batch_size if toy else b.batch_size,
            lr=b.toy_lr if toy else b.lr,
            warmup_steps=b.warmup_steps,
            lr_decay="none" if toy else b.lr_decay,
            grad_clip=b.grad_clip,
            ema_decay=b.toy_ema_decay if toy else b.ema_decay,
            bf16=b.bf16 and not toy,
            channels_last=b.channels_last and not toy,
            device=b.device,
            log_every=max(1, min(50, steps // 20)),
            sample_every=max(1, steps // 5),
            checkpoint_every=max(1, steps // 10),
            num_samples=b.toy_num_samples if toy else b.num_samples,
            sample_steps=min(b.ddim_steps, b.num_steps),
            sample_eta=b.sample_eta,
        )
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"overrides: not TrainConfig fields: {sorted(unknown)}")
        fields.update(overrides)
        return cls(**fields)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (lists, not tuples), safe for ``torch.load(weights_only=True)`` and JSON."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"config: unknown fields {sorted(unknown)}")
        return cls(**d)


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


# ================================================================================================
# Seeds, distributed set-up, atomic writes
# ================================================================================================


def _mix(*values: int) -> int:
    """A 63-bit seed from several ints (splitmix64 steps): nearby (seed, step) give unrelated seeds."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (v & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h = (h ^ (h >> 27)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


# Independent random streams of one step.
_STREAM_BATCH, _STREAM_NOISE, _STREAM_GLOBAL, _STREAM_EPOCH = range(4)


def _init_distributed(device: str) -> tuple[int, int, int, bool]:
    """(rank, world_size, local_rank, created): join torchrun's process group if there is one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), False
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1, 0, False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), dist.get_world_size(), local_rank, True


def _atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder, then rename it over ``path``.

    ``os.replace`` within one file system is atomic, so readers see the old file or the new one,
    never half of one; if the write fails the temporary file is removed and ``path`` is untouched.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# ================================================================================================
# The trainer
# ================================================================================================


class Trainer:
    """Trains a denoiser with L_simple (eq. 14) and keeps everything a notebook wants to look at.

    Args:
        config: the run (see :class:`TrainConfig`).
        data: the training set, (N, 2) points or (N, C, H, W) images in [-1, 1]; by default
            loaded with ``ddpm_teach.data.load_dataset(config.data, ...)``.
        model: a network to train instead of the one the config describes (for experiments and
            tests); ``model(x_t, t)`` must return x_t's shape.
        resume: True to continue from ``out_dir/last.pt``, or the path of a checkpoint.
        on_log: called as ``on_log(step, loss)`` at every read-out (every ``log_every`` steps,
            loss averaged since the last one), on rank 0.
        on_samples: called as ``on_samples(step, samples)`` with every preview (EMA weights, on
            the CPU: images (n, C, H, W) in [-1, 1] or points (n, 2)), on rank 0.
        progress: show a tqdm progress bar (loss, images/s and it/s) on rank 0.

    After (or during) :meth:`train`:
        history: [(step, loss)] for every step, the loss averaged over all processes.
        log: one dict per read-out: step, loss, lr, grad_norm, images_per_s, train_time_s.
        step: optimiser steps done. ``ema_model()``: the averaged network, for sampling.
    """

    def __init__(
        self,
        config: TrainConfig,
        data: Tensor | None = None,
        *,
        model: nn.Module | None = None,
        resume: bool | str | os.PathLike[str] = False,
        on_log: Callable[[int, float], Any] | None = None,
        on_samples: Callable[[int, Tensor], Any] | None = None,
        progress: bool = True,
    ) -> None:
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config: expected a TrainConfig, got {type(config).__name__}")
        self.config = cfg = config
        self.on_log, self.on_samples, self.progress = on_log, on_samples, progress

        # ---- where: device and process group
        device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device: {device!r} asked for, but CUDA is not available here")
        self.rank, self.world_size, local_rank, self._owns_group = _init_distributed(device)
        if device == "cuda":
            device = f"cuda:{local_rank}" if self.world_size > 1 else "cuda"
        self.device = torch.device(device)
        self.is_main = self.rank == 0
        if cfg.batch_size % self.world_size:
            raise ValueError(
                f"batch_size: the global batch {cfg.batch_size} must split evenly over "
                f"{self.world_size} processes"
            )
        # bf16 autocast only where it is native: emulated, it would slow training down.
        self.bf16 = cfg.bf16 and has_native_bf16(self.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest convs

        # ---- what: data, model, schedule
        self.data = self._load_data(data)
        self.is_image = self.data.ndim == 4
        self.schedule = make_schedule(cfg.schedule, cfg.num_steps)
        self.t_sampler = LossAwareSampler(cfg.num_steps) if cfg.t_sampling == "loss-aware" else None
        if model is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed)  # the initial weights: identical on every rank
                model = self._build_model()
        self.model = model.to(self.device)
        # channels_last on the CPU pays only through ddpm_teach.fused's GroupNorm kernel: torch's
        # own GroupNorm is 18-75x slower on that layout, so without the kernel stay in NCHW. Under
        # torch.compile the kernel is not used (compile traces torch's GroupNorm instead).
        self.channels_last = cfg.channels_last and self.is_image
        if self.channels_last and self.device.type == "cpu":
            why = None
            if cfg.compile:
                why = "torch.compile does not use it"
            elif not fused.available():
                why = (
                    f"it is not available: {fused.unavailable_reason() or fused.ENV_SWITCH + '=0'}"
                )
            if why:
                warnings.warn(
                    f"channels_last: the fused GroupNorm kernel pays for that layout on the CPU "
                    f"and {why}; training runs in the NCHW layout, which is faster without it",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self.channels_last = False
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.model_kind = _model_kind(self.model)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.net: nn.Module = self.model
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if cfg.compile:
            self.net = torch.compile(self.net, mode=None if cfg.compile is True else cfg.compile)
        self.optimizer = self._make_optimizer()

        # ---- state
        self.step = 0
        self.history: list[tuple[int, float]] = []
        self.log: list[dict[str, Any]] = []
        self.train_time = 0.0  # seconds spent in training steps, over all resumed parts
        self.samples_written: list[Path] = []
        self.last_checkpoint: Path | None = None
        self._checkpoint_step = 0
        self._cpu_gen = torch.Generator()
        self._dev_gen = self._cpu_gen if self.device.type == "cpu" else torch.Generator(self.device)
        self._perm_cache: dict[int, Tensor] = {}
        self._pending: list[tuple[Tensor, Tensor | None]] = []
        self._pending_lr = 0.0
        if resume is True and not cfg.out_dir:
            raise ValueError("resume: True means out_dir/last.pt, but config.out_dir is None")
        if resume:
            self._resume(Path(cfg.out_dir) / "last.pt" if resume is True else Path(resume))

    # ------------------------------------------------------------------ set-up helpers
    def _load_data(self, data: Tensor | None) -> Tensor:
        cfg = self.config
        if data is None:
            from .data import load_dataset

            data, _ = load_dataset(
                cfg.data, n=cfg.data_size, seed=cfg.data_seed, root=cfg.data_root,
                download=cfg.download,
            )  # fmt: skip
        if not isinstance(data, Tensor) or data.ndim not in (2, 4):
            got = tuple(data.shape) if isinstance(data, Tensor) else type(data).__name__
            raise ValueError(f"data: expected a tensor (N, D) of points or (N, C, H, W), got {got}")
        if len(data) == 0:
            raise ValueError("data: the training set is empty")
        if not data.dtype.is_floating_point:
            raise TypeError(f"data: expected floating-point values, got dtype {data.dtype}")
        bad = (~torch.isfinite(data.reshape(len(data), -1))).any(dim=1).nonzero()[:5, 0]
        if len(bad):
            raise ValueError(f"data: examples {bad.tolist()} contain NaN or infinite values")
        # Kept whole on the training device: batches are then one gather, no loader needed.
        return data.detach().float().to(self.device)

    def _build_model(self) -> nn.Module:
        cfg = self.config
        kind = cfg.model or ("unet" if self.data.ndim == 4 else "mlp")
        if kind == "unet":
            if self.data.ndim != 4:
                raise ValueError(
                    f"model: 'unet' needs images (N, C, H, W), got data {tuple(self.data.shape)}"
                )
            return UNet(in_channels=self.data.shape[1], **cfg.model_kwargs)
        if self.data.ndim != 2:
            raise ValueError(f"model: 'mlp' needs points (N, D), got data {tuple(self.data.shape)}")
        return MLPDenoiser(dim=self.data.shape[1], **cfg.model_kwargs)

    def _make_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.config
        params = [p for p in self.model.parameters() if p.requires_grad]
        kwargs = dict(lr=cfg.lr, weight_decay=cfg.weight_decay)
        # The fused kernel updates all parameters in one pass; measured on 2 CPU cores it took
        # 3.8 ms a step against 19 ms, and on CUDA it is the fastest too. Fall back to foreach
        # (one multi-tensor op per Adam formula) where a build or device lacks it.
        try:
            return torch.optim.AdamW(params, fused=True, **kwargs)
        except (RuntimeError, ValueError):
            return torch.optim.AdamW(params, foreach=True, **kwargs)

    # ------------------------------------------------------------------ one step's randomness
    def _epoch_perm(self, epoch: int) -> Tensor:
        if epoch not in self._perm_cache:
            g = torch.Generator().manual_seed(_mix(self.config.seed, epoch, _STREAM_EPOCH))
            self._perm_cache = {epoch: torch.randperm(len(self.data), generator=g)}
        return self._perm_cache[epoch]

    def _indices(self, step: int) -> Tensor:
        """Examples of the global batch of step ``step``: positions [step*B, (step+1)*B) of the
        endless stream perm_0, perm_1, ... (one random permutation of the data per epoch)."""
        n, size = len(self.data), self.config.batch_size
        start, parts, got = step * size, [], 0
        while got < size:
            epoch, offset = divmod(start, n)
            take = min(size - got, n - offset)
            parts.append(self._epoch_perm(epoch)[offset : offset + take])
            start, got = start + take, got + take
        return torch.cat(parts)

    def _batch(self, step: int) -> tuple[Tensor, Tensor, Tensor]:
        """This process's slice of step ``step``'s global batch: (x_0, t on the CPU, eps).

        With loss-aware t sampling, ``self._t_global`` and ``self._t_weight`` keep the whole
        batch's t and this slice's importance weights 1 / (T p_t) for the step.
        """
        cfg = self.config
        size = cfg.batch_size
        lo = self.rank * size // self.world_size
        hi = lo + size // self.world_size
        g = self._cpu_gen.manual_seed(_mix(cfg.seed, step, _STREAM_BATCH))
        # t stays on the CPU: the schedule gathers its coefficients there without a device sync.
        if self.t_sampler is None:
            t = torch.randint(0, self.schedule.num_steps, (size,), generator=g)[lo:hi]
        else:
            self._t_global, weight = self.t_sampler.sample(size, g)
            t, self._t_weight = self._t_global[lo:hi], weight[lo:hi]
        idx = self._indices(step)[lo:hi]
        # non_blocking: a blocking host-to-device copy would also wait for the previous step.
        x0 = self.data[idx.to(self.device, non_blocking=True)]
        if cfg.hflip and self.is_image:
            flip = (torch.rand(size, generator=g) < 0.5)[lo:hi].to(self.device, non_blocking=True)
            x0 = torch.where(flip[:, None, None, None], x0.flip(3), x0)
        g = self._dev_gen.manual_seed(_mix(cfg.seed, step, _STREAM_NOISE))
        shape = (size, *self.data.shape[1:])
        noise = torch.randn(shape, generator=g, device=self.device)[lo:hi]
        if self.channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
            noise = noise.contiguous(memory_format=torch.channels_last)
        return x0, t, noise

    def lr_at(self, step: int) -> float:
        """Learning rate of step ``step`` (0-based): linear warm-up over warmup_steps, then flat
        (``lr_decay="none"``) or half a cosine down to 0 at train_steps (``"cosine"``)."""
        cfg = self.config
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        if cfg.lr_decay == "none":
            return cfg.lr
        # Short runs end better with a small step size; the cosine gets there smoothly.
        span = max(1, cfg.train_steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))

    # ------------------------------------------------------------------ the step
    def _train_step(self) -> None:
        cfg, step = self.config, self.step
        # Dropout draws from the global generator: seed it from (seed, step, rank) too.
        seed = _mix(cfg.seed, step, self.rank, _STREAM_GLOBAL)
        torch.default_generator.manual_seed(seed)
        if self.device.type == "cuda":
            torch.cuda.manual_seed(seed)
        x0, t, noise = self._batch(step)
        x_t = self.schedule.q_sample(x0, t, noise)  # eq. 4
        target = self.schedule.target(x0, noise, t, cfg.prediction)
        self.net.train()
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.bf16):
            out = self.net(x_t, t.to(self.device, non_blocking=True))
        if cfg.min_snr_gamma is None and self.t_sampler is None:
            loss = F.mse_loss(out.float(), target.float())  # eq. 14, in fp32 whatever the autocast
        else:
            per_example = (out.float() - target.float()).square().flatten(1).mean(1)
            if cfg.min_snr_gamma is not None:
                w = min_snr_weight(self.schedule, t, cfg.prediction, cfg.min_snr_gamma)
                per_example = w.to(self.device, torch.float32, non_blocking=True) * per_example
            if self.t_sampler is None:
                loss = per_example.mean()
            else:
                w_is = self._t_weight.to(self.device, torch.float32, non_blocking=True)
                loss = (w_is * per_example).mean()  # the uniform-t loss in expectation
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = None
        if cfg.grad_clip is not None:
            grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        ema_update(self.ema, self.model, ema_decay_at(step, cfg.ema_decay, cfg.ema_warmup))
        if self.t_sampler is not None:  # last: its read-out waits for the GPU to finish the step
            self._update_t_sampler(per_example.detach())
        self.step += 1
        # Kept on the device; read out (one synchronisation) every log_every steps.
        self._pending.append((loss.detach(), None if grad_norm is None else grad_norm.detach()))
        self._pending_lr = lr

    def _update_t_sampler(self, losses: Tensor) -> None:
        """Hand the whole global batch's per-example losses to the t sampler, in the same order on
        every process, so that each one draws the same t next. One synchronisation with the GPU
        per step: only the ``cpu`` budget samples t this way."""
        if self.world_size > 1:  # rank r holds slice r of the batch: concatenate in rank order
            parts = [torch.empty_like(losses) for _ in range(self.world_size)]
            dist.all_gather(parts, losses.contiguous())
            losses = torch.cat(parts)
        self.t_sampler.update(self._t_global, losses)

    def _read_out(self, bar: Any) -> None:
        """Move the pending losses to the history, checking each; log, call on_log, update bar."""
        if not self._pending:
            return
        losses = torch.stack([loss for loss, _ in self._pending]).float()
        norms = [n for _, n in self._pending if n is not None]
        if self.world_size > 1:  # the history shows the loss of the whole global batch
            dist.all_reduce(losses)
            losses /= self.world_size
        values = losses.tolist()
        grad_norm = torch.stack(norms).float().mean().item() if norms else None
        first = self.step - len(values) + 1
        self._pending = []
        now = time.perf_counter()
        elapsed = now - self._tick - self._pause
        self._tick, self._pause = now, 0.0
        self.train_time += elapsed
        for i, value in enumerate(values):
            if not math.isfinite(value):
                kept = (
                    f"the last good checkpoint, {self.last_checkpoint} (step "
                    f"{self._checkpoint_step}), was kept"
                    if self.last_checkpoint
                    else "no checkpoint had been written"
                )
                raise NonFiniteLossError(
                    f"loss is {value} at step {first + i}: training stopped; {kept}. Lower lr, "
                    "check the data for NaNs, or turn grad_clip on.",
                    step=first + i,
                )
            self.history.append((first + i, value))
        mean = sum(values) / len(values)
        images_per_s = len(values) * self.config.batch_size / max(elapsed, 1e-9)
        entry = dict(
            step=self.step,
            loss=mean,
            lr=self._pending_lr,
            grad_norm=grad_norm,
            images_per_s=images_per_s,
            train_time_s=self.train_time,
        )
        self.log.append(entry)
        if self.is_main:
            if bar is not None:
                bar.set_postfix(loss=f"{mean:.4f}", img_s=f"{images_per_s:.0f}", refresh=False)
            if self.on_log is not None:
                self.on_log(self.step, mean)

    # ------------------------------------------------------------------ the loop
    def train(self, num_steps: int | None = None) -> list[tuple[int, float]]:
        """Run ``num_steps`` more steps (default: until ``config.train_steps``).

        Reads the loss out every ``log_every`` steps, saves previews every ``sample_every`` steps
        and a checkpoint every ``checkpoint_every`` (and both at the end) into ``out_dir``.

        Returns:
            the loss history, [(step, loss)], one entry per step since the start of the run.
        Raises:
            NonFiniteLossError: the loss became NaN or infinite; nothing is saved after that.
        """
        cfg = self.config
        if num_steps is not None:
            try:  # a float such as 2.5 would never meet the end step exactly
                if isinstance(num_steps, bool):
                    raise TypeError
                num_steps = operator.index(num_steps)
            except TypeError:
                raise TypeError(f"num_steps: expected an int >= 0, got {num_steps!r}") from None
            if num_steps < 0:
                raise ValueError(f"num_steps: expected an int >= 0, got {num_steps!r}")
        end = cfg.train_steps if num_steps is None else self.step + num_steps
        if end <= self.step:
            return self.history
        bar = None
        if self.progress and self.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=end, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        # Training reseeds the global RNG every step; give the caller theirs back afterwards.
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            self._tick, self._pause = time.perf_counter(), 0.0
            try:
                while self.step < end:
                    self._train_step()
                    if bar is not None:
                        bar.update(1)
                    s, last = self.step, self.step == end
                    sample_now = self._due(s, cfg.sample_every, last) and cfg.num_samples > 0
                    save_now = self._due(s, cfg.checkpoint_every, last) and bool(cfg.out_dir)
                    if s % cfg.log_every == 0 or last or sample_now or save_now:
                        self._read_out(bar)  # before any file is written: no NaN gets saved
                    start = time.perf_counter()
                    if sample_now and (cfg.out_dir or self.on_samples):
                        self._preview()
                    if save_now:
                        self.save_checkpoint()
                    self._pause += time.perf_counter() - start
            finally:
                if bar is not None:
                    bar.close()
        return self.history

    @staticmethod
    def _due(step: int, every: int, last: bool) -> bool:
        return last or (every > 0 and step % every == 0)

    # ------------------------------------------------------------------ sampling
    def ema_model(self) -> nn.Module:
        """The EMA network (eval mode), the one to sample from."""
        return self.ema

    @torch.no_grad()
    def sample(
        self,
        n: int | None = None,
        *,
        steps: int | None = None,
        eta: float | None = None,
        seed: int | None = None,
        use_ema: bool = True,
        bf16: bool | None = None,
    ) -> Tensor:
        """Draw ``n`` samples with DDIM over ``steps`` steps (defaults: the config's preview).

        Images have their x_0 prediction clipped to [-1, 1] at every step. ``bf16``: evaluate
        the network under bf16 autocast (:class:`BF16Sampling`); None (default) does so where
        the run trains under it on the CPU, where it was measured, and keeps float32 elsewhere.
        On a CPU a large ``n`` goes through the network in chunks (:func:`sampling_net`).
        Returns a CPU tensor of shape (n, *data.shape[1:]).
        """
        from .sampling import ddim_sample

        cfg = self.config
        n = cfg.num_samples if n is None else n
        model = self.ema if use_ema else self.model
        was_training = model.training
        model.eval()
        g = torch.Generator(self.device).manual_seed(cfg.seed if seed is None else seed)
        if bf16 is None:
            bf16 = BF16Sampling.applies(self.bf16, self.device)
        shape = (n, *self.data.shape[1:])
        out = ddim_sample(
            sampling_net(model, shape, self.device, bf16=bf16),
            self.schedule,
            shape,
            num_steps=steps or cfg.sample_steps,
            eta=cfg.sample_eta if eta is None else eta,
            generator=g,
            prediction=cfg.prediction,
            clip_x0=self.is_image,
            device=self.device,
        )
        model.train(was_training)
        return out.cpu()

    def _preview(self) -> None:
        if not self.is_main:
            return
        # The same x_T every time (seeded by config.seed), so previews show one sample improving.
        samples = self.sample()
        if self.config.out_dir:
            path = Path(self.config.out_dir) / f"samples_{self.step:07d}.png"
            save_preview(samples, path)
            self.samples_written.append(path)
        if self.on_samples is not None:
            self.on_samples(self.step, samples)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything :meth:`_resume` and :func:`load_checkpoint` need, tensors on their device."""
        cfg = self.config
        epoch, position = divmod(self.step * cfg.batch_size, len(self.data))
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "config": cfg.to_dict(),
            "model_kind": self.model_kind,
            "model_config": _plain(getattr(self.model, "config", None)),
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            # Every random number after this step is a function of these alone (module docstring),
            # and of "t_sampler" below where t is drawn loss-aware.
            "rng": {
                "seed": cfg.seed,
                "next_step": self.step,
                "data_epoch": epoch,
                "data_position": position,
                "data_size": len(self.data),
            },
            "data_shape": list(self.data.shape[1:]),
            "history": [list(h) for h in self.history],
            # The loss-aware t sampler's memory: the next t depends on it.
            "t_sampler": None if self.t_sampler is None else self.t_sampler.state_dict(),
            "log": self.log,
            "train_time_s": self.train_time,
            "world_size": self.world_size,
            "torch_version": str(torch.__version__),
        }

    def save_checkpoint(self, path: str | os.PathLike[str] | None = None) -> Path | None:
        """Write a checkpoint atomically (default ``out_dir/last.pt``); only rank 0 writes.

        Returns the path written (None on other ranks).
        """
        if path is None:
            if not self.config.out_dir:
                raise ValueError("path: no path given and config.out_dir is None")
            path = Path(self.config.out_dir) / "last.pt"
        path = Path(path)
        if self.is_main:
            _atomic_save(self.state_dict(), path)
            self.last_checkpoint, self._checkpoint_step = path, self.step
        return path if self.is_main else None

    def _resume(self, path: Path) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"resume: no checkpoint at {path}")
        ckpt = _load(path, self.device)
        saved = TrainConfig.from_dict(ckpt["config"]).to_dict()
        now = self.config.to_dict()
        diff = [f"{k}: {saved[k]!r} in the checkpoint, {now[k]!r} now" for k in _RESUME_FIELDS
                if saved[k] != now[k]]  # fmt: skip
        if diff:
            raise ValueError(f"resume: {path} was trained with another config; " + "; ".join(diff))
        if ckpt["data_shape"] != list(self.data.shape[1:]) or ckpt["rng"]["data_size"] != len(
            self.data
        ):
            raise ValueError(
                f"resume: {path} was trained on {ckpt['rng']['data_size']} examples of shape "
                f"{ckpt['data_shape']}, this data is {tuple(self.data.shape)}"
            )
        self.model.load_state_dict(ckpt["model"])
        self.ema.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.t_sampler is not None:
            self.t_sampler.load_state_dict(ckpt.get("t_sampler"))
        self.step = ckpt["step"]
        self.history = [(int(s), float(v)) for s, v in ckpt["history"]]
        self.log = list(ckpt["log"])
        self.train_time = float(ckpt["train_time_s"])
        self.last_checkpoint, self._checkpoint_step = path, self.step

    # ------------------------------------------------------------------ reporting
    def summary(self) -> dict[str, Any]:
        """Steps, time spent training, throughput (images/s, all processes), the last loss, and
        where it ran (device, processes, whether bf16 autocast was on)."""
        images = self.step * self.config.batch_size
        return {
            "steps": self.step,
            "train_time_s": self.train_time,
            "images_per_s": images / self.train_time if self.train_time > 0 else float("nan"),
            "final_loss": self.history[-1][1] if self.history else float("nan"),
            "world_size": self.world_size,
            "device": str(self.device),
            "bf16": self.bf16,
            "checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
        }

    def close(self) -> None:
        """Leave the process group if this trainer created it."""
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self._owns_group = False


def train(
    config: TrainConfig,
    data: Tensor | None = None,
    **kwargs: Any,
) -> Trainer:
    """Build a :class:`Trainer` (same arguments), run it to ``config.train_steps``, return it."""
    trainer = Trainer(config, data, **kwargs)
    trainer.train()
    return trainer


# ================================================================================================
# Loading and previews
# ================================================================================================


def _load(path: str | os.PathLike[str], map_location: Any) -> dict[str, Any]:
    # weights_only: a checkpoint holds tensors and plain containers only, so nothing in it runs.
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"path: {path} is not a ddpm-teach checkpoint ({CHECKPOINT_FORMAT})")
    return ckpt


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, nn.Module, NoiseSchedule, TrainConfig]:
    """Rebuild a trained run from its checkpoint, on any machine (a CUDA run loads on a CPU).

    Args:
        path: a checkpoint written by :class:`Trainer` (e.g. ``out_dir/last.pt``).
        map_location: where the tensors go; default "cpu".
    Returns:
        (model, ema_model, schedule, config): both networks in eval mode on ``map_location``.
    """
    ckpt = _load(path, map_location)
    config = TrainConfig.from_dict(ckpt["config"])
    if ckpt["model_kind"] not in MODEL_KINDS:
        raise ValueError(
            f"path: {path} holds a custom model ({ckpt['model_kind']}); load its state dicts "
            "('model', 'ema') into your own network with torch.load"
        )
    nets = []
    for key in ("model", "ema"):
        net = build_model(ckpt["model_kind"], **ckpt["model_config"])
        net.load_state_dict(ckpt[key])
        nets.append(net.to(map_location).eval())
    return nets[0], nets[1], make_schedule(config.schedule, config.num_steps), config


def save_preview(samples: Tensor, path: str | os.PathLike[str]) -> Path:
    """Save samples as a PNG: an image grid for (n, C, H, W), a scatter plot for (n, 2)."""
    from . import viz

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if samples.ndim == 4:
        from PIL import Image

        grid = viz.image_grid(samples)
        Image.fromarray(grid[:, :, 0] if grid.shape[2] == 1 else grid).save(path)
    elif samples.ndim == 2 and samples.shape[1] == 2:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(4, 4), dpi=100)
        FigureCanvasAgg(fig)
        viz.show_points(samples, lim=3.0, ax=fig.add_subplot(), size=3.0)
        fig.savefig(path)
    else:
        raise ValueError(f"samples: expected (n, C, H, W) or (n, 2), got {tuple(samples.shape)}")
    return path
