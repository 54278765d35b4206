"""GPU-only checks: the training step and the sampling loops never wait for the GPU, and give the
CPU's answers. Skipped without CUDA (CI has none); run them on a GPU machine with
``pytest tests/test_cuda.py``.

A host-device synchronisation inside a loop stalls the CPU until the GPU has drained its queue, so the
next kernels are launched only then: for the small course networks that makes every step cost
launch time + GPU time instead of the larger of the two. ``torch.cuda.set_sync_debug_mode("error")``
turns every such wait into an exception, which is what these tests rely on.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from ddpm_teach.mlp import MLPDenoiser
from ddpm_teach.sampling import ddim_sample, ddpm_sample, ddpm_step
from ddpm_teach.schedule import NoiseSchedule
from ddpm_teach.training import TrainConfig, Trainer
from ddpm_teach.unet import UNet

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

TINY_UNET = dict(base_channels=8, channel_mults=[1, 2], num_res_blocks=1, attention_levels=[1])


@contextlib.contextmanager
def no_sync():
    """Raise on any host-device synchronisation inside the block."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_sync_detection_works():
    # The guard itself must catch a sync, or the tests below prove nothing.
    x = torch.ones(3, device="cuda")
    with pytest.raises(RuntimeError), no_sync():
        x.sum().item()


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("sampler", ["ddpm", "ddim-eta0", "ddim-eta1"])
def test_sampling_loops_do_not_sync(sampler, prediction):
    schedule = NoiseSchedule.linear(20)
    model = UNet(1, **TINY_UNET).cuda().eval()
    g = torch.Generator("cuda").manual_seed(0)
    with no_sync():
        if sampler == "ddpm":
            x = ddpm_sample(model, schedule, (4, 1, 8, 8), g, prediction=prediction, clip_x0=True)
        else:
            eta = 1.0 if sampler.endswith("1") else 0.0
            x = ddim_sample(
                model, schedule, (4, 1, 8, 8), 5, eta, g, prediction=prediction, clip_x0=True
            )
    assert x.is_cuda and torch.isfinite(x).all()


@pytest.mark.parametrize("min_snr_gamma", [None, 1.0])
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_training_step_does_not_sync(tmp_path, min_snr_gamma, prediction):
    cfg = TrainConfig(
        data="random-8x8", model="unet", model_kwargs=dict(TINY_UNET, dropout=0.1), hflip=True,
        num_steps=50, train_steps=8, batch_size=16, lr=1e-3, warmup_steps=2, ema_decay=0.9,
        device="cuda", bf16=True, num_samples=0, sample_steps=5, log_every=100, prediction=prediction,
        min_snr_gamma=min_snr_gamma, out_dir=str(tmp_path),
    )  # fmt: skip
    images = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
    tr = Trainer(cfg, images, progress=False)
    tr.train(1)  # the first step builds the optimiser state and picks cuDNN kernels
    with no_sync():
        for _ in range(3):
            tr._train_step()
    tr.train(1)  # its read-out (one sync, by design) takes the three pending losses too
    assert [s for s, _ in tr.history] == [1, 2, 3, 4, 5]
    assert all(torch.isfinite(torch.tensor(v)) for _, v in tr.history)


def test_gpu_ddim_chain_matches_the_cpu():
    # Same network, same x_T, deterministic DDIM: the non-blocking coefficient copies must give
    # the CPU's numbers (a copy read before it lands would not).
    torch.manual_seed(0)
    schedule = NoiseSchedule.linear(30)
    model = MLPDenoiser(hidden=32, num_layers=2).eval()
    x_T = torch.randn(256, 2)
    cpu = ddim_sample(model, schedule, x_T.shape, 10, 0.0, x_T=x_T)
    gpu = ddim_sample(model.cuda(), schedule, x_T.shape, 10, 0.0, x_T=x_T.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-4)


def test_gpu_ddpm_step_matches_the_cpu():
    # A step per batch element at a different t (t on the CPU, x on the GPU), with given noise.
    schedule = NoiseSchedule.linear(100)
    g = torch.Generator().manual_seed(3)
    x_t, eps, noise = (torch.randn(64, 3, 4, 4, generator=g) for _ in range(3))
    t = torch.randint(0, 100, (64,), generator=g)
    t[:4] = 0  # the last step adds no noise
    cpu = ddpm_step(schedule, eps, x_t, t, noise=noise)
    for t_in in (t, t.cuda()):
        gpu = ddpm_step(schedule, eps.cuda(), x_t.cuda(), t_in, noise=noise.cuda())
        torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=1e-5)
