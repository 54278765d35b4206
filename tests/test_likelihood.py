"""The variational bound (eq. 5) against exact likelihoods."""

from __future__ import annotations

import math

import pytest
import torch

from ddpm_teach import NoiseSchedule, bits_per_dim, vlb
from ddpm_teach.analytic import GaussianMixture
from ddpm_teach.likelihood import discretized_gaussian_log_likelihood, gaussian_kl

SCHEDULE = NoiseSchedule.linear(20, 1e-2, 0.6)  # few, large steps: the bound's gaps are visible


def _gap(std: float, n: int = 4000, seed: int = 0) -> tuple[float, float]:
    """Mean of (bound - true NLL) over N(0, std^2 I) data, with its standard error."""
    gm = GaussianMixture.standard(2, std)
    g = torch.Generator().manual_seed(seed)
    x0 = gm.sample(n, g)
    diff = vlb(gm.denoiser(SCHEDULE), SCHEDULE, x0, "large", "gaussian", g) + gm.log_prob(x0)
    return diff.mean().item(), diff.std().item() / math.sqrt(n)


def test_bound_is_exact_for_standard_normal_data():
    """For N(0, I) data the forward chain is stationary and reversible: with the exact predictor and
    sigma_t^2 = beta_t, p_theta's joint equals q's, so the bound equals -log p(x_0)."""
    gap, se = _gap(1.0)
    assert abs(gap) < 4 * se + 1e-3


@pytest.mark.parametrize("std", [0.3, 3.0])
def test_bound_stays_above_the_nll_otherwise(std):
    gap, se = _gap(std)
    assert gap > 4 * se


def test_terms_add_up_and_small_variance_is_looser_here():
    gm = GaussianMixture.standard(2)
    g = torch.Generator().manual_seed(0)
    x0 = gm.sample(500, g)
    terms = vlb(gm.denoiser(SCHEDULE), SCHEDULE, x0, "large", "gaussian", g, terms=True)
    assert terms.terms.shape == (500, 20) and terms.prior.shape == (500,)
    assert torch.allclose(terms.total, terms.prior + terms.terms.sum(1))
    assert (terms.terms[:, 1:] >= -1e-12).all()  # KLs are non-negative
    small = vlb(gm.denoiser(SCHEDULE), SCHEDULE, x0, "small", "gaussian", g)
    assert small.mean() > terms.total.mean()


def test_prior_term_is_the_closed_form_kl():
    x0 = torch.full((1, 1), 0.5, dtype=torch.float64)
    terms = vlb(lambda x, t: torch.zeros_like(x), SCHEDULE, x0, decoder="gaussian", terms=True)
    ab = SCHEDULE.alpha_bars[-1].item()
    expect = 0.5 * (-math.log(1 - ab) + (1 - ab) + ab * 0.25 - 1)
    assert terms.prior.item() == pytest.approx(expect, rel=1e-9)


def test_gaussian_kl_closed_form():
    kl = gaussian_kl(torch.tensor(1.0), torch.tensor(2.0), torch.tensor(0.0), torch.tensor(1.0))
    assert kl.item() == pytest.approx(0.5 * (2.0 + 1.0 - 1.0 - math.log(2.0)))


def test_discretized_likelihood_sums_to_one_over_the_256_bins():
    values = torch.linspace(-1, 1, 256, dtype=torch.float64)
    for mean, std in [(0.0, 0.1), (0.9, 0.01), (-1.3, 0.5), (0.3, 1e-3)]:
        logp = discretized_gaussian_log_likelihood(values, torch.tensor(mean), torch.tensor(std))
        assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-6)


def test_bits_per_dim_for_images():
    """A random 8-bit 'image' under an uninformed N(0, I) denoiser costs close to 8 bits a value,
    while data that is always the same image, with its exact denoiser, costs far less."""
    g = torch.Generator().manual_seed(0)
    x0 = (torch.randint(0, 256, (4, 1, 4, 4), generator=g) / 127.5 - 1).to(torch.float64)
    schedule = NoiseSchedule.linear(100, 1e-3, 0.2)
    bpd = bits_per_dim(GaussianMixture.standard(16).denoiser(schedule), schedule, x0, generator=g)
    assert bpd.shape == (4,)
    assert 5.0 < bpd.mean().item() < 12.0
    point = GaussianMixture([1.0], x0[:1].reshape(1, 16), 0.01).denoiser(schedule)
    sharp = bits_per_dim(point, schedule, x0[:1], generator=g)
    assert sharp.item() < bpd.mean().item() - 2


def test_bad_likelihood_input():
    x0 = torch.zeros(2, 3)
    model = GaussianMixture.standard(3).denoiser(SCHEDULE)
    with pytest.raises(ValueError, match="decoder"):
        vlb(model, SCHEDULE, x0, decoder="laplace")
    with pytest.raises(ValueError, match="variance"):
        vlb(model, SCHEDULE, x0, variance="learned")
    with pytest.raises(ValueError, match=r"x0: the discretized decoder expects 8-bit data"):
        vlb(model, SCHEDULE, x0 + 3)
