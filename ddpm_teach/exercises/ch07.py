"""Chapter 07 exercises: connections (scores, Langevin dynamics, progressive coding).

score-from-eps    the noise prediction as a scaled score, grad log q_t(x_t) = -eps / sqrt(1 - ab_t)
tweedie-x0        Tweedie's formula: E[x_0 | x_t] from the score
langevin-step     one step of (unadjusted) Langevin dynamics
rate-from-terms   the cumulative rate of progressive coding from the bound's terms (eq. 5)

The references are built on :mod:`ddpm_teach.schedule` and :mod:`ddpm_teach.analytic`'s
conventions (ab_t = ``alpha_bars[t]``, index t standing for the paper's t + 1) and on the layout of
:class:`ddpm_teach.likelihood.VLBTerms` (``terms[:, 0]`` the decoder L_0, ``terms[:, t]`` the KL of
the reverse step out of x_t).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..schedule import NoiseSchedule
from . import exercise
from ._inputs import _SHAPE_HINT, _SHAPES, _alpha_bars, _at, _draws

# ------------------------------------------------------------------------------ score-from-eps


def _score_cases() -> list[dict[str, Any]]:
    return [{"eps": eps, "t": t, "betas": betas} for betas, t, (eps,) in _draws(_SHAPES, 1)]


@exercise(
    "score-from-eps",
    chapter="07",
    title="The noise prediction is a scaled score",
    task=(
        "return the score grad log q_t(x_t) = -eps / sqrt(1 - alpha_bar_t), shape (B, ...), for "
        "the noise prediction eps at step t: the noise points away from the data, the score "
        "towards it, scaled by one over the noise's standard deviation."
    ),
    cases=_score_cases,
    hint=_SHAPE_HINT,
)
def score_from_eps(eps: Tensor, t: Tensor, betas: Tensor) -> Tensor:
    schedule = NoiseSchedule(betas)
    ab = schedule.at(schedule.alpha_bars, t, eps)
    return -eps / (1 - ab).sqrt()


def _scaled(eps: Tensor, t: Tensor, table: Tensor, power: float = 0.5) -> Tensor:
    """-eps / table[t] ** power, broadcast over eps."""
    return -eps / _at(table, t, eps) ** power


@score_from_eps.mistake(
    "wrong-sign",
    "wrong sign: you returned +eps / sqrt(1 - alpha_bar_t). The noise eps points from the data "
    "out to x_t; the score points back, towards higher density: -eps / sqrt(1 - alpha_bar_t).",
)
def _(eps, t, betas):
    return -_scaled(eps, t, 1 - _alpha_bars(betas))


@score_from_eps.mistake(
    "variance-not-std",
    "you divided by 1 - alpha_bar_t, the noise's variance. x_t - sqrt(alpha_bar_t) x_0 = "
    "sqrt(1 - alpha_bar_t) eps, so grad log q(x_t | x_0) = -(x_t - sqrt(alpha_bar_t) x_0) / "
    "(1 - alpha_bar_t) = -eps / sqrt(1 - alpha_bar_t): one square root survives.",
)
def _(eps, t, betas):
    return _scaled(eps, t, 1 - _alpha_bars(betas), power=1.0)


@score_from_eps.mistake(
    "multiplied",
    "you multiplied by sqrt(1 - alpha_bar_t); divide by it. The score grows as the noise "
    "shrinks: at small t a tiny noise is a steep slope of log q_t.",
)
def _(eps, t, betas):
    return _scaled(eps, t, 1 - _alpha_bars(betas), power=-0.5)


@score_from_eps.mistake(
    "unscaled",
    "you returned -eps without dividing by sqrt(1 - alpha_bar_t). That has the score's direction "
    "but not its size; the score is -eps / sqrt(1 - alpha_bar_t).",
)
def _(eps, t, betas):
    return -eps


@score_from_eps.mistake(
    "signal-coefficient",
    "you divided by sqrt(alpha_bar_t), the coefficient of x_0 in eq. 4; the score is divided by "
    "the coefficient of the noise, sqrt(1 - alpha_bar_t).",
)
def _(eps, t, betas):
    return _scaled(eps, t, _alpha_bars(betas))


@score_from_eps.mistake(
    "alpha-instead-of-alpha-bar",
    "you used one step's alpha_t (so divided by sqrt(beta_t)); the noise in x_t is all t steps' "
    "noise, with variance 1 - alpha_bar_t.",
)
def _(eps, t, betas):
    return _scaled(eps, t, betas)


@score_from_eps.mistake(
    "t-minus-one",
    "t is off by one: you read `alpha_bar[t - 1]`. The noise in x_t has variance "
    "1 - alpha_bar_t, read at index t itself.",
)
def _(eps, t, betas):
    return _scaled(eps, t - 1, 1 - _alpha_bars(betas))


@score_from_eps.mistake(
    "t-plus-one",
    "t is off by one: you read `alpha_bar[t + 1]`, one step too much noise. Index t already "
    "stands for the paper's t + 1, so the noise in x_t has variance 1 - alpha_bar[t].",
)
def _(eps, t, betas):
    return _scaled(eps, t + 1, 1 - _alpha_bars(betas))


# ---------------------------------------------------------------------------------- tweedie-x0


def _tweedie_cases() -> list[dict[str, Any]]:
    return [
        {"x_t": x_t, "t": t, "score": s, "betas": betas}
        for betas, t, (x_t, s) in _draws(_SHAPES, 2)
    ]


@exercise(
    "tweedie-x0",
    chapter="07",
    title="Tweedie's formula: the denoised guess from the score",
    task=(
        "return E[x_0 | x_t] = (x_t + (1 - alpha_bar_t) score) / sqrt(alpha_bar_t), shape (B, ...): "
        "step from x_t along the score by the noise variance (Tweedie's formula gives "
        "E[sqrt(alpha_bar_t) x_0 | x_t]), then undo the scaling of x_0 in eq. 4."
    ),
    cases=_tweedie_cases,
    hint=_SHAPE_HINT,
)
def x0_from_score(x_t: Tensor, t: Tensor, score: Tensor, betas: Tensor) -> Tensor:
    schedule = NoiseSchedule(betas)
    ab = schedule.at(schedule.alpha_bars, t, x_t)
    return (x_t + (1 - ab) * score) / ab.sqrt()


def _tweedie(x_t: Tensor, score: Tensor, var: Tensor, scale: Tensor) -> Tensor:
    """(x_t + var * score) / scale: Tweedie's formula with a chosen step and rescaling."""
    return (x_t + var * score) / scale


@x0_from_score.mistake(
    "std-not-variance",
    "you stepped by sqrt(1 - alpha_bar_t) times the score; Tweedie's step is the noise variance, "
    "(1 - alpha_bar_t) times the score (check: -eps / sqrt(1 - ab) times (1 - ab) is "
    "-sqrt(1 - ab) eps, the noise to remove).",
)
def _(x_t, t, score, betas):
    ab = _at(_alpha_bars(betas), t, x_t)
    return _tweedie(x_t, score, (1 - ab).sqrt(), ab.sqrt())


@x0_from_score.mistake(
    "wrong-sign",
    "wrong sign: you stepped against the score. The score points towards higher density, "
    "towards the data: x_t + (1 - alpha_bar_t) score.",
)
def _(x_t, t, score, betas):
    ab = _at(_alpha_bars(betas), t, x_t)
    return _tweedie(x_t, -score, 1 - ab, ab.sqrt())


@x0_from_score.mistake(
    "not-rescaled",
    "you returned x_t + (1 - alpha_bar_t) score, which is E[sqrt(alpha_bar_t) x_0 | x_t], the "
    "shrunk signal; divide by sqrt(alpha_bar_t) to get E[x_0 | x_t].",
)
def _(x_t, t, score, betas):
    ab = _at(_alpha_bars(betas), t, x_t)
    return _tweedie(x_t, score, 1 - ab, torch.ones_like(ab))


@x0_from_score.mistake(
    "divided-by-alpha-bar",
    "you divided by alpha_bar_t; eq. 4 scales x_0 by sqrt(alpha_bar_t), so that is what to "
    "divide by.",
)
def _(x_t, t, score, betas):
    ab = _at(_alpha_bars(betas), t, x_t)
    return _tweedie(x_t, score, 1 - ab, ab)


@x0_from_score.mistake(
    "unit-variance",
    "you added the score itself, x_t + score: that is Tweedie's formula for noise of variance 1. "
    "The noise in x_t has variance 1 - alpha_bar_t, which multiplies the score.",
)
def _(x_t, t, score, betas):
    ab = _at(_alpha_bars(betas), t, x_t)
    return _tweedie(x_t, score, torch.ones_like(ab), ab.sqrt())


@x0_from_score.mistake(
    "t-minus-one",
    "t is off by one: you read `alpha_bar[t - 1]`; x_t's coefficients sit at index t.",
)
def _(x_t, t, score, betas):
    ab = _at(_alpha_bars(betas), t - 1, x_t)
    return _tweedie(x_t, score, 1 - ab, ab.sqrt())


@x0_from_score.mistake(
    "t-plus-one",
    "t is off by one: you read `alpha_bar[t + 1]`, the next step's; index t already stands for "
    "the paper's t + 1, so x_t's coefficients sit at index t itself.",
)
def _(x_t, t, score, betas):
    ab = _at(_alpha_bars(betas), t + 1, x_t)
    return _tweedie(x_t, score, 1 - ab, ab.sqrt())


# ------------------------------------------------------------------------------- langevin-step
_STEP_SIZES = [0.3, 0.05, 0.7]


def _langevin_cases() -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(7)
    return [
        {
            "x": torch.randn(shape, generator=g, dtype=torch.float64),
            "score": torch.randn(shape, generator=g, dtype=torch.float64),
            "step_size": step,
            "z": torch.randn(shape, generator=g, dtype=torch.float64),
        }
        for shape, step in zip(_SHAPES, _STEP_SIZES, strict=True)
    ]


@exercise(
    "langevin-step",
    chapter="07",
    title="One step of Langevin dynamics",
    task=(
        "return x + (step_size / 2) * score + sqrt(step_size) * z, shape of x: a gradient step "
        "up log p of size step_size / 2 plus Gaussian noise of variance step_size (z is a "
        "standard normal draw, given)."
    ),
    cases=_langevin_cases,
    hint="Every argument but step_size (a float) has x's shape: no reshaping is needed.",
)
def langevin_step(x: Tensor, score: Tensor, step_size: float, z: Tensor) -> Tensor:
    return x + step_size / 2 * score + math.sqrt(step_size) * z


def _langevin(x: Tensor, score: Tensor, drift: float, noise: float, z: Tensor) -> Tensor:
    return x + drift * score + noise * z


@langevin_step.mistake(
    "no-half",
    "the drift is (step_size / 2) * score; you took a full step_size. With noise of variance "
    "step_size that chain samples a distribution sharper than p (for a Gaussian, its variance "
    "halved): the 1/2 is what balances the gradient against the noise.",
)
def _(x, score, step_size, z):
    return _langevin(x, score, step_size, math.sqrt(step_size), z)


@langevin_step.mistake(
    "other-convention",
    "you wrote x + step_size * score + sqrt(2 step_size) z. That is Langevin dynamics too, in the "
    "other common convention (x + eps grad log p + sqrt(2 eps) z), but it is this task's update "
    "with twice the step size. Use the task's: x + (step_size / 2) score + sqrt(step_size) z.",
)
def _(x, score, step_size, z):
    return _langevin(x, score, step_size, math.sqrt(2 * step_size), z)


@langevin_step.mistake(
    "mixed-conventions",
    "you mixed the two conventions: drift (step_size / 2) score, but noise sqrt(2 step_size) z. "
    "The noise is then too strong for the drift and the chain samples a distribution wider than p "
    "(for a Gaussian, twice its variance). With drift (step_size / 2) score the noise is "
    "sqrt(step_size) z.",
)
def _(x, score, step_size, z):
    return _langevin(x, score, step_size / 2, math.sqrt(2 * step_size), z)


@langevin_step.mistake(
    "noise-not-sqrt",
    "you scaled z by step_size; the noise's variance is step_size, so its scale is "
    "sqrt(step_size). With small steps your chain has far too little noise and collapses onto "
    "the modes.",
)
def _(x, score, step_size, z):
    return _langevin(x, score, step_size / 2, step_size, z)


@langevin_step.mistake(
    "no-noise",
    "you left out the noise: x + (step_size / 2) score is gradient ascent on log p, which climbs "
    "to the nearest mode and stays there. The noise sqrt(step_size) z is what makes the chain "
    "sample p instead of maximise it.",
)
def _(x, score, step_size, z):
    return _langevin(x, score, step_size / 2, 0.0, z)


@langevin_step.mistake(
    "descent",
    "wrong sign on the score: you stepped down log p, away from the data. The score points "
    "towards higher density; add it: x + (step_size / 2) score.",
)
def _(x, score, step_size, z):
    return _langevin(x, score, -step_size / 2, math.sqrt(step_size), z)


# ----------------------------------------------------------------------------- rate-from-terms
_NUM_DIMS = [784, 2, 10]


def _rate_cases() -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(11)
    out = []
    for (batch, steps), num_dims in zip([(3, 12), (2, 20), (4, 16)], _NUM_DIMS, strict=True):
        # Positive like real KLs, and of different sizes, so that every mistake shows.
        prior = torch.rand(batch, generator=g, dtype=torch.float64) + 0.5
        terms = torch.rand(batch, steps, generator=g, dtype=torch.float64) * 3 + 0.1
        out.append({"prior": prior, "terms": terms, "num_dims": num_dims})
    return out


def _bits_per_dim(nats: Tensor, num_dims: int) -> Tensor:
    return nats / (num_dims * math.log(2))


def _tail_sums(terms: Tensor) -> Tensor:
    """sum_{s >= t} terms[:, s] for every t, shape (B, T)."""
    return terms.flip(1).cumsum(dim=1).flip(1)


@exercise(
    "rate-from-terms",
    chapter="07",
    title="The rate of progressive coding",
    task=(
        "return rate, shape (B, T), in bits per dimension: rate[:, t] is what a receiver has been "
        "sent once it holds x_t, the prior term plus the terms of every reverse step before it, "
        "(prior + sum over s > t of terms[:, s]) / (num_dims ln 2). `prior` is L_T (B,), `terms` "
        "(B, T) are the bound's other terms in nats (terms[:, s] is the step out of x_s)."
    ),
    cases=_rate_cases,
    hint=(
        "One rate per example and step: add the prior (B,) as `prior[:, None]` to a (B, T) table "
        "of sums of the later terms."
    ),
)
def cumulative_rate(prior: Tensor, terms: Tensor, num_dims: int) -> Tensor:
    later = _tail_sums(terms) - terms  # sum over s > t: the steps x_T -> ... -> x_t
    return _bits_per_dim(prior[:, None] + later, num_dims)


@cumulative_rate.mistake(
    "includes-own-term",
    "off by one: you added terms[:, t] as well. That term pays for the step out of x_t to "
    "x_{t-1}, which is sent after x_t is received; the rate at t sums the terms with s > t only.",
)
def _(prior, terms, num_dims):
    return _bits_per_dim(prior[:, None] + _tail_sums(terms), num_dims)


@cumulative_rate.mistake(
    "wrong-direction",
    "you summed the terms from t = 0 upwards. The receiver gets x_T first and x_0 last, so the "
    "rate at t is the prior plus the terms of the steps *above* t: sum over s > t (a cumulative "
    "sum from the end, e.g. `terms.flip(1).cumsum(1).flip(1)` minus the term itself).",
)
def _(prior, terms, num_dims):
    return _bits_per_dim(prior[:, None] + terms.cumsum(dim=1), num_dims)


@cumulative_rate.mistake(
    "no-prior",
    "you left out the prior term L_T: x_T itself must be sent first, and it costs L_T (tiny for "
    "a good schedule, but part of the rate).",
)
def _(prior, terms, num_dims):
    return _bits_per_dim(_tail_sums(terms) - terms, num_dims)


@cumulative_rate.mistake(
    "nats",
    "you returned nats per dimension: the terms are natural-log KLs; divide by ln 2 to get bits.",
)
def _(prior, terms, num_dims):
    return (prior[:, None] + _tail_sums(terms) - terms) / num_dims


@cumulative_rate.mistake(
    "times-ln2",
    "you multiplied by ln 2; bits = nats / ln 2 (one bit is ln 2 = 0.693 nats, so there are more "
    "bits than nats).",
)
def _(prior, terms, num_dims):
    return (prior[:, None] + _tail_sums(terms) - terms) * math.log(2) / num_dims


@cumulative_rate.mistake(
    "not-per-dim",
    "you returned bits per example; divide by num_dims as well for bits per dimension, the unit "
    "of the paper's Figure 5 and Table 2.",
)
def _(prior, terms, num_dims):
    return _bits_per_dim(prior[:, None] + _tail_sums(terms) - terms, 1)
