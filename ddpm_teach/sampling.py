"""The reverse Markov chain: from pure noise x_T to data x_0.

The model learns p_theta(x_{t-1} | x_t) = N(mu_theta(x_t, t), sigma_t^2 I) (DDPM eq. 1). With the
epsilon-parameterisation (eq. 11)

    mu_theta(x_t, t) = 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_theta(x_t, t)),

which is exactly the posterior mean mu_tilde_t(x_t, x0_hat) of eq. 7 evaluated at the x_0 that eq. 4
implies for the predicted noise. Algorithm 2 of the paper runs that chain from t = T down to 1. DDIM
(Song, Meng & Ermon 2021, eq. 12) reuses the same network to take larger, optionally deterministic,
steps along a subsequence of the timesteps.

The model knows nothing of the schedule: here a "model" is any callable ``model(x_t, t) -> output``
with x_t of shape (B, ...) and t a LongTensor of shape (B,), whose output has x_t's shape and is the
predicted eps, x0 or v (``prediction=``). Samplers compose model and schedule, as diffusers keeps models
and schedulers apart.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from .schedule import NoiseSchedule, check_prediction

__all__ = [
    "VARIANCES",
    "Trajectory",
    "ddim_sample",
    "ddim_step",
    "ddim_timesteps",
    "ddpm_sample",
    "ddpm_step",
    "model_eps",
]

#: sigma_t^2 choices of section 3.2: the posterior variance beta_tilde_t ("small") or beta_t ("large").
VARIANCES = ("small", "large")

Model = Callable[[Tensor, Tensor], Tensor]


class Trajectory(NamedTuple):
    """What the samplers return with ``return_trajectory=True``.

    sample:      the final x_0, shape (B, ...).
    xs:          the states visited, shape (K+1, B, ...): xs[0] is x_T, xs[-1] is the final sample.
    x0_preds:    the model's prediction of x_0 at each of those steps, shape (K, B, ...).
    timesteps:   the step index t of each state in xs, length K+1, with -1 standing for x_0.
    """

    sample: Tensor
    xs: Tensor
    x0_preds: Tensor
    timesteps: list[int]


def model_eps(
    model: Model,
    schedule: NoiseSchedule,
    x_t: Tensor,
    t: Tensor,
    prediction: str = "eps",
) -> Tensor:
    """Call ``model(x_t, t)`` and return its output converted to the predicted noise eps.

    A model that returns the wrong shape is named as the culprit, not the sampler. ``t`` may sit on
    the CPU (the samplers keep it there, so that the schedule's coefficients need no GPU sync); the
    model gets a copy on x_t's device.
    """
    out = model(x_t, t.to(x_t.device, non_blocking=True))
    if not isinstance(out, Tensor) or out.shape != x_t.shape:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"model: model(x_t, t) must return a tensor of x_t's shape {tuple(x_t.shape)} "
            f"(the predicted {prediction}), but it returned {got}; the fault is in the model"
        )
    return schedule.to_eps(out.to(x_t.dtype), x_t, t, prediction)


def _check_variance(variance: str) -> None:
    if variance not in VARIANCES:
        raise ValueError(
            f"variance: expected one of {VARIANCES} (beta_tilde_t or beta_t), got {variance!r}"
        )


def _reverse_variance(schedule: NoiseSchedule, variance: str) -> Tensor:
    """sigma_t^2 of p_theta(x_{t-1} | x_t) per step index, float64 (T,)."""
    _check_variance(variance)
    return schedule.posterior_variance if variance == "small" else schedule.betas


def ddpm_step(
    schedule: NoiseSchedule,
    eps: Tensor,
    x_t: Tensor,
    t: int | Tensor,
    noise: Tensor | None = None,
    variance: str = "small",
    clip_x0: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One ancestral step x_t -> x_{t-1} of Algorithm 2.

    x_{t-1} = mu_theta(x_t, t) + sigma_t z,  z ~ N(0, I), and no noise at the last step (t = 0).

    The mean is computed as the posterior mean mu_tilde_t(x_t, x0_hat) (eq. 7) with
    x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t); without clipping this equals eq. 11
    exactly. With ``clip_x0=True`` x0_hat is clamped to [-1, 1] first (for images).

    Args:
        schedule: the forward process.
        eps: the predicted noise eps_theta(x_t, t), shape (B, ...).
        x_t: the current state, shape (B, ...).
        t: step index 0..T-1, an int or a (B,) integer tensor.
        noise: z, standard normal of x_t's shape; drawn from ``generator`` when omitted.
        variance: "small" (sigma_t^2 = beta_tilde_t) or "large" (sigma_t^2 = beta_t), section 3.2.
    Returns:
        x_{t-1}, shape (B, ...).
    """
    # sigma_t per step, zero at the final step to x_0 (Algorithm 2: "z = 0 if t = 1").
    sigma = _reverse_variance(schedule, variance).sqrt()
    sigma[0] = 0.0
    schedule.check_t(t, x_t.shape[0] if x_t.ndim else None)
    x0_hat = schedule.predict_x0_from_eps(x_t, t, eps)
    if clip_x0:
        x0_hat = x0_hat.clamp(-1.0, 1.0)
    mean, _ = schedule.q_posterior(x0_hat, x_t, t)
    noise = schedule._noise_like(x_t, noise, generator)
    return mean + schedule.at(sigma, t, x_t) * noise


def ddim_step(
    schedule: NoiseSchedule,
    eps: Tensor,
    x_t: Tensor,
    t: int | Tensor,
    t_prev: int | Tensor,
    eta: float = 0.0,
    noise: Tensor | None = None,
    clip_x0: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One DDIM update x_t -> x_{t_prev} (Song et al. 2021, eq. 12).

    x_prev = sqrt(alpha_bar_prev) x0_hat + sqrt(1 - alpha_bar_prev - sigma^2) eps + sigma z,
    sigma  = eta sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_prev).

    eta = 0 is deterministic (an ODE-like map); eta = 1 with t_prev = t - 1 is DDPM's ancestral step
    with the "small" variance.

    Args:
        eps: predicted noise at (x_t, t), shape (B, ...).
        t: current step index 0..T-1.
        t_prev: the index to jump to, -1..t-1; -1 means the final step to x_0 (alpha_bar = 1).
        eta: 0 (deterministic) .. 1 (as noisy as DDPM).
    Returns:
        x_{t_prev}, shape (B, ...).
    """
    if not 0.0 <= eta:
        raise ValueError(f"eta: expected a non-negative number (0 = deterministic), got {eta}")
    batch = x_t.shape[0] if x_t.ndim else None
    t_prev = _check_t_prev(t_prev, schedule.check_t(t, batch), batch)
    x0_hat = schedule.predict_x0_from_eps(x_t, t, eps)
    if clip_x0:
        x0_hat = x0_hat.clamp(-1.0, 1.0)
        eps = schedule.predict_eps_from_x0(x_t, t, x0_hat)
    # alpha_bar of the target step; the table is shifted by one so that t_prev = -1 (x_0) reads 1.
    # alpha_bars_prev[k] is alpha_bar_{k-1} (1 at k = 0), so index t_prev + 1 is alpha_bar at
    # t_prev, and 1 for t_prev = -1, the jump to x_0.
    ab_prev = schedule.at(schedule.alpha_bars_prev, t_prev + 1, x_t)
    ab_t = schedule.at(schedule.alpha_bars, t, x_t)
    sigma = eta * ((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)).clamp(min=0).sqrt()
    direction = (1 - ab_prev - sigma**2).clamp(min=0).sqrt() * eps
    x_prev = ab_prev.sqrt() * x0_hat + direction
    if eta > 0:
        x_prev = x_prev + sigma * schedule._noise_like(x_t, noise, generator)
    return x_prev


def _check_t_prev(t_prev: int | Tensor, t: Tensor, batch_size: int | None) -> int | Tensor:
    """Validate t_prev against the checked t (one entry, or one per batch element); an int (the
    samplers' case) is returned as is, a tensor as a 1-D int64 tensor on the CPU."""
    if isinstance(t_prev, int) and not isinstance(t_prev, bool) and t.numel() == 1:
        if not -1 <= t_prev < int(t):
            raise ValueError(
                f"t_prev: expected -1 <= t_prev < t (-1 means x_0), got t_prev={t_prev} "
                f"for t={int(t)}"
            )
        return t_prev
    t_prev = torch.as_tensor(t_prev)
    if t_prev.dtype.is_floating_point or t_prev.dtype == torch.bool:
        raise TypeError(f"t_prev: expected an int or an integer tensor, got dtype {t_prev.dtype}")
    t_prev = t_prev.reshape(-1).long().cpu()  # compared with t, and gathered on the CPU
    batch = t.numel() if batch_size is None else batch_size
    mismatched = t.numel() > 1 and t_prev.numel() > 1 and t.numel() != t_prev.numel()
    if t_prev.numel() not in (1, batch) or mismatched:
        raise ValueError(
            f"t_prev: expected one entry or one per batch element ({batch}), got {t_prev.numel()}"
        )
    if (t_prev < -1).any() or (t_prev >= t.cpu()).any():
        raise ValueError(
            f"t_prev: expected -1 <= t_prev < t (-1 means x_0), got t_prev={t_prev.tolist()} "
            f"for t={t.tolist()}"
        )
    return t_prev


def _prepare(
    schedule: NoiseSchedule,
    shape: Sequence[int],
    generator: torch.Generator | None,
    device: torch.device | str | None,
    dtype: torch.dtype,
    x_T: Tensor | None,
    prediction: str,
) -> Tensor:
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule: expected a NoiseSchedule, got {type(schedule).__name__}")
    check_prediction(prediction)
    shape = tuple(int(s) for s in shape)
    if len(shape) < 1 or any(s < 1 for s in shape):
        raise ValueError(f"shape: expected (B, ...) with positive sizes, got {shape}")
    if x_T is not None:
        if tuple(x_T.shape) != shape:
            raise ValueError(f"x_T: expected shape {shape}, got {tuple(x_T.shape)}")
        return x_T.to(device=device or x_T.device, dtype=dtype)
    if device is None:
        device = generator.device if generator is not None else "cpu"
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, leave=False)


@torch.no_grad()
def ddpm_sample(
    model: Model,
    schedule: NoiseSchedule,
    shape: Sequence[int],
    generator: torch.Generator | None = None,
    *,
    variance: str = "small",
    prediction: str = "eps",
    clip_x0: bool = False,
    return_trajectory: bool = False,
    trajectory_stride: int = 1,
    x_T: Tensor | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> Tensor | Trajectory:
    """Ancestral sampling, Algorithm 2: x_T ~ N(0, I), then T steps of ``ddpm_step`` down to x_0.

    Args:
        model: ``model(x_t, t) -> output`` with t a LongTensor (B,); output is the predicted eps, x0 or
            v (``prediction``), of x_t's shape.
        schedule: the forward process the model was trained with.
        shape: (B, ...) of the samples.
        generator: a torch.Generator for reproducible noise (its device is used unless ``device``).
        variance: "small" (beta_tilde_t) or "large" (beta_t).
        clip_x0: clamp the x_0 prediction to [-1, 1] at every step (for images); off by default.
        return_trajectory: also return the states and x_0 predictions (every ``trajectory_stride``
            steps, x_T and the final sample always included), for sliders.
        x_T: start from this noise instead of drawing it.
    Returns:
        x_0 of ``shape``, or a :class:`Trajectory` when ``return_trajectory``.
    """
    _check_variance(variance)
    x = _prepare(schedule, shape, generator, device, dtype, x_T, prediction)
    keep = _Keeper(return_trajectory, trajectory_stride, x, schedule.num_steps - 1)
    for i, step in enumerate(_progress(range(schedule.num_steps - 1, -1, -1), progress, "DDPM")):
        t = torch.full((x.shape[0],), step, dtype=torch.long)  # on the CPU: see model_eps
        eps = model_eps(model, schedule, x, t, prediction)
        # The schedule gets the int step: one coefficient for the whole batch, cheaper to check.
        x0_hat = schedule.predict_x0_from_eps(x, step, eps) if keep.enabled else None
        x = ddpm_step(
            schedule, eps, x, step, variance=variance, clip_x0=clip_x0, generator=generator
        )
        keep(i, x, x0_hat.clamp(-1, 1) if clip_x0 and keep.enabled else x0_hat, step - 1)
    return keep.result(x)


def ddim_timesteps(num_train_steps: int, num_steps: int, spacing: str = "trailing") -> list[int]:
    """The decreasing subsequence of step indices DDIM visits, starting near T-1 and ending near 0.

    "trailing" (default) starts at T-1 exactly, so x_T ~ N(0, I) is a faithful start (Lin et al. 2024);
    "leading" is diffusers' default (0, k, 2k, ... reversed, k = T // num_steps); "linspace" rounds
    an even grid over 0..T-1. The grids are computed as diffusers computes them (numpy, float64),
    so both visit the same steps.
    """
    try:
        if isinstance(num_steps, bool):
            raise TypeError
        num_steps = operator.index(num_steps)
    except TypeError:
        raise TypeError(f"num_steps: expected an int, got {num_steps!r}") from None
    if not 1 <= num_steps <= num_train_steps:
        raise ValueError(
            f"num_steps: expected 1..{num_train_steps} (the schedule's steps), got {num_steps}"
        )
    if spacing == "trailing":
        # T, T - T/n, ..., T/n, minus 1. Cut to n entries: for some n (61 of T = 1000, say) the
        # float range overshoots by one entry, which would round to step -1 (diffusers keeps it).
        ts = np.round(np.arange(num_train_steps, 0, -num_train_steps / num_steps))[:num_steps] - 1
    elif spacing == "leading":
        ts = np.arange(num_steps)[::-1] * (num_train_steps // num_steps)
    elif spacing == "linspace":
        ts = np.linspace(0, num_train_steps - 1, num_steps).round()[::-1]
    else:
        raise ValueError(f"spacing: expected 'trailing', 'leading' or 'linspace', got {spacing!r}")
    return [int(v) for v in ts]


@torch.no_grad()
def ddim_sample(
    model: Model,
    schedule: NoiseSchedule,
    shape: Sequence[int],
    num_steps: int = 50,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    *,
    spacing: str = "trailing",
    prediction: str = "eps",
    clip_x0: bool = False,
    return_trajectory: bool = False,
    trajectory_stride: int = 1,
    x_T: Tensor | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> Tensor | Trajectory:
    """DDIM sampling (Song et al. 2021): ``num_steps`` updates along ``ddim_timesteps(T, num_steps)``.

    With eta = 0 the map from x_T to x_0 is deterministic, so the same x_T always gives the same
    sample. Arguments as in :func:`ddpm_sample`; ``spacing`` picks the timestep subsequence.
    """
    timesteps = ddim_timesteps(schedule.num_steps, num_steps, spacing)
    x = _prepare(schedule, shape, generator, device, dtype, x_T, prediction)
    keep = _Keeper(return_trajectory, trajectory_stride, x, timesteps[0])
    prevs = [*timesteps[1:], -1]
    for i, (step, prev) in enumerate(
        _progress(list(zip(timesteps, prevs, strict=True)), progress, "DDIM")
    ):
        t = torch.full((x.shape[0],), step, dtype=torch.long)  # on the CPU: see model_eps
        eps = model_eps(model, schedule, x, t, prediction)
        x0_hat = schedule.predict_x0_from_eps(x, step, eps) if keep.enabled else None
        x = ddim_step(schedule, eps, x, step, prev, eta=eta, clip_x0=clip_x0, generator=generator)
        keep(i, x, x0_hat.clamp(-1, 1) if clip_x0 and keep.enabled else x0_hat, prev)
    return keep.result(x)


class _Keeper:
    """Collects every ``stride``-th state for a Trajectory (always the first and the last)."""

    def __init__(self, enabled: bool, stride: int, x_T: Tensor, t_start: int) -> None:
        if stride < 1:
            raise ValueError(f"trajectory_stride: expected a positive int, got {stride}")
        self.enabled, self.stride = enabled, stride
        # Copied to the CPU only when kept: a copy back from the GPU waits for it.
        self.xs, self.x0s, self.ts = [x_T.cpu()] if enabled else [], [], [t_start]
        self.last: tuple[Tensor, Tensor, int] | None = None

    def __call__(self, i: int, x: Tensor, x0_hat: Tensor | None, t_prev: int) -> None:
        if not self.enabled:
            return
        if (i + 1) % self.stride == 0 or t_prev == -1:
            assert x0_hat is not None  # the loops compute it whenever a trajectory is kept
            self.xs.append(x.cpu())
            self.x0s.append(x0_hat.cpu())
            self.ts.append(t_prev)

    def result(self, x: Tensor) -> Tensor | Trajectory:
        if not self.enabled:
            return x
        return Trajectory(x, torch.stack(self.xs), torch.stack(self.x0s), self.ts)
