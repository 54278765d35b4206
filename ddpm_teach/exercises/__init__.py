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

The mechanism lives here; the exercises themselves live one module a chapter (``ch01.py``,
``ch02.py``, ...), each registering its own with :func:`exercise` and ``@<exercise>.mistake``.
Every ``chNN`` module of this package is imported when this package is, so a new chapter's
exercises need no further wiring. Shared test-input helpers are in ``_inputs.py``.
"""

from __future__ import annotations

import inspect
import json
import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "EXERCISES",
    "GRADING_ENV",
    "CheckResult",
    "Exercise",
    "Mistake",
    "OutputFormError",
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
        # a function that writes into its inputs (dicts of tensors included) cannot spoil the
        # next call, nor the mistake models run on the same case afterwards.
        args = [_fresh(v) for v in case.values()]
        out = fn(*args)
        if self.normalize is not None:
            try:
                out = self.normalize(out)
            except OutputFormError:  # the exercise knows what is wrong with the output: say so
                raise
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
            except OutputFormError as err:
                return self._result(
                    False,
                    f"❌ on test input {i + 1} of {len(cases)} ({_describe(case)}), {name} {err}",
                    "type",
                )
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


class OutputFormError(ValueError):
    """Raised by an exercise's ``normalize`` when an output has the wrong form; its message (e.g.
    "returned a list of 3; expected a dict with the keys of `ema`") is shown to the student."""


def _fresh(value: Any) -> Any:
    """A copy of a case's argument that the function under test may modify freely."""
    if isinstance(value, Tensor):
        return value.clone()
    if isinstance(value, dict):
        return type(value)((k, _fresh(v)) for k, v in value.items())
    return value


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


def _load_chapters() -> None:
    """Import every ``chNN`` module of this package, which registers its exercises."""
    import importlib
    import pkgutil

    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("ch"):
            importlib.import_module(f"{__name__}.{info.name}")


_load_chapters()
