"""The reverse chain: exact denoisers turn noise into known data; DDIM inverts; diffusers agrees."""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest
import torch

from ddpm_teach import NoiseSchedule, ddim_sample, ddim_step, ddpm_sample, ddpm_step
from ddpm_teach.analytic import GaussianMixture
from ddpm_teach.sampling import ddim_timesteps

MIXTURE = GaussianMixture([0.3, 0.7], [[-2.0], [1.5]], [0.3, 0.5])


def _fit_two_components(x: torch.Tensor) -> dict[str, float]:
    """Weights, means and stds of the two modes, split at 0 (they are 3.5 apart)."""
    x = x[:, 0]
    left, right = x[x < 0], x[x >= 0]
    return {
        "w": len(left) / len(x), "m1": left.mean().item(), "s1": left.std().item(),
        "m2": right.mean().item(), "s2": right.std().item(),
    }  # fmt: skip


def _assert_is_mixture(x: torch.Tensor, std_tol: float = 0.04) -> None:
    fit = _fit_two_components(x)
    assert fit["w"] == pytest.approx(0.3, abs=0.03)
    assert fit["m1"] == pytest.approx(-2.0, abs=0.06) and fit["m2"] == pytest.approx(1.5, abs=0.05)
    assert fit["s1"] == pytest.approx(0.3, abs=std_tol) and fit["s2"] == pytest.approx(
        0.5, abs=std_tol
    )


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_ddpm_sample_with_exact_denoiser_recovers_mixture(kind):
    schedule = getattr(NoiseSchedule, kind)(1000)
    g = torch.Generator().manual_seed(0)
    x = ddpm_sample(MIXTURE.denoiser(schedule), schedule, (4000, 1), g, dtype=torch.float64)
    _assert_is_mixture(x)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_ddim_sample_with_exact_denoiser_recovers_mixture(kind):
    schedule = getattr(NoiseSchedule, kind)(1000)
    g = torch.Generator().manual_seed(1)
    x = ddim_sample(
        MIXTURE.denoiser(schedule), schedule, (4000, 1), 100, generator=g, dtype=torch.float64
    )
    _assert_is_mixture(x, std_tol=0.05)


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_samplers_accept_x0_and_v_models(prediction):
    schedule = NoiseSchedule.linear(1000)
    model = MIXTURE.denoiser(schedule, prediction=prediction)
    g = torch.Generator().manual_seed(2)
    x = ddpm_sample(model, schedule, (4000, 1), g, prediction=prediction, dtype=torch.float64)
    _assert_is_mixture(x)


def test_a_wrong_denoiser_fails_the_mixture_check():
    """The checks above can fail: a denoiser for other data gives other samples."""
    schedule = NoiseSchedule.linear(1000)
    wrong = GaussianMixture([0.5, 0.5], [[-2.0], [1.5]], [0.3, 0.5]).denoiser(schedule)
    x = ddpm_sample(
        wrong, schedule, (4000, 1), torch.Generator().manual_seed(0), dtype=torch.float64
    )
    with pytest.raises(AssertionError):
        _assert_is_mixture(x)


def test_2d_mixture_with_large_variance():
    schedule = NoiseSchedule.linear(200, 1e-4 * 5, 0.1)
    gm = GaussianMixture([0.5, 0.5], [[2.0, 0.0], [-2.0, 0.0]], [[0.3, 0.1], [0.2, 0.4]])
    g = torch.Generator().manual_seed(0)
    x = ddpm_sample(
        gm.denoiser(schedule), schedule, (4000, 2), g, variance="large", dtype=torch.float64
    )
    right = x[x[:, 0] > 0]
    assert len(right) / len(x) == pytest.approx(0.5, abs=0.03)
    assert right.mean(0).tolist() == pytest.approx([2.0, 0.0], abs=0.05)
    assert right.std(0).tolist() == pytest.approx([0.3, 0.1], abs=0.03)


def test_ddpm_step_equals_algorithm_2_formula():
    """Posterior-mean form (eq. 7 at x0_hat) == eq. 11's mu_theta, and no noise at t = 0."""
    s = NoiseSchedule.linear(1000)
    g = torch.Generator().manual_seed(0)
    x_t, eps, z = (torch.randn(6, 3, dtype=torch.float64, generator=g) for _ in range(3))
    t = torch.tensor([999, 500, 10, 1, 0, 0])
    out = ddpm_step(s, eps, x_t, t, noise=z, variance="large")
    a, ab, b = s.alphas[t, None], s.alpha_bars[t, None], s.betas[t, None]
    mu = (x_t - b / (1 - ab).sqrt() * eps) / a.sqrt()
    sigma = torch.where(t[:, None] > 0, b.sqrt(), torch.zeros_like(b))
    assert torch.allclose(out, mu + sigma * z, atol=1e-9)


def _ddim_invert(model, schedule, x0: torch.Tensor, num_steps: int) -> torch.Tensor:
    """Run the eta = 0 update upwards (x_lo -> x_hi), reading eps at the lower step."""
    x = x0
    for lo, hi in itertools.pairwise([-1, *reversed(ddim_timesteps(1000, num_steps))]):
        eps = model(x, torch.full((x.shape[0],), max(lo, 0), dtype=torch.long))
        ab_lo = 1.0 if lo < 0 else schedule.alpha_bars[lo].item()
        ab_hi = schedule.alpha_bars[hi].item()
        x0_hat = (x - (1 - ab_lo) ** 0.5 * eps) / ab_lo**0.5
        x = ab_hi**0.5 * x0_hat + (1 - ab_hi) ** 0.5 * eps
    return x


def test_ddim_eta_zero_is_deterministic_and_inverts():
    schedule = NoiseSchedule.linear(1000)
    model = MIXTURE.denoiser(schedule)
    x_T = torch.randn(64, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    errors = {}
    for n in (200, 1000):
        a = ddim_sample(model, schedule, x_T.shape, n, x_T=x_T, dtype=torch.float64)
        b = ddim_sample(model, schedule, x_T.shape, n, x_T=x_T, dtype=torch.float64)
        assert torch.equal(a, b)
        errors[n] = (_ddim_invert(model, schedule, a, n) - x_T).abs().max().item()
    # Inversion recovers x_T up to a discretisation error that shrinks like 1/steps.
    assert errors[1000] < 0.03
    assert errors[1000] < errors[200] / 3


def test_one_ddim_step_inverts_exactly_given_its_eps():
    s = NoiseSchedule.cosine(1000)
    g = torch.Generator().manual_seed(0)
    x_t, eps = (torch.randn(4, 3, dtype=torch.float64, generator=g) for _ in range(2))
    x_prev = ddim_step(s, eps, x_t, 700, 650)
    x0_hat = s.predict_x0_from_eps(x_t, 700, eps)
    back = s.alpha_bars[700].sqrt() * x0_hat + (
        1 - s.alpha_bars[700]
    ).sqrt() * s.predict_eps_from_x0(x_prev, 650, x0_hat)
    assert torch.allclose(back, x_t, atol=1e-10)


def test_ddim_eta_one_single_step_equals_ddpm_small():
    s = NoiseSchedule.linear(1000)
    g = torch.Generator().manual_seed(0)
    x_t, eps, z = (torch.randn(5, 2, dtype=torch.float64, generator=g) for _ in range(3))
    t = torch.tensor([900, 500, 100, 5, 1])
    out_ddim = ddim_step(s, eps, x_t, t, t - 1, eta=1.0, noise=z)
    out_ddpm = ddpm_step(s, eps, x_t, t, noise=z, variance="small")
    assert torch.allclose(out_ddim, out_ddpm, atol=1e-9)


def test_trajectory_shapes_and_endpoints():
    schedule = NoiseSchedule.linear(100, 1e-3, 0.2)
    model = MIXTURE.denoiser(schedule)
    g = torch.Generator().manual_seed(0)
    tr = ddpm_sample(
        model,
        schedule,
        (16, 1),
        g,
        return_trajectory=True,
        trajectory_stride=10,
        dtype=torch.float64,
    )
    assert tr.xs.shape == (11, 16, 1) and tr.x0_preds.shape == (10, 16, 1)
    assert tr.timesteps[0] == 99 and tr.timesteps[-1] == -1
    assert torch.equal(tr.xs[-1], tr.sample)
    tr = ddim_sample(model, schedule, (16, 1), 10, generator=g, return_trajectory=True)
    assert tr.xs.shape == (11, 16, 1) and tr.timesteps == [*ddim_timesteps(100, 10), -1]


def test_clip_x0_keeps_predictions_in_range():
    schedule = NoiseSchedule.linear(100, 1e-3, 0.2)
    model = GaussianMixture([1.0], [[3.0]], 0.1).denoiser(schedule)
    g = torch.Generator().manual_seed(0)
    unclipped = ddpm_sample(model, schedule, (64, 1), g, dtype=torch.float64)
    clipped = ddpm_sample(model, schedule, (64, 1), g, clip_x0=True, dtype=torch.float64)
    assert unclipped.mean() > 2.5 and clipped.max() <= 1.0 + 1e-6
    # A kept trajectory shows the x_0 predictions the steps used: clipped too, in both loops.
    for sample in (ddpm_sample, functools.partial(ddim_sample, num_steps=10, eta=1.0)):
        tr = sample(model, schedule, (64, 1), generator=g, clip_x0=True, return_trajectory=True)
        assert tr.x0_preds.abs().max() <= 1.0 + 1e-6, sample


# --------------------------------------------------------------------- peer: diffusers schedulers
diffusers = pytest.importorskip("diffusers")


@pytest.mark.parametrize("variance", ["small", "large"])
def test_ddpm_step_matches_diffusers(variance):
    sched = diffusers.DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="linear", clip_sample=False,
        variance_type="fixed_small" if variance == "small" else "fixed_large",
    )  # fmt: skip
    ours = NoiseSchedule.linear(1000)
    g = torch.Generator().manual_seed(0)
    for t in (999, 600, 50, 1, 0):
        x_t = torch.randn(4, 3, 8, 8, generator=g)
        eps = torch.randn(4, 3, 8, 8, generator=g)
        # diffusers draws its noise from the generator it is given: hand both the same seed.
        g1 = torch.Generator().manual_seed(t)
        ref = sched.step(eps, t, x_t, generator=g1).prev_sample
        z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(t))
        out = ddpm_step(ours, eps, x_t, t, noise=z, variance=variance)
        # diffusers computes in float32: compare to float32 precision.
        assert torch.allclose(out, ref, rtol=1e-4, atol=1e-4), (t, (out - ref).abs().max())


@pytest.mark.parametrize("spacing", ["trailing", "leading", "linspace"])
def test_ddim_timesteps_are_diffusers_and_never_overshoot(spacing):
    """The grids match diffusers' DDIMScheduler step for step, and always have num_steps distinct
    steps in 0..T-1: for 61 steps of 1000 (and 61 other counts) the trailing float range has one
    entry too many, which diffusers keeps as step -1."""
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
    for n in (1, 10, 20, 48, 50, 61, 100, 103, 999, 1000):
        ts = ddim_timesteps(1000, n, spacing)
        assert len(ts) == n and len(set(ts)) == n and 0 <= min(ts) and max(ts) <= 999
        assert ts == sorted(ts, reverse=True)
        sched.set_timesteps(n)
        assert ts == [int(v) for v in sched.timesteps][:n], n
    assert ddim_timesteps(1000, 61)[-1] == 15  # diffusers: [..., 32, 15, -1]
    for T in (15, 100):  # every count for two short chains
        for n in range(1, T + 1):
            ts = ddim_timesteps(T, n)
            assert len(set(ts)) == n and ts[0] == T - 1 and ts[-1] >= 0, (T, n)
    with pytest.raises(TypeError, match="num_steps: expected an int"):
        ddim_timesteps(1000, 2.5)
    assert ddim_timesteps(1000, np.int64(20)) == ddim_timesteps(1000, 20)


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_step_matches_diffusers(eta):
    sched = diffusers.DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="linear", clip_sample=False,
        set_alpha_to_one=True, timestep_spacing="trailing",
    )  # fmt: skip
    sched.set_timesteps(20)
    ours = NoiseSchedule.linear(1000)
    ts = ddim_timesteps(1000, 20, "trailing")
    assert [int(v) for v in sched.timesteps] == ts
    g = torch.Generator().manual_seed(0)
    for t, t_prev in zip(ts, [*ts[1:], -1], strict=True):
        x_t = torch.randn(2, 1, 8, 8, generator=g)
        eps = torch.randn(2, 1, 8, 8, generator=g)
        ref = sched.step(
            eps, t, x_t, eta=eta, generator=torch.Generator().manual_seed(t)
        ).prev_sample
        z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(t))
        out = ddim_step(ours, eps, x_t, t, t_prev, eta=eta, noise=z)
        assert torch.allclose(out, ref, atol=1e-4), (t, (out - ref).abs().max())


def test_int_step_equals_per_example_steps():
    """The samplers pass one int step for the whole batch (a cheaper path through the schedule);
    it must give exactly what a (B,) tensor of that step gives."""
    s = NoiseSchedule.linear(50, 1e-3, 0.2)
    g = torch.Generator().manual_seed(0)
    x_t, eps, z = (torch.randn(3, 1, 4, 4, generator=g) for _ in range(3))
    for t in (0, 1, 17, 49):
        full = torch.full((3,), t)
        for variance in ("small", "large"):
            a = ddpm_step(s, eps, x_t, t, noise=z, variance=variance, clip_x0=True)
            b = ddpm_step(s, eps, x_t, full, noise=z, variance=variance, clip_x0=True)
            assert torch.equal(a, b), (t, variance)
        for t_prev in {-1, t // 2 - 1, t - 1}:
            a = ddim_step(s, eps, x_t, t, t_prev, eta=0.7, noise=z, clip_x0=True)
            b = ddim_step(
                s, eps, x_t, full, torch.full((3,), t_prev), eta=0.7, noise=z, clip_x0=True
            )
            assert torch.equal(a, b), (t, t_prev)
    # The int path slices the schedule's table: what it returns must be a copy.
    coef = s.at(s.betas, 5, x_t.double())
    coef.mul_(0)
    assert s.betas[5] > 0
    with pytest.raises(ValueError, match="t_prev: expected -1 <= t_prev < t"):
        ddim_step(s, eps, x_t, 5, -2)
    with pytest.raises(ValueError, match="t_prev: expected -1 <= t_prev < t"):
        ddim_step(s, eps, x_t, torch.full((3,), 5), torch.full((3,), -2))
    # A t_prev of the wrong length is named as such (not as a bad t, further down).
    with pytest.raises(
        ValueError, match=r"t_prev: expected one entry or one per batch element \(3\), got 2"
    ):
        ddim_step(s, eps, x_t, 5, torch.tensor([1, 2]))


# ------------------------------------------------------------------------------- bad input
def test_bad_sampler_input():
    s = NoiseSchedule.linear(10, 0.01, 0.2)
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="variance: expected one of"):
        ddpm_step(s, x, x, 1, variance="medium")
    with pytest.raises(ValueError, match="noise: expected the shape"):
        ddpm_step(s, x, x, 1, noise=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="t_prev"):
        ddim_step(s, x, x, 3, 3)
    with pytest.raises(ValueError, match="t: step indices"):
        ddim_step(s, x, x, 10, 2)
    with pytest.raises(ValueError, match="eta"):
        ddim_step(s, x, x, 3, 2, eta=-1.0)
    with pytest.raises(ValueError, match="num_steps"):
        ddim_sample(lambda x, t: x, s, (2, 3), num_steps=11)
    with pytest.raises(ValueError, match="prediction"):
        ddpm_sample(lambda x, t: x, s, (2, 3), prediction="noise")


def test_a_model_returning_the_wrong_shape_is_blamed():
    s = NoiseSchedule.linear(10, 0.01, 0.2)
    with pytest.raises(ValueError, match=r"model: .*returned \(2, 1\).*fault is in the model"):
        ddpm_sample(lambda x, t: x[:, :1], s, (2, 3))
    with pytest.raises(ValueError, match=r"model: .*returned tuple"):
        ddim_sample(lambda x, t: (x,), s, (2, 3), num_steps=2)
