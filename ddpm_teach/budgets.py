"""Run budgets: how much work a notebook or a command does, chosen by a name, never by edited code.

Three budgets, picked by ``budget(name)``, else the environment variable ``DDPM_TEACH_BUDGET``, else
"gpu" when CUDA is available and "cpu" otherwise:

    smoke   tests and CI: seconds. Tiny models, a few steps; the numbers mean nothing.
    cpu     a laptop (2 cores): glyph digits that the digit probe recognises (>= 90 % confident,
            all ten classes): 91.1 % after 8.4 minutes (4,000 steps) on a 2-core EPYC with
            native bf16 (about 13 minutes without: float32 steps are 1.5x slower); eight
            Gaussians in seconds.
    gpu     one GPU: sharp digits in minutes (>= 90 % confident, all ten classes, after 2,000
            steps: 77 s of training on an H200); CIFAR-10 (not measured) in roughly half an hour.

The cpu numbers come from measurements on a 2-core Xeon and a 2-core EPYC (issues 6 and 7;
docs/benchmarks.md), which is why the cpu U-Net is so small:

* Under a time budget the small model wins: a 267k-parameter U-Net trained 3,000 steps at batch 64
  (8.3 min) drew recognisable digits where a 1.06M one, in 9 min, was far behind (it caught up
  after 16 min; measured with an earlier probe without the "not a digit" class, whose shares
  were higher than today's ``metrics.digit_report``; docs/benchmarks.md has today's numbers).
* Min-SNR loss weighting (``min_snr_gamma``; Hang et al. 2023) is the largest gain: 79 %
  confident after 2,250 steps against 49 % after 2,000 with the paper's L_simple; after 4,500
  steps 90.2 % with gamma = 1 and 89.0 % with gamma = 5 on 500 samples, but only 86.5 % on 1,000
  from the train CLI, so the budget trained 7,000 steps: 91.2 % on 1,000 samples (L_simple took
  10,000 steps for 92.9 %, 7,000 for 88.8 %). Before it,
  more steps moved the score most and the learning rate a little (lr 3e-3 over 2e-3: 90.8 % vs
  88.2 % after 6,000 steps; 4e-3 and 5e-3 were worse); the batch at equal images seen,
  v-prediction and the cosine noise schedule did not help.
* Loss-aware sampling of t (``t_sampling``; ``training.LossAwareSampler``, Nichol & Dhariwal
  2021) is the next gain: with Min-SNR's gamma = 1 the cleanest tenth of the chain weighs almost
  nothing and the noisiest steps have little loss left, and drawing t where the weighted loss is
  large (each example reweighted, so the expected loss is the same; 73 % of the draws end up in
  the middle half of the chain) gave 92.2 % and 93.6 % after 5,000 steps (two seeds) and 93.0 % after 4,000,
  against 89.0 % after 5,000 with uniform t (500 samples each). So the budget trains 4,000
  steps: 91.1 % and 91.5 % on 1,000 samples from the train CLI (two seeds, 8.4 and 8.7 minutes
  of training). Adam's beta2 = 0.99 instead of 0.999 (89.2 % against 89.0 %) and batch 128 at equal
  images seen (88.4 %; 1.1x more images a second) made no difference.
* bf16 autocast, on a CPU with native bf16 (AVX512-BF16 or AMX; ``training.has_native_bf16``),
  makes a step of the cpu U-Net 1.52x faster (154 ms instead of 233 ms at batch 64 on two
  threads of the EPYC: chapter 05's stored timing cell; 1.58x in an earlier run of it) for the same scores,
  and sampling under it 1.6x faster, again for the same scores (``training.BF16Sampling``). The first
  measurement, on the Xeon, had found autocast slower for 32- and 64-channel U-Nets, so it is
  not a sure win: the trainer uses it only where the CPU has native bf16 (oneDNN emulates it
  elsewhere), and chapter 05 times both on the reader's machine.
* Self-attention at 14 x 14 costs about 21 % of a step; keeping only the bottleneck's attention (at
  7 x 7) made a step 1.47x faster, so ``attention_levels`` is empty on CPU.
* ``torch.compile`` took 2.5 min to compile on CPU for no gain: off. ``channels_last`` gained
  nothing while torch's GroupNorm ran on that layout (18-75x slower than on NCHW); with
  ``ddpm_teach.fused``'s GroupNorm+SiLU kernel the cpu budget's training is 1.03-1.17x faster
  (bf16, two threads: ``bench.trainer_speed`` and two whole runs; 1.45x on a 2-core Xeon with
  AMX, where bf16 autocast is worth 1.69x) and its sampling 1.4x, so the
  cpu budget trains channels_last (the kernel's one-off build takes 15-25 s; without a compiler
  the trainer stays in NCHW).
* Ancestral sampling over a 100-step subsequence matched the full 1000-step chain on an
  undertrained model, while deterministic DDIM-50 (eta = 0) lost badly: previews use
  ``ddim_steps`` = 100 with ``sample_eta`` = 1 (DDIM with eta = 1 *is* ancestral sampling on the
  subsequence).
* Eight Gaussians with a small MLP: all modes, and >= 90 % of samples within 3 std of a centre,
  after 7-14 s.

The gpu numbers come from one H200 (docs/benchmarks.md, "GPU"):

* The step of the gpu U-Net (6.5M parameters, batch 128) is bound by the host, not the GPU: the
  process spends as much CPU time as wall time launching kernels (47-51 ms a step in bf16). bf16
  autocast adds a cast kernel per operand, so there it makes the step *slower*: 38.5 ms in
  float32 (TF32 convolutions) against 50.8 ms, and glyph digits reach the goal in 77 s of training
  instead of 102 s, at the same step (2,000) and the same scores (93.0 % and 91.4 % confident). So
  the gpu budget trains in float32; bf16 paid only for the 35.7M-parameter CIFAR-10 network of
  ``bench.train_step`` (53 ms against 62 ms a step at batch 128).
* Min-SNR weighting was not better after 1,000 steps (80.0 % confident with and without), so the
  gpu budget keeps L_simple until a longer comparison says otherwise.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

import torch

__all__ = ["BUDGETS", "ENV_VAR", "Budget", "budget"]

#: The environment variable read when no name is given.
ENV_VAR = "DDPM_TEACH_BUDGET"


@dataclass(frozen=True)
class Budget:
    """Everything a run's size depends on. Build one with :func:`budget`.

    Image model (the U-Net, ``UNet(in_channels, **budget.model_kwargs())``):
        base_channels, channel_mults, num_res_blocks, attention_levels, dropout.
    Diffusion:
        num_steps: T, the length of the forward chain.
        schedule: "linear" (the paper's, rescaled to T) or "cosine".
        prediction: what the network outputs: "eps", "x0" or "v".
        min_snr_gamma: None for the paper's L_simple, else the cap of Min-SNR-gamma loss weighting
            (``training.min_snr_weight``).
        t_sampling: "uniform" (the paper's) or "loss-aware" (``training.LossAwareSampler``).
    Image training:
        train_steps: optimiser steps for 28 x 28 grey sets (glyph digits, MNIST, Fashion-MNIST).
        cifar_train_steps: optimiser steps for CIFAR-10 (32 x 32 colour needs far more).
        batch_size, lr, warmup_steps (linear warm-up of the learning rate), lr_decay (after the
        warm-up: "none" or "cosine", down to 0 at the last step), grad_clip (max norm),
        ema_decay (of the weights used for sampling), bf16 (autocast, used only where the device
        computes bf16 natively: ``training.has_native_bf16``), channels_last (that memory format
        for the U-Net; on the CPU it runs ``ddpm_teach.fused``'s GroupNorm kernel, and where
        that cannot be built the trainer stays in NCHW).
        data_size: how many glyph digits to render (real sets use all their images).
    Toy 2-D training (the MLP):
        toy_train_steps, toy_batch_size, toy_hidden (width), toy_num_layers (residual blocks),
        toy_lr and toy_ema_decay (a flat learning rate: lr_decay applies to images only).
    Sampling previews:
        num_samples: images (or 2-D points: ``toy_num_samples``) per preview.
        ddim_steps, sample_eta: previews run DDIM over ``ddim_steps`` steps with this eta
            (1 = ancestral sampling on the subsequence, 0 = deterministic).
    device: "cuda" or "cpu", where the work runs.
    """

    name: str
    device: str
    # image model
    base_channels: int
    channel_mults: tuple[int, ...]
    num_res_blocks: int
    attention_levels: tuple[int, ...]
    dropout: float
    # diffusion
    num_steps: int
    schedule: str
    prediction: str
    min_snr_gamma: float | None
    t_sampling: str
    # image training
    train_steps: int
    cifar_train_steps: int
    batch_size: int
    lr: float
    warmup_steps: int
    lr_decay: str
    grad_clip: float
    ema_decay: float
    bf16: bool
    channels_last: bool
    data_size: int
    # toy training
    toy_train_steps: int
    toy_batch_size: int
    toy_hidden: int
    toy_num_layers: int
    toy_lr: float
    toy_ema_decay: float
    # sampling previews
    num_samples: int
    toy_num_samples: int
    ddim_steps: int
    sample_eta: float

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the U-Net: ``UNet(in_channels, **budget.model_kwargs())``."""
        return {
            "base_channels": self.base_channels,
            "channel_mults": self.channel_mults,
            "num_res_blocks": self.num_res_blocks,
            "attention_levels": self.attention_levels,
            "dropout": self.dropout,
        }

    def mlp_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the toy model: ``MLPDenoiser(**budget.mlp_kwargs())``."""
        return {"hidden": self.toy_hidden, "num_layers": self.toy_num_layers}

    def train_steps_for(self, data: str) -> int:
        """Optimiser steps for a data set name: toy, CIFAR-10, or the 28 x 28 sets."""
        from .data import TOY_DATASETS  # here, so that importing budgets stays cheap

        if data in TOY_DATASETS:
            return self.toy_train_steps
        return self.cifar_train_steps if data == "cifar10" else self.train_steps

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (for logs and checkpoints)."""
        return asdict(self)


# The three budgets, without the device (filled in by budget()). Keep "cpu" in step with the
# measurements in the module docstring; the gpu numbers are sized for an H100-class card.
BUDGETS: dict[str, dict[str, Any]] = {
    "smoke": dict(
        base_channels=8,
        channel_mults=(1, 2),
        num_res_blocks=1,
        attention_levels=(),
        dropout=0.0,
        num_steps=100,
        schedule="linear",
        prediction="eps",
        min_snr_gamma=1.0,
        t_sampling="loss-aware",  # as cpu, so that tests and CI run its code
        train_steps=20,
        cifar_train_steps=20,
        batch_size=16,
        lr=1e-3,
        warmup_steps=5,
        lr_decay="none",
        grad_clip=1.0,
        ema_decay=0.99,
        bf16=False,
        channels_last=False,
        data_size=256,
        toy_train_steps=300,
        toy_batch_size=256,
        toy_hidden=64,
        toy_num_layers=2,
        toy_lr=3e-3,
        toy_ema_decay=0.99,
        num_samples=16,
        toy_num_samples=512,
        ddim_steps=10,
        sample_eta=1.0,
    ),
    "cpu": dict(
        # 267k parameters: the measured winner under a time budget on 2 cores.
        base_channels=16,
        channel_mults=(1, 2, 2),
        num_res_blocks=1,
        attention_levels=(),
        dropout=0.0,
        num_steps=1000,
        schedule="linear",
        prediction="eps",
        min_snr_gamma=1.0,
        # t drawn where the loss is large (importance sampling): docs/benchmarks.md.
        t_sampling="loss-aware",
        # Why these numbers: the module docstring; every run behind them: docs/benchmarks.md.
        train_steps=4000,
        cifar_train_steps=10_000,
        batch_size=64,
        lr=3e-3,
        warmup_steps=200,
        lr_decay="cosine",
        grad_clip=1.0,
        ema_decay=0.995,
        bf16=True,
        # 1.03-1.45x faster training (by CPU) with the fused GroupNorm kernel (docs/benchmarks.md).
        channels_last=True,
        data_size=60_000,
        # >= 90 % within 3 std after 1,500 steps, 96 % after 2,000 (measured, batch 512).
        toy_train_steps=2000,
        toy_batch_size=512,
        toy_hidden=128,
        toy_num_layers=3,
        toy_lr=2e-3,
        toy_ema_decay=0.999,
        num_samples=64,
        toy_num_samples=2000,
        ddim_steps=100,
        sample_eta=1.0,
    ),
    "gpu": dict(
        # 6.5M parameters with attention at 14 x 14 (16 x 16 for CIFAR-10), as in the paper.
        base_channels=64,
        channel_mults=(1, 2, 2),
        num_res_blocks=2,
        attention_levels=(1,),
        dropout=0.1,
        num_steps=1000,
        schedule="linear",
        prediction="eps",
        min_snr_gamma=None,  # the paper's L_simple (see the module docstring)
        t_sampling="uniform",
        # Measured on an H200 (float32, 28 x 28): 26 steps/s, 3,300 images/s, so 10,000 steps
        # take about 6.5 minutes. CIFAR-10 not measured: 50,000 steps at that rate, ~32 minutes.
        train_steps=10_000,
        cifar_train_steps=50_000,
        batch_size=128,
        lr=5e-4,
        warmup_steps=500,
        lr_decay="none",
        grad_clip=1.0,
        ema_decay=0.9995,
        bf16=False,  # host-bound step: float32 is faster here (module docstring)
        channels_last=False,  # the fused kernel is CPU-only; not measured on a GPU
        data_size=60_000,
        toy_train_steps=5000,
        toy_batch_size=1024,
        toy_hidden=256,
        toy_num_layers=3,
        toy_lr=2e-3,
        toy_ema_decay=0.9995,
        num_samples=64,
        toy_num_samples=4000,
        ddim_steps=100,
        sample_eta=1.0,
    ),
}


def budget(name: str | None = None) -> Budget:
    """The run budget called ``name``; else ``$DDPM_TEACH_BUDGET``; else "gpu" with CUDA, "cpu" without.

    The device is "cuda" when CUDA is available, else "cpu", whatever the budget (the smoke budget
    on a GPU machine runs on the GPU).

    Raises:
        ValueError: for a name that is not one of "smoke", "cpu", "gpu" (saying where it came from).
    """
    source = "name"
    if name is None:
        name, source = os.environ.get(ENV_VAR) or None, ENV_VAR
    if name is None:
        name, source = ("gpu" if torch.cuda.is_available() else "cpu"), "default"
    if not isinstance(name, str) or name.strip().lower() not in BUDGETS:
        where = f"${ENV_VAR}" if source == ENV_VAR else "name"
        raise ValueError(
            f"{where}: unknown budget {name!r}; expected one of {', '.join(BUDGETS)} "
            "(smoke = tests/CI, cpu = a laptop, gpu = one GPU)"
        )
    name = name.strip().lower()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return Budget(name=name, device=device, **BUDGETS[name])
