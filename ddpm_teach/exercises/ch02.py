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


def _variance_cases() -> list[dict[str, Any]]:
    return [{"betas": betas} for betas in _schedules()]


@exercise(
    "closed-form-variance",
    chapter="02",
    title="The variance of q(x_t | x_0), step by step",
    task=(
        "return v, shape (T,), with v[t] = Var(x_t | x_0) per coordinate, found by composing the "
        "steps of eq. 2: v_t = alpha_t v_{t-1} + beta_t with alpha_t = 1 - beta_t, starting from "
        "v = 0 for the data x_0 itself. It must come out as 1 - alpha_bar_t (eq. 4)."
    ),
    cases=_variance_cases,
)
def composed_variance(betas: Tensor) -> Tensor:
    return 1.0 - NoiseSchedule(betas).alpha_bars


def _recursion(betas: Tensor, scale: Tensor, start: float = 0.0) -> Tensor:
    """v_t = scale_t v_{t-1} + beta_t from v = ``start``: the recursion with a chosen factor."""
    v, out = torch.tensor(start, dtype=betas.dtype), []
    for s, b in zip(scale, betas, strict=True):
        v = s * v + b
        out.append(v)
    return torch.stack(out)


@composed_variance.mistake(
    "std-not-variance",
    "you returned sqrt(1 - alpha_bar_t), the standard deviation; the variance is 1 - alpha_bar_t. "
    "Several tutorials make this slip, writing the square root into the variance slot of "
    "N(mean, variance).",
)
def _(betas):
    return (1 - _alpha_bars(betas)).sqrt()


@composed_variance.mistake(
    "product-up-to-T",
    "every entry is the same: you multiplied the alphas of all T steps. alpha_bar_t is the product "
    "up to step t only, so the variance grows with t: v[t] = 1 - prod_{s <= t} alpha_s.",
)
def _(betas):
    return (1 - _alpha_bars(betas)[-1]).expand(betas.shape).clone()


@composed_variance.mistake(
    "no-alpha-factor",
    "you added up the betas, v_t = v_{t-1} + beta_t, forgetting that each step also shrinks the "
    "noise already there: x_{t-1} is scaled by sqrt(alpha_t), its variance by alpha_t, so "
    "v_t = alpha_t v_{t-1} + beta_t.",
)
def _(betas):
    return torch.cumsum(betas, dim=0)


@composed_variance.mistake(
    "alpha-squared",
    "you scaled the variance so far by alpha_t^2; x_{t-1} is multiplied by sqrt(alpha_t), so its "
    "variance is multiplied by (sqrt(alpha_t))^2 = alpha_t: v_t = alpha_t v_{t-1} + beta_t.",
)
def _(betas):
    return _recursion(betas, (1 - betas) ** 2)


@composed_variance.mistake(
    "sqrt-alpha",
    "you scaled the variance so far by sqrt(alpha_t), the coefficient of x_{t-1}; a variance "
    "scales by the coefficient squared, alpha_t: v_t = alpha_t v_{t-1} + beta_t.",
)
def _(betas):
    return _recursion(betas, (1 - betas).sqrt())


@composed_variance.mistake(
    "shifted",
    "t is off by one: your entry t is the variance before step t (your v[0] is 0). Entry 0 must "
    "already include the first step's noise: v[0] = beta_0.",
)
def _(betas):
    return torch.cat([torch.zeros(1, dtype=betas.dtype), 1 - _alpha_bars(betas)[:-1]])


@composed_variance.mistake(
    "started-at-one",
    "every entry is 1: you started the recursion from v = 1, as if x_0 were noise. x_0 is the "
    "given data, with no noise in it yet: start from v = 0.",
)
def _(betas):
    return _recursion(betas, 1 - betas, start=1.0)


@composed_variance.mistake(
    "one-step-only",
    "you returned beta_t, the variance one step adds; after t steps the noise of all of them has "
    "piled up (each shrunk by the later steps): v_t = alpha_t v_{t-1} + beta_t.",
)
def _(betas):
    return betas.clone()


def _t_for_snr_cases() -> list[dict[str, Any]]:
    # Levels chosen so that every mistake below lands on a different step in some case.
    levels = [1.0, 0.1, 3.0]
    return [{"betas": b, "level": lv} for b, lv in zip(_schedules(), levels, strict=True)]


def _first(below: Tensor) -> Tensor:
    """Index of the first True in a 1-D mask, as a 0-dim int64 tensor; len(mask) if none is."""
    hits = below.nonzero()
    return hits[0, 0] if hits.numel() else torch.tensor(below.numel())


def _snr_table(betas: Tensor) -> Tensor:
    a = _alpha_bars(betas)
    return a / (1 - a)


@exercise(
    "t-for-snr",
    chapter="02",
    title="When does noise win?",
    task=(
        "return the first step index t (counting from 0, as the code does) at which "
        "SNR(t) = alpha_bar_t / (1 - alpha_bar_t) is below `level`, as an int (T if it never is)."
    ),
    cases=_t_for_snr_cases,
    normalize=lambda out: torch.as_tensor(out).reshape(()),  # int, 0-dim or 1-element tensor
    hint=(
        "Return one number, the index of the first True in the mask `snr < level` "
        "(e.g. via `.nonzero()`), not the mask or the SNR table."
    ),
)
def t_for_snr(betas: Tensor, level: float) -> Tensor:
    return _first(NoiseSchedule(betas).snr(torch.arange(len(betas))) < level)


@t_for_snr.mistake(
    "last-above",
    "off by one: you returned the last step at which the SNR is still at or above the level; the "
    "task asks for the first step at which it is below (one later).",
)
def _(betas, level):
    return _first(_snr_table(betas) < level) - 1


@t_for_snr.mistake(
    "paper-index",
    "you returned the paper's step number t + 1 (the paper counts from 1); the code counts from "
    "0, so return the index into alpha_bars itself.",
)
def _(betas, level):
    return _first(_snr_table(betas) < level) + 1


@t_for_snr.mistake(
    "alpha-bar-below-level",
    "you compared alpha_bar_t with the level; compare the SNR, alpha_bar_t / (1 - alpha_bar_t). "
    "(SNR < 1 means alpha_bar_t < 1/2, not alpha_bar_t < 1.)",
)
def _(betas, level):
    return _first(_alpha_bars(betas) < level)


@t_for_snr.mistake(
    "ratio-of-stds",
    "you compared the ratio of standard deviations, sqrt(alpha_bar_t / (1 - alpha_bar_t)), with "
    "the level; the SNR is the ratio of variances, without the square root.",
)
def _(betas, level):
    return _first(_snr_table(betas).sqrt() < level)


@t_for_snr.mistake(
    "log-snr",
    "you compared log SNR(t) with the level; the task compares the SNR itself (or compare the "
    "log-SNR with log(level)).",
)
def _(betas, level):
    return _first(_snr_table(betas).log() < level)


@t_for_snr.mistake(
    "count-below",
    "you returned how many steps have an SNR below the level (T minus the answer); return the "
    "index of the first such step.",
)
def _(betas, level):
    return (_snr_table(betas) < level).sum()
