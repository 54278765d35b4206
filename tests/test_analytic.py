"""Exact mixture quantities against brute force and Monte Carlo."""

from __future__ import annotations

import math

import pytest
import torch

from ddpm_teach import NoiseSchedule
from ddpm_teach.analytic import GaussianMixture

SCHEDULE = NoiseSchedule.linear(1000)
MIX2D = GaussianMixture(
    [0.4, 0.6],
    [[2.0, 0.0], [-1.0, 1.0]],
    torch.tensor([[[0.3, 0.1], [0.1, 0.2]], [[0.5, -0.2], [-0.2, 0.4]]], dtype=torch.float64),
)


@pytest.mark.parametrize("t", [0, 100, 500, 999])
def test_marginal_density_matches_brute_force(t):
    ab = SCHEDULE.alpha_bars[t]
    x = torch.randn(7, 2, dtype=torch.float64)
    comps = [
        torch.distributions.MultivariateNormal(
            ab.sqrt() * MIX2D.means[k],
            ab * MIX2D.covs[k] + (1 - ab) * torch.eye(2, dtype=torch.float64),
        ).log_prob(x)
        + MIX2D.weights[k].log()
        for k in range(2)
    ]
    assert torch.allclose(MIX2D.log_prob_t(x, SCHEDULE, t), torch.logsumexp(torch.stack(comps), 0))
    assert torch.allclose(MIX2D.marginal(SCHEDULE, t).log_prob(x), MIX2D.log_prob_t(x, SCHEDULE, t))


def test_score_is_the_gradient_of_the_log_density():
    x = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    MIX2D.log_prob_t(x, SCHEDULE, 300).sum().backward()
    assert torch.allclose(MIX2D.score(x.detach(), SCHEDULE, 300), x.grad, atol=1e-8)


def test_eps_is_the_conditional_mean_of_the_noise():
    """E[eps | x_t] by Monte Carlo: regress the true noise on x_t in a narrow bin."""
    g = torch.Generator().manual_seed(0)
    gm = GaussianMixture([0.3, 0.7], [[-2.0], [1.5]], [0.3, 0.5])
    x0 = gm.sample(400_000, g)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = 400
    x_t = SCHEDULE.q_sample(x0, t, eps)
    for centre in (-1.0, 0.0, 0.8):
        near = (x_t[:, 0] - centre).abs() < 0.02
        mc = eps[near].mean().item()
        exact = gm.eps(torch.tensor([[centre]], dtype=torch.float64), SCHEDULE, t).item()
        assert exact == pytest.approx(
            mc, abs=4 * eps[near].std().item() / math.sqrt(near.sum()) + 0.01
        )


def test_gaussian_special_case_is_linear_shrinkage():
    """For x_0 ~ N(0, s^2 I): E[x_0 | x_t] = sqrt(ab) s^2 / (ab s^2 + 1 - ab) x_t."""
    gm = GaussianMixture.standard(3, std=2.0)
    x = torch.randn(4, 3, dtype=torch.float64)
    ab = SCHEDULE.alpha_bars[250].item()
    expect = math.sqrt(ab) * 4.0 / (ab * 4.0 + 1 - ab) * x
    assert torch.allclose(gm.posterior_x0_mean(x, SCHEDULE, 250), expect)


def test_samples_have_the_mixture_moments():
    x = MIX2D.sample(200_000, torch.Generator().manual_seed(0))
    mean = (MIX2D.weights[:, None] * MIX2D.means).sum(0)
    assert torch.allclose(x.mean(0), mean, atol=0.01)


def test_denoiser_shapes_and_predictions():
    model = MIX2D.denoiser(SCHEDULE)
    x = torch.randn(6, 2)
    t = torch.arange(6) * 100
    eps = model(x, t)
    assert eps.shape == x.shape and eps.dtype == x.dtype
    x0 = MIX2D.denoiser(SCHEDULE, "x0")(x, t)
    assert torch.allclose(x0, SCHEDULE.predict_x0_from_eps(x, t, eps), atol=1e-5)
    images = GaussianMixture.standard(2 * 2 * 2).denoiser(SCHEDULE)(torch.randn(3, 2, 2, 2), t[:3])
    assert images.shape == (3, 2, 2, 2)


def test_bad_mixture_input():
    with pytest.raises(ValueError, match="weights and means"):
        GaussianMixture([0.5, 0.5], [[0.0, 1.0]])
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture([-1.0, 2.0], [[0.0], [1.0]])
    with pytest.raises(ValueError, match="weights: expected finite"):
        GaussianMixture([float("nan"), 1.0], [[0.0], [1.0]])
    with pytest.raises(ValueError, match="covs"):
        GaussianMixture([1.0], [[0.0, 1.0]], torch.ones(2, 2, 2))
    with pytest.raises(ValueError, match="positive semi-definite"):
        GaussianMixture([1.0], [[0.0, 0.0]], torch.tensor([[[1.0, 2.0], [2.0, 1.0]]]))
    with pytest.raises(ValueError, match="x: expected 2 numbers per example"):
        MIX2D.log_prob(torch.zeros(3, 3))
