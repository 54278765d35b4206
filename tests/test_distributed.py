"""Distributed data parallel on two CPU processes (gloo): the same gradients as one process.

The trainer draws each step's global batch identically on every rank and gives rank r its slice;
DistributedDataParallel averages the slices' gradients. With equal slices that average is exactly
the gradient of the whole batch, so two processes must match one, up to float summation order.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from ddpm_teach.training import TrainConfig, Trainer, load_checkpoint

IMAGES = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
CONFIG = dict(
    data="random-8x8", model="unet", num_steps=50, train_steps=3, batch_size=16, lr=1e-3,
    warmup_steps=2, ema_decay=0.9, device="cpu", num_samples=0, log_every=1, sample_steps=5,
    model_kwargs=dict(base_channels=8, channel_mults=[1, 2], num_res_blocks=1, dropout=0.0),
)  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, out_dir: str, t_sampling: str) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    torch.set_num_threads(1)
    config = TrainConfig(**CONFIG, out_dir=out_dir, t_sampling=t_sampling)
    trainer = Trainer(config, IMAGES, progress=False)
    try:
        trainer.train(1)
        grads = [p.grad.clone() for p in trainer.model.parameters()]
        trainer.train()
        try:
            Trainer(TrainConfig(**dict(CONFIG, batch_size=15)), IMAGES, progress=False)
            odd = "no error"
        except ValueError as err:
            odd = str(err)
        result = dict(
            grads=grads,
            params=[p.detach().clone() for p in trainer.model.parameters()],
            history=trainer.history,
            wrote=str(trainer.save_checkpoint()),
            world_size=trainer.world_size,
            odd=odd,
            t_sampler=None if trainer.t_sampler is None else trainer.t_sampler.state_dict(),
        )
        torch.save(result, os.path.join(out_dir, f"rank{rank}.result"))
    finally:
        trainer.close()


@pytest.mark.parametrize("t_sampling", ["uniform", "loss-aware"])
def test_two_processes_give_the_gradients_of_one(tmp_path, t_sampling):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), t_sampling), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.result", weights_only=True) for r in (0, 1)]

    single = Trainer(TrainConfig(**CONFIG, t_sampling=t_sampling), IMAGES, progress=False)
    single.train(1)
    grads = [p.grad for p in single.model.parameters()]
    single.train()

    for r in ranks:
        assert r["world_size"] == 2
        assert "batch_size: the global batch 15 must split evenly over 2 processes" in r["odd"]
        for g2, g1 in zip(r["grads"], grads, strict=True):
            assert torch.allclose(g2, g1, rtol=1e-5, atol=1e-7)
        # ...and so the same run: same weights and the same (all-reduced) loss history.
        # Adam divides by sqrt(v): where a gradient is near zero its rounding (summation order
        # differs) can move a weight by a fraction of lr, so compare to lr = 1e-3, not to 1e-7.
        for p2, p1 in zip(r["params"], single.model.parameters(), strict=True):
            assert torch.allclose(p2, p1, rtol=0, atol=5e-5)
        assert [s for s, _ in r["history"]] == [1, 2, 3]
        for (_, v2), (_, v1) in zip(r["history"], single.history, strict=True):
            assert abs(v2 - v1) < 1e-5 * v1
        if t_sampling == "loss-aware":  # every rank remembers the whole batch's losses, in order
            want = single.t_sampler.state_dict()
            assert torch.equal(r["t_sampler"]["counts"], want["counts"])
            assert int(want["counts"].sum()) == 3 * 16
            torch.testing.assert_close(
                r["t_sampler"]["losses"], want["losses"], rtol=1e-5, atol=1e-7
            )
    assert ranks[0]["wrote"].endswith("last.pt") and ranks[1]["wrote"] == "None"  # rank 0 writes
    assert any(g.abs().sum() > 0 for g in grads)


def test_train_cli_under_torchrun(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "ddpm_teach.train", "--data", "moons", "--budget", "smoke", "--out", str(out),
        "--steps", "6", "--batch-size", "64", "--no-progress", "--device", "cpu",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("done: 6 steps") == 1  # rank 0 alone prints
    assert "x 2" in proc.stdout  # two processes
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and ckpt["step"] == 6

    # One process, same config: the same weights.
    _, _, _, config = load_checkpoint(out / "last.pt")
    config.out_dir, config.num_samples = None, 0
    single = Trainer(config, progress=False)
    single.train()
    for name, p in single.model.state_dict().items():
        assert torch.allclose(ckpt["model"][name], p, rtol=1e-5, atol=1e-6), name
