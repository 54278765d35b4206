"""Chapter 02's exercises (ddpm_teach/exercises/ch02.py) and the statistics its notebook relies on.

The new exercises, "closed-form-variance" and "t-for-snr", are checked against answers computed
here independently of the package (plain Python loops over the betas), every mistake model is
diagnosed by its own message, and stubs are "not attempted". The notebook's two-sample KS test is
checked against scipy, which the notebook itself must not import.
"""

from __future__ import annotations

import math
from pathlib import Path

import jupytext
import numpy as np
import pytest
import torch

from ddpm_teach.exercises import EXERCISES, check, exercises_for_chapter
from ddpm_teach.exercises._inputs import _schedules
from ddpm_teach.schedule import NoiseSchedule

NEW = ["closed-form-variance", "t-for-snr"]
PAIRS = [(i, m.name) for i in NEW for m in EXERCISES[i].mistakes]
NOTEBOOK_SCRIPT = Path(__file__).resolve().parents[1] / "notebooks" / "02_closed_form.py"


def test_chapter_02_poses_five_exercises_in_order():
    assert [ex.id for ex in exercises_for_chapter("02")] == [
        "alpha-bar",
        "q-sample",
        "snr",
        "closed-form-variance",
        "t-for-snr",
    ]
    assert EXERCISES["closed-form-variance"].signature == "composed_variance(betas)"
    assert EXERCISES["t-for-snr"].signature == "t_for_snr(betas, level)"


# ------------------------------------------------------------------------ known truth, by hand
def _variance_by_loop(betas: list[float]) -> list[float]:
    """v_t = (1 - beta_t) v_{t-1} + beta_t from v = 0, in plain Python floats."""
    v, out = 0.0, []
    for b in betas:
        v = (1 - b) * v + b
        out.append(v)
    return out


@pytest.mark.parametrize("betas", _schedules(), ids=["linear12", "cosine20", "linear16"])
def test_composed_variance_reference_is_the_composed_step_variance(betas):
    ref = EXERCISES["closed-form-variance"].reference(betas)
    assert ref.shape == betas.shape
    assert ref.tolist() == pytest.approx(_variance_by_loop(betas.tolist()), rel=1e-12)


def test_the_variance_of_the_paper_schedule_ends_near_one():
    v = EXERCISES["closed-form-variance"].reference(NoiseSchedule.linear().betas)
    assert v[0].item() == pytest.approx(1e-4)  # one step: beta_1
    assert v[-1].item() == pytest.approx(1 - 4.0358e-5, abs=1e-8)


def test_a_loop_over_the_steps_passes_the_check():
    def composed_variance(betas):
        v, out = torch.zeros((), dtype=betas.dtype), []
        for beta in betas:
            v = (1 - beta) * v + beta
            out.append(v)
        return torch.stack(out)

    assert check("closed-form-variance", composed_variance).passed


def _first_below_by_loop(betas: list[float], level: float) -> int:
    alpha_bar = 1.0
    for t, b in enumerate(betas):
        alpha_bar *= 1 - b
        if alpha_bar / (1 - alpha_bar) < level:
            return t
    return len(betas)


def test_t_for_snr_reference_matches_a_plain_loop():
    ex = EXERCISES["t-for-snr"]
    for case in ex.cases():
        got = int(ex.reference(case["betas"], case["level"]))
        assert got == _first_below_by_loop(case["betas"].tolist(), case["level"])
    # the paper's linear schedule: SNR < 1 from code index 259 (the paper's t = 260) on
    betas = NoiseSchedule.linear().betas
    assert int(ex.reference(betas, 1.0)) == _first_below_by_loop(betas.tolist(), 1.0) == 259
    assert int(ex.reference(betas, 1e-12)) == len(betas)  # never that low: T


@pytest.mark.parametrize(
    "answer",
    [
        lambda t: int(t),
        lambda t: torch.tensor(int(t)),
        lambda t: torch.tensor([int(t)]),
        lambda t: np.int64(int(t)),
    ],
    ids=["int", "0-dim", "1-element", "numpy"],
)
def test_t_for_snr_accepts_an_int_or_a_one_element_tensor(answer):
    reference = EXERCISES["t-for-snr"].reference
    assert check("t-for-snr", lambda betas, level: answer(reference(betas, level))).passed


def test_t_for_snr_returning_the_mask_gets_the_hint():
    def t_for_snr(betas, level):
        alpha_bar = torch.cumprod(1 - betas, dim=0)
        return alpha_bar / (1 - alpha_bar) < level

    result = check("t-for-snr", t_for_snr)
    assert result.mistake == "shape"
    assert "expected shape (), got (12,)" in result.message
    assert "index of the first True" in result.message


# ------------------------------------------------------------------------ the exercise mechanism
@pytest.mark.parametrize("exercise_id", NEW)
def test_reference_passes(exercise_id):
    result = check(exercise_id, EXERCISES[exercise_id].reference)
    assert result.passed, result.message


@pytest.mark.parametrize(("exercise_id", "mistake"), PAIRS, ids=[f"{e}:{m}" for e, m in PAIRS])
def test_each_mistake_is_diagnosed_by_its_own_message(exercise_id, mistake):
    model = next(m for m in EXERCISES[exercise_id].mistakes if m.name == mistake)
    result = check(exercise_id, model.fn)
    assert not result.passed
    assert result.mistake == mistake, result.message
    assert result.message == f"❌ {model.message}"


@pytest.mark.parametrize(("exercise_id", "mistake"), PAIRS, ids=[f"{e}:{m}" for e, m in PAIRS])
def test_each_mistake_really_differs_from_the_reference(exercise_id, mistake):
    ex = EXERCISES[exercise_id]
    model = next(m for m in ex.mistakes if m.name == mistake)
    differs = [
        not torch.allclose(
            torch.as_tensor(model.fn(**c)).double(), torch.as_tensor(ex.reference(**c)).double()
        )
        for c in ex.cases()
    ]
    assert any(differs)


@pytest.mark.parametrize("exercise_id", NEW)
def test_a_stub_is_not_attempted(exercise_id):
    def stub(*args):
        raise NotImplementedError

    result = check(exercise_id, stub)
    assert result.mistake == "not-attempted"
    assert "not attempted yet" in result.message


# ------------------------------------------------------------------------ the notebook's KS test
def _notebook_function(name: str):
    """Run the notebook cell that defines ``name`` (and nothing else) and return the function."""
    nb = jupytext.read(NOTEBOOK_SCRIPT, fmt="py:percent")
    cells = [c.source for c in nb.cells if c.cell_type == "code" and f"def {name}(" in c.source]
    assert len(cells) == 1, f"expected one cell defining {name} in {NOTEBOOK_SCRIPT.name}"
    namespace = {"np": np, "math": math}
    exec(cells[0], namespace)
    return namespace[name]


@pytest.mark.parametrize(
    ("n", "m", "shift", "scale"),
    [(500, 2000, 0.0, 1.0), (500, 2000, 0.1, 1.0), (3000, 3000, 0.0, 1.2), (40, 70, 0.5, 1.0)],
)
def test_the_notebooks_ks_test_agrees_with_scipy(n, m, shift, scale):
    stats = pytest.importorskip("scipy.stats")
    special = pytest.importorskip("scipy.special")
    ks_two_sample = _notebook_function("ks_two_sample")
    rng = np.random.default_rng(n + m)
    a, b = rng.normal(size=n), scale * rng.normal(size=m) + shift
    d, p = ks_two_sample(a, b)
    expected = stats.ks_2samp(a, b, method="asymp")
    assert d == pytest.approx(expected.statistic, abs=1e-12)
    # the notebook uses Kolmogorov's limiting distribution with n_eff = n m / (n + m)
    assert p == pytest.approx(special.kolmogorov(math.sqrt(n * m / (n + m)) * d), abs=1e-12)
    assert p == pytest.approx(expected.pvalue, abs=0.02)  # scipy rounds n_eff, a small change


def test_the_notebooks_ks_test_accepts_torch_tensors_and_ties():
    ks_two_sample = _notebook_function("ks_two_sample")
    d, p = ks_two_sample(torch.zeros(10), torch.zeros(20))
    assert (d, p) == (0.0, 1.0)
    d, p = ks_two_sample(torch.zeros(50), torch.ones(50))
    assert d == 1.0 and p < 1e-9
