"""ddpm_teach.baselines: the GAN and the VAE of chapter 00, checked against known truths."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from ddpm_teach.baselines import (
    GAN,
    VAE,
    gan_losses,
    gaussian_elbo,
    gaussian_kl,
    gaussian_log_likelihood,
    reparameterise,
    train_gan,
    train_vae,
)
from ddpm_teach.data import toy_2d


@pytest.fixture(scope="module")
def data():
    return toy_2d("eight-gaussians", 2000, seed=0)


# ------------------------------------------------------------------------------------ shapes
def test_gan_shapes():
    gan = GAN(dim=3, latent=4, hidden=16, num_layers=1)
    assert gan.sample(10, torch.Generator().manual_seed(0)).shape == (10, 3)
    assert gan.generate(torch.zeros(5, 4)).shape == (5, 3)
    assert gan.discriminate(torch.zeros(7, 3)).shape == (7,)
    assert gan.config == {"dim": 3, "latent": 4, "hidden": 16, "num_layers": 1}


def test_vae_shapes_and_sampling():
    vae = VAE(dim=3, latent=2, hidden=16, sigma=0.5)
    mu, logvar = vae.encode(torch.zeros(6, 3))
    assert mu.shape == logvar.shape == (6, 2)
    assert vae.decode(torch.zeros(4, 2)).shape == (4, 3)
    means = vae.sample(50, torch.Generator().manual_seed(1), decoder_noise=False)
    noisy = vae.sample(50, torch.Generator().manual_seed(1))
    assert means.shape == noisy.shape == (50, 3)
    # the same z, plus sigma * noise: the difference has the decoder's spread
    assert 0.3 < (noisy - means).std().item() < 0.7


def test_sampling_is_seeded():
    gan, vae = GAN(hidden=8), VAE(hidden=8)
    for model in (gan, vae):
        a = model.sample(20, torch.Generator().manual_seed(3))
        b = model.sample(20, torch.Generator().manual_seed(3))
        c = model.sample(20, torch.Generator().manual_seed(4))
        assert torch.equal(a, b) and not torch.equal(a, c)


def test_a_seed_fixes_the_initial_weights_whatever_ran_before():
    for cls in (GAN, VAE):
        torch.manual_seed(0)
        a = cls(hidden=8, seed=3)
        torch.rand(5)  # disturb the global RNG
        b, c = cls(hidden=8, seed=3), cls(hidden=8, seed=4)
        pairs = list(zip(a.parameters(), b.parameters(), c.parameters(), strict=True))
        assert all(torch.equal(p, q) for p, q, _ in pairs)
        assert not all(torch.equal(p, r) for p, _, r in pairs)


# ------------------------------------------------------------------------------------ the math
def test_gan_losses_are_binary_cross_entropies():
    g = torch.Generator().manual_seed(0)
    real, fake = 3 * torch.randn(7, generator=g), 3 * torch.randn(5, generator=g)
    d_loss, g_loss = gan_losses(real, fake)
    bce = F.binary_cross_entropy_with_logits
    expected_d = bce(real, torch.ones(7)) + bce(fake, torch.zeros(5))
    torch.testing.assert_close(d_loss, expected_d)
    torch.testing.assert_close(g_loss, bce(fake, torch.ones(5)))
    # at D's equilibrium, sigmoid = 1/2 everywhere: 2 ln 2 and ln 2
    d0, g0 = gan_losses(torch.zeros(4), torch.zeros(4))
    assert math.isclose(d0.item(), 2 * math.log(2), rel_tol=1e-6)
    assert math.isclose(g0.item(), math.log(2), rel_tol=1e-6)
    # confident logits stay finite (softplus, not log(sigmoid))
    d_big, g_big = gan_losses(torch.tensor([-1e4]), torch.tensor([1e4]))
    assert math.isfinite(d_big.item()) and math.isfinite(g_big.item())
    assert d_big.item() == pytest.approx(2e4)


def test_reparameterise_draws_from_the_encoder_gaussian():
    mu, logvar = torch.tensor([[1.0, -2.0]]), torch.tensor([[math.log(4.0), math.log(0.25)]])
    eps = torch.randn(200_000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z = reparameterise(mu.double(), logvar.double(), eps)
    torch.testing.assert_close(
        z.mean(0), torch.tensor([1.0, -2.0], dtype=torch.float64), atol=0.02, rtol=0
    )
    torch.testing.assert_close(
        z.std(0), torch.tensor([2.0, 0.5], dtype=torch.float64), atol=0.01, rtol=0
    )
    # gradients reach mu and logvar through the sample
    mu_, logvar_ = mu.clone().requires_grad_(), logvar.clone().requires_grad_()
    reparameterise(mu_, logvar_, torch.ones(1, 2)).sum().backward()
    torch.testing.assert_close(mu_.grad, torch.ones(1, 2))
    torch.testing.assert_close(logvar_.grad, 0.5 * torch.exp(0.5 * logvar))


def test_log_likelihood_and_kl_match_torch_distributions():
    g = torch.Generator().manual_seed(1)
    x, mean = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    for sigma in (0.1, 1.0, 2.5):
        expected = Normal(mean, sigma).log_prob(x).sum(-1)
        torch.testing.assert_close(gaussian_log_likelihood(x, mean, sigma), expected)
    mu, logvar = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    expected = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(gaussian_kl(mu, logvar), expected)
    assert torch.all(gaussian_kl(torch.zeros(2, 3), torch.zeros(2, 3)) == 0)


def test_the_elbo_is_tight_at_the_true_posterior_and_below_elsewhere():
    """z ~ N(0, 1), x | z ~ N(a z, s^2): log p(x) = log N(x; 0, a^2 + s^2) is known exactly, and so
    is the posterior N(a x / (a^2 + s^2), s^2 / (a^2 + s^2)), where the ELBO equals log p(x)."""
    a, s, x = 1.5, 0.5, torch.tensor([[0.8]], dtype=torch.float64)
    log_px = Normal(0.0, math.sqrt(a * a + s * s)).log_prob(x).item()
    eps = torch.randn(400_000, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def mc_elbo(mu: float, var: float) -> float:
        mu_t = torch.full_like(eps, mu)
        logvar_t = torch.full_like(eps, math.log(var))
        z = reparameterise(mu_t, logvar_t, eps)
        return gaussian_elbo(x.expand_as(z), a * z, s, mu_t, logvar_t).mean().item()

    post_var = s * s / (a * a + s * s)
    tight = mc_elbo(a * x.item() / (a * a + s * s), post_var)
    assert tight == pytest.approx(log_px, abs=2e-3)
    assert mc_elbo(0.0, 1.0) < log_px - 0.1  # the prior as q: a looser bound
    assert mc_elbo(-0.5, post_var) < log_px - 0.1  # the right spread, the wrong mean


# ------------------------------------------------------------------------------------ training
def test_a_hundred_and_fifty_steps_reduce_the_vae_loss(data):
    vae = VAE(hidden=32, seed=0)
    hist = train_vae(data, 150, vae, lr=3e-3, batch_size=128, seed=0)
    assert hist.steps == list(range(1, 151)) and hist.model is vae and not vae.training
    first, last = sum(hist.loss[:20]) / 20, sum(hist.loss[-20:]) / 20
    assert last < first - 20, (first, last)
    for loss, nll, kl in zip(hist.loss, hist.nll, hist.kl, strict=True):
        assert loss == pytest.approx(nll + kl, rel=1e-5, abs=1e-4)


def test_beta_weighs_the_kl_term(data):
    hist = train_vae(data, 5, VAE(hidden=8), beta=0.25, seed=0)
    for loss, nll, kl in zip(hist.loss, hist.nll, hist.kl, strict=True):
        assert loss == pytest.approx(nll + 0.25 * kl, rel=1e-5, abs=1e-4)


def test_the_gan_trains_without_nan_and_calls_on_log(data):
    calls = []

    def on_log(step, gan):
        assert not gan.training and not torch.is_grad_enabled()
        calls.append((step, gan.sample(100, torch.Generator().manual_seed(0)).shape))
        torch.rand(1)  # on_log may use the global RNG: it is restored afterwards

    gan = GAN(hidden=32)  # building a model draws from the global RNG; training must not
    torch.manual_seed(123)
    hist = train_gan(data, 120, gan, seed=0, log_every=50, on_log=on_log)
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(3)), "train_gan must not consume the global RNG"
    assert [c[0] for c in calls] == [50, 100, 120]
    assert all(c[1] == (100, 2) for c in calls)
    assert hist.steps == list(range(1, 121))
    for series in (hist.d_loss, hist.g_loss, hist.d_real, hist.d_fake):
        assert len(series) == 120 and all(math.isfinite(v) for v in series)
    assert all(0 <= p <= 1 for p in hist.d_real + hist.d_fake)


def test_the_gan_generator_moves_towards_the_data(data):
    """After 300 steps the samples sit nearer the ring of radius 2 than at initialisation."""
    gan = GAN(hidden=32, seed=0)
    g = torch.Generator().manual_seed(5)
    before = (gan.sample(500, g).norm(dim=1) - 2).abs().mean().item()
    train_gan(data, 300, gan, lr_d=1e-3, seed=0)
    after = (gan.sample(500, torch.Generator().manual_seed(5)).norm(dim=1) - 2).abs().mean().item()
    assert after < 0.5 * before, (before, after)


def test_training_is_seeded_and_deterministic(data):
    runs = [train_gan(data, 20, GAN(hidden=16, seed=s), seed=s).d_loss for s in (7, 7, 8)]
    assert runs[0] == runs[1] and runs[0] != runs[2]
    assert train_gan(data, 20, seed=7).d_loss == train_gan(data, 20, seed=7).d_loss  # default model
    vae_runs = [train_vae(data, 20, VAE(hidden=16, seed=s), seed=s) for s in (7, 7, 8)]
    assert vae_runs[0].loss == vae_runs[1].loss and vae_runs[0].loss != vae_runs[2].loss
    for p, q in zip(vae_runs[0].model.parameters(), vae_runs[1].model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_a_non_finite_loss_stops_training_naming_the_step(data):
    class BrokenGAN(GAN):
        def discriminate(self, x):
            return super().discriminate(x) * float("nan")

    with pytest.raises(FloatingPointError, match="not finite at step 1"):
        train_gan(data, 5, BrokenGAN(hidden=8))


# ------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        (torch.zeros(10), ValueError, r"data: expected shape \(N, D\)"),
        (torch.zeros(10, 2, dtype=torch.long), TypeError, "data: expected floating-point"),
        (torch.tensor([[0.0, float("nan")], [1.0, 1.0]]), ValueError, "data: contains NaN"),
        ([[0.0, 1.0]], TypeError, "data: expected a torch.Tensor"),
        (torch.zeros(10, 3), ValueError, "data: the model is built for points of dimension 2"),
    ],
)
def test_bad_data_is_named(bad, error, message):
    with pytest.raises(error, match=message):
        train_gan(bad, 1, GAN(hidden=4))
    with pytest.raises(error, match=message):
        train_vae(bad, 1, VAE(hidden=4))


def test_bad_arguments_are_named(data):
    with pytest.raises(ValueError, match="steps: expected an int >= 0"):
        train_gan(data, -1)
    with pytest.raises(ValueError, match="lr_d: expected a positive number"):
        train_gan(data, 1, lr_d=0.0)
    with pytest.raises(TypeError, match="gan: expected a GAN"):
        train_gan(data, 1, VAE())
    with pytest.raises(TypeError, match="gan: expected a GAN, got Linear"):  # no .dim to read
        train_gan(data, 1, torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="vae: expected a VAE, got Linear"):
        train_vae(data, 1, vae=torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="beta: expected a finite number >= 0"):
        train_vae(data, 1, beta=-1.0)
    with pytest.raises(ValueError, match="log_every: expected an int >= 1"):
        train_vae(data, 1, log_every=0)
    with pytest.raises(ValueError, match="latent: expected an int >= 1"):
        GAN(latent=0)
    with pytest.raises(ValueError, match="sigma: expected a positive number"):
        VAE(sigma=0.0)
    with pytest.raises(ValueError, match="n: expected an int >= 1"):
        GAN().sample(0)
    with pytest.raises(ValueError, match=r"x: expected shape \(B, 2\)"):
        VAE().encode(torch.zeros(3, 5))
    with pytest.raises(ValueError, match=r"z: expected shape \(B, 2\)"):
        GAN().generate(torch.zeros(3))
