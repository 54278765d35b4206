"""Chapter 01 exercises: Gaussian noising."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..schedule import NoiseSchedule
from . import exercise
from ._inputs import _SHAPE_HINT, _SHAPES, _alpha_bars, _at, _draws


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
