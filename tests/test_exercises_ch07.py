"""Chapter 07's exercises (ddpm_teach/exercises/ch07.py): scores, Tweedie, Langevin, rates.

The references are checked against known truth computed another way: the score against autograd
of the exact log-density of a Gaussian mixture (and a hand formula for one Gaussian), Tweedie's
formula against the mixture's exact posterior mean, the Langevin step against the stationary
variance that unadjusted Langevin dynamics has on a Gaussian, and the rate against a plain loop and
against the total of :func:`ddpm_teach.likelihood.vlb`. Every mistake model is diagnosed by its own
message and really differs from the reference; stubs are "not attempted".
"""

from __future__ import annotations

import math

import pytest
import torch

from ddpm_teach.analytic import GaussianMixture
from ddpm_teach.exercises import EXERCISES, check, exercises_for_chapter
from ddpm_teach.likelihood import vlb
from ddpm_teach.schedule import NoiseSchedule

CH07 = ["score-from-eps", "tweedie-x0", "langevin-step", "rate-from-terms"]
PAIRS = [(e, m.name) for e in CH07 for m in EXERCISES[e].mistakes]


def test_the_chapter_poses_its_exercises_in_order():
    assert [ex.id for ex in exercises_for_chapter("07")] == CH07
    assert EXERCISES["score-from-eps"].signature == "score_from_eps(eps, t, betas)"
    assert EXERCISES["tweedie-x0"].signature == "x0_from_score(x_t, t, score, betas)"
    assert EXERCISES["langevin-step"].signature == "langevin_step(x, score, step_size, z)"
    assert EXERCISES["rate-from-terms"].signature == "cumulative_rate(prior, terms, num_dims)"
    for exercise_id in CH07:
        assert len(EXERCISES[exercise_id].mistakes) >= 3


# ------------------------------------------------------------------------ known truth
MIXTURE = GaussianMixture([0.3, 0.7], [[-1.0, 0.5], [1.5, -0.5]], [[0.4, 0.2], [0.3, 0.6]])
SCHEDULE = NoiseSchedule.linear(50, 1e-3, 0.2)


def _autograd_score(mixture: GaussianMixture, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    x = x_t.clone().requires_grad_(True)
    mixture.log_prob_t(x, SCHEDULE, t).sum().backward()
    return x.grad


def _points(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, len(SCHEDULE), (n,), generator=g)
    x_t = SCHEDULE.q_sample(MIXTURE.sample(n, generator=g), t, generator=g)
    return x_t, t


def test_score_from_eps_is_the_gradient_of_the_exact_log_density():
    x_t, t = _points()
    eps = MIXTURE.eps(x_t, SCHEDULE, t)  # E[eps | x_t], from the posterior mean of x_0
    score = EXERCISES["score-from-eps"].reference(eps, t, SCHEDULE.betas)
    torch.testing.assert_close(score, _autograd_score(MIXTURE, x_t, t), rtol=1e-8, atol=1e-8)


def test_score_from_eps_matches_the_hand_formula_for_one_gaussian():
    # x_0 ~ N(m, s^2): q_t = N(sqrt(ab) m, ab s^2 + 1 - ab), score = -(x - sqrt(ab) m) / var.
    m, s = 0.7, 0.5
    one = GaussianMixture([1.0], [[m]], s)
    t = torch.tensor([0, 7, 25, 49])
    x_t = torch.tensor([[-1.0], [0.3], [2.0], [0.0]], dtype=torch.float64)
    ab = SCHEDULE.alpha_bars[t][:, None]
    by_hand = -(x_t - ab.sqrt() * m) / (ab * s**2 + 1 - ab)
    got = EXERCISES["score-from-eps"].reference(one.eps(x_t, SCHEDULE, t), t, SCHEDULE.betas)
    torch.testing.assert_close(got, by_hand, rtol=1e-10, atol=1e-12)


def test_tweedie_gives_the_exact_posterior_mean():
    x_t, t = _points(seed=1)
    x0 = EXERCISES["tweedie-x0"].reference(x_t, t, _autograd_score(MIXTURE, x_t, t), SCHEDULE.betas)
    torch.testing.assert_close(
        x0, MIXTURE.posterior_x0_mean(x_t, SCHEDULE, t), rtol=1e-8, atol=1e-8
    )


def test_the_langevin_step_has_the_known_stationary_variance_on_a_gaussian():
    # On N(m, s^2) the step is an AR(1) chain with variance s^2 / (1 - step / (4 s^2)) at rest.
    langevin_step = EXERCISES["langevin-step"].reference
    m, s, step = 1.0, 1.0, 0.2
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(20_000, 1, dtype=torch.float64)
    for _ in range(300):
        z = torch.randn(x.shape, generator=g, dtype=torch.float64)
        x = langevin_step(x, -(x - m) / s**2, step, z)
    assert x.mean().item() == pytest.approx(m, abs=0.03)
    assert x.var().item() == pytest.approx(s**2 / (1 - step / (4 * s**2)), abs=0.04)
    # ... which is not the no-half chain's (0.56) nor the target's own 1 within the tolerance
    assert abs(x.var().item() - 1.0) > 0.02


def _rate_by_loop(prior: list[float], terms: list[float], num_dims: int) -> list[float]:
    out = []
    for t in range(len(terms)):
        later = sum(terms[s] for s in range(t + 1, len(terms)))
        out.append((prior + later) / (num_dims * math.log(2)))
    return out


def test_rate_matches_a_plain_loop():
    ex = EXERCISES["rate-from-terms"]
    for case in ex.cases():
        got = ex.reference(**case)
        for b in range(len(case["prior"])):
            expected = _rate_by_loop(
                case["prior"][b].item(), case["terms"][b].tolist(), case["num_dims"]
            )
            assert got[b].tolist() == pytest.approx(expected, rel=1e-12)


def test_rate_ends_at_the_whole_bound_and_starts_at_the_prior():
    x0 = MIXTURE.sample(6, generator=torch.Generator().manual_seed(3))
    out = vlb(
        MIXTURE.denoiser(SCHEDULE),
        SCHEDULE,
        x0,
        decoder="gaussian",
        generator=torch.Generator().manual_seed(4),
        terms=True,
    )
    rate = EXERCISES["rate-from-terms"].reference(out.prior, out.terms, 2)
    bits = 2 * math.log(2)
    torch.testing.assert_close(rate[:, -1], out.prior / bits)  # holding x_{T-1}: the prior only
    # holding x_0 (code index 0) and then the decoder term: the whole bound
    torch.testing.assert_close(rate[:, 0] + out.terms[:, 0] / bits, out.total / bits)
    assert (rate[:, :-1] >= rate[:, 1:]).all()  # the rate grows as t goes down


# ------------------------------------------------------------------------ the mechanism
@pytest.mark.parametrize("exercise_id", CH07)
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


@pytest.mark.parametrize(("exercise_id", "mistake"), PAIRS, ids=[f"{e}:{m}" for e, m in PAIRS])
def test_each_mistake_really_differs_from_the_reference(exercise_id, mistake):
    ex = EXERCISES[exercise_id]
    model = next(m for m in ex.mistakes if m.name == mistake)
    assert any(not torch.allclose(model.fn(**case), ex.reference(**case)) for case in ex.cases())


@pytest.mark.parametrize("exercise_id", CH07)
def test_a_stub_is_not_attempted(exercise_id):
    def stub(*args):
        raise NotImplementedError

    result = check(exercise_id, stub)
    assert result.mistake == "not-attempted"
    assert "not attempted yet" in result.message
    assert EXERCISES[exercise_id].task in result.message


def test_a_float32_answer_passes_and_a_shape_slip_gets_the_hint():
    def score_from_eps(eps, t, betas):
        ab = torch.cumprod(1 - betas, dim=0)[t].float().view(-1, *[1] * (eps.ndim - 1))
        return -eps.float() / (1 - ab).sqrt()

    assert check("score-from-eps", score_from_eps).passed

    def unshaped(eps, t, betas):
        return -eps / (1 - torch.cumprod(1 - betas, dim=0)[t]).sqrt()

    result = check("score-from-eps", unshaped)
    assert not result.passed and "reshape it to (B, 1, ..., 1)" in result.message
