"""The forward process against analytic truth: eq. 2, eq. 4, eqs. 6-7."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from ddpm_teach import NoiseSchedule


@pytest.fixture(params=["linear", "cosine"])
def schedule(request) -> NoiseSchedule:
    return getattr(NoiseSchedule, request.param)(1000)


def test_linear_matches_the_paper():
    s = NoiseSchedule.linear()
    assert s.num_steps == 1000 and s.betas.dtype == torch.float64
    assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)
    # alpha_bar_t is the product up to t (not up to T): check a middle entry by hand.
    assert s.alpha_bars[499].item() == pytest.approx(
        torch.prod(1 - s.betas[:500]).item(), rel=1e-12
    )
    assert s.alpha_bars[-1].item() == pytest.approx(
        4.036e-5, rel=1e-3
    )  # known value for DDPM's schedule


def test_cosine_follows_nichol_dhariwal():
    s = NoiseSchedule.cosine(1000)
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 10, 500, 900):
        assert s.alpha_bars[t].item() == pytest.approx(f((t + 1) / 1000) / f(0), rel=1e-9)
    assert s.betas.max().item() <= 0.999
    assert s.betas[-1].item() == pytest.approx(0.999)  # capped


def test_custom_betas_and_derived_quantities():
    s = NoiseSchedule([0.1, 0.2, 0.3])
    assert torch.allclose(s.alphas, torch.tensor([0.9, 0.8, 0.7], dtype=torch.float64))
    assert torch.allclose(s.alpha_bars, torch.tensor([0.9, 0.72, 0.504], dtype=torch.float64))
    assert torch.allclose(s.alpha_bars_prev, torch.tensor([1, 0.9, 0.72], dtype=torch.float64))
    assert s.posterior_variance[0] == 0
    assert s.posterior_variance[2].item() == pytest.approx((1 - 0.72) / (1 - 0.504) * 0.3)
    assert s.snr(1).item() == pytest.approx(0.72 / 0.28)


def test_closed_form_equals_iterated_steps_in_law(schedule):
    """eq. 4 vs T applications of eq. 2: same mean, variance and distribution (two-sample KS)."""
    g = torch.Generator().manual_seed(0)
    n, t_end = 20_000, 299
    x0 = torch.full((n, 1), 1.5, dtype=torch.float64)
    x = x0
    for t in range(t_end + 1):
        x = schedule.q_step(x, t, generator=g)
    direct = schedule.q_sample(x0, t_end, generator=g)
    ab = schedule.alpha_bars[t_end].item()
    for sample in (x, direct):
        assert sample.mean().item() == pytest.approx(math.sqrt(ab) * 1.5, abs=4 * math.sqrt(1 / n))
        assert sample.var().item() == pytest.approx(1 - ab, rel=0.05)
    ks = stats.ks_2samp(x[:, 0].numpy(), direct[:, 0].numpy())
    assert ks.pvalue > 1e-3


def test_iterated_steps_with_wrong_scaling_would_be_caught(schedule):
    """The KS test above has power: dropping sqrt(1 - beta_t) is detected."""
    g = torch.Generator().manual_seed(1)
    x0 = torch.full((20_000, 1), 1.5, dtype=torch.float64)
    x = x0
    for t in range(300):
        x = x + schedule.betas[t].sqrt() * torch.randn(x.shape, generator=g, dtype=x.dtype)
    direct = schedule.q_sample(x0, 299, generator=g)
    assert stats.ks_2samp(x[:, 0].numpy(), direct[:, 0].numpy()).pvalue < 1e-6


def test_q_sample_uses_given_noise_and_per_example_t():
    s = NoiseSchedule.linear(10, 0.01, 0.2)
    x0 = torch.randn(3, 2, 4, 4)
    eps = torch.randn_like(x0)
    t = torch.tensor([0, 4, 9])
    out = s.q_sample(x0, t, eps)
    for i in range(3):
        ab = s.alpha_bars[t[i]].item()
        expect = math.sqrt(ab) * x0[i] + math.sqrt(1 - ab) * eps[i]
        assert torch.allclose(out[i], expect, atol=1e-6)
    assert out.dtype == torch.float32
    assert torch.equal(s.q_sample(x0, 3, eps), s.q_sample(x0, torch.tensor([3, 3, 3]), eps))


def test_posterior_matches_bayes_rule_numerically():
    """q(x_{t-1} | x_t, x_0) from eqs. 6-7 vs prior x likelihood normalised on a grid (1-D)."""
    s = NoiseSchedule.linear(100, 1e-3, 0.2)
    x0, x_t, t = 0.7, -0.4, 40
    grid = torch.linspace(-6, 6, 200_001, dtype=torch.float64)
    ab_prev, beta = s.alpha_bars[t - 1], s.betas[t]
    log_prior = -0.5 * (grid - ab_prev.sqrt() * x0) ** 2 / (1 - ab_prev)  # q(x_{t-1} | x_0)
    log_lik = -0.5 * (x_t - (1 - beta).sqrt() * grid) ** 2 / beta  # q(x_t | x_{t-1})
    w = torch.softmax(log_prior + log_lik, dim=0)
    mean_num = (w * grid).sum()
    var_num = (w * (grid - mean_num) ** 2).sum()
    mean, var = s.q_posterior(
        torch.tensor([[x0]], dtype=torch.float64), torch.tensor([[x_t]], dtype=torch.float64), t
    )
    assert mean.item() == pytest.approx(mean_num.item(), abs=1e-6)
    assert var.item() == pytest.approx(var_num.item(), rel=1e-4)


def test_posterior_at_first_step_is_the_data():
    s = NoiseSchedule.linear(100)
    x0, x_t = torch.randn(5, 3), torch.randn(5, 3)
    mean, var = s.q_posterior(x0, x_t, 0)
    assert torch.allclose(mean, x0) and torch.all(var == 0)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_parameterisations_round_trip(schedule, prediction):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(8, 3, dtype=torch.float64, generator=g)
    eps = torch.randn(8, 3, dtype=torch.float64, generator=g)
    t = torch.randint(0, 1000, (8,), generator=g)
    x_t = schedule.q_sample(x0, t, eps)
    target = schedule.target(x0, eps, t, prediction)
    assert torch.allclose(schedule.to_eps(target, x_t, t, prediction), eps, atol=1e-6)
    assert torch.allclose(schedule.predict_x0_from_eps(x_t, t, eps), x0, atol=1e-4)
    v = schedule.v_target(x0, eps, t)
    assert torch.allclose(schedule.predict_x0_from_v(x_t, t, v), x0, atol=1e-9)


def test_snr_is_decreasing_and_log_snr_consistent(schedule):
    snr = schedule.snr(torch.arange(1000))
    assert (snr[1:] < snr[:-1]).all()
    assert torch.allclose(schedule.log_snr(torch.arange(1000)), snr.log())


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "betas, match",
    [
        ([0.1, 0.0], "open interval"),
        ([0.5, 1.0], "open interval"),
        ([-0.1], "open interval"),
        ([[0.1, 0.2]], "1-D"),
        ([], "non-empty"),
        ([0.1, float("nan")], "open interval"),
    ],
)
def test_bad_betas(betas, match):
    with pytest.raises(ValueError, match=match) as err:
        NoiseSchedule(betas)
    assert "betas" in str(err.value)


def test_bad_t():
    s = NoiseSchedule.linear(10, 0.01, 0.2)
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match=r"t: step indices must lie in 0\.\.9"):
        s.q_sample(x, 10)
    with pytest.raises(ValueError, match="t: step indices"):
        s.q_sample(x, -1)
    with pytest.raises(ValueError, match="one entry per batch element"):
        s.q_sample(x, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="1-D tensor"):
        s.q_sample(x, torch.zeros(4, 1, dtype=torch.long))
    with pytest.raises(TypeError, match="integer tensor"):
        s.q_sample(x, torch.tensor([0.5] * 4))
    with pytest.raises(TypeError, match="t:"):
        s.q_sample(x, 1.0)


def test_bad_noise_and_shapes():
    s = NoiseSchedule.linear(10, 0.01, 0.2)
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match=r"noise: expected the shape of the data \(4, 2\)"):
        s.q_sample(x, 1, torch.zeros(4, 3))
    with pytest.raises(ValueError, match="x0 and x_t"):
        s.q_posterior(x, torch.zeros(4, 3), 1)
    with pytest.raises(ValueError, match="prediction: expected one of"):
        s.to_eps(x, x, 1, "score")
    with pytest.raises(ValueError, match="num_steps"):
        NoiseSchedule.linear(0)
