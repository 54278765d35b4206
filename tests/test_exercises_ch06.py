"""Chapter 06's exercises (ddpm_teach/exercises/ch06.py): evaluation.

Each reference is checked against known truth computed without it: bits per dimension by hand
and against ``likelihood.bits_per_dim``; the Gaussian KL against ``torch.distributions``; the 1-D
Frechet distance against the Wasserstein-2 integral of the two quantile functions; nearest
neighbours against a plain loop. Then the exercise mechanism: references pass, every mistake model
is diagnosed by its own message and really differs from the reference, stubs are "not attempted".
"""

from __future__ import annotations

import math

import pytest
import torch

from ddpm_teach.exercises import EXERCISES, check, exercises_for_chapter
from ddpm_teach.likelihood import bits_per_dim as package_bits_per_dim
from ddpm_teach.likelihood import vlb
from ddpm_teach.schedule import NoiseSchedule

NEW = ["bits-per-dim", "gaussian-kl", "frechet-1d", "nearest-neighbour"]
PAIRS = [(i, m.name) for i in NEW for m in EXERCISES[i].mistakes]


def test_chapter_06_poses_four_exercises_in_order():
    assert [ex.id for ex in exercises_for_chapter("06")] == NEW
    assert EXERCISES["bits-per-dim"].signature == "bits_per_dim(nats, x0)"
    assert EXERCISES["gaussian-kl"].signature == "gaussian_kl(mean1, var1, mean2, var2)"
    assert EXERCISES["frechet-1d"].signature == "frechet_1d(mu1, var1, mu2, var2)"
    assert EXERCISES["nearest-neighbour"].signature == "nearest_neighbour(samples, train)"


# ------------------------------------------------------------------------ known truth, by hand
def test_bits_per_dim_by_hand():
    ref = EXERCISES["bits-per-dim"].reference
    x0 = torch.zeros(2, 1, 28, 28)
    # 784 values at 3 bits each: 784 * 3 * ln 2 nats per image
    nats = torch.tensor([784 * 3 * math.log(2), 784 * 8 * math.log(2)], dtype=torch.float64)
    assert ref(nats, x0).tolist() == pytest.approx([3.0, 8.0], rel=1e-12)
    cifar = torch.zeros(1, 3, 32, 32)
    assert ref(torch.tensor([3072 * math.log(2)]), cifar).item() == pytest.approx(1.0)


class _ZeroEps:
    """A stand-in network that always predicts eps = 0."""

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x_t)


def test_bits_per_dim_converts_the_packages_bound_as_the_package_does():
    schedule = NoiseSchedule.linear(20, 1e-3, 0.3)
    g = torch.Generator().manual_seed(0)
    x0 = (torch.randint(0, 256, (3, 1, 4, 4), generator=g) / 127.5 - 1).double()
    nats = vlb(_ZeroEps(), schedule, x0, generator=torch.Generator().manual_seed(1))
    expected = package_bits_per_dim(
        _ZeroEps(), schedule, x0, generator=torch.Generator().manual_seed(1)
    )
    got = EXERCISES["bits-per-dim"].reference(nats, x0)
    assert torch.allclose(got, expected, rtol=1e-12)


def test_gaussian_kl_matches_torch_distributions():
    ex = EXERCISES["gaussian-kl"]
    for case in ex.cases():
        m1, v1, m2, v2 = torch.broadcast_tensors(*case.values())
        expected = torch.distributions.kl_divergence(
            torch.distributions.Normal(m1, v1.sqrt()), torch.distributions.Normal(m2, v2.sqrt())
        )
        assert torch.allclose(ex.reference(**case), expected, rtol=1e-10, atol=1e-12)
    x = torch.tensor([0.3, -1.0], dtype=torch.float64)
    same = ex.reference(x, torch.tensor([0.5, 2.0]).double(), x, torch.tensor([0.5, 2.0]).double())
    assert same.abs().max() < 1e-15  # identical Gaussians: KL = 0


def _w2_squared_by_quantiles(mu1, var1, mu2, var2, n=200_000):
    """W2^2 of two 1-D distributions = integral over q of (F1^-1(q) - F2^-1(q))^2 (midpoints)."""
    q = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    z = torch.special.ndtri(q)
    return (((mu1 + math.sqrt(var1) * z) - (mu2 + math.sqrt(var2) * z)) ** 2).mean().item()


def test_frechet_1d_is_the_wasserstein_2_distance_of_the_quantile_functions():
    ex = EXERCISES["frechet-1d"]
    for case in ex.cases():
        got = ex.reference(**case)
        assert got.shape == case["mu1"].shape
        for k in range(len(got)):
            args = [case[name][k].item() for name in ("mu1", "var1", "mu2", "var2")]
            assert got[k].item() == pytest.approx(_w2_squared_by_quantiles(*args), rel=1e-4)
    one = torch.tensor([1.5], dtype=torch.float64)
    assert ex.reference(one, one, one, one).item() == pytest.approx(0.0, abs=1e-12)
    # the same spread, means 2 apart: 4; the same mean, stds 1 and 3: (3 - 1)^2 = 4
    zero, four = torch.zeros(1, dtype=torch.float64), torch.full((1,), 4.0, dtype=torch.float64)
    assert ex.reference(zero, one, 2 + zero, one).item() == pytest.approx(4.0)
    assert ex.reference(zero, 1 + zero, zero, 9 + zero).item() == pytest.approx(four.item())


def test_nearest_neighbour_matches_a_plain_loop():
    ex = EXERCISES["nearest-neighbour"]
    for case in ex.cases():
        dist, idx = ex.reference(**case)
        samples, train = case["samples"], case["train"]
        for i, s in enumerate(samples):
            d = [math.sqrt(((s - x) ** 2).sum().item()) for x in train]
            best = min(range(len(d)), key=d.__getitem__)
            assert int(idx[i]) == best
            assert dist[i].item() == pytest.approx(d[best], rel=1e-12)
        assert int(idx[0]) == 2  # the planted near-copy of train[2]


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


def _outputs(out):
    return out if isinstance(out, tuple) else (out,)


@pytest.mark.parametrize(("exercise_id", "mistake"), PAIRS, ids=[f"{e}:{m}" for e, m in PAIRS])
def test_each_mistake_really_differs_from_the_reference(exercise_id, mistake):
    ex = EXERCISES[exercise_id]
    model = next(m for m in ex.mistakes if m.name == mistake)

    def differs(a, b):
        a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
        return a.shape != b.shape or not torch.allclose(a, b)

    def case_differs(case):
        got, expected = _outputs(model.fn(**case)), _outputs(ex.reference(**case))
        return any(differs(a, b) for a, b in zip(got, expected, strict=True))

    assert any(case_differs(c) for c in ex.cases())


@pytest.mark.parametrize("exercise_id", NEW)
def test_a_stub_is_not_attempted(exercise_id):
    def stub(*args):
        raise NotImplementedError

    result = check(exercise_id, stub)
    assert result.mistake == "not-attempted"
    assert "not attempted yet" in result.message


def test_a_float32_student_passes_the_conversions():
    def bits_per_dim(nats, x0):
        return nats.float() / (x0[0].numel() * math.log(2))

    def frechet_1d(mu1, var1, mu2, var2):
        mu1, var1, mu2, var2 = (v.float() for v in (mu1, var1, mu2, var2))
        return (mu1 - mu2) ** 2 + var1 + var2 - 2 * torch.sqrt(var1 * var2)

    assert check("bits-per-dim", bits_per_dim).passed
    assert check("frechet-1d", frechet_1d).passed


def test_a_nearest_neighbour_by_argmin_of_squared_distances_passes():
    def nearest_neighbour(samples, train):
        d2 = ((samples.flatten(1)[:, None] - train.flatten(1)[None]) ** 2).sum(-1)
        idx = d2.argmin(dim=1)
        return d2.gather(1, idx[:, None])[:, 0].sqrt(), idx

    assert check("nearest-neighbour", nearest_neighbour).passed
