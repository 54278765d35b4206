"""ddpm_teach.exercises: every reference passes, every mistake model is named, feedback is specific."""

from __future__ import annotations

import json

import pytest
import torch

from ddpm_teach import exercises
from ddpm_teach.exercises import EXERCISES, GRADING_ENV, CheckResult, check, exercise

PAIRS = [(ex.id, m.name) for ex in EXERCISES.values() for m in ex.mistakes]


@pytest.fixture
def registry():
    """Lets a test register exercises without leaking them into the others."""
    saved = dict(EXERCISES)
    yield EXERCISES
    EXERCISES.clear()
    EXERCISES.update(saved)


def test_the_early_chapters_exercises_are_registered():
    """The shipped exercises are registered under their chapters, in chapter order (chapters may add
    more; these must stay, since notebooks call them by id)."""
    shipped = {
        "01": ["one-forward-step"],
        "02": ["alpha-bar", "q-sample", "snr"],
        "03": ["posterior-mean-var", "predict-x0"],
    }
    for chapter, ids in shipped.items():
        registered = [ex.id for ex in exercises.exercises_for_chapter(chapter)]
        assert [i for i in registered if i in ids] == ids, (chapter, registered)
    chapters = [ex.chapter for ex in EXERCISES.values()]
    assert chapters == sorted(chapters), "exercises are registered chapter by chapter"
    assert EXERCISES["q-sample"].signature == "q_sample(x0, t, betas, noise)"


@pytest.mark.parametrize("exercise_id", list(EXERCISES))
def test_reference_passes(exercise_id):
    result = check(exercise_id, EXERCISES[exercise_id].reference)
    assert result.passed, result.message
    assert result.message.startswith("✅ correct")


@pytest.mark.parametrize(("exercise_id", "mistake"), PAIRS, ids=[f"{e}:{m}" for e, m in PAIRS])
def test_each_mistake_is_diagnosed_by_its_own_message(exercise_id, mistake):
    ex = EXERCISES[exercise_id]
    model = next(m for m in ex.mistakes if m.name == mistake)
    result = check(exercise_id, model.fn)
    assert not result.passed
    assert result.mistake == mistake, result.message
    assert result.message == f"❌ {model.message}"


@pytest.mark.parametrize("exercise_id", list(EXERCISES))
def test_a_stub_is_not_attempted(exercise_id):
    def stub(*args):
        raise NotImplementedError("replace me")

    result = check(exercise_id, stub)
    assert not result.passed and result.mistake == "not-attempted"
    assert "not attempted yet: replace the stub" in result.message


def _same_input(x, y) -> bool:
    """Equal test inputs: tensors elementwise, modules by weights, other objects by fields or ==."""
    if isinstance(x, torch.Tensor):
        return isinstance(y, torch.Tensor) and torch.equal(x, y)
    if isinstance(x, torch.nn.Module):
        sx, sy = x.state_dict(), y.state_dict()
        return (
            type(x) is type(y)
            and sx.keys() == sy.keys()
            and all(torch.equal(sx[k], sy[k]) for k in sx)
        )
    if callable(x) and hasattr(
        x, "__dict__"
    ):  # a stateless stand-in network: same class, same fields
        return type(x) is type(y) and vars(x) == vars(y)
    return x == y


@pytest.mark.parametrize("exercise_id", list(EXERCISES))
def test_the_test_inputs_are_deterministic(exercise_id):
    first, second = EXERCISES[exercise_id].cases(), EXERCISES[exercise_id].cases()
    for a, b in zip(first, second, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert _same_input(a[key], b[key]), (exercise_id, key)


def _q_sample_factory(coef_shape=None, noise_fn=None, dtype=torch.float64):
    def q_sample(x0, t, betas, noise):
        ab = torch.cumprod(1 - betas, dim=0)[t].to(dtype)
        ab = ab.view(-1, *[1] * (x0.ndim - 1)) if coef_shape is None else ab.view(coef_shape)
        n = noise if noise_fn is None else noise_fn(x0)
        return ab.sqrt() * x0.to(dtype) + (1 - ab).sqrt() * n.to(dtype)

    return q_sample


def test_a_float32_implementation_passes():
    assert check("q-sample", _q_sample_factory(dtype=torch.float32)).passed


def test_an_exception_shows_the_students_line_and_the_broadcasting_hint():
    result = check("q-sample", _q_sample_factory(coef_shape=(-1,)))
    assert not result.passed and result.mistake == "exception"
    assert "raised an error on test input 1 of 3" in result.message
    assert "ab.sqrt() * x0.to(dtype)" in result.message  # the failing line of the student's code
    assert "RuntimeError: The size of tensor a" in result.message
    assert "reshape it to (B, 1, ..., 1)" in result.message


def test_a_random_function_is_told_to_use_the_noise_argument():
    result = check("q-sample", _q_sample_factory(noise_fn=torch.randn_like))
    assert result.mistake == "random"
    assert "use the noise passed in" in result.message


def test_a_missing_return_is_named():
    def q_sample(x0, t, betas, noise):
        torch.cumprod(1 - betas, dim=0)

    result = check("q-sample", q_sample)
    assert result.mistake == "type"
    assert "returned None: did you forget the `return` statement?" in result.message


def test_an_unexplained_wrong_shape_gets_the_hint():
    def compute_alpha_bars(betas):
        return torch.cumprod(1 - betas, dim=0)[:-1]

    result = check("alpha-bar", compute_alpha_bars)
    assert result.mistake == "shape"
    assert "expected shape (12,), got (11,)" in result.message


def test_an_unexplained_error_reports_where_and_how_much():
    def snr(t, betas):
        ab = torch.cumprod(1 - betas, dim=0)[t]
        return ab / (1 - ab) * 1.01

    result = check("snr", snr)
    assert result.mistake == "values"
    assert "wrong values on test input 1 of 3 (t=[0, 7, 1, 3], betas with T=12)" in result.message
    assert "largest error" in result.message and "None of the common mistakes" in result.message


def test_the_posterior_variance_may_have_shape_b():
    def q_posterior(x0, x_t, t, betas):
        mean, var = EXERCISES["posterior-mean-var"].reference(x0, x_t, t, betas)
        return mean, var.flatten()

    assert check("posterior-mean-var", q_posterior).passed


def test_handing_in_a_value_instead_of_the_function():
    result = check("snr", 3)
    assert not result.passed
    assert "expected your function `snr` itself" in result.message
    assert "check('snr', snr)" in result.message


def test_an_unknown_exercise_is_a_clear_error():
    with pytest.raises(
        ValueError, match=r"no exercise called 'q-smaple'; known exercises: .*q-sample"
    ):
        check("q-smaple", lambda: None)


def test_the_result_shows_its_message_and_the_same_input_gives_the_same_message():
    first = check("snr", EXERCISES["snr"].mistakes[0].fn)
    second = check("snr", EXERCISES["snr"].mistakes[0].fn)
    assert isinstance(first, CheckResult) and first == second
    assert repr(first) == first._repr_markdown_() == first.message


def test_check_appends_a_json_line_for_the_grader(tmp_path, monkeypatch):
    trace = tmp_path / "trace.jsonl"
    monkeypatch.setenv(GRADING_ENV, str(trace))
    check("snr", EXERCISES["snr"].reference)
    check("alpha-bar", lambda betas: torch.cumprod(betas, dim=0))
    records = [json.loads(line) for line in trace.read_text().splitlines()]
    assert [(r["exercise"], r["passed"], r["mistake"]) for r in records] == [
        ("snr", True, None),
        ("alpha-bar", False, "product-of-betas"),
    ]
    assert records[1]["message"].startswith("❌ you multiplied the betas")


def test_registering_exercises_and_mistakes(registry):
    @exercise(
        "double",
        chapter="99",
        title="Double",
        task="return 2 x",
        cases=lambda: [{"x": torch.ones(2)}],
    )
    def double(x):
        return 2 * x

    @double.mistake("identity", "you returned x unchanged")
    def _(x):
        return x

    assert exercises.exercises_for_chapter("99") == [double]
    assert check("double", lambda x: x).message == "❌ you returned x unchanged"
    with pytest.raises(ValueError, match="already registered"):
        exercise("double", chapter="99", title="", task="", cases=list)
    with pytest.raises(ValueError, match="already has a mistake called 'identity'"):
        double.mistake("identity", "again")
    with pytest.raises(ValueError, match="id: expected a short name without spaces"):
        exercise("two words", chapter="99", title="", task="", cases=list)
