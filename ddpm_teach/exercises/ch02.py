"""Chapter 02 exercises: the closed form."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..schedule import NoiseSchedule
from . import exercise
from ._inputs import _SHAPE_HINT, _SHAPES, _alpha_bars, _at, _draws, _schedules


def _alpha_bar_cases() -> list[dict[str, Any]]:
    return [{"betas": betas} for betas in _schedules()]


@exercise(
    "alpha-bar",
    chapter="02",
    title="The cumulative product alpha_bar",
    task=(
        "return alpha_bar, shape (T,), with alpha_bar[t] = prod_{s <= t} (1 - betas[s]): the "
        "share of the signal's variance left after steps 0..t."
    ),
    cases=_alpha_bar_cases,
)
def compute_alpha_bars(betas: Tensor) -> Tensor:
    return NoiseSchedule(betas).alpha_bars


@compute_alpha_bars.mistake(
    "product-of-betas",
    "you multiplied the betas: alpha_bar_t is the product of alpha_s = 1 - beta_s, the share of "
    "the signal each step keeps.",
)
def _(betas):
    return torch.cumprod(betas, dim=0)


@compute_alpha_bars.mistake(
    "shifted",
    "t is off by one: your entry t is alpha_bar of the step before (you started the product at "
    "1). Entry 0 must already include the first step: alpha_bar[0] = 1 - betas[0].",
)
def _(betas):
    return torch.cat([torch.ones(1, dtype=betas.dtype), _alpha_bars(betas)[:-1]])


@compute_alpha_bars.mistake(
    "sum-of-betas",
    "you summed the betas: 1 - sum(beta_s) is only the first-order approximation of "
    "prod(1 - beta_s), and it drifts away (even below 0) as t grows; use `torch.cumprod`.",
)
def _(betas):
    return 1 - torch.cumsum(betas, dim=0)


@compute_alpha_bars.mistake(
    "alphas-only",
    "you returned alpha_t = 1 - beta_t, one step's factor; alpha_bar_t is their cumulative "
    "product over steps 0..t (`torch.cumprod(..., dim=0)`).",
)
def _(betas):
    return 1 - betas


@compute_alpha_bars.mistake(
    "sqrt-taken",
    "you returned sqrt(alpha_bar_t), the factor that scales x_0; alpha_bar_t itself is the product "
    "of the alphas, without a square root.",
)
def _(betas):
    return _alpha_bars(betas).sqrt()


@compute_alpha_bars.mistake(
    "total-product",
    "you returned the total product, one number; alpha_bar needs one entry per step, the "
    "running product: `torch.cumprod(1 - betas, dim=0)`.",
)
def _(betas):
    return torch.prod(1 - betas)


def _q_sample_cases() -> list[dict[str, Any]]:
    return [
        {"x0": x, "t": t, "betas": betas, "noise": n} for betas, t, (x, n) in _draws(_SHAPES, 2)
    ]


@exercise(
    "q-sample",
    chapter="02",
    title="Sampling q(x_t | x_0) in closed form",
    task=(
        "return x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise (eq. 4), with alpha_bar_t "
        "the cumulative product of (1 - betas) up to and including step t."
    ),
    cases=_q_sample_cases,
    hint=_SHAPE_HINT,
)
def q_sample(x0: Tensor, t: Tensor, betas: Tensor, noise: Tensor) -> Tensor:
    return NoiseSchedule(betas).q_sample(x0, t, noise=noise)


def _q_sample_with(ab: Tensor, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    a = _at(ab, t, x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


@q_sample.mistake(
    "sqrt-missing-alpha-bar",
    "the square root is missing on alpha_bar_t: you scaled x_0 by alpha_bar_t; eq. 4 scales it by "
    "sqrt(alpha_bar_t), so that signal and noise variances add up to 1.",
)
def _(x0, t, betas, noise):
    a = _at(_alpha_bars(betas), t, x0)
    return a * x0 + (1 - a).sqrt() * noise


@q_sample.mistake(
    "variance-as-std",
    "variance used as a standard deviation: you scaled the noise by (1 - alpha_bar_t), its "
    "variance; multiply standard normal noise by sqrt(1 - alpha_bar_t).",
)
def _(x0, t, betas, noise):
    a = _at(_alpha_bars(betas), t, x0)
    return a.sqrt() * x0 + (1 - a) * noise


@q_sample.mistake(
    "both-sqrt-missing",
    "both square roots are missing: alpha_bar_t and 1 - alpha_bar_t are variances; the "
    "coefficients are their square roots, sqrt(alpha_bar_t) and sqrt(1 - alpha_bar_t).",
)
def _(x0, t, betas, noise):
    a = _at(_alpha_bars(betas), t, x0)
    return a * x0 + (1 - a) * noise


@q_sample.mistake(
    "alpha-instead-of-alpha-bar",
    "you used alpha_t = 1 - beta_t where alpha_bar_t belongs: jumping from x_0 to x_t takes the "
    "product of the alphas of all steps up to t (`torch.cumprod`), not the last one alone.",
)
def _(x0, t, betas, noise):
    return _q_sample_with(1 - betas, x0, t, noise)


@q_sample.mistake(
    "t-minus-one",
    "t is off by one: you used alpha_bar_{t-1} (`alpha_bar[t - 1]`). Index t already counts "
    "the step being reached (the paper's t + 1), so use `alpha_bar[t]`.",
)
def _(x0, t, betas, noise):
    return _q_sample_with(_alpha_bars(betas), x0, t - 1, noise)


@q_sample.mistake(
    "t-plus-one",
    "t is off by one: you used `alpha_bar[t + 1]`, one step too many; use `alpha_bar[t]`.",
)
def _(x0, t, betas, noise):
    return _q_sample_with(_alpha_bars(betas), x0, t + 1, noise)


@q_sample.mistake(
    "forgot-noise",
    "you forgot the noise: your x_t is only the mean sqrt(alpha_bar_t) x_0; add "
    "sqrt(1 - alpha_bar_t) * noise.",
)
def _(x0, t, betas, noise):
    return _at(_alpha_bars(betas), t, x0).sqrt() * x0


@q_sample.mistake(
    "x0-eps-swapped",
    "x_0 and the noise are swapped: sqrt(alpha_bar_t) multiplies the data x_0, and "
    "sqrt(1 - alpha_bar_t) multiplies the noise.",
)
def _(x0, t, betas, noise):
    return _q_sample_with(_alpha_bars(betas), noise, t, x0)


@q_sample.mistake(
    "wrong-sign",
    "wrong sign: you subtracted the noise; eq. 4 adds it, x_t = sqrt(alpha_bar_t) x_0 + "
    "sqrt(1 - alpha_bar_t) noise.",
)
def _(x0, t, betas, noise):
    return _q_sample_with(_alpha_bars(betas), x0, t, -noise)


@q_sample.mistake(
    "beta-as-noise-variance",
    "you gave the noise the variance beta_t of a single step; after t steps from x_0 the noise "
    "variance is 1 - alpha_bar_t.",
)
def _(x0, t, betas, noise):
    return _at(_alpha_bars(betas), t, x0).sqrt() * x0 + _at(betas, t, x0).sqrt() * noise


def _snr_cases() -> list[dict[str, Any]]:
    return [{"t": t, "betas": betas} for betas, t, _ in _draws(_SHAPES, 0)]


@exercise(
    "snr",
    chapter="02",
    title="Signal-to-noise ratio",
    task=(
        "return SNR(t) = alpha_bar_t / (1 - alpha_bar_t), shape (B,): the variance of the "
        "signal in x_t over the variance of its noise."
    ),
    cases=_snr_cases,
)
def snr(t: Tensor, betas: Tensor) -> Tensor:
    return NoiseSchedule(betas).snr(t)


@snr.mistake(
    "inverted",
    "your ratio is upside down: that is noise over signal. SNR = alpha_bar_t / (1 - alpha_bar_t).",
)
def _(t, betas):
    a = _alpha_bars(betas)[t]
    return (1 - a) / a


@snr.mistake(
    "ratio-of-stds",
    "you took the ratio of standard deviations, sqrt(alpha_bar_t / (1 - alpha_bar_t)); the SNR is "
    "the ratio of variances, without the square root.",
)
def _(t, betas):
    a = _alpha_bars(betas)[t]
    return (a / (1 - a)).sqrt()


@snr.mistake(
    "alpha-instead-of-alpha-bar",
    "you used alpha_t = 1 - beta_t where alpha_bar_t belongs: the signal left in x_t is the "
    "product of the alphas of all steps so far.",
)
def _(t, betas):
    a = (1 - betas)[t]
    return a / (1 - a)


@snr.mistake(
    "t-minus-one",
    "t is off by one: you read `alpha_bar[t - 1]`; index t already counts the step reached, use "
    "`alpha_bar[t]`.",
)
def _(t, betas):
    a = _alpha_bars(betas)[t - 1]
    return a / (1 - a)


@snr.mistake(
    "t-plus-one",
    "t is off by one: you read `alpha_bar[t + 1]`, one step too many; use `alpha_bar[t]`.",
)
def _(t, betas):
    a = _alpha_bars(betas)[t + 1]
    return a / (1 - a)


@snr.mistake(
    "log-snr",
    "you returned log SNR(t); the exercise asks for the SNR itself (take `.exp()`, or drop the "
    "log).",
)
def _(t, betas):
    a = _alpha_bars(betas)[t]
    return (a / (1 - a)).log()
