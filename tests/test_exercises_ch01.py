"""Chapter 01 exercises: references against independent truth, every mistake named, stubs."""

from __future__ import annotations

import pytest
import torch

from ddpm_teach.exercises import EXERCISES, check, exercises_for_chapter
from ddpm_teach.schedule import NoiseSchedule

CH01 = ["one-forward-step", "iterate-forward", "variance-after-steps"]
PAIRS = [(e, m.name) for e in CH01 for m in EXERCISES[e].mistakes]


def test_the_chapter_poses_its_exercises_in_order():
    assert [ex.id for ex in exercises_for_chapter("01")] == CH01
    assert EXERCISES["iterate-forward"].signature == "forward_trajectory(x0, betas, noises)"
    assert EXERCISES["variance-after-steps"].signature == "variance_after_steps(v0, betas)"
    for exercise_id in CH01:
        assert len(EXERCISES[exercise_id].mistakes) >= 3


@pytest.mark.parametrize("exercise_id", CH01)
def test_reference_passes(exercise_id):
    result = check(exercise_id, EXERCISES[exercise_id].reference)
    assert result.passed and result.mistake is None, result.message


@pytest.mark.parametrize(("exercise_id", "mistake"), PAIRS, ids=[f"{e}:{m}" for e, m in PAIRS])
def test_each_mistake_is_diagnosed_by_its_own_message(exercise_id, mistake):
    model = next(m for m in EXERCISES[exercise_id].mistakes if m.name == mistake)
    result = check(exercise_id, model.fn)
    assert not result.passed
    assert result.mistake == mistake, result.message
    assert result.message == f"❌ {model.message}"


@pytest.mark.parametrize("exercise_id", CH01)
def test_a_stub_is_not_attempted(exercise_id):
    def stub(*args):
        raise NotImplementedError

    result = check(exercise_id, stub)
    assert result.mistake == "not-attempted"
    assert EXERCISES[exercise_id].task in result.message


# ------------------------------------------------------------------ the references are right
def _loop_trajectory(x0, betas, noises, dtype=torch.float64):
    """The chain of eq. 2 written out by hand, as a student would."""
    x, xs = x0.to(dtype), []
    for t in range(len(betas)):
        b = betas[t].to(dtype)
        x = torch.sqrt(1 - b) * x + torch.sqrt(b) * noises[t].to(dtype)
        xs.append(x)
    return torch.stack(xs)


def test_forward_trajectory_is_the_chain_of_eq_2():
    g = torch.Generator().manual_seed(0)
    betas = NoiseSchedule.linear(30, 1e-3, 0.3).betas
    x0 = torch.randn(5, 1, 3, 3, generator=g, dtype=torch.float64)
    noises = torch.randn(30, 5, 1, 3, 3, generator=g, dtype=torch.float64)
    ref = EXERCISES["iterate-forward"].reference(x0, betas, noises)
    assert ref.shape == (30, 5, 1, 3, 3)
    torch.testing.assert_close(ref, _loop_trajectory(x0, betas, noises))
    # step 0 from x0 alone, by hand
    torch.testing.assert_close(ref[0], (1 - betas[0]).sqrt() * x0 + betas[0].sqrt() * noises[0])


def test_a_float32_loop_passes_iterate_forward():
    def forward_trajectory(x0, betas, noises):
        return _loop_trajectory(x0, betas, noises, dtype=torch.float32)

    assert check("iterate-forward", forward_trajectory).passed


def test_variance_after_steps_is_the_recurrence_and_tends_to_one():
    betas = NoiseSchedule.linear().betas  # the paper's T = 1000 schedule
    v0 = torch.tensor([0.0, 0.5, 1.0, 2.0, 100.0], dtype=torch.float64)
    ref = EXERCISES["variance-after-steps"].reference(v0, betas)
    assert ref.shape == (1000, 5)
    v, rows = v0.clone(), []
    for b in betas:
        v = (1 - b) * v + b
        rows.append(v)
    torch.testing.assert_close(ref, torch.stack(rows))
    torch.testing.assert_close(ref[:, 2], torch.ones(1000, dtype=torch.float64))  # fixed point
    # alpha_bar_T is about 4e-5, so even a variance of 100 ends within 0.5 % of 1
    assert (ref[-1] - 1).abs().max() < 5e-3


def test_a_loop_implementation_passes_and_a_transposed_one_gets_the_shape_hint():
    def variance_after_steps(v0, betas):
        rows, v = [], v0
        for t in range(len(betas)):
            v = (1 - betas[t]) * v + betas[t]
            rows.append(v)
        return torch.stack(rows)

    assert check("variance-after-steps", variance_after_steps).passed
    result = check("variance-after-steps", lambda v0, betas: variance_after_steps(v0, betas).T)
    assert result.mistake == "shape"
    assert "expected shape (12, 3), got (3, 12)" in result.message
    assert "one column per coordinate" in result.message


def test_the_variance_formula_matches_simulated_chains():
    """Statistical check: the empirical variance of many runs of the chain is the formula's."""
    g = torch.Generator().manual_seed(1)
    betas = NoiseSchedule.cosine(20).betas
    v0 = torch.tensor([0.0, 0.25, 4.0], dtype=torch.float64)
    n = 100_000
    x0 = torch.randn(n, 3, generator=g, dtype=torch.float64) * v0.sqrt() + 3.0  # any mean
    noises = torch.randn(20, n, 3, generator=g, dtype=torch.float64)
    xs = EXERCISES["iterate-forward"].reference(x0, betas, noises)
    predicted = EXERCISES["variance-after-steps"].reference(v0, betas)
    # the sample variance of n normal draws has relative standard error sqrt(2 / n) = 0.45 %
    torch.testing.assert_close(xs.var(dim=1), predicted, rtol=0.025, atol=1e-3)


def test_the_closed_form_mistake_has_the_right_marginals_but_not_the_path():
    """What the 'closed-form' message claims: right distribution at each t, wrong path."""
    ex = EXERCISES["iterate-forward"]
    closed = next(m for m in ex.mistakes if m.name == "closed-form").fn
    g = torch.Generator().manual_seed(2)
    betas = NoiseSchedule.linear(10, 1e-2, 0.3).betas
    n = 100_000
    x0 = torch.full((n, 1), 2.0, dtype=torch.float64)
    noises = torch.randn(10, n, 1, generator=g, dtype=torch.float64)
    chain, jumps = ex.reference(x0, betas, noises), closed(x0, betas, noises)
    for stat in (lambda x: x.mean(dim=1), lambda x: x.var(dim=1)):
        torch.testing.assert_close(stat(jumps), stat(chain), rtol=0.03, atol=0.01)
    # consecutive x_t of the chain are correlated: x_5 = sqrt(alpha_5) x_4 + noise, and with a
    # constant x_0 Var[x_t] = 1 - alpha_bar_t; the jumps share no noise, so they are uncorrelated
    ab = torch.cumprod(1 - betas, dim=0)
    expected = ((1 - betas[5]) * (1 - ab[4]) / (1 - ab[5])).sqrt()
    a, b = chain[4, :, 0], chain[5, :, 0]
    assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1] - expected) < 0.01
    a, b = jumps[4, :, 0], jumps[5, :, 0]
    assert torch.corrcoef(torch.stack([a, b]))[0, 1].abs() < 0.02
