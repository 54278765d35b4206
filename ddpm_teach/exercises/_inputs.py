"""Test inputs shared by the chapters' exercises: short schedules, seeded draws, broadcasting."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..schedule import NoiseSchedule


def _at(table: Tensor, t: Tensor, x: Tensor) -> Tensor:
    """``table[t]`` shaped (B, 1, ..., 1) to broadcast against x of shape (B, ...)."""
    return table[t].reshape(-1, *([1] * (x.ndim - 1)))


def _alpha_bars(betas: Tensor) -> Tensor:
    return torch.cumprod(1.0 - betas, dim=0)


def _schedules() -> list[Tensor]:
    # Short schedules with large betas: every mistake then moves the answer far beyond RTOL.
    return [
        NoiseSchedule.linear(12, 1e-2, 0.3).betas,
        NoiseSchedule.cosine(20).betas,
        NoiseSchedule.linear(16, 5e-3, 0.2).betas,
    ]


def _draws(shapes: Sequence[tuple[int, ...]], n_tensors: int) -> list[tuple[Tensor, Tensor, list]]:
    """Per case: betas, t (B,) in 0..T-2 with a 0 in the first case, and ``n_tensors`` N(0, I) draws.

    t stops at T-2 so that a student's ``betas[t + 1]`` gives a wrong answer, not an IndexError.
    """
    g = torch.Generator().manual_seed(0)
    out = []
    for k, (betas, shape) in enumerate(zip(_schedules(), shapes, strict=True)):
        t = torch.randint(0, betas.numel() - 1, (shape[0],), generator=g)
        if k == 0:
            t[0] = 0
        xs = [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(n_tensors)]
        out.append((betas, t, xs))
    return out


_SHAPES = [(4, 2), (3, 1, 4, 4), (5, 3)]
_SHAPE_HINT = (
    "A coefficient read with `table[t]` has shape (B,); reshape it to (B, 1, ..., 1), e.g. "
    "`table[t].view(-1, *[1] * (x.ndim - 1))`, so that it multiplies each example's whole tensor."
)
