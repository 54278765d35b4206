"""Exercises that answer at once, and say what is wrong.

A chapter notebook poses an exercise in two cells. The first, tagged ``solution``, holds the
instructor's answer (students get a stub in its place, see ``python -m ddpm_teach.course student``):

    def q_sample(x0, t, betas, noise):
        '''x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise (eq. 4).'''
        ...

The next cell hands the function to :func:`check`, as its last line so that the result shows:

    from ddpm_teach.exercises import check
    check("q-sample", q_sample)

``check`` runs the function on a few fixed inputs and compares it with a reference built on
:mod:`ddpm_teach.schedule`. When it disagrees, it runs known-wrong variants of the reference
("mistake models": t off by one, a missing square root, variance used as a standard deviation, ...)
on the same inputs; a variant that reproduces the student's output on every input names the
mistake. Messages hold no timings and only rounded numbers, so stored outputs stay reproducible.

Conventions shared by every exercise here: ``t`` is a LongTensor of shape (B,), one step index per
batch element, index t standing for the paper's t + 1 (as in :mod:`ddpm_teach.schedule`); ``betas`` is
the float64 schedule, shape (T,); data tensors have shape (B, ...).

When the environment variable ``DDPM_TEACH_GRADING`` names a file, every check appends one JSON line
``{"exercise", "passed", "mistake", "message"}`` to it: that is how the grader reads results.

Exercises live below grouped by chapter; a chapter adds its own with :func:`exercise` and
``@<exercise>.mistake``.
"""

from __future__ import annotations

import inspect
import json
import os
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .schedule import NoiseSchedule

__all__ = [
    "EXERCISES",
    "GRADING_ENV",
    "CheckResult",
    "Exercise",
    "Mistake",
    "check",
    "exercise",
    "exercises_for_chapter",
    "get_exercise",
]

#: Environment variable naming the JSON-lines file that :func:`check` appends results to.
GRADING_ENV = "DDPM_TEACH_GRADING"

#: Every registered exercise by id, in the order the chapters introduce them.
EXERCISES: dict[str, Exercise] = {}

# Loose enough for a float32 implementation, far tighter than any mistake model's error.
RTOL, ATOL = 1e-4, 1e-6

NOT_ATTEMPTED = "not-attempted"


# ---------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class CheckResult:
    """The verdict of :func:`check`; shows as its message in a notebook (markdown and plain text).

    passed:   True when the function matched the reference on every test input.
    message:  "✅ correct ..." or the diagnosis, in markdown.
    mistake:  the name of the mistake model that explained the output, "not-attempted" for a
              stub, None otherwise.
    """

    exercise: str
    passed: bool
    message: str
    mistake: str | None = None

    def __repr__(self) -> str:
        return self.message

    def _repr_markdown_(self) -> str:
        return self.message


@dataclass(frozen=True)
class Mistake:
    """A known-wrong variant of an exercise's reference, with what to tell the student."""

    name: str
    message: str
    fn: Callable[..., Any]


@dataclass
class Exercise:
    """One exercise: the reference, the inputs to try, and the mistakes worth recognising.

    id:        the name notebooks pass to :func:`check`, e.g. "q-sample".
    chapter:   the book.toml id of the chapter that poses it, e.g. "02".
    title:     a few words for tables.
    task:      what to implement, restated in student stubs and in messages.
    reference: the correct function; its name and signature are the ones students implement.
    cases:     returns the test inputs, a list of {argument name: value}; must be deterministic.
    normalize: maps an output to the form compared (e.g. broadcast a variance); defaults to itself.
    hint:      added to a wrong-shape message.
    """

    id: str
    chapter: str
    title: str
    task: str
    reference: Callable[..., Any]
    cases: Callable[[], list[dict[str, Any]]]
    normalize: Callable[[Any], Any] | None = None
    hint: str = ""
    mistakes: list[Mistake] = field(default_factory=list)

    @property
    def function_name(self) -> str:
        return self.reference.__name__

    @property
    def signature(self) -> str:
        """``name(arg, ...)`` as students should define it."""
        params = ", ".join(inspect.signature(self.reference).parameters)
        return f"{self.function_name}({params})"

    def mistake(self, name: str, message: str) -> Callable[[Callable], Mistake]:
        """Decorator registering a mistake model: same signature as the reference, wrong result."""
        if any(m.name == name for m in self.mistakes):
            raise ValueError(f"name: exercise {self.id!r} already has a mistake called {name!r}")

        def register(fn: Callable) -> Mistake:
            found = Mistake(name, message, fn)
            self.mistakes.append(found)
            return found

        return register

    # ------------------------------------------------------------------ running a check
    def _call(self, fn: Callable, case: dict[str, Any]) -> Any:
        # Positional, so a student who renames a parameter is not failed for it; fresh copies, so
        # a function that writes into its inputs cannot spoil the next call.
        args = [v.clone() if isinstance(v, Tensor) else v for v in case.values()]
        out = fn(*args)
        if self.normalize is not None:
            try:
                out = self.normalize(out)
            except Exception:  # a malformed output is reported by the comparison instead
                pass
        return out

    def run(self, fn: Callable) -> CheckResult:
        """Check ``fn`` against the reference and diagnose the first mismatch (see module doc)."""
        name = f"`{getattr(fn, '__name__', self.function_name)}`"
        cases = self.cases()
        expected = [self._call(self.reference, case) for case in cases]
        got = []
        for i, case in enumerate(cases):
            try:
                got.append(self._call(fn, case))
            except NotImplementedError:
                return self._result(
                    False,
                    f"⏳ not attempted yet: replace the stub (`raise NotImplementedError`) in {name} "
                    f"with your code. The task: {self.task}",
                    NOT_ATTEMPTED,
                )
            except Exception as exc:
                # Broadcasting errors nearly always mean a coefficient of shape (B,) met (B, ...).
                broadcast = "size of tensor" in str(exc) and self.hint
                return self._result(
                    False,
                    f"❌ {name} raised an error on test input {i + 1} of {len(cases)} "
                    f"({_describe(case)}):\n\n{_exception_summary(exc, fn)}"
                    + (f"\n\n{self.hint}" if broadcast else ""),
                    "exception",
                )
        diffs = [_difference(e, g) for e, g in zip(expected, got, strict=True)]
        if all(d is None for d in diffs):
            return self._result(
                True, f"✅ correct: {name} matches the reference on all {len(cases)} test inputs."
            )
        for mistake in self.mistakes:
            if self._reproduces(mistake, cases, got):
                return self._result(False, f"❌ {mistake.message}", mistake.name)
        i, (kind, detail) = next((i, d) for i, d in enumerate(diffs) if d is not None)
        where = f"test input {i + 1} of {len(cases)} ({_describe(cases[i])})"
        if kind == "shape":
            hint = f" {self.hint}" if self.hint else ""
            return self._result(False, f"❌ wrong shape on {where}: {detail}.{hint}", "shape")
        if kind == "type":
            return self._result(False, f"❌ on {where}, {name} {detail}", "type")
        if _is_random(self, fn, cases[0]):
            return self._result(
                False,
                f"❌ {name} gives a different answer each time it runs on the same input: use the "
                "noise passed in as an argument instead of drawing new noise.",
                "random",
            )
        return self._result(
            False,
            f"❌ wrong values on {where}: {detail}. None of the common mistakes explains it; "
            f"compare your code with the task term by term: {self.task}",
            "values",
        )

    def _reproduces(self, mistake: Mistake, cases: list[dict], got: list[Any]) -> bool:
        try:
            outs = [self._call(mistake.fn, case) for case in cases]
        except Exception:  # a mistake model that cannot run on these inputs explains nothing
            return False
        return all(_difference(o, g) is None for o, g in zip(outs, got, strict=True))

    def _result(self, passed: bool, message: str, mistake: str | None = None) -> CheckResult:
        return CheckResult(self.id, passed, message, mistake)


def _is_random(ex: Exercise, fn: Callable, case: dict[str, Any]) -> bool:
    try:
        return _difference(ex._call(fn, case), ex._call(fn, case)) is not None
    except Exception:
        return False


# ---------------------------------------------------------------------------------- registry
def exercise(
    id: str,
    *,
    chapter: str,
    title: str,
    task: str,
    cases: Callable[[], list[dict[str, Any]]],
    normalize: Callable[[Any], Any] | None = None,
    hint: str = "",
) -> Callable[[Callable], Exercise]:
    """Decorator: register the decorated function as the reference of a new exercise.

    Returns the :class:`Exercise`, whose ``.mistake(name, message)`` decorates mistake models.
    """
    if not id or not isinstance(id, str) or id != id.strip() or " " in id:
        raise ValueError(f"id: expected a short name without spaces such as 'q-sample', got {id!r}")
    if id in EXERCISES:
        raise ValueError(f"id: an exercise called {id!r} is already registered")

    def register(reference: Callable) -> Exercise:
        ex = Exercise(id, chapter, title, task, reference, cases, normalize, hint)
        EXERCISES[id] = ex
        return ex

    return register


def get_exercise(exercise_id: str) -> Exercise:
    """The registered exercise called ``exercise_id``; a clear error listing the known ids if none."""
    try:
        return EXERCISES[exercise_id]
    except (KeyError, TypeError):
        known = ", ".join(EXERCISES)
        raise ValueError(
            f"exercise_id: no exercise called {exercise_id!r}; known exercises: {known}"
        ) from None


def exercises_for_chapter(chapter: str) -> list[Exercise]:
    """The exercises a chapter (book.toml id, e.g. "02") poses, in registration order."""
    return [ex for ex in EXERCISES.values() if ex.chapter == chapter]


def check(exercise_id: str, fn: Callable[..., Any]) -> CheckResult:
    """Run ``fn`` on the exercise's test inputs and return the verdict (see the module doc).

    Never raises for a wrong answer or an error inside ``fn``: those become the message.
    """
    ex = get_exercise(exercise_id)
    if not callable(fn):
        result = ex._result(
            False,
            f"❌ expected your function `{ex.function_name}` itself (without calling it), got "
            f"an object of type `{type(fn).__name__}`: write "
            f"`check({exercise_id!r}, {ex.function_name})`.",
            "type",
        )
    else:
        result = ex.run(fn)
    trace = os.environ.get(GRADING_ENV)
    if trace:
        record = {
            "exercise": result.exercise,
            "passed": result.passed,
            "mistake": result.mistake,
            "message": result.message,
        }
        with open(trace, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return result


# ---------------------------------------------------------------------------------- comparing
def _as_tensor(x: Any) -> Tensor | None:
    if isinstance(x, Tensor):
        return x.detach()
    if isinstance(x, (int, float, np.ndarray, np.generic)) and not isinstance(x, bool):
        return torch.as_tensor(x)
    return None


def _difference(expected: Any, got: Any) -> tuple[str, str] | None:
    """None when ``got`` matches ``expected``, else (kind, what differs): kind is type|shape|values."""
    if isinstance(expected, tuple):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            return "type", f"returned {_kind(got)}; expected a tuple of {len(expected)} tensors."
        for k, (e, g) in enumerate(zip(expected, got, strict=True)):
            diff = _difference(e, g)
            if diff is not None:
                return diff[0], f"output {k + 1} of {len(expected)}: {diff[1]}"
        return None
    g = _as_tensor(got)
    if g is None:
        if got is None:
            return "type", "returned None: did you forget the `return` statement?"
        return "type", f"returned {_kind(got)}; expected a torch.Tensor."
    e = expected.detach()
    if g.shape != e.shape:
        return "shape", f"expected shape {tuple(e.shape)}, got {tuple(g.shape)}"
    g, e = g.to(torch.float64).cpu(), e.to(torch.float64).cpu()
    if not torch.isfinite(g).all():
        idx = _index(~torch.isfinite(g))
        return "values", f"non-finite value {g[idx].item()} at index {idx}"
    if torch.allclose(g, e, rtol=RTOL, atol=ATOL):
        return None
    err = (g - e).abs()
    idx = _index(err == err.max())
    return "values", (
        f"largest error {err[idx].item():.3g} at index {idx}: "
        f"expected {e[idx].item():.4g}, got {g[idx].item():.4g}"
    )


def _index(mask: Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in mask.nonzero()[0]) if mask.ndim else ()


def _kind(x: Any) -> str:
    if isinstance(x, (tuple, list)):
        return f"a {type(x).__name__} of {len(x)}"
    return "None" if x is None else f"a {type(x).__name__}"


def _describe(case: dict[str, Any]) -> str:
    """Arguments in a line: small integer tensors by value, others by shape, schedules by T."""
    parts = []
    for name, v in case.items():
        if isinstance(v, Tensor) and name == "betas":
            parts.append(f"betas with T={v.numel()}")
        elif isinstance(v, Tensor) and not v.dtype.is_floating_point and v.numel() <= 8:
            parts.append(f"{name}={v.tolist()}")
        elif isinstance(v, Tensor):
            parts.append(f"{name} of shape {tuple(v.shape)}")
        else:
            parts.append(f"{name}={v!r}")
    return ", ".join(parts)


def _exception_summary(exc: BaseException, fn: Callable) -> str:
    """The failing line of the student's own code (not torch's internals) and the error."""
    frames = traceback.extract_tb(exc.__traceback__)
    own = getattr(getattr(fn, "__code__", None), "co_filename", None)
    mine = [f for f in frames if f.filename == own]
    lines = []
    if mine:
        frame = mine[-1]
        code = (frame.line or "").strip()
        lines.append(f"    line {frame.lineno}: {code}" if code else f"    line {frame.lineno}")
    text = str(exc).strip().splitlines()
    detail = text[0] if text else ""
    if len(detail) > 300:
        detail = detail[:300] + "..."
    lines.append(f"    {type(exc).__name__}: {detail}" if detail else f"    {type(exc).__name__}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- test inputs
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


# ================================================================= chapter 01: Gaussian noising
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


# ================================================================= chapter 02: the closed form
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


# ================================================================= chapter 03: the reverse chain
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
