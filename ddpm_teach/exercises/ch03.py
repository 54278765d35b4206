"""Chapter 03 exercises: the reverse chain.

posterior-mean-var   q(x_{t-1} | x_t, x_0), eqs. 6-7
predict-x0           x_0 from the predicted noise, eq. 4 inverted
ddpm-step            one ancestral step of Algorithm 2 (eq. 11 plus noise)
l-simple             the training loss of a batch, eq. 14
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..sampling import ddpm_step
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


# ------------------------------------------------------------------------------------ ddpm-step
def _reverse_step_cases() -> list[dict[str, Any]]:
    return [
        {"x_t": xt, "t": t, "eps": e, "z": z, "betas": betas}
        for betas, t, (xt, e, z) in _draws(_SHAPES, 3)
    ]


@exercise(
    "ddpm-step",
    chapter="03",
    title="One step of the reverse chain",
    task=(
        "one ancestral step x_t -> x_{t-1} of Algorithm 2: return "
        "1 / sqrt(alpha_t) (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) + sigma_t z (eq. 11 plus "
        "noise), with sigma_t^2 = beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t "
        "and alpha_bar_{t-1} = 1 at t = 0 (so the last step adds no noise)."
    ),
    cases=_reverse_step_cases,
    hint=_SHAPE_HINT,
)
def reverse_step(x_t: Tensor, t: Tensor, eps: Tensor, z: Tensor, betas: Tensor) -> Tensor:
    return ddpm_step(NoiseSchedule(betas), eps, x_t, t, noise=z, variance="small")


def _step_formula(x_t, eps, z, a, ab, b, sigma):
    """Eq. 11 plus noise from its coefficients, so that each mistake below changes one thing."""
    return (x_t - b / (1 - ab).sqrt() * eps) / a.sqrt() + sigma * z


def _step_coefs(t: Tensor, betas: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(alpha_t, alpha_bar_t, beta_t, beta_tilde_t) read at t and shaped for x."""
    a, ab, ab_prev, b = _posterior_coefs(t, betas, x)
    return a, ab, b, (1 - ab_prev) / (1 - ab) * b


@reverse_step.mistake(
    "beta-as-variance",
    "the noise is too large: sigma_t^2 = beta_t is the other choice of section 3.2 (and it adds "
    "noise even on the last step, t = 0); this exercise asks for the posterior variance "
    "beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t. The mean is right.",
)
def _(x_t, t, eps, z, betas):
    a, ab, b, _ = _step_coefs(t, betas, x_t)
    return _step_formula(x_t, eps, z, a, ab, b, b.sqrt())


@reverse_step.mistake(
    "beta-as-variance-no-noise-at-0",
    "sigma_t^2 = beta_t is the other choice of section 3.2 (you did skip the noise at t = 0); "
    "this exercise asks for the posterior variance beta_tilde_t = (1 - alpha_bar_{t-1}) / "
    "(1 - alpha_bar_t) beta_t, which is 0 at t = 0 by itself. The mean is right.",
)
def _(x_t, t, eps, z, betas):
    a, ab, b, _ = _step_coefs(t, betas, x_t)
    last = _at((torch.arange(len(betas)) > 0).to(b.dtype), t, x_t)
    return _step_formula(x_t, eps, z, a, ab, b, last * b.sqrt())


@reverse_step.mistake(
    "variance-as-std",
    "variance used as a standard deviation: you multiplied z by beta_tilde_t; the noise's scale "
    "is sigma_t = sqrt(beta_tilde_t). The mean is right.",
)
def _(x_t, t, eps, z, betas):
    a, ab, b, var = _step_coefs(t, betas, x_t)
    return _step_formula(x_t, eps, z, a, ab, b, var)


@reverse_step.mistake(
    "no-noise",
    "you returned the mean mu_theta(x_t, t) only; an ancestral step samples p_theta(x_{t-1} | "
    "x_t), so add sigma_t z (without it every sample collapses towards the modes).",
)
def _(x_t, t, eps, z, betas):
    a, ab, b, _ = _step_coefs(t, betas, x_t)
    return _step_formula(x_t, eps, z, a, ab, b, 0.0)


@reverse_step.mistake(
    "returned-x0",
    "you returned the predicted x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t), the "
    "end of the chain; one step goes only from x_t to x_{t-1}: "
    "1 / sqrt(alpha_t) (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) + sigma_t z.",
)
def _(x_t, t, eps, z, betas):
    return _x0_with(_alpha_bars(betas), x_t, t, eps)


@reverse_step.mistake(
    "alpha-bar-in-front",
    "the factor in front is 1 / sqrt(alpha_t), which undoes one forward step's shrinking; "
    "1 / sqrt(alpha_bar_t) undoes all t of them at once.",
)
def _(x_t, t, eps, z, betas):
    _, ab, b, var = _step_coefs(t, betas, x_t)
    return _step_formula(x_t, eps, z, ab, ab, b, var.sqrt())


@reverse_step.mistake(
    "sqrt-missing-eps-coef",
    "the square root is missing in the noise coefficient: it is beta_t / sqrt(1 - alpha_bar_t), "
    "since the noise in x_t has standard deviation sqrt(1 - alpha_bar_t).",
)
def _(x_t, t, eps, z, betas):
    a, ab, b, var = _step_coefs(t, betas, x_t)
    return (x_t - b / (1 - ab) * eps) / a.sqrt() + var.sqrt() * z


@reverse_step.mistake(
    "alpha-instead-of-alpha-bar",
    "you used alpha_t where alpha_bar_t belongs in the noise coefficient: it is "
    "beta_t / sqrt(1 - alpha_bar_t), because eps is the noise of all t steps (eq. 4), not one.",
)
def _(x_t, t, eps, z, betas):
    a, _, b, var = _step_coefs(t, betas, x_t)
    return _step_formula(x_t, eps, z, a, a, b, var.sqrt())


@reverse_step.mistake(
    "wrong-sign",
    "wrong sign: you added the predicted noise; the step removes it: "
    "x_t - beta_t / sqrt(1 - alpha_bar_t) eps.",
)
def _(x_t, t, eps, z, betas):
    a, ab, b, var = _step_coefs(t, betas, x_t)
    return _step_formula(x_t, -eps, z, a, ab, b, var.sqrt())


@reverse_step.mistake(
    "t-minus-one",
    "t is off by one: every coefficient is read at t - 1. Index t is x_t's own step; only "
    "alpha_bar_{t-1} (inside beta_tilde_t) looks one step back.",
)
def _(x_t, t, eps, z, betas):
    a, ab, b, var = _step_coefs(t - 1, betas, x_t)
    return _step_formula(x_t, eps, z, a, ab, b, var.sqrt())


# ------------------------------------------------------------------------------------ l-simple
class _FixedNet:
    """A fixed stand-in for eps_theta: (x_t (B, ...), t LongTensor (B,)) -> (B, ...).

    Nonlinear in x_t and dependent on t, so that feeding it the wrong input or step shows.
    """

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        scale = (0.5 + 0.1 * t.to(x_t.dtype)).reshape(-1, *([1] * (x_t.ndim - 1)))
        return torch.tanh(scale * x_t) - 0.3 * x_t

    def __repr__(self) -> str:
        return "<a fixed test network>"


def _l_simple_cases() -> list[dict[str, Any]]:
    return [
        {"model": _FixedNet(), "x0": x0, "t": t, "eps": e, "betas": betas}
        for betas, t, (x0, e) in _draws(_SHAPES, 2)
    ]


def _scalar(out: Any) -> Any:
    # Accept a 0-d tensor, a one-element tensor or a Python float alike.
    if isinstance(out, (Tensor, float)) and torch.as_tensor(out).numel() == 1:
        return torch.as_tensor(out).reshape(())
    return out


@exercise(
    "l-simple",
    chapter="03",
    title="The loss L_simple for a batch",
    task=(
        "return L_simple (eq. 14) for the batch as one number: make x_t = sqrt(alpha_bar_t) x0 + "
        "sqrt(1 - alpha_bar_t) eps (eq. 4), call model(x_t, t), and return the mean over every "
        "value of (eps - model(x_t, t))^2, as `F.mse_loss` computes it."
    ),
    cases=_l_simple_cases,
    normalize=_scalar,
    hint=_SHAPE_HINT,
)
def l_simple(
    model: Callable[[Tensor, Tensor], Tensor], x0: Tensor, t: Tensor, eps: Tensor, betas: Tensor
) -> Tensor:
    x_t = NoiseSchedule(betas).q_sample(x0, t, noise=eps)
    return F.mse_loss(model(x_t, t), eps)


def _noised(ab: Tensor, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    a = _at(ab, t, x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * eps


@l_simple.mistake(
    "x0-target",
    "you compared the network's output with x_0; an epsilon-network is trained to predict the "
    "noise eps that made x_t (eq. 14): the target is eps.",
)
def _(model, x0, t, eps, betas):
    return ((model(_noised(_alpha_bars(betas), x0, t, eps), t) - x0) ** 2).mean()


@l_simple.mistake(
    "model-on-x0",
    "you fed the clean x_0 to the network; it must see the noisy x_t = sqrt(alpha_bar_t) x_0 + "
    "sqrt(1 - alpha_bar_t) eps, and find the eps in it.",
)
def _(model, x0, t, eps, betas):
    return ((model(x0, t) - eps) ** 2).mean()


@l_simple.mistake(
    "variance-as-std",
    "x_t is built with alpha_bar_t and 1 - alpha_bar_t, the variances; eq. 4 scales x_0 and eps "
    "by their square roots.",
)
def _(model, x0, t, eps, betas):
    a = _at(_alpha_bars(betas), t, x0)
    return ((model(a * x0 + (1 - a) * eps, t) - eps) ** 2).mean()


@l_simple.mistake(
    "alpha-instead-of-alpha-bar",
    "x_t is built with one step's alpha_t; x_t is x_0 after t + 1 steps, so eq. 4 uses the "
    "cumulative product alpha_bar_t.",
)
def _(model, x0, t, eps, betas):
    return ((model(_noised(1 - betas, x0, t, eps), t) - eps) ** 2).mean()


@l_simple.mistake(
    "sum-over-dims",
    "you summed the squared errors over each example's values (eq. 14's squared norm, read "
    "literally) and averaged over the batch; the task asks for the mean over every value, as "
    "`F.mse_loss` and the trainer compute it: the same minimiser, a number D times smaller.",
)
def _(model, x0, t, eps, betas):
    err = (model(_noised(_alpha_bars(betas), x0, t, eps), t) - eps) ** 2
    return err.reshape(len(err), -1).sum(dim=1).mean()


@l_simple.mistake(
    "sum",
    "you returned the sum of the squared errors; the task asks for their mean (`F.mse_loss`), so "
    "that the loss does not grow with the batch size.",
)
def _(model, x0, t, eps, betas):
    return ((model(_noised(_alpha_bars(betas), x0, t, eps), t) - eps) ** 2).sum()


@l_simple.mistake(
    "per-example",
    "you returned one loss per example (shape (B,)); average them too: the loss is one number.",
)
def _(model, x0, t, eps, betas):
    err = (model(_noised(_alpha_bars(betas), x0, t, eps), t) - eps) ** 2
    return err.reshape(len(err), -1).mean(dim=1)


@l_simple.mistake(
    "absolute-error",
    "you averaged |eps - model(x_t, t)|, an L1 loss; L_simple squares the error.",
)
def _(model, x0, t, eps, betas):
    return (model(_noised(_alpha_bars(betas), x0, t, eps), t) - eps).abs().mean()


@l_simple.mistake(
    "root-mean-square",
    "you took the square root of the mean squared error; L_simple is the mean squared error "
    "itself.",
)
def _(model, x0, t, eps, betas):
    return ((model(_noised(_alpha_bars(betas), x0, t, eps), t) - eps) ** 2).mean().sqrt()
