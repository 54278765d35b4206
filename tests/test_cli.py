"""End-to-end tests of the command-line tools at the smoke budget: train, then sample."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch
from PIL import Image

from ddpm_teach import sample as sample_cli
from ddpm_teach import train as train_cli
from ddpm_teach import training
from ddpm_teach.budgets import budget
from ddpm_teach.training import BF16Sampling, Chunked, load_checkpoint


def run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", DDPM_TEACH_BUDGET="cpu")  # --budget must win
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_train_then_sample_glyph_digits_in_subprocesses(tmp_path):
    out = tmp_path / "run"
    train = run(
        "ddpm_teach.train", "--data", "glyph-digits", "--budget", "smoke", "--out", str(out),
        "--steps", "4", "--prediction", "v", "--seed", "3", "--no-progress", "--device", "cpu",
        "--sample-every", "2",
    )  # fmt: skip
    assert train.returncode == 0, train.stderr
    summary = train.stdout.strip().splitlines()[-1]
    assert summary.startswith("done: 4 steps, wall time ") and "images/s" in summary
    written = sorted(p.name for p in out.iterdir())
    assert written == ["last.pt", "samples_0000002.png", "samples_0000004.png"]
    config = load_checkpoint(out / "last.pt")[3]
    assert (config.prediction, config.seed, config.train_steps) == ("v", 3, 4)
    assert config.model_kwargs["base_channels"] == 8  # the smoke budget, not $DDPM_TEACH_BUDGET

    png, gif = tmp_path / "s.png", tmp_path / "s.gif"
    sample = run(
        "ddpm_teach.sample", "--checkpoint", str(out / "last.pt"), "--sampler", "ddim",
        "--steps", "5", "--n", "9", "--out", str(png), "--gif", str(gif), "--device", "cpu",
    )  # fmt: skip
    assert sample.returncode == 0, sample.stderr
    assert "9 samples, ddim with 5 steps" in sample.stdout
    assert Image.open(png).size == (3 * 28 + 4 * 2,) * 2  # a 3 x 3 grid of 28 x 28 digits
    with Image.open(gif) as im:
        assert im.n_frames == 6  # x_T and one frame per step


def test_toy_train_resume_and_sample_in_process(tmp_path, capsys):
    out = tmp_path / "toy"
    args = ["--data", "moons", "--budget", "smoke", "--out", str(out), "--no-progress"]
    assert train_cli.main([*args, "--steps", "10", "--device", "cpu"]) == 0
    assert "done: 10 steps" in capsys.readouterr().out
    assert train_cli.main([*args, "--steps", "20", "--resume", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "step 10 of 20" in printed and "done: 20 steps" in printed
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 20
    pngs = sorted(p.name for p in out.glob("samples_*.png"))
    assert pngs[-1] == "samples_0000020.png"

    png = tmp_path / "points.png"
    assert sample_cli.main(["--checkpoint", str(out / "last.pt"), "--out", str(png), "--n", "300",
                            "--steps", "10", "--device", "cpu"]) == 0  # fmt: skip
    assert "300 samples, ddpm with 10 steps" in capsys.readouterr().out
    assert Image.open(png).size == (400, 400)

    assert sample_cli.main(["--checkpoint", str(out / "last.pt"), "--out", str(png), "--n", "300",
                            "--steps", "10", "--device", "cpu", "--report"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "MMD^2" in printed and "(floor " in printed, printed


def test_sample_report_judges_digits_and_refuses_other_data(tmp_path, capsys):
    out = tmp_path / "digits"
    args = ["--data", "glyph-digits", "--budget", "smoke", "--out", str(out), "--no-progress"]
    assert train_cli.main([*args, "--steps", "2", "--device", "cpu", "--num-samples", "0"]) == 0
    capsys.readouterr()
    png = str(tmp_path / "d.png")
    assert sample_cli.main(["--checkpoint", str(out / "last.pt"), "--out", png, "--n", "20",
                            "--steps", "3", "--device", "cpu", "--report"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "confident" in printed and "digit-FID" in printed, printed
    ckpt = torch.load(out / "last.pt", weights_only=True)
    ckpt["config"]["data"] = "cifar10"  # a set the probe cannot judge
    torch.save(ckpt, tmp_path / "cifar.pt")
    with pytest.raises(SystemExit):
        sample_cli.main(["--checkpoint", str(tmp_path / "cifar.pt"), "--out", png, "--report"])
    assert "--report: no offline metric for 'cifar10'" in capsys.readouterr().err


def test_a_bf16_run_samples_under_autocast_unless_fp32(tmp_path, capsys, monkeypatch):
    out = tmp_path / "digits"
    args = ["--data", "glyph-digits", "--budget", "smoke", "--out", str(out), "--no-progress"]
    assert train_cli.main([*args, "--steps", "2", "--device", "cpu", "--num-samples", "0"]) == 0
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert not ckpt["config"]["bf16"]  # the smoke budget trains in float32
    ckpt["config"]["bf16"] = True  # as the cpu budget does where the CPU has native bf16
    torch.save(ckpt, tmp_path / "bf16.pt")
    nets, real = [], {"ddim": sample_cli.ddim_sample, "ddpm": sample_cli.ddpm_sample}

    def spy(net, *args, **kwargs):
        nets.append(net)
        sampler = "ddim" if "num_steps" in kwargs else "ddpm"
        return real[sampler](net, *args, **kwargs)

    monkeypatch.setattr(sample_cli, "ddim_sample", spy)
    monkeypatch.setattr(training, "has_native_bf16", lambda device: True)  # any CPU runs it
    monkeypatch.setattr(sample_cli, "ddpm_sample", spy)
    common = ["--out", str(tmp_path / "s.png"), "--n", "4", "--device", "cpu"]
    for checkpoint, flags in (
        (tmp_path / "bf16.pt", ["--sampler", "ddim", "--steps", "3"]),
        (tmp_path / "bf16.pt", ["--sampler", "ddpm"]),  # the whole chain: ddpm_sample
        (tmp_path / "bf16.pt", ["--sampler", "ddim", "--steps", "3", "--fp32"]),
        (out / "last.pt", ["--sampler", "ddim", "--steps", "3"]),
    ):
        assert sample_cli.main(["--checkpoint", str(checkpoint), *common, *flags]) == 0
    assert [isinstance(net, BF16Sampling) for net in nets] == [True, True, False, False]
    printed = capsys.readouterr().out.splitlines()
    wrote = [line for line in printed if line.startswith("wrote")]
    assert [line.endswith("(bf16 autocast)") for line in wrote] == [True, True, False, False]


def test_the_sample_command_passes_a_large_batch_through_the_network_in_chunks(
    tmp_path, monkeypatch
):
    out = tmp_path / "digits"
    args = ["--data", "glyph-digits", "--budget", "smoke", "--out", str(out), "--no-progress"]
    assert train_cli.main([*args, "--steps", "2", "--device", "cpu", "--num-samples", "0"]) == 0
    nets, real = [], sample_cli.ddim_sample

    def spy(net, *args, **kwargs):
        nets.append(net)
        return real(net, *args, **kwargs)

    monkeypatch.setattr(sample_cli, "ddim_sample", spy)
    # Room for 3 digits a call: the smoke U-Net's 8 channels x 28 x 28 pixels x 4 bytes each.
    monkeypatch.setattr(training, "SAMPLING_CHUNK_BYTES", 3 * 8 * 28 * 28 * 4)
    common = ["--checkpoint", str(out / "last.pt"), "--out", str(tmp_path / "s.png")]
    for n in ("7", "3"):
        flags = ["--sampler", "ddim", "--steps", "2", "--device", "cpu", "--n", n]
        assert sample_cli.main([*common, *flags]) == 0
    assert isinstance(nets[0], Chunked) and nets[0].max_batch == 3  # 7 digits: 3 calls a step
    assert not isinstance(nets[1], Chunked)  # 3 digits fit in one call


def test_cli_errors_name_the_argument(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        train_cli.main(["--data", "svhn", "--out", str(tmp_path)])
    assert e.value.code == 2 and "--data: invalid choice: 'svhn'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_cli.main(["--data", "moons", "--budget", "smoke", "--out", str(tmp_path),
                        "--batch-size", "0"])  # fmt: skip
    assert "batch_size: expected an int >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sample_cli.main(["--checkpoint", str(tmp_path / "none.pt"), "--out", "x.png"])
    assert "--checkpoint: no file at" in capsys.readouterr().err
    # What only building the trainer finds out is a usage error too, not a traceback.
    for extra, message in [
        (["--resume"], "resume: no checkpoint at"),
        (["--timesteps", "5"], "use T >= 21"),
        (["--device", "foo"], "foo"),
        (["--steps", "0"], "--steps: expected a positive number of optimiser steps, got 0"),
    ]:
        with pytest.raises(SystemExit) as e:
            train_cli.main(["--data", "moons", "--budget", "smoke", "--out", str(tmp_path / "new"),
                            "--device", "cpu", *extra])  # fmt: skip
        assert e.value.code == 2 and message in capsys.readouterr().err, extra


def test_sample_cli_checks_its_arguments_before_sampling(tmp_path, capsys):
    out = tmp_path / "short"
    assert train_cli.main(["--data", "moons", "--budget", "smoke", "--out", str(out), "--steps",
                           "2", "--timesteps", "30", "--device", "cpu", "--no-progress"]) == 0  # fmt: skip
    ckpt, png = str(out / "last.pt"), str(tmp_path / "s.png")
    capsys.readouterr()
    # DDIM's default of 50 steps is cut to a shorter chain's T.
    assert sample_cli.main(["--checkpoint", ckpt, "--sampler", "ddim", "--out", png, "--n", "8",
                            "--device", "cpu"]) == 0  # fmt: skip
    assert "ddim with 30 steps" in capsys.readouterr().out
    for extra, message in [
        (["--sampler", "ddim", "--eta", "2"], "--eta: expected a number in 0..1"),
        (["--sampler", "ddim", "--eta", "nan"], "--eta: expected a number in 0..1"),
        (["--eta", "0.5"], "--eta: only for --sampler ddim"),
        (["--out", str(tmp_path / "noext")], "--out: expected an image file name"),
        (["--gif", str(tmp_path / "t.png")], "--gif: expected a file name ending in .gif"),
        (["--device", "foo"], "--device: expected cpu, cuda or cuda:N, got 'foo'"),
    ]:
        argv = ["--checkpoint", ckpt, "--out", png, "--n", "8", "--device", "cpu", *extra]
        with pytest.raises(SystemExit) as e:
            sample_cli.main(argv)
        assert e.value.code == 2 and message in capsys.readouterr().err, extra
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            sample_cli.main(["--checkpoint", ckpt, "--out", png, "--device", "cuda"])
        assert "CUDA is not available here" in capsys.readouterr().err
    # The GIF's last frame is the sample, captioned as such (not as the data).
    gif = tmp_path / "t.gif"
    assert sample_cli.main(["--checkpoint", ckpt, "--out", png, "--n", "8", "--device", "cpu",
                            "--gif", str(gif)]) == 0  # fmt: skip
    assert gif.is_file()


def test_min_snr_gamma_t_sampling_and_compile_flags(capsys):
    def config(*extra: str):
        parser = train_cli.build_parser()
        args = parser.parse_args(
            ["--data", "glyph-digits", "--budget", "cpu", "--out", "x", *extra]
        )
        return train_cli.config_from_args(args)

    assert config().compile is False
    assert config("--compile").compile == "default"
    assert config("--compile", "reduce-overhead").compile == "reduce-overhead"
    assert config().min_snr_gamma == budget("cpu").min_snr_gamma
    assert config("--min-snr-gamma", "5").min_snr_gamma == 5.0
    assert config("--min-snr-gamma", "none").min_snr_gamma is None  # the paper's L_simple
    assert config().t_sampling == budget("cpu").t_sampling == "loss-aware"
    assert config("--t-sampling", "uniform").t_sampling == "uniform"  # e.g. to resume an old run
    with pytest.raises(SystemExit) as e:
        config("--min-snr-gamma", "-1")
    assert e.value.code == 2
    assert "--min-snr-gamma: expected a positive number or 'none', got '-1'" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("flag", "budget_name", "expected"),
    [
        ([], "cpu", True),  # the cpu budget trains channels_last (with ddpm_teach.fused's kernel)
        ([], "smoke", False),
        (["--no-channels-last"], "cpu", False),
        (["--channels-last"], "smoke", True),
    ],
)
def test_channels_last_flag_follows_the_budget_unless_given(flag, budget_name, expected):
    parser = train_cli.build_parser()
    args = parser.parse_args(
        ["--data", "glyph-digits", "--out", "x", "--budget", budget_name, *flag]
    )
    assert train_cli.config_from_args(args).channels_last is expected


@pytest.mark.parametrize("kernel", [True, False], ids=["fused-kernel", "no-kernel"])
def test_a_channels_last_run_samples_channels_last_where_it_pays(
    tmp_path, capsys, monkeypatch, kernel
):
    from ddpm_teach import fused

    if kernel and not fused.available():
        pytest.skip(f"kernel not built: {fused.unavailable_reason()}")
    if not kernel:
        monkeypatch.setenv(fused.ENV_SWITCH, "0")
    out = tmp_path / "cl"
    args = ["--data", "glyph-digits", "--budget", "smoke", "--out", str(out), "--no-progress"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # without the kernel: 'stays in NCHW'
        assert train_cli.main([*args, "--steps", "2", "--channels-last", "--num-samples", "0"]) == 0
    first_line = capsys.readouterr().out.splitlines()[0]
    assert ("(channels_last)" in first_line) is kernel, first_line  # the run says which layout
    assert load_checkpoint(out / "last.pt")[3].channels_last  # the config, as asked
    layouts = []
    real = sample_cli.ddim_sample

    def spy(net, *a, **k):
        layouts.append(net.out_conv.weight.is_contiguous(memory_format=torch.channels_last))
        return real(net, *a, **k)

    monkeypatch.setattr(sample_cli, "ddim_sample", spy)
    png = str(tmp_path / "s.png")
    assert sample_cli.main(["--checkpoint", str(out / "last.pt"), "--out", png, "--n", "4",
                            "--steps", "3", "--device", "cpu"]) == 0  # fmt: skip
    assert layouts == [kernel]
