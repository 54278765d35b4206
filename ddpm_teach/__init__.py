"""ddpm-teach: denoising diffusion probabilistic models, from first principles.

One concept a module, in the order the course meets them:

    schedule    the fixed forward process q (betas, q_sample, q_posterior)
    sampling    the reverse Markov chain (DDPM ancestral sampling, DDIM)
    analytic    exact denoisers for Gaussian-mixture data
    likelihood  the variational bound, term by term, and bits/dim
    unet        the DDPM U-Net
    data        toy 2-D data, glyph digits, MNIST / Fashion-MNIST / CIFAR-10 readers
    training    L_simple, EMA, checkpoints, distributed training
    budgets     run budgets: smoke (CI), cpu (a laptop), gpu
    metrics     mode coverage, MMD, digit-FID and friends
    baselines   a small GAN and VAE for the "why diffusion" comparison
    viz         sliders over t, grids, animations
    course      book.toml, student versions, grading
    exercises   checks with specific feedback

Top-level names are imported lazily, so ``import ddpm_teach`` is cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> submodule that defines it
_EXPORTS = {
    "NoiseSchedule": "schedule",
    "ddpm_step": "sampling",
    "ddim_step": "sampling",
    "ddpm_sample": "sampling",
    "ddim_sample": "sampling",
    "GaussianMixture": "analytic",
    "vlb": "likelihood",
    "bits_per_dim": "likelihood",
    "UNet": "unet",
    "timestep_embedding": "unet",
    "MLPDenoiser": "mlp",
    "toy_2d": "data",
    "glyph_digits": "data",
    "load_dataset": "data",
    "TrainConfig": "training",
    "Trainer": "training",
    "load_checkpoint": "training",
    "budget": "budgets",
    "Budget": "budgets",
    "mode_coverage": "metrics",
    "toy_report": "metrics",
    "digit_report": "metrics",
    "forward_slider": "viz",
    "frames_slider": "viz",
    "image_grid": "viz",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
