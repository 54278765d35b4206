"""Chapter 00 exercises: references against independent truth, every mistake named, stubs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from ddpm_teach.exercises import EXERCISES, check, exercises_for_chapter

CH00 = ["mode-coverage", "gan-loss", "reparameterise", "elbo-gaussian"]
PAIRS = [(e, m.name) for e in CH00 for m in EXERCISES[e].mistakes]


def test_the_chapter_poses_its_exercises_in_order():
    assert [ex.id for ex in exercises_for_chapter("00")] == CH00
    assert (
        EXERCISES["mode-coverage"].signature == "count_modes(samples, centers, radius, min_count)"
    )
    assert EXERCISES["gan-loss"].signature == "gan_losses(real_logits, fake_logits)"
    assert EXERCISES["reparameterise"].signature == "reparameterise(mu, logvar, eps)"
    assert EXERCISES["elbo-gaussian"].signature == "gaussian_elbo(x, x_mean, sigma, mu, logvar)"
    for exercise_id in CH00:
        assert len(EXERCISES[exercise_id].mistakes) >= 3


@pytest.mark.parametrize("exercise_id", CH00)
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


@pytest.mark.parametrize("exercise_id", CH00)
def test_a_stub_is_not_attempted(exercise_id):
    def stub(*args):
        raise NotImplementedError

    result = check(exercise_id, stub)
    assert result.mistake == "not-attempted"
    assert EXERCISES[exercise_id].task in result.message


# ------------------------------------------------------------------ the references are right
def test_count_modes_on_a_hand_counted_example():
    centers = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    samples = torch.tensor(
        [
            [0.1, 0.0], [0.0, -0.2], [0.3, 0.3],  # mode 0: 3 (|(0.3, 0.3)| = 0.42 <= 0.5)
            [4.0, 0.4],  # mode 1: 1
            [2.0, 0.1],  # between modes 0 and 1: too far from both
            [0.0, 4.49], [0.0, 3.6],  # mode 2: 2 (0.49 and 0.4 away)
            [10.0, 10.0],  # far from everything
        ],
        dtype=torch.float64,
    )  # fmt: skip
    ref = EXERCISES["mode-coverage"].reference
    modes_hit, share_near, counts = ref(
        samples, centers, torch.tensor(0.5, dtype=torch.float64), torch.tensor(2)
    )
    assert counts.tolist() == [3, 1, 2]
    assert int(modes_hit) == 2  # modes 0 and 2 reach min_count = 2
    assert float(share_near) == pytest.approx(6 / 8)


def test_a_plain_loop_passes_mode_coverage_returning_python_numbers():
    def count_modes(samples, centers, radius, min_count):
        counts = [0] * len(centers)
        for point in samples:
            dists = [float((point - c).norm()) for c in centers]
            k = min(range(len(centers)), key=dists.__getitem__)
            if dists[k] <= float(radius):
                counts[k] += 1
        hit = sum(c >= int(min_count) for c in counts)
        return hit, sum(counts) / len(samples), torch.tensor(counts)

    assert check("mode-coverage", count_modes).passed


def test_gan_loss_reference_is_binary_cross_entropy_and_a_bce_solution_passes():
    def gan_losses(real_logits, fake_logits):
        bce = F.binary_cross_entropy_with_logits
        d = bce(real_logits, torch.ones_like(real_logits)) + bce(
            fake_logits, torch.zeros_like(fake_logits)
        )
        return d, bce(fake_logits, torch.ones_like(fake_logits))

    assert check("gan-loss", gan_losses).passed
    # by hand, from probabilities, for one case
    real, fake = torch.tensor([0.0, 2.0]), torch.tensor([-1.0])
    d, g = EXERCISES["gan-loss"].reference(real, fake)
    p_real, p_fake = torch.sigmoid(real), torch.sigmoid(fake)
    assert d.item() == pytest.approx(
        -torch.log(p_real).mean().item() - torch.log(1 - p_fake).mean().item()
    )
    assert g.item() == pytest.approx(-torch.log(p_fake).mean().item())


def test_reparameterise_reference_has_the_encoder_moments():
    mu = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)
    logvar = torch.tensor([[0.0, math.log(9.0), math.log(0.01)]], dtype=torch.float64)
    eps = torch.randn(100_000, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z = EXERCISES["reparameterise"].reference(mu, logvar, eps)
    torch.testing.assert_close(z.mean(0), mu[0], atol=0.03, rtol=0)
    torch.testing.assert_close(
        z.std(0), torch.tensor([1.0, 3.0, 0.1], dtype=torch.float64), atol=0.02, rtol=0
    )


def test_elbo_reference_matches_torch_distributions_and_a_float32_solution_passes():
    g = torch.Generator().manual_seed(4)
    x, x_mean = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    mu, logvar = torch.randn(6, 2, generator=g), torch.randn(6, 2, generator=g)
    sigma = torch.tensor(0.3)
    expected = Normal(x_mean, sigma).log_prob(x).sum(-1) - kl_divergence(
        Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)
    ).sum(-1)
    got = EXERCISES["elbo-gaussian"].reference(x, x_mean, sigma, mu, logvar)
    torch.testing.assert_close(got, expected)

    def gaussian_elbo(x, x_mean, sigma, mu, logvar):
        x, x_mean, mu, logvar = (v.float() for v in (x, x_mean, mu, logvar))
        log_lik = Normal(x_mean, sigma.float()).log_prob(x).sum(-1)
        kl = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(-1)
        return log_lik - kl

    assert check("elbo-gaussian", gaussian_elbo).passed


def test_an_elbo_summed_over_the_batch_gets_the_shape_hint():
    def gaussian_elbo(x, x_mean, sigma, mu, logvar):
        return (-((x - x_mean) ** 2) / (2 * sigma**2)).sum(0)

    result = check("elbo-gaussian", gaussian_elbo)
    assert result.mistake == "shape"
    assert "sum over the coordinates (dim=-1)" in result.message
