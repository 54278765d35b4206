"""Tests for ddpm_teach.training: L_simple, EMA, reproducibility, checkpoints, NaN guard, loading."""

from __future__ import annotations

import copy
import functools
import itertools
import math
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import ddpm_teach.training as ddpm_teach_training
from ddpm_teach.data import EIGHT_GAUSSIANS_CENTERS, EIGHT_GAUSSIANS_STD, toy_2d
from ddpm_teach.mlp import MLPDenoiser
from ddpm_teach.sampling import ddim_sample, ddpm_sample
from ddpm_teach.training import (
    BF16Sampling,
    Chunked,
    LossAwareSampler,
    NonFiniteLossError,
    TrainConfig,
    Trainer,
    ema_decay_at,
    ema_update,
    has_native_bf16,
    load_checkpoint,
    make_schedule,
    min_snr_weight,
    sampling_net,
    train,
)

TOY = toy_2d("eight-gaussians", 4000, seed=1)
# Tiny images (8 x 8, values in [-1, 1]): enough for a U-Net's code paths, fast on a CPU.
IMAGES = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
TINY_UNET = dict(base_channels=8, channel_mults=[1, 2], num_res_blocks=1, attention_levels=[1])


def toy_config(**kw) -> TrainConfig:
    base = dict(
        data="eight-gaussians", model_kwargs=dict(hidden=32, num_layers=1), num_steps=50,
        train_steps=20, batch_size=32, lr=3e-3, warmup_steps=4, ema_decay=0.9, device="cpu",
        num_samples=0, log_every=5, sample_steps=5,
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def image_config(**kw) -> TrainConfig:
    base = dict(
        data="random-8x8", model="unet", model_kwargs=dict(TINY_UNET, dropout=0.2), hflip=True,
        num_steps=50, train_steps=6, batch_size=16, lr=1e-3, warmup_steps=2, ema_decay=0.9,
        device="cpu", num_samples=0, log_every=2, sample_steps=5,
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def near_modes(samples: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Share of samples within 3 std of their nearest centre, and the count at each centre."""
    dist, which = torch.cdist(samples.double(), EIGHT_GAUSSIANS_CENTERS.double()).min(dim=1)
    near = dist <= 3 * EIGHT_GAUSSIANS_STD
    return near.double().mean().item(), torch.bincount(which[near], minlength=8)


def assert_same_state(a: Trainer, b: Trainer) -> None:
    for (name, p), q in zip(
        a.model.state_dict().items(), b.model.state_dict().values(), strict=True
    ):
        assert torch.equal(p, q), name
    for p, q in zip(a.ema.state_dict().values(), b.ema.state_dict().values(), strict=True):
        assert torch.equal(p, q)
    sa, sb = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    for k in sa:
        for key in sa[k]:
            assert torch.equal(sa[k][key], sb[k][key]), (k, key)


# ------------------------------------------------------------------ the loss, L_simple (eq. 14)
class Zero(nn.Module):
    """Predicts 0 whatever the input: the loss is then the mean square of the target itself."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x, t):
        return x * 0 + self.w * 0  # w only so that the optimiser has a parameter


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_loss_is_l_simple_for_each_target(prediction):
    cfg = toy_config(prediction=prediction, train_steps=3, log_every=1)
    tr = Trainer(cfg, TOY, model=Zero(), progress=False)
    # The batches are a function of (seed, step), so they can be drawn again here.
    expected = []
    for step in range(3):
        x0, t, eps = tr._batch(step)
        target = {"eps": eps, "x0": x0, "v": tr.schedule.v_target(x0, eps, t)}[prediction]
        expected.append(target.pow(2).mean().item())
    tr.train()
    assert [s for s, _ in tr.history] == [1, 2, 3]
    assert [v for _, v in tr.history] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_min_snr_weight_caps_the_x0_error_weight_at_gamma(prediction):
    # Whatever the network outputs, weight * ||target - out||^2 = min(SNR, gamma) ||x0 - x0_hat||^2.
    s = make_schedule("linear", 1000)
    t = torch.tensor([0, 20, 80, 130, 140, 400, 999])
    g = torch.Generator().manual_seed(0)
    x0, eps, out = (torch.randn(7, 1, 4, 4, generator=g, dtype=torch.float64) for _ in range(3))
    x_t = s.q_sample(x0, t, eps)
    x0_hat = {"eps": s.predict_x0_from_eps, "x0": lambda x, t, o: o,
              "v": s.predict_x0_from_v}[prediction](x_t, t, out)  # fmt: skip
    err = (s.target(x0, eps, t, prediction) - out).square().flatten(1).sum(1)
    x0_err = (x0 - x0_hat).square().flatten(1).sum(1)
    w = min_snr_weight(s, t, prediction, gamma=5.0)
    assert torch.allclose(w * err, s.snr(t).clamp(max=5.0) * x0_err, rtol=1e-6)
    if prediction == "eps":  # 1 wherever SNR <= gamma: only the nearly clean steps are damped
        assert torch.equal(w[s.snr(t) <= 5.0], torch.ones_like(w[s.snr(t) <= 5.0]))
        assert (w[s.snr(t) > 5.0] < 1).all() and w[0] < 1e-3
    for bad in (0, -1.0, float("inf"), True):
        with pytest.raises(ValueError, match="gamma: expected a positive number"):
            min_snr_weight(s, t, prediction, gamma=bad)


def test_trainer_loss_with_min_snr_is_the_weighted_mean():
    cfg = toy_config(train_steps=2, log_every=1, min_snr_gamma=2.0)
    tr = Trainer(cfg, TOY, model=Zero(), progress=False)
    expected = []
    for step in range(2):
        _, t, eps = tr._batch(step)
        w = min_snr_weight(tr.schedule, t, "eps", 2.0).float()
        expected.append((w * eps.pow(2).mean(1)).mean().item())
        assert expected[-1] < eps.pow(2).mean().item()  # some steps of 50 have SNR > 2
    tr.train()
    assert [v for _, v in tr.history] == pytest.approx(expected, rel=1e-6)


def test_t_is_uniform_and_x_t_follows_eq_4():
    tr = Trainer(toy_config(batch_size=1000), TOY, progress=False)
    ts = torch.cat([tr._batch(step)[1] for step in range(20)])
    counts = torch.bincount(ts, minlength=50).double()
    assert ts.min() == 0 and ts.max() == 49
    chi2 = ((counts - counts.mean()) ** 2 / counts.mean()).sum().item()
    assert chi2 < 100  # 49 degrees of freedom: 100 is p < 1e-5 for a uniform t
    x0, _, eps = tr._batch(0)
    assert x0.shape == eps.shape == (1000, 2) and eps.std().item() == pytest.approx(1, abs=0.06)


# ------------------------------------------------------------------ loss-aware t sampling
def _warm_sampler(rms: torch.Tensor, history: int = 4) -> LossAwareSampler:
    """A sampler whose every step has seen ``history`` losses of root mean square ``rms[t]``."""
    s = LossAwareSampler(len(rms), history=history)
    for _ in range(history):
        s.update(torch.arange(len(rms)), rms)
    return s


def test_bf16_sampling_runs_the_model_under_autocast_and_returns_x_dtype():
    seen = []

    class Probe(nn.Module):
        def forward(self, x, t):
            seen.append(torch.is_autocast_enabled("cpu"))
            return (x * 2).to(torch.bfloat16)  # as a network under autocast returns

    wrapped = BF16Sampling(Probe())
    x = torch.randn(3, 1, 4, 4)
    out = wrapped(x, torch.zeros(3, dtype=torch.long))
    assert seen == [True] and out.dtype == torch.float32
    assert torch.allclose(out, x * 2, rtol=1e-2)
    assert not torch.is_autocast_enabled("cpu")  # only around the call


def test_trainer_samples_under_bf16_where_it_trains_under_it(monkeypatch):
    import ddpm_teach.sampling as sampling
    import ddpm_teach.training as training

    nets, real = [], sampling.ddim_sample

    def spy(net, *args, **kwargs):
        nets.append(net)
        return real(net, *args, **kwargs)

    monkeypatch.setattr(sampling, "ddim_sample", spy)
    monkeypatch.setattr(training, "has_native_bf16", lambda device: True)  # any CPU runs it
    for bf16 in (False, True):
        trainer = Trainer(image_config(bf16=bf16), IMAGES, progress=False)
        trainer.bf16 = bf16  # as on a CPU with native bf16, whichever this one is
        assert trainer.sample(2, steps=2).shape == (2, 1, 8, 8)
    trainer.sample(2, steps=2, use_ema=False)  # the raw weights: wrapped alike
    trainer.sample(2, steps=2, bf16=False)  # float32 on request
    kinds = [isinstance(net, BF16Sampling) for net in nets]
    assert kinds == [False, True, True, False]
    assert nets[2].model is trainer.model and nets[1].model is trainer.ema


def test_chunked_calls_the_model_on_slices_and_returns_what_one_call_would():
    calls = []

    class Probe(nn.Module):
        def forward(self, x, t):
            calls.append((x.shape[0], t if isinstance(t, int) else t.tolist()))
            tt = t.reshape(-1, 1, 1, 1) if isinstance(t, torch.Tensor) else t
            return x * 2 + tt

    x, t = torch.randn(8, 1, 4, 4), torch.arange(8)
    assert torch.equal(Chunked(Probe(), 3)(x, t), x * 2 + t[:, None, None, None])
    assert calls == [(3, [0, 1, 2]), (3, [3, 4, 5]), (2, [6, 7])]  # t split alongside x
    for max_batch, n, sizes in ((5, 8, [4, 4]), (7, 8, [4, 4]), (3, 10, [3, 3, 2, 2]), (8, 8, [8])):
        calls.clear()
        Chunked(Probe(), max_batch)(torch.randn(n, 1, 4, 4), torch.arange(n))
        assert [c[0] for c in calls] == sizes  # even chunks, never a small tail
    for scalar in (7, torch.tensor(7), torch.tensor([7])):  # one step for the whole batch
        calls.clear()
        out = Chunked(Probe(), 5)(x, scalar)
        assert torch.equal(out, x * 2 + 7) and [c[0] for c in calls] == [4, 4]
    torch.manual_seed(0)
    unet = build_unet()
    with torch.no_grad():
        x, t = torch.randn(7, 1, 8, 8), torch.randint(0, 50, (7,))
        torch.testing.assert_close(Chunked(unet, 2)(x, t), unet(x, t))
    for bad in (0, -1, 2.0, True, None):
        with pytest.raises(ValueError, match="max_batch: expected a positive int"):
            Chunked(unet, bad)


def build_unet() -> nn.Module:
    from ddpm_teach.unet import UNet

    return UNet(in_channels=1, **TINY_UNET).eval()


def test_sampling_net_chunks_a_large_batch_of_images_on_the_cpu_only():
    unet = build_unet()
    per_image = 8 * 8 * 8 * 4  # base_channels x H x W float32 values
    limit = ddpm_teach_training.SAMPLING_CHUNK_BYTES // per_image
    net = sampling_net(unet, (limit + 1, 1, 8, 8), "cpu", bf16=False)
    assert isinstance(net, Chunked) and net.max_batch == limit and net.model is unet
    net = sampling_net(unet, (4 * limit, 1, 8, 8), "cpu", bf16=True)  # bf16: 2 bytes a value
    assert isinstance(net, BF16Sampling) and net.model.max_batch == 2 * limit
    assert sampling_net(unet, (limit, 1, 8, 8), "cpu", bf16=False) is unet  # fits in one call
    assert sampling_net(unet, (limit + 1, 1, 8, 8), "cuda", bf16=False) is unet  # GPU: whole
    mlp = MLPDenoiser(dim=2, hidden=8, num_layers=1)
    assert sampling_net(mlp, (10**6, 2), "cpu", bf16=False) is mlp  # only U-Nets are chunked


def test_trainer_samples_the_same_digits_in_chunks(monkeypatch):
    trainer = Trainer(image_config(), IMAGES, progress=False)
    whole = trainer.sample(10, steps=3, eta=1.0)
    sizes = []
    real = trainer.ema.forward

    def spy(x, t):
        sizes.append(x.shape[0])
        return real(x, t)

    monkeypatch.setattr(trainer.ema, "forward", spy)
    # Room for 4 images a call: base_channels 8 x 8 x 8 pixels x 4 bytes each.
    monkeypatch.setattr(ddpm_teach_training, "SAMPLING_CHUNK_BYTES", 4 * 8 * 8 * 8 * 4)
    chunked = trainer.sample(10, steps=3, eta=1.0)
    assert sizes == [4, 3, 3] * 3  # three steps, each in three calls
    torch.testing.assert_close(chunked, whole)  # the same noise: the same samples


def test_loss_aware_sampler_is_uniform_until_every_step_has_its_history():
    s = LossAwareSampler(5, history=2)
    s.update(torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3]), torch.arange(9.0))
    assert not s.warm  # step 4 has one loss of two
    t, w = s.sample(1000, torch.Generator().manual_seed(0))
    assert torch.equal(w, torch.ones(1000, dtype=torch.float64))
    assert torch.bincount(t, minlength=5).min() > 150  # all five, about 200 each
    assert torch.equal(s.probs(), torch.full((5,), 0.2, dtype=torch.float64))
    s.update(torch.tensor([4]), torch.tensor([7.0]))
    assert s.warm


def test_loss_aware_probabilities_follow_the_root_mean_square_loss():
    s = LossAwareSampler(4, history=2, uniform_share=0.1)
    for losses in ([1.0, 1.0, 3.0, 0.0], [1.0, 7.0, 4.0, 0.0]):
        s.update(torch.arange(4), torch.tensor(losses))
    rms = torch.tensor([1.0, 5.0, 12.5**0.5, 0.0], dtype=torch.float64)
    want = 0.9 * rms / rms.sum() + 0.1 / 4
    torch.testing.assert_close(s.probs(), want)
    # Only the last `history` losses count: a third round replaces the first.
    s.update(torch.arange(4), torch.tensor([1.0, 7.0, 4.0, 0.0]))
    rms = torch.tensor([1.0, 7.0, 4.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(s.probs(), 0.9 * rms / rms.sum() + 0.1 / 4)


def test_loss_aware_weights_keep_the_expected_loss():
    """E_{t~p}[L_t / (T p_t)] = mean_t L_t, by sampling; and t is drawn where L_t is large."""
    rms = torch.tensor([0.01, 0.5, 2.0, 4.0, 1.0], dtype=torch.float64)
    s = _warm_sampler(rms)
    p = s.probs()
    t, w = s.sample(200_000, torch.Generator().manual_seed(0))
    torch.testing.assert_close(w, 1 / (5 * p[t]))
    assert (w * rms[t]).mean().item() == pytest.approx(rms.mean().item(), rel=0.02)
    freq = torch.bincount(t, minlength=5).double() / len(t)  # drawn where the loss is large
    torch.testing.assert_close(freq, p, atol=0.01, rtol=0)


def test_loss_aware_sampler_skips_non_finite_losses_and_round_trips_its_state():
    s = _warm_sampler(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), history=2)
    before = s.probs().clone()
    s.update(torch.tensor([0, 1]), torch.tensor([float("nan"), float("inf")]))
    torch.testing.assert_close(s.probs(), before)
    copy_ = LossAwareSampler(3, history=2)
    copy_.load_state_dict(s.state_dict())
    torch.testing.assert_close(copy_.probs(), before)
    with pytest.raises(ValueError, match="t sampler state: expected losses"):
        LossAwareSampler(4, history=2).load_state_dict(s.state_dict())
    with pytest.raises(ValueError, match="losses: expected one per t"):
        s.update(torch.tensor([0, 1]), torch.tensor([1.0]))
    for bad_t in ([-1], [3]):
        with pytest.raises(ValueError, match=r"t: expected steps in 0\.\.2"):
            s.update(torch.tensor(bad_t), torch.tensor([1.0]))
    for bad_state in (None, {"losses": torch.zeros(3, 2)}):
        with pytest.raises(ValueError, match="t sampler state: expected a dict with 'losses'"):
            s.load_state_dict(bad_state)
    with pytest.raises(ValueError, match="uniform_share"):
        LossAwareSampler(3, uniform_share=True)
    for bad in (
        dict(num_steps=0),
        dict(num_steps=3, history=0),
        dict(num_steps=3, uniform_share=0),
    ):
        with pytest.raises(ValueError, match=next(iter(bad)) if len(bad) == 1 else list(bad)[-1]):
            LossAwareSampler(**bad)


def test_trainer_with_loss_aware_t_minimises_the_importance_weighted_loss():
    """The logged loss is mean(w_is * w_snr * ||eps - eps_hat||^2), t drawn from the sampler; and
    the sampler learns where the Min-SNR-weighted loss of a zero network is large."""
    cfg = toy_config(
        train_steps=40, log_every=1, min_snr_gamma=1.0, t_sampling="loss-aware", batch_size=256
    )
    tr = Trainer(cfg, TOY, model=Zero(), progress=False)
    tr.train(20)  # 5,120 losses: every one of the 50 steps has its 10
    assert tr.t_sampler.warm
    state = copy.deepcopy(tr.t_sampler.state_dict())
    _, t, eps = tr._batch(20)
    w_is = tr._t_weight.float()
    assert not torch.equal(w_is, torch.ones_like(w_is))
    w_snr = min_snr_weight(tr.schedule, t, "eps", 1.0).float()
    want = (w_is * w_snr * eps.pow(2).mean(1)).mean().item()
    seen = []
    real_update = tr.t_sampler.update
    tr.t_sampler.update = lambda t_, losses: seen.append((t_, losses)) or real_update(t_, losses)
    tr.train(1)
    assert tr.history[-1][1] == pytest.approx(want, rel=1e-6)
    # The sampler remembers each example's Min-SNR-weighted loss, not the importance-weighted one.
    ((t_seen, losses_seen),) = seen
    assert torch.equal(t_seen, t)
    torch.testing.assert_close(losses_seen, w_snr * eps.pow(2).mean(1))
    # A zero network's weighted loss is w_snr(t) * |eps|^2: large where SNR <= 1, tiny at t = 0.
    sampler = LossAwareSampler(50)
    sampler.load_state_dict(state)
    p = sampler.probs()
    assert p[-1] > 5 * p[0]
    assert p[tr.schedule.snr(torch.arange(50)) <= 1].sum() > 0.6


def test_loss_aware_t_is_the_same_on_every_process():
    """Each process draws the whole batch's t from the same generator and sampler state, so the
    slices of two processes are the slices of one process's batch."""
    cfg = toy_config(t_sampling="loss-aware", batch_size=64)
    one = Trainer(cfg, TOY, progress=False)
    one.t_sampler = _warm_sampler(torch.linspace(0.1, 3.0, 50, dtype=torch.float64))
    _, t_all, _ = one._batch(3)
    w_all = one._t_weight
    for rank in (0, 1):
        tr = Trainer(cfg, TOY, progress=False)
        tr.t_sampler = _warm_sampler(torch.linspace(0.1, 3.0, 50, dtype=torch.float64))
        tr.rank, tr.world_size = rank, 2
        _, t, _ = tr._batch(3)
        assert torch.equal(t, t_all[32 * rank : 32 * (rank + 1)])
        assert torch.equal(tr._t_weight, w_all[32 * rank : 32 * (rank + 1)])


def test_each_epoch_visits_every_example_once():
    data = TOY[:100]
    tr = Trainer(toy_config(batch_size=30), data, progress=False)
    seen = torch.cat([tr._indices(step) for step in range(10)])  # 300 = three epochs
    for epoch in range(3):
        assert sorted(seen[100 * epoch : 100 * (epoch + 1)].tolist()) == list(range(100))
    assert not torch.equal(seen[:100], seen[100:200])  # a new order every epoch


def test_loss_decreases_and_samples_reach_the_eight_modes():
    cfg = TrainConfig.from_budget("eight-gaussians", "smoke", device="cpu", num_samples=0)
    tr = Trainer(cfg, TOY, progress=False)
    g = torch.Generator().manual_seed(0)
    before, _ = near_modes(ddpm_sample(tr.ema, tr.schedule, (1000, 2), g))
    tr.train()
    losses = [v for _, v in tr.history]
    assert len(losses) == cfg.train_steps == 300
    assert sum(losses[-50:]) / 50 < 0.5 * sum(losses[:20]) / 20
    share, counts = near_modes(ddpm_sample(tr.ema, tr.schedule, (1000, 2), g))
    assert before < 0.1  # untrained: noise, hardly any point near a mode
    assert share > 0.25, share
    assert (counts >= 20).all(), counts  # every mode reached (8 equal modes: 1/8 each)


def test_log_has_throughput_and_callbacks_are_called(tmp_path):
    logged, previews = [], []
    cfg = toy_config(out_dir=str(tmp_path), num_samples=64, sample_every=10, train_steps=20)
    tr = Trainer(
        cfg, TOY, progress=False,
        on_log=lambda s, v: logged.append((s, v)),
        on_samples=lambda s, x: previews.append((s, x.shape)),
    )  # fmt: skip
    tr.train()
    assert [s for s, _ in logged] == [5, 10, 15, 20]
    assert previews == [(10, (64, 2)), (20, (64, 2))]
    for entry in tr.log:
        assert entry["images_per_s"] > 0 and entry["train_time_s"] > 0 and entry["lr"] > 0
    assert [e["train_time_s"] for e in tr.log] == sorted(e["train_time_s"] for e in tr.log)
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == ["samples_0000010.png", "samples_0000020.png"]
    assert Image.open(tmp_path / pngs[0]).size == (400, 400)
    summary = tr.summary()
    assert summary["steps"] == 20 and summary["images_per_s"] > 0 and summary["bf16"] is False


def test_image_previews_are_grids(tmp_path):
    cfg = image_config(out_dir=str(tmp_path), num_samples=4, train_steps=2)
    tr = Trainer(cfg, IMAGES, progress=False)
    tr.train()
    img = Image.open(tmp_path / "samples_0000002.png")
    assert img.size == (2 * 8 + 3 * 2, 2 * 8 + 3 * 2)  # 2 x 2 grid, 2 px borders
    assert tr.sample(3).shape == (3, 1, 8, 8) and tr.sample(3).abs().max() <= 1.5


# ------------------------------------------------------------------ learning rate and EMA
def test_warmup_is_linear_then_flat():
    tr = Trainer(toy_config(lr=1e-2, warmup_steps=4), TOY, progress=False)
    assert [tr.lr_at(s) for s in range(6)] == pytest.approx(
        [2.5e-3, 5e-3, 7.5e-3, 1e-2, 1e-2, 1e-2]
    )


def test_cosine_decay_after_warmup_reaches_zero_at_the_end():
    tr = Trainer(toy_config(lr=1e-2, warmup_steps=4, lr_decay="cosine", train_steps=12), TOY,
                 progress=False)  # fmt: skip
    lrs = [tr.lr_at(s) for s in range(13)]
    assert lrs[:5] == pytest.approx([2.5e-3, 5e-3, 7.5e-3, 1e-2, 1e-2])  # warm-up, then the peak
    assert lrs[8] == pytest.approx(5e-3)  # half-way through the 8 decay steps: half the peak
    assert lrs[12] == pytest.approx(0.0, abs=1e-12)
    assert all(a > b for a, b in itertools.pairwise(lrs[4:]))  # strictly falling
    tr.train()
    assert tr.optimizer.param_groups[0]["lr"] == pytest.approx(lrs[11])  # what the optimiser got
    with pytest.raises(ValueError, match="lr_decay"):
        toy_config(lr_decay="linear")


def test_ema_update_by_hand():
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    a0 = copy.deepcopy(a)
    ema_update(a, b, 0.9)
    for p, p0, q in zip(a.parameters(), a0.parameters(), b.parameters(), strict=True):
        assert torch.allclose(p, 0.9 * p0 + 0.1 * q, atol=1e-7)
    assert ema_decay_at(0, 0.999) == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    assert ema_decay_at(90, 0.999) == pytest.approx(0.91)
    assert ema_decay_at(10**6, 0.999) == 0.999 and ema_decay_at(0, 0.999, warmup=False) == 0.999
    with pytest.raises(ValueError, match="decay"):
        ema_update(a, b, 1.5)


def test_trainer_ema_after_one_step():
    tr = Trainer(toy_config(ema_decay=0.99), TOY, progress=False)
    init = [p.detach().clone() for p in tr.model.parameters()]
    tr.train(1)
    d = ema_decay_at(0, 0.99)  # 0.1: the first update mostly forgets the initial weights
    for e, p0, p in zip(tr.ema.parameters(), init, tr.model.parameters(), strict=True):
        assert not torch.equal(p, p0)
        assert torch.allclose(e, d * p0 + (1 - d) * p, atol=1e-7)
    assert tr.ema_model() is tr.ema and not tr.ema.training


# ------------------------------------------------------------------ reproducibility and resume
@pytest.mark.parametrize("kind", ["mlp", "mlp-loss-aware", "unet", "unet-bf16"])
def test_resume_continues_exactly(tmp_path, monkeypatch, kind):
    make, data = (toy_config, TOY) if kind.startswith("mlp") else (image_config, IMAGES)
    if kind == "unet-bf16":  # autocast on, as on a CPU with native bf16
        _cpu_bf16(monkeypatch, native=True)
        make = functools.partial(image_config, bf16=True)
    if kind == "mlp-loss-aware":  # the sampler warms up (50 steps x 10 losses) before the halfway
        make = functools.partial(toy_config, t_sampling="loss-aware", batch_size=128)
    steps = 20 if kind.startswith("mlp") else 6
    straight = Trainer(make(train_steps=steps), data, progress=False)
    straight.train()

    cfg = make(train_steps=steps, out_dir=str(tmp_path))
    first = Trainer(cfg, data, progress=False)
    first.train(steps // 2)
    assert (tmp_path / "last.pt").is_file()
    if first.t_sampler is not None:  # its state must travel with the checkpoint
        assert first.t_sampler.warm
    rng = torch.get_rng_state()
    second = Trainer(cfg, data, resume=True, progress=False)
    assert second.step == steps // 2
    second.train()
    assert second.step == steps
    assert torch.equal(torch.get_rng_state(), rng)  # training leaves the caller's RNG alone
    assert_same_state(straight, second)
    assert second.history == straight.history


def test_same_seed_same_run_other_seed_other_run():
    a = train(toy_config(), TOY, progress=False)
    b = train(toy_config(), TOY, progress=False)
    c = train(toy_config(seed=1), TOY, progress=False)
    assert a.history == b.history and a.history != c.history


def test_resume_refuses_another_config(tmp_path):
    Trainer(toy_config(out_dir=str(tmp_path)), TOY, progress=False).train(2)
    with pytest.raises(ValueError, match=r"lr: 0\.003 in the checkpoint, 0\.001 now"):
        Trainer(toy_config(out_dir=str(tmp_path), lr=1e-3), TOY, resume=True, progress=False)
    with pytest.raises(ValueError, match=r"min_snr_gamma: None in the checkpoint, 5\.0 now"):
        Trainer(toy_config(out_dir=str(tmp_path), min_snr_gamma=5.0), TOY, resume=True,
                progress=False)  # fmt: skip
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Trainer(toy_config(), TOY, resume=tmp_path / "nope.pt", progress=False)
    # More steps is fine: a resumed run may be extended.
    more = Trainer(
        toy_config(out_dir=str(tmp_path), train_steps=30), TOY, resume=True, progress=False
    )
    assert more.step == 2


# ------------------------------------------------------------------ checkpoints
def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    tr = Trainer(toy_config(out_dir=str(tmp_path)), TOY, progress=False)
    tr.train(3)  # each train() call ends with a checkpoint
    good = (tmp_path / "last.pt").read_bytes()
    tr.train(2)
    assert (tmp_path / "last.pt").read_bytes() != good  # a normal save replaces it
    good = (tmp_path / "last.pt").read_bytes()

    real_save = torch.save

    def save_half_then_fail(obj, f, *args, **kwargs):
        real_save(obj, f)
        f.seek(f.tell() // 2)
        f.truncate()
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        tr.save_checkpoint()
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]  # no temporary file left behind
    assert (tmp_path / "last.pt").read_bytes() == good  # the old checkpoint, whole
    monkeypatch.undo()
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 5


class NaNAfter(MLPDenoiser):
    """An MLP whose output turns NaN from its ``k``-th call (k = 1 is the first)."""

    def __init__(self, k: int) -> None:
        super().__init__(hidden=32, num_layers=1)
        self.k, self.calls = k, 0

    def forward(self, x, t):
        self.calls += 1
        out = super().forward(x, t)
        return out * float("nan") if self.calls >= self.k else out


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = toy_config(out_dir=str(tmp_path), checkpoint_every=5, log_every=50, train_steps=20)
    tr = Trainer(cfg, TOY, model=NaNAfter(8), progress=False)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 8.*step 5\), was kept") as e:
        tr.train()
    assert e.value.step == 8
    assert tr.history[-1][0] == 7  # the good steps are kept for plotting
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ckpt["step"] == 5
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]


def test_nan_in_the_data_is_named_before_training():
    bad = TOY[:100].clone()
    bad[17, 1] = float("nan")
    with pytest.raises(ValueError, match=r"data: examples \[17\] contain NaN"):
        Trainer(toy_config(), bad, progress=False)


def test_load_checkpoint_on_cpu(tmp_path):
    cfg = image_config(out_dir=str(tmp_path), prediction="v")
    tr = Trainer(cfg, IMAGES, progress=False)
    tr.train()
    model, ema, schedule, config = load_checkpoint(tmp_path / "last.pt", map_location="cpu")
    assert config == cfg
    assert torch.equal(schedule.alpha_bars, make_schedule("linear", 50).alpha_bars)
    for net, ref in ((model, tr.model), (ema, tr.ema)):
        assert not net.training and next(net.parameters()).device.type == "cpu"
        for p, q in zip(net.state_dict().values(), ref.state_dict().values(), strict=True):
            assert torch.equal(p, q)
    x = ddim_sample(ema, schedule, (2, 1, 8, 8), 5, generator=torch.Generator().manual_seed(0),
                    prediction="v", clip_x0=True)  # fmt: skip
    assert x.shape == (2, 1, 8, 8) and torch.isfinite(x).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA to write a GPU checkpoint")
def test_cuda_checkpoint_loads_where_there_is_no_gpu(tmp_path):
    cfg = image_config(out_dir=str(tmp_path), device="cuda", bf16=True, channels_last=True)
    tr = Trainer(cfg, IMAGES, progress=False)
    tr.train()
    assert next(tr.model.parameters()).is_cuda and tr.step == cfg.train_steps
    code = textwrap.dedent(f"""
        import torch
        from ddpm_teach.training import load_checkpoint
        assert not torch.cuda.is_available()
        model, ema, schedule, config = load_checkpoint({str(tmp_path / "last.pt")!r})
        x = ema(torch.zeros(2, 1, 8, 8), torch.tensor([0, 10]))
        print("ok", x.device, config.device)
    """)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ok", "cpu", "cuda"]


# ------------------------------------------------------------------ bf16, memory format, config
def _cpu_bf16(monkeypatch, native: bool) -> None:
    """Pretend this CPU has (or lacks) native bf16, whatever it really has."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)


def test_bf16_is_a_no_op_on_a_cpu_without_native_bf16(monkeypatch):
    _cpu_bf16(monkeypatch, native=False)
    assert not has_native_bf16("cpu")
    a = train(image_config(bf16=False), IMAGES, progress=False)
    b = train(image_config(bf16=True), IMAGES, progress=False)
    assert not b.bf16
    assert_same_state(a, b)


@pytest.mark.parametrize(
    ("capability", "native"), [((7, 5), False), ((8, 0), True), ((9, 0), True)]
)
def test_native_bf16_on_cuda_means_ampere_or_later(monkeypatch, capability, native):
    # Before Ampere torch emulates bf16 (and is_bf16_supported() says yes by default).
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert has_native_bf16("cuda") is native


def test_bf16_autocasts_on_a_cpu_with_native_bf16(monkeypatch):
    _cpu_bf16(monkeypatch, native=True)
    assert has_native_bf16("cpu") and not has_native_bf16("meta")
    a = Trainer(image_config(bf16=False), IMAGES, progress=False)
    b = Trainer(image_config(bf16=True), IMAGES, progress=False)
    assert b.bf16 and not a.bf16
    a.train(3)
    b.train(3)
    # The same steps in bf16 arithmetic: close but not equal (a test that bf16 really ran; the
    # first loss is equal, the zero-initialised output conv making both outputs exactly 0).
    assert b.history[-1][1] == pytest.approx(a.history[-1][1], rel=5e-2)
    assert b.history[-1][1] != a.history[-1][1]
    # The weights stay fp32 and the run stays reproducible.
    assert all(p.dtype == torch.float32 for p in b.model.parameters())
    c = Trainer(image_config(bf16=True), IMAGES, progress=False)
    c.train(3)
    assert_same_state(b, c)


def test_channels_last_trains_the_same_on_cpu():
    # Other conv kernels, so not bit-equal: compare the first step's loss and gradients.
    a = Trainer(image_config(), IMAGES, progress=False)
    b = Trainer(image_config(channels_last=True), IMAGES, progress=False)
    a.train(1)
    b.train(1)
    # (a weight with several input channels: with one, both layouts are the same strides)
    assert b.model.out_conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not a.model.out_conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert a.history[0][1] == pytest.approx(b.history[0][1], rel=1e-5)
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6)


def test_channels_last_without_the_fused_kernel_trains_in_nchw(monkeypatch):
    from ddpm_teach import fused

    monkeypatch.setenv(fused.ENV_SWITCH, "0")  # as if the kernel could not be built
    with pytest.warns(RuntimeWarning, match="channels_last: .* it is not available"):
        tr = Trainer(image_config(channels_last=True), IMAGES, progress=False)
    assert not tr.channels_last
    assert not tr.model.out_conv.weight.is_contiguous(memory_format=torch.channels_last)  # NCHW
    tr.train(1)


def test_channels_last_under_compile_on_cpu_trains_in_nchw():
    # torch.compile traces torch's GroupNorm, not the fused kernel: channels_last would be slow.
    with pytest.warns(RuntimeWarning, match="channels_last: .* torch.compile does not use it"):
        tr = Trainer(image_config(channels_last=True, compile=True), IMAGES, progress=False)
    assert not tr.channels_last
    assert not tr.model.out_conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_train_takes_a_whole_number_of_steps():
    tr = Trainer(toy_config(), progress=False)
    with pytest.raises(TypeError, match=r"num_steps: expected an int >= 0, got 2\.5"):
        tr.train(2.5)  # would run 3 steps and never reach step 2.5's read-out
    with pytest.raises(ValueError, match="num_steps: expected an int >= 0, got -1"):
        tr.train(-1)
    assert tr.step == 0
    tr.train(np.int64(5))  # any integer type
    assert tr.step == 5 and tr.history[-1][0] == 5


def test_compile_mode_reaches_torch_compile(monkeypatch):
    modes = []
    monkeypatch.setattr(torch, "compile", lambda net, mode=None: modes.append(mode) or net)
    for compile_ in (False, True, "default", "reduce-overhead"):
        Trainer(toy_config(compile=compile_), progress=False)
    assert modes == [None, "default", "reduce-overhead"]


@pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "g++")) is None,
    reason="torch.compile on the CPU needs a C++ compiler",
)
def test_compiled_network_trains_like_the_eager_one():
    a = Trainer(toy_config(), progress=False)
    b = Trainer(toy_config(compile=True), progress=False)
    a.train(10)
    b.train(10)
    assert b.net is not b.model  # the compiled wrapper around the same module
    # Fused kernels sum in another order: close, not equal.
    for (_, la), (_, lb) in zip(a.history, b.history, strict=True):
        assert lb == pytest.approx(la, rel=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(prediction="score"), "prediction"),
        (dict(batch_size=0), "batch_size"),
        (dict(ema_decay=1.0), "ema_decay"),
        (dict(model="transformer"), "model"),
        (dict(schedule="sigmoid"), "schedule"),
        (dict(sample_steps=51), "sample_steps"),
        (dict(grad_clip=0), "grad_clip"),
        (dict(log_every=0), "log_every"),
        (dict(min_snr_gamma=0), "min_snr_gamma"),
        (dict(min_snr_gamma=float("nan")), "min_snr_gamma"),
        (dict(compile="fast"), "compile: expected True, False or a torch.compile mode"),
        (dict(t_sampling="importance"), "t_sampling: expected one of"),
    ],
)
def test_bad_config_is_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        toy_config(**kwargs)


def test_from_budget_and_bad_data():
    cfg = TrainConfig.from_budget("glyph-digits", "cpu")
    assert cfg.model == "unet" and cfg.batch_size == 64 and cfg.train_steps == 4000
    assert cfg.model_kwargs["channel_mults"] == (1, 2, 2) and not cfg.hflip
    assert (cfg.lr, cfg.lr_decay, cfg.ema_decay, cfg.bf16) == (3e-3, "cosine", 0.995, True)
    assert cfg.min_snr_gamma == 1.0 and cfg.t_sampling == "loss-aware"
    toy_cpu = TrainConfig.from_budget("eight-gaussians", "cpu")  # the toy recipe: flat lr
    assert (toy_cpu.lr, toy_cpu.lr_decay, toy_cpu.ema_decay) == (2e-3, "none", 0.999)
    assert toy_cpu.min_snr_gamma is None and toy_cpu.t_sampling == "uniform"  # as the paper
    assert TrainConfig.from_budget("cifar10", "gpu").hflip
    assert TrainConfig.from_budget("glyph-digits", "gpu").min_snr_gamma is None
    toy = TrainConfig.from_budget("moons", "smoke", train_steps=40)
    assert toy.model == "mlp" and toy.train_steps == 40 and toy.checkpoint_every == 4
    assert TrainConfig.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()
    with pytest.raises(ValueError, match="data: unknown data set 'svhn'"):
        TrainConfig.from_budget("svhn", "smoke")
    with pytest.raises(TypeError, match="not TrainConfig fields"):
        TrainConfig.from_budget("moons", "smoke", learning_rate=1.0)
    with pytest.raises(ValueError, match="'mlp' needs points"):
        Trainer(toy_config(model="mlp"), IMAGES, progress=False)


def test_linear_schedule_is_rescaled_to_t():
    for T in (50, 100, 1000):
        ab_T = make_schedule("linear", T).alpha_bars[-1].item()
        assert ab_T < 1e-4  # pure noise at the end, whatever T
    assert make_schedule("linear", 1000).betas[-1].item() == pytest.approx(0.02)
    with pytest.raises(ValueError, match="num_steps"):
        make_schedule("linear", 10)
    assert math.isclose(make_schedule("cosine", 10).alpha_bars[0].item(), 0.97, abs_tol=0.03)
