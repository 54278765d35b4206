"""Chapter 05 exercises: the pieces of a real training run (loss, EMA, warm-up).

Each reference calls the code the trainer runs (:mod:`ddpm_teach.training`,
:meth:`ddpm_teach.schedule.NoiseSchedule.target`), so passing the check means matching the trainer.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..schedule import NoiseSchedule
from ..training import Trainer, ema_update
from . import OutputFormError, _kind, exercise
from ._inputs import _alpha_bars, _at, _schedules

# ------------------------------------------------------------------------------ L_simple (eq. 14)
# One case per parameterisation, the v target twice (images and vectors).
_LOSS_CASES = [("eps", (4, 2)), ("x0", (3, 1, 4, 4)), ("v", (5, 3)), ("v", (2, 1, 3, 3))]


def _loss_cases() -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(5)
    schedules = _schedules()
    out = []
    for k, (prediction, shape) in enumerate(_LOSS_CASES):
        betas = schedules[k % len(schedules)]
        t = torch.randint(0, betas.numel(), (shape[0],), generator=g)
        x0, eps, model_out = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in "abc")
        out.append(
            {"model_out": model_out, "x0": x0, "eps": eps, "t": t, "betas": betas,
             "prediction": prediction}
        )  # fmt: skip
    return out


@exercise(
    "l-simple-loss",
    chapter="05",
    title="The training loss L_simple",
    task=(
        "return L_simple (eq. 14) for one batch as a 0-d tensor: the mean, over every element of "
        "the batch, of (model_out - target)^2, where the target is what the network is trained to "
        "output for x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps: eps for prediction "
        "'eps', x0 for 'x0', and v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x0 for 'v'."
    ),
    cases=_loss_cases,
    hint=(
        "L_simple is one number for the whole batch: average the squared errors over every "
        "element, e.g. `((model_out - target) ** 2).mean()`."
    ),
)
def l_simple(
    model_out: Tensor, x0: Tensor, eps: Tensor, t: Tensor, betas: Tensor, prediction: str
) -> Tensor:
    # The trainer's own line: F.mse_loss(out, schedule.target(x0, noise, t, prediction)).
    return F.mse_loss(model_out, NoiseSchedule(betas).target(x0, eps, t, prediction))


def _target(
    x0: Tensor,
    eps: Tensor,
    t: Tensor,
    betas: Tensor,
    prediction: str,
    v_sign: float = 1.0,
    v_swapped: bool = False,
) -> Tensor:
    """The target of eq. 14, or v with its sign flipped / its two coefficients swapped."""
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    ab = _at(_alpha_bars(betas), t, x0)
    a, b = ((1 - ab).sqrt(), ab.sqrt()) if v_swapped else (ab.sqrt(), (1 - ab).sqrt())
    return v_sign * (a * eps - b * x0)


@l_simple.mistake(
    "sum-not-mean",
    "you summed the squared errors over the whole batch; L_simple averages them (the default of "
    "`F.mse_loss`). A sum grows with the batch and the image size, so the learning rate that "
    "works would change whenever either does.",
)
def _(model_out, x0, eps, t, betas, prediction):
    return ((model_out - _target(x0, eps, t, betas, prediction)) ** 2).sum()


@l_simple.mistake(
    "sum-per-example",
    "you summed the squared errors over each example's elements and averaged over the batch: "
    "that is eq. 14's squared norm read literally, the mean times the number of elements per "
    "example. It trains the same network with a rescaled learning rate, but the trainer (like "
    "the paper's code) takes the mean over every element; use `.mean()` over everything.",
)
def _(model_out, x0, eps, t, betas, prediction):
    sq = (model_out - _target(x0, eps, t, betas, prediction)) ** 2
    return sq.flatten(1).sum(dim=1).mean()


@l_simple.mistake(
    "forgot-square",
    "you averaged the differences without squaring them: positive and negative errors cancel, "
    "so a terrible prediction can score 0. Square first: `((model_out - target) ** 2).mean()`.",
)
def _(model_out, x0, eps, t, betas, prediction):
    return (model_out - _target(x0, eps, t, betas, prediction)).mean()


@l_simple.mistake(
    "absolute-error",
    "you averaged absolute errors (an L1 loss). L_simple is a mean *squared* error: it comes "
    "from the KL divergence between Gaussians (eq. 12-14), which is quadratic in the mean.",
)
def _(model_out, x0, eps, t, betas, prediction):
    return (model_out - _target(x0, eps, t, betas, prediction)).abs().mean()


@l_simple.mistake(
    "always-eps",
    "you compared the output with eps whatever `prediction` says. Right for 'eps' only: a network "
    "trained with prediction 'x0' outputs x0, and with 'v' outputs v = sqrt(alpha_bar_t) eps - "
    "sqrt(1 - alpha_bar_t) x0.",
)
def _(model_out, x0, eps, t, betas, prediction):
    return ((model_out - eps) ** 2).mean()


@l_simple.mistake(
    "v-sign",
    "the v target has the wrong sign: v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x0 "
    "(Salimans & Ho 2022); you used its negative. The eps and x0 targets are right.",
)
def _(model_out, x0, eps, t, betas, prediction):
    target = _target(x0, eps, t, betas, prediction, v_sign=-1.0)
    return ((model_out - target) ** 2).mean()


@l_simple.mistake(
    "v-coefficients-swapped",
    "in v the coefficients are swapped: eps takes sqrt(alpha_bar_t) and x0 takes "
    "-sqrt(1 - alpha_bar_t), i.e. v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x0. The eps "
    "and x0 targets are right.",
)
def _(model_out, x0, eps, t, betas, prediction):
    target = _target(x0, eps, t, betas, prediction, v_swapped=True)
    return ((model_out - target) ** 2).mean()


# ------------------------------------------------------------------------------------- EMA
_EMA_KEYS = ("conv.weight", "conv.bias", "out.weight")


class _StateDict(dict):
    """A dict of tensors that prints briefly in check messages and compares entry by entry."""

    def __repr__(self) -> str:
        return "{" + ", ".join(f"{k!r}: shape {tuple(v.shape)}" for k, v in self.items()) + "}"

    def __eq__(self, other: object) -> bool:  # dict's == would ask a whole tensor for one bool
        return (
            isinstance(other, Mapping)
            and self.keys() == other.keys()
            and all(torch.equal(v, other[k]) for k, v in self.items())
        )

    __hash__ = None  # like dict


def _ema_cases() -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(6)
    shapes = {"conv.weight": (2, 1, 3, 3), "conv.bias": (2,), "out.weight": (1, 2)}

    def state(scale: float) -> _StateDict:
        return _StateDict(
            {k: scale * torch.randn(shapes[k], generator=g, dtype=torch.float64) for k in _EMA_KEYS}
        )

    # decay 0.5 keeps every mistake far from the answer; 0.9 and 0.999 are realistic.
    return [
        {"ema": state(1.0), "params": state(1.0), "decay": decay} for decay in (0.9, 0.5, 0.999)
    ]


def _ema_as_tuple(out: Any) -> Any:
    # Compare entry by entry, in a fixed key order; anything but a dict with ema's keys is named.
    if not isinstance(out, Mapping):
        raise OutputFormError(f"returned {_kind(out)}; expected a dict with the keys of `ema`.")
    missing = [k for k in _EMA_KEYS if k not in out]
    extra = [k for k in out if k not in _EMA_KEYS]
    problems = [f"missing {', '.join(map(repr, missing))}"] if missing else []
    problems += [f"extra {', '.join(map(repr, extra))}"] if extra else []
    if problems:
        raise OutputFormError(
            f"returned a dict whose keys differ from `ema`'s ({'; '.join(problems)})."
        )
    return tuple(out[k] for k in _EMA_KEYS)


@exercise(
    "ema-update",
    chapter="05",
    title="One EMA step",
    task=(
        "return a new dict with the same keys as `ema`, each entry decay * ema[k] + (1 - decay) * "
        "params[k]: the exponential moving average of the weights moves a share 1 - decay "
        "towards the current weights."
    ),
    cases=_ema_cases,
    normalize=_ema_as_tuple,
)
def ema_step(ema: dict[str, Tensor], params: dict[str, Tensor], decay: float) -> dict[str, Tensor]:
    # The trainer's own update (training.ema_update), applied to modules holding these tensors.
    def module(state: Mapping[str, Tensor]) -> nn.Module:  # entries in ema's key order
        return nn.ParameterList(nn.Parameter(state[k].clone(), requires_grad=False) for k in ema)

    average = module(ema)
    ema_update(average, module(params), decay)
    return dict(zip(ema, (p.detach() for p in average), strict=True))


@ema_step.mistake(
    "weights-swapped",
    "the weights are swapped: you kept 1 - decay of the average and took `decay` of the new "
    "weights. The average must keep most of itself (decay * ema); with decay = 0.999 your version "
    "is nearly a copy of the raw weights, so averaging would do nothing. (`torch.lerp(ema, "
    "params, w)` moves a share w towards params: use w = 1 - decay.)",
)
def _(ema, params, decay):
    return {k: (1 - decay) * ema[k] + decay * params[k] for k in ema}


@ema_step.mistake(
    "missing-one-minus-decay",
    "the new weights enter with weight 1 instead of 1 - decay: the two weights of an average "
    "must sum to one, otherwise the 'average' grows at every step.",
)
def _(ema, params, decay):
    return {k: decay * ema[k] + params[k] for k in ema}


@ema_step.mistake(
    "unchanged",
    "you returned the old average unchanged: the update was computed but not kept (rebinding a "
    "loop variable, `e = ...`, does not change the dict). Build and return a new dict.",
)
def _(ema, params, decay):
    return {k: ema[k].clone() for k in ema}


@ema_step.mistake(
    "returned-params",
    "you returned the current weights, not their average: the EMA is decay * ema + (1 - decay) "
    "* params, a slow-moving copy of them.",
)
def _(ema, params, decay):
    return {k: params[k].clone() for k in ema}


# ------------------------------------------------------------------------------ learning-rate warm-up
# (step, base_lr, warmup_steps): the first step, the middle and the end of a warm-up, after it,
# a long warm-up as in the paper (5000 steps), and none at all.
_LR_CASES = [
    (0, 0.1, 10),
    (4, 0.1, 10),
    (9, 0.1, 10),
    (25, 0.1, 10),
    (1999, 2e-4, 5000),
    (7, 0.3, 0),
]


def _lr_cases() -> list[dict[str, Any]]:
    return [{"step": s, "base_lr": lr, "warmup_steps": w} for s, lr, w in _LR_CASES]


def _as_float64(out: Any) -> Any:
    return torch.as_tensor(out, dtype=torch.float64)


@exercise(
    "warmup-lr",
    chapter="05",
    title="Learning-rate warm-up",
    task=(
        "return the learning rate of optimiser step `step` (counted from 0) under a linear warm-up: "
        "base_lr * min(1, (step + 1) / warmup_steps), so step 0 gets base_lr / warmup_steps and "
        "step warmup_steps - 1 reaches base_lr; with warmup_steps = 0, always base_lr."
    ),
    cases=_lr_cases,
    normalize=_as_float64,
)
def warmup_lr(step: int, base_lr: float, warmup_steps: int) -> float:
    # Trainer.lr_at reads only these fields; no decay after the warm-up in this exercise.
    config = SimpleNamespace(lr=base_lr, warmup_steps=warmup_steps, lr_decay="none", train_steps=0)
    return Trainer.lr_at(SimpleNamespace(config=config), step)


def _factor(step: int, warmup_steps: int, shift: int = 1, cap: bool = True) -> float:
    if warmup_steps == 0:
        return 1.0
    f = (step + shift) / warmup_steps
    return min(1.0, f) if cap else f


@warmup_lr.mistake(
    "starts-at-zero",
    "step 0 gets learning rate 0 (you used step / warmup_steps): the first step is wasted and "
    "the full rate arrives one step late. Steps count from 0, so use (step + 1) / warmup_steps.",
)
def _(step, base_lr, warmup_steps):
    return base_lr * _factor(step, warmup_steps, shift=0)


@warmup_lr.mistake(
    "no-cap",
    "the learning rate keeps growing after the warm-up: cap the factor at 1, "
    "min(1, (step + 1) / warmup_steps), so that it stays at base_lr from then on.",
)
def _(step, base_lr, warmup_steps):
    return base_lr * _factor(step, warmup_steps, cap=False)


@warmup_lr.mistake(
    "integer-division",
    "you used integer division `//`: the factor is 0 for the whole warm-up and jumps to 1 at its "
    "end. Use `/`.",
)
def _(step, base_lr, warmup_steps):
    return base_lr * (1.0 if warmup_steps == 0 else min(1, (step + 1) // warmup_steps))


@warmup_lr.mistake(
    "forgot-base-lr",
    "you returned the warm-up factor min(1, (step + 1) / warmup_steps) without multiplying it by "
    "base_lr.",
)
def _(step, base_lr, warmup_steps):
    return _factor(step, warmup_steps)
