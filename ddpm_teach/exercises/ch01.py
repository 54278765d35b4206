"""Chapter 01 exercises: Gaussian noising."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..schedule import NoiseSchedule
from . import exercise
from ._inputs import _SHAPE_HINT, _SHAPES, _alpha_bars, _at, _draws, _schedules


def _q_step_cases() -> list[dict[str, Any]]:
    return [
        {"x_prev": x, "t": t, "betas": betas, "noise": n} for betas, t, (x, n) in _draws(_SHAPES, 2)
    ]


@exercise(
    "one-forward-step",
    chapter="01",
    title="One forward step",
    task=(
        "return x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) noise (eq. 2), with beta_t = "
        "betas[t] for each example of the batch."
    ),
    cases=_q_step_cases,
    hint=_SHAPE_HINT,
)
def q_step(x_prev: Tensor, t: Tensor, betas: Tensor, noise: Tensor) -> Tensor:
    return NoiseSchedule(betas).q_step(x_prev, t, noise=noise)


@q_step.mistake(
    "t-minus-one",
    "t is off by one: you used `betas[t - 1]`. Index t already stands for the step being taken "
    "(the paper's t + 1), so use `betas[t]`.",
)
def _(x_prev, t, betas, noise):
    b = _at(betas, t - 1, x_prev)
    return (1 - b).sqrt() * x_prev + b.sqrt() * noise


@q_step.mistake(
    "t-plus-one",
    "t is off by one: you used `betas[t + 1]`, the beta of the next step; use `betas[t]`.",
)
def _(x_prev, t, betas, noise):
    b = _at(betas, t + 1, x_prev)
    return (1 - b).sqrt() * x_prev + b.sqrt() * noise


@q_step.mistake(
    "sqrt-missing-mean",
    "the square root is missing on the mean's coefficient: you scaled x_{t-1} by (1 - beta_t); "
    "eq. 2 scales it by sqrt(1 - beta_t), which is what keeps the variance at 1.",
)
def _(x_prev, t, betas, noise):
    b = _at(betas, t, x_prev)
    return (1 - b) * x_prev + b.sqrt() * noise


@q_step.mistake(
    "variance-as-std",
    "variance used as a standard deviation: you scaled the noise by beta_t, which is its "
    "variance; multiply standard normal noise by the standard deviation sqrt(beta_t).",
)
def _(x_prev, t, betas, noise):
    b = _at(betas, t, x_prev)
    return (1 - b).sqrt() * x_prev + b * noise


@q_step.mistake(
    "forgot-noise",
    "you forgot the noise: your x_t is only the scaled mean sqrt(1 - beta_t) x_{t-1}; add "
    "sqrt(beta_t) * noise.",
)
def _(x_prev, t, betas, noise):
    return (1 - _at(betas, t, x_prev)).sqrt() * x_prev


@q_step.mistake(
    "forgot-mean-scaling",
    "you added the noise to x_{t-1} without shrinking it first: eq. 2's mean is sqrt(1 - beta_t) "
    "x_{t-1}; without that factor the variance grows at every step instead of staying at 1.",
)
def _(x_prev, t, betas, noise):
    return x_prev + _at(betas, t, x_prev).sqrt() * noise


@q_step.mistake(
    "coefficients-swapped",
    "the two coefficients are swapped: x_{t-1} gets sqrt(1 - beta_t) and the noise gets "
    "sqrt(beta_t), not the other way round.",
)
def _(x_prev, t, betas, noise):
    b = _at(betas, t, x_prev)
    return b.sqrt() * x_prev + (1 - b).sqrt() * noise


@q_step.mistake(
    "alpha-bar-instead-of-alpha",
    "you used the cumulative alpha_bar_t: that is the jump q(x_t | x_0) of eq. 4. One step from "
    "x_{t-1} uses beta_t alone: sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) noise.",
)
def _(x_prev, t, betas, noise):
    ab = _at(_alpha_bars(betas), t, x_prev)
    return ab.sqrt() * x_prev + (1 - ab).sqrt() * noise


# ------------------------------------------------------------------------- iterating the chain
def _trajectory_cases() -> list[dict[str, Any]]:
    # x0 is scaled by 2 so that forgetting the sqrt(1 - beta_t) shrink moves the answer far.
    g = torch.Generator().manual_seed(1)
    out = []
    for betas, shape in zip(_schedules(), _SHAPES, strict=True):
        x0 = 2.0 * torch.randn(shape, generator=g, dtype=torch.float64)
        noises = torch.randn((betas.numel(), *shape), generator=g, dtype=torch.float64)
        out.append({"x0": x0, "betas": betas, "noises": noises})
    return out


@exercise(
    "iterate-forward",
    chapter="01",
    title="Iterating the forward chain",
    task=(
        "starting from x_0, apply eq. 2 once per step, x_t = sqrt(1 - beta_t) x_{t-1} + "
        "sqrt(beta_t) noises[t] for t = 0..T-1, each step starting from the previous one's "
        "output; return every x_t stacked, shape (T, B, ...), entry t the output of step t."
    ),
    cases=_trajectory_cases,
    hint="Return `torch.stack(xs)` of the T outputs x_t (not x_0): shape (T, B, ...).",
)
def forward_trajectory(x0: Tensor, betas: Tensor, noises: Tensor) -> Tensor:
    schedule = NoiseSchedule(betas)
    xs, x = [], x0
    for t in range(schedule.num_steps):
        x = schedule.q_step(x, t, noise=noises[t])
        xs.append(x)
    return torch.stack(xs)


def _chain(x0: Tensor, betas: Tensor, noises: Tensor, step, start_from_x0: bool = False) -> list:
    """x_t for t = 0..T-1 under a (possibly wrong) one-step rule step(x_prev, beta_t, noise_t)."""
    xs, x = [], x0
    for t in range(betas.numel()):
        x = step(x0 if start_from_x0 else x, betas[t], noises[t])
        xs.append(x)
    return xs


def _eq2(x, b, n):
    return (1 - b).sqrt() * x + b.sqrt() * n


@forward_trajectory.mistake(
    "restart-from-x0",
    "every step starts from x_0: you computed sqrt(1 - beta_t) x_0 + sqrt(beta_t) noises[t]. "
    "A Markov chain feeds each step the previous step's output: x_t comes from x_{t-1}.",
)
def _(x0, betas, noises):
    return torch.stack(_chain(x0, betas, noises, _eq2, start_from_x0=True))


@forward_trajectory.mistake(
    "same-noise",
    "you reused one noise draw at every step: each step adds fresh, independent noise, "
    "noises[t] at step t.",
)
def _(x0, betas, noises):
    return torch.stack(_chain(x0, betas, noises[:1].expand_as(noises), _eq2))


@forward_trajectory.mistake(
    "stored-before-step",
    "your entries are one step late: entry t holds x_{t-1}, the input of step t (you stored x "
    "before updating it). Store x after each update, so entry 0 already has one step of noise "
    "and the last entry is x_T.",
)
def _(x0, betas, noises):
    return torch.stack([x0, *_chain(x0, betas, noises, _eq2)[:-1]])


@forward_trajectory.mistake(
    "final-only",
    "you returned only the last x_t; the exercise asks for all of them, `torch.stack(xs)` of "
    "shape (T, B, ...), so that the whole path can be plotted.",
)
def _(x0, betas, noises):
    return _chain(x0, betas, noises, _eq2)[-1]


@forward_trajectory.mistake(
    "closed-form",
    "you jumped from x_0 with the closed form sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) "
    "noises[t] (eq. 4, next chapter). Each x_t then has the right distribution, but the x_t are "
    "not one path of the chain driven by these noises: iterate eq. 2 from the previous x.",
)
def _(x0, betas, noises):
    ab = _alpha_bars(betas).reshape(-1, *([1] * x0.ndim))
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noises


@forward_trajectory.mistake(
    "without-scaling",
    "you added the noise without shrinking x_{t-1} first (x_t = x_{t-1} + sqrt(beta_t) noise): "
    "the variance then grows by beta_t at every step. Eq. 2 multiplies x_{t-1} by "
    "sqrt(1 - beta_t).",
)
def _(x0, betas, noises):
    return torch.stack(_chain(x0, betas, noises, lambda x, b, n: x + b.sqrt() * n))


@forward_trajectory.mistake(
    "sqrt-missing-mean",
    "the square root is missing on the mean's coefficient: you scaled x_{t-1} by (1 - beta_t); "
    "eq. 2 scales it by sqrt(1 - beta_t).",
)
def _(x0, betas, noises):
    return torch.stack(_chain(x0, betas, noises, lambda x, b, n: (1 - b) * x + b.sqrt() * n))


@forward_trajectory.mistake(
    "variance-as-std",
    "variance used as a standard deviation: you scaled the noise by beta_t, its variance; "
    "multiply standard normal noise by sqrt(beta_t).",
)
def _(x0, betas, noises):
    return torch.stack(_chain(x0, betas, noises, lambda x, b, n: (1 - b).sqrt() * x + b * n))


# ------------------------------------------------------------------------- the variance recurrence
def _variance_cases() -> list[dict[str, Any]]:
    # 0 is a pixel that is always background, 1 is the fixed point, the others lie either side.
    v0s = [[0.0, 0.25, 4.0], [2.0, 0.0, 0.5, 1.0], [9.0, 0.1]]
    return [
        {"v0": torch.tensor(v, dtype=torch.float64), "betas": betas}
        for v, betas in zip(v0s, _schedules(), strict=True)
    ]


@exercise(
    "variance-after-steps",
    chapter="01",
    title="The variance after t steps",
    task=(
        "given v0, shape (D,), the variance of each coordinate of the data, return the variance "
        "of each coordinate of x_t after every step, shape (T, D): entry t follows from entry "
        "t - 1 by Var[x_t] = (1 - beta_t) Var[x_{t-1}] + beta_t, with v0 before step 0."
    ),
    cases=_variance_cases,
    hint="One row per step t = 0..T-1, one column per coordinate: shape (T, D).",
)
def variance_after_steps(v0: Tensor, betas: Tensor) -> Tensor:
    # The recurrence's closed form: v_t - 1 = alpha_bar_t (v_0 - 1).
    ab = NoiseSchedule(betas).alpha_bars[:, None]
    return ab * v0 + (1 - ab)


def _recurrence(v0: Tensor, betas: Tensor, rule) -> Tensor:
    """Rows v_t = rule(v_{t-1}, beta_t) for t = 0..T-1, shape (T, D)."""
    rows, v = [], v0
    for b in betas:
        v = rule(v, b)
        rows.append(v)
    return torch.stack(rows)


@variance_after_steps.mistake(
    "without-scaling",
    "you added beta_t without shrinking the old variance: that is the variance of the chain "
    "without the sqrt(1 - beta_t) factor, v_0 + sum_s beta_s, which grows without bound. "
    "Multiplying x_{t-1} by sqrt(1 - beta_t) multiplies its variance by (1 - beta_t).",
)
def _(v0, betas):
    return _recurrence(v0, betas, lambda v, b: v + b)


@variance_after_steps.mistake(
    "scale-not-squared",
    "Var[c X] = c^2 Var[X]: scaling x_{t-1} by sqrt(1 - beta_t) multiplies its variance by "
    "(1 - beta_t), but you multiplied it by sqrt(1 - beta_t).",
)
def _(v0, betas):
    return _recurrence(v0, betas, lambda v, b: (1 - b).sqrt() * v + b)


@variance_after_steps.mistake(
    "noise-variance-squared",
    "you added beta_t^2, as if the noise's standard deviation were beta_t; the noise "
    "sqrt(beta_t) * eps has variance beta_t.",
)
def _(v0, betas):
    return _recurrence(v0, betas, lambda v, b: (1 - b) * v + b**2)


@variance_after_steps.mistake(
    "forgot-noise",
    "you left out the variance the fresh noise adds: (1 - beta_t) Var[x_{t-1}] alone shrinks to "
    "0. The noise is independent of x_{t-1}, so the variances add: + beta_t.",
)
def _(v0, betas):
    return _recurrence(v0, betas, lambda v, b: (1 - b) * v)


@variance_after_steps.mistake(
    "forgot-data",
    "you left out the data's own variance, as if v0 were 0: the data's variance shrinks by "
    "(1 - beta_t) at each step but is still there, alpha_bar_t * v0 after step t.",
)
def _(v0, betas):
    return _recurrence(torch.zeros_like(v0), betas, lambda v, b: (1 - b) * v + b)


@variance_after_steps.mistake(
    "one-step-late",
    "your rows are one step late: row t holds the variance before step t (row 0 is v0). Row 0 "
    "must already include step 0: (1 - beta_0) v0 + beta_0.",
)
def _(v0, betas):
    rows = _recurrence(v0, betas, lambda v, b: (1 - b) * v + b)
    return torch.cat([v0[None], rows[:-1]])


@variance_after_steps.mistake(
    "std-returned",
    "you returned standard deviations, the square roots of the variances; return the "
    "variances themselves.",
)
def _(v0, betas):
    return _recurrence(v0, betas, lambda v, b: (1 - b) * v + b).sqrt()
