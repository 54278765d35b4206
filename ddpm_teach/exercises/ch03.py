"""Chapter 03 exercises: the reverse chain."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..schedule import NoiseSchedule
from . import exercise
from ._inputs import _SHAPE_HINT, _SHAPES, _alpha_bars, _at, _draws


def _posterior_cases() -> list[dict[str, Any]]:
    return [
        {"x0": x0, "x_t": xt, "t": t, "betas": betas} for betas, t, (x0, xt) in _draws(_SHAPES, 2)
    ]


def _broadcast_variance(out: Any) -> Any:
    # Accept any variance shape that broadcasts to the mean's: (B,), (B, 1, ..., 1) or full.
    mean, var = out
    var = torch.as_tensor(var)
    if var.ndim == 1 and mean.ndim > 1 and var.shape[0] == mean.shape[0]:
        var = var.reshape(-1, *([1] * (mean.ndim - 1)))
    return mean, torch.broadcast_to(var, mean.shape)


@exercise(
    "posterior-mean-var",
    chapter="03",
    title="The posterior q(x_{t-1} | x_t, x_0)",
    task=(
        "return (mean, variance) of q(x_{t-1} | x_t, x_0) (eqs. 6-7): mean = sqrt(alpha_bar_{t-1}) "
        "beta_t / (1 - alpha_bar_t) x_0 + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) "
        "x_t and variance = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t, with "
        "alpha_bar_{t-1} = 1 at t = 0."
    ),
    cases=_posterior_cases,
    normalize=_broadcast_variance,
    hint=_SHAPE_HINT,
)
def q_posterior(x0: Tensor, x_t: Tensor, t: Tensor, betas: Tensor) -> tuple[Tensor, Tensor]:
    return NoiseSchedule(betas).q_posterior(x0, x_t, t)


def _posterior_coefs(
    t: Tensor, betas: Tensor, x: Tensor, ab_prev: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(alpha_t, alpha_bar_t, alpha_bar_{t-1}, beta_t) read at t and shaped for x."""
    ab = _alpha_bars(betas)
    if ab_prev is None:
        ab_prev = torch.cat([torch.ones(1, dtype=ab.dtype), ab[:-1]])
    return _at(1 - betas, t, x), _at(ab, t, x), _at(ab_prev, t, x), _at(betas, t, x)


def _posterior_formula(x0, x_t, a, ab, ab_prev, b):
    """Eq. 7 from its coefficients, so that each mistake below changes one thing."""
    mean = ab_prev.sqrt() * b / (1 - ab) * x0 + a.sqrt() * (1 - ab_prev) / (1 - ab) * x_t
    return mean, (1 - ab_prev) / (1 - ab) * b


@q_posterior.mistake(
    "alpha-bar-prev-wraps-at-0",
    "wrong at t = 0 only: there alpha_bar_{t-1} is the 'before the first step' value 1, but "
    "`alpha_bar[t - 1]` with t = 0 reads alpha_bar[-1], the last entry. Prepend a 1: "
    "`torch.cat([torch.ones(1), alpha_bar[:-1]])[t]`.",
)
def _(x0, x_t, t, betas):
    wrapped = _alpha_bars(betas).roll(1)  # entry t holds alpha_bar[t - 1], and [-1] at t = 0
    return _posterior_formula(x0, x_t, *_posterior_coefs(t, betas, x_t, ab_prev=wrapped))


@q_posterior.mistake(
    "beta-as-variance",
    "the variance is beta_t, the forward step's variance; the posterior's is smaller, "
    "beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * beta_t (eq. 7). The mean is right.",
)
def _(x0, x_t, t, betas):
    a, ab, ab_prev, b = _posterior_coefs(t, betas, x_t)
    mean, _ = _posterior_formula(x0, x_t, a, ab, ab_prev, b)
    return mean, b


@q_posterior.mistake(
    "std-as-variance",
    "std used as variance: you returned sqrt(beta_tilde_t), the standard deviation; the "
    "exercise asks for the variance beta_tilde_t itself. The mean is right.",
)
def _(x0, x_t, t, betas):
    mean, var = _posterior_formula(x0, x_t, *_posterior_coefs(t, betas, x_t))
    return mean, var.sqrt()


@q_posterior.mistake(
    "x0-xt-swapped",
    "x_0 and x_t are swapped in the mean: the coefficient with beta_t (and sqrt(alpha_bar_{t-1})) "
    "multiplies x_0, the one with sqrt(alpha_t) (1 - alpha_bar_{t-1}) multiplies x_t.",
)
def _(x0, x_t, t, betas):
    return _posterior_formula(x_t, x0, *_posterior_coefs(t, betas, x_t))


@q_posterior.mistake(
    "alpha-instead-of-alpha-bar",
    "you used alpha_t = 1 - beta_t where alpha_bar_t belongs (and alpha_{t-1} for "
    "alpha_bar_{t-1}): the posterior's coefficients use the cumulative products.",
)
def _(x0, x_t, t, betas):
    alphas = 1 - betas
    prev = torch.cat([torch.ones(1, dtype=alphas.dtype), alphas[:-1]])
    a = _at(alphas, t, x_t)
    return _posterior_formula(x0, x_t, a, a, _at(prev, t, x_t), _at(betas, t, x_t))


@q_posterior.mistake(
    "t-minus-one",
    "t is off by one: every coefficient is read at t - 1. Index t is x_t's step; only "
    "alpha_bar_{t-1} looks one step back.",
)
def _(x0, x_t, t, betas):
    return _posterior_formula(x0, x_t, *_posterior_coefs(t - 1, betas, x_t))


@q_posterior.mistake(
    "sqrt-missing-alpha-bar-prev",
    "the square root is missing on alpha_bar_{t-1} in the x_0 coefficient: it is "
    "sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t).",
)
def _(x0, x_t, t, betas):
    a, ab, ab_prev, b = _posterior_coefs(t, betas, x_t)
    mean = ab_prev * b / (1 - ab) * x0 + a.sqrt() * (1 - ab_prev) / (1 - ab) * x_t
    return mean, (1 - ab_prev) / (1 - ab) * b


@q_posterior.mistake(
    "sqrt-missing-alpha",
    "the square root is missing on alpha_t in the x_t coefficient: it is "
    "sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t).",
)
def _(x0, x_t, t, betas):
    a, ab, ab_prev, b = _posterior_coefs(t, betas, x_t)
    mean = ab_prev.sqrt() * b / (1 - ab) * x0 + a * (1 - ab_prev) / (1 - ab) * x_t
    return mean, (1 - ab_prev) / (1 - ab) * b


def _predict_x0_cases() -> list[dict[str, Any]]:
    return [
        {"x_t": xt, "t": t, "eps": e, "betas": betas} for betas, t, (xt, e) in _draws(_SHAPES, 2)
    ]


@exercise(
    "predict-x0",
    chapter="03",
    title="x_0 from the predicted noise",
    task=(
        "invert eq. 4 for the data: return x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / "
        "sqrt(alpha_bar_t)."
    ),
    cases=_predict_x0_cases,
    hint=_SHAPE_HINT,
)
def predict_x0(x_t: Tensor, t: Tensor, eps: Tensor, betas: Tensor) -> Tensor:
    return NoiseSchedule(betas).predict_x0_from_eps(x_t, t, eps)


def _x0_with(ab: Tensor, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    a = _at(ab, t, x_t)
    return (x_t - (1 - a).sqrt() * eps) / a.sqrt()


@predict_x0.mistake(
    "wrong-sign",
    "wrong sign: you added the noise term; x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, "
    "so x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t).",
)
def _(x_t, t, eps, betas):
    return _x0_with(_alpha_bars(betas), x_t, t, -eps)


@predict_x0.mistake(
    "sqrt-missing-alpha-bar",
    "the square root is missing on alpha_bar_t in the denominator: divide by sqrt(alpha_bar_t), "
    "the factor that scaled x_0.",
)
def _(x_t, t, eps, betas):
    a = _at(_alpha_bars(betas), t, x_t)
    return (x_t - (1 - a).sqrt() * eps) / a


@predict_x0.mistake(
    "variance-as-std",
    "variance used as a standard deviation: you removed (1 - alpha_bar_t) eps; the noise in x_t "
    "is sqrt(1 - alpha_bar_t) eps.",
)
def _(x_t, t, eps, betas):
    a = _at(_alpha_bars(betas), t, x_t)
    return (x_t - (1 - a) * eps) / a.sqrt()


@predict_x0.mistake(
    "forgot-divide",
    "you removed the noise but did not divide by sqrt(alpha_bar_t): x_t - sqrt(1 - alpha_bar_t) "
    "eps is sqrt(alpha_bar_t) x_0, not x_0.",
)
def _(x_t, t, eps, betas):
    a = _at(_alpha_bars(betas), t, x_t)
    return x_t - (1 - a).sqrt() * eps


@predict_x0.mistake(
    "multiplied",
    "you multiplied by sqrt(alpha_bar_t) where you must divide by it (eq. 4 scaled x_0 down; "
    "undoing it scales back up).",
)
def _(x_t, t, eps, betas):
    a = _at(_alpha_bars(betas), t, x_t)
    return (x_t - (1 - a).sqrt() * eps) * a.sqrt()


@predict_x0.mistake(
    "x0-eps-swapped",
    "x_0 and eps are swapped: you solved eq. 4 for the noise, (x_t - sqrt(alpha_bar_t) eps) / "
    "sqrt(1 - alpha_bar_t); solve it for x_0 instead.",
)
def _(x_t, t, eps, betas):
    a = _at(_alpha_bars(betas), t, x_t)
    return (x_t - a.sqrt() * eps) / (1 - a).sqrt()


@predict_x0.mistake(
    "alpha-instead-of-alpha-bar",
    "you used alpha_t = 1 - beta_t where alpha_bar_t belongs: x_t is x_0 after t + 1 steps, so "
    "its coefficients use the cumulative product alpha_bar_t.",
)
def _(x_t, t, eps, betas):
    return _x0_with(1 - betas, x_t, t, eps)


@predict_x0.mistake(
    "t-minus-one",
    "t is off by one: you used `alpha_bar[t - 1]`; x_t's own step is index t, use `alpha_bar[t]`.",
)
def _(x_t, t, eps, betas):
    return _x0_with(_alpha_bars(betas), x_t, t - 1, eps)


@predict_x0.mistake(
    "t-plus-one",
    "t is off by one: you used `alpha_bar[t + 1]`; x_t's own step is index t, use `alpha_bar[t]`.",
)
def _(x_t, t, eps, betas):
    return _x0_with(_alpha_bars(betas), x_t, t + 1, eps)
