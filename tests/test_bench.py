"""Smoke test of the benchmark scripts: each runs at --tiny size and appends its table.

Nothing here is timed or compared: the numbers of a --tiny run mean nothing. The test proves that
every script runs end to end and writes a dated section with its table into a copy of the doc.
"""

from __future__ import annotations

import importlib
import re

import pytest

pytest.importorskip("diffusers")

SCRIPTS = {
    "train_step": ["--precision", "bf16"],
    "sampling": [],
    "sampling_batch": [],
    "time_to_quality": ["--set", "lr_decay=none", "--set", "lr=0.002"],
    "course_time": [],
    "trainer_speed": ["--variants", "budget", "fp32", "min-snr"],
}
HEADER = "# Benchmarks\n\nHow to reproduce: see the top of the real file.\n"


@pytest.fixture
def doc(tmp_path):
    path = tmp_path / "benchmarks.md"
    path.write_text(HEADER)
    return path


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_script_runs_and_appends_its_section(name, doc, capsys):
    module = importlib.import_module(f"bench.{name}")
    argv = ["--tiny", "--doc", str(doc), *SCRIPTS[name]]
    assert module.main(argv) == 0
    text = doc.read_text()
    assert text.startswith(HEADER)  # appended, nothing above it rewritten
    section = text[len(HEADER) :]
    assert re.search(rf"^### {name} — \d{{4}}-\d\d-\d\d \d\d:\d\d UTC$", section, re.M)
    assert f"- Command: `python -m bench.{name} --tiny --doc {doc}" in section
    for field in ("- CPU: ", "- GPU: ", "- Versions: torch ", "- Load average"):
        assert field in section
    table = [line for line in section.splitlines() if line.startswith("|")]
    assert len(table) >= 3 and set(table[1]) <= set("|-")  # header, rule, at least one row
    assert table[0] in capsys.readouterr().out  # the same table was printed


def test_train_step_rows_compare_matched_networks(doc):
    from bench import train_step
    from ddpm_teach import fused

    train_step.main(["--tiny", "--doc", str(doc), "--precision", "fp32"])
    rows = [line for line in doc.read_text().splitlines() if line.startswith("| tiny |")]
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    # One row per layout of ours; channels_last runs only where the fused kernel does.
    layouts = ["nchw", "channels_last"] if fused.available() else ["nchw"]
    assert [c[2] for c in cells] == layouts
    for c in cells:
        assert c[1] == "fp32"
        ours, theirs = c[3].split(" / ")
        assert ours == theirs  # matched configuration: the same parameter count
        flops_ours, flops_theirs = c[4].split(" / ")
        assert flops_ours == flops_theirs  # and the same counted FLOPs, attention included
        assert float(c[9].strip("*")) > 0  # the FLOP-rate ratio


def test_sampling_batch_tiny_run_goes_through_sampling_nets_chunks(doc):
    from bench import sampling_batch
    from ddpm_teach import training

    limit = training.SAMPLING_CHUNK_BYTES
    sampling_batch.main(["--tiny", "--doc", str(doc)])
    assert training.SAMPLING_CHUNK_BYTES == limit  # the experiment's limit is not left behind
    chain = [line for line in doc.read_text().splitlines() if line.startswith("| fp32 | 2 x 4 |")]
    assert len(chain) == 1  # --tiny's 0.1 MiB: the 8 smoke digits in two calls of 4
    cells = [c.strip() for c in chain[0].strip("|").split("|")]
    assert float(cells[-1]) < 1e-5  # the samples of one call


def test_mismatched_networks_are_refused():
    from bench import _common

    small = _common.NetConfig("x", 1, 8, (8, 16), 1, (), 2)
    big = _common.NetConfig("y", 1, 8, (16, 32), 1, (), 2)
    with pytest.raises(RuntimeError, match="parameters differ"):
        _common.check_matched(_common.build_ours(small), _common.build_diffusers(big))
    _common.check_matched(_common.build_ours(small), _common.build_diffusers(small))


def test_doc_dash_writes_nothing_and_the_default_doc_is_used_otherwise(tmp_path, monkeypatch):
    from bench import _common, course_time

    default = tmp_path / "default.md"
    monkeypatch.setattr(_common, "DEFAULT_DOC", default)
    assert course_time.main(["--tiny", "--doc", "-"]) == 0
    assert not default.exists()
    assert course_time.main(["--tiny"]) == 0
    assert "### course_time — " in default.read_text()


def test_time_to_quality_overrides_reach_the_config(doc):
    from bench import time_to_quality

    args = time_to_quality.parse_args(["--tiny", "--set", "lr=1e-3", "--set", "lr_decay=none"])
    assert args.set == [("lr", 1e-3), ("lr_decay", "none")]
    with pytest.raises(SystemExit):
        time_to_quality.parse_args(["--set", "lr"])
    time_to_quality.main(["--tiny", "--only", "digits", "--doc", str(doc), "--set", "lr=0.0005"])
    assert "with lr=0.0005" in doc.read_text() and "lr 0.0005 (lr_decay none)" in doc.read_text()


def test_sampling_quality_rows_cover_both_etas_and_the_full_chain(doc, tmp_path):
    from bench import sampling
    from ddpm_teach.training import TrainConfig, Trainer

    cfg = TrainConfig.from_budget(
        "glyph-digits", "smoke", train_steps=2, data_size=64, device="cpu", num_samples=0,
        out_dir=str(tmp_path / "run"),
    )  # fmt: skip
    Trainer(cfg, progress=False).train()
    argv = ["--tiny", "--doc", str(doc), "--checkpoint", str(tmp_path / "run" / "last.pt")]
    assert sampling.main(argv) == 0
    rows = [line.split("|")[1].strip() for line in doc.read_text().splitlines()
            if line.startswith("| DDIM-") or line.startswith("| DDPM-")]  # fmt: skip
    quality = rows[rows.index("DDIM-2 (eta 0)") :]  # after the speed rows
    assert quality == [
        "DDIM-2 (eta 0)", "DDIM-5 (eta 0)", "DDIM-2 (eta 1)", "DDIM-5 (eta 1)", "DDPM-100",
    ]  # fmt: skip
    assert "8 samples per row" in doc.read_text()


def test_trainer_speed_rows_follow_the_variants(doc, capsys):
    from bench import trainer_speed

    argv = ["--tiny", "--doc", str(doc), "--variants", "l-simple", "channels-last"]
    assert trainer_speed.main(argv) == 0
    rows = [line for line in doc.read_text().splitlines() if line.startswith("| ")][1:]
    assert [row.split("|")[1].strip() for row in rows] == ["l-simple", "channels-last"]
    assert "min_snr_gamma=None" in rows[0] and "channels_last=True" in rows[1]
    assert rows[0].split("|")[-3].strip().startswith("1.000 [1.00-1.00]")  # itself


def test_trainer_speed_reports_failing_and_duplicate_variants(doc, capsys, monkeypatch):
    from bench import trainer_speed

    monkeypatch.setitem(trainer_speed.VARIANTS, "diverges", {"lr": 1e30, "grad_clip": None})
    argv = ["--tiny", "--doc", str(doc), "--variants", "budget", "diverges", "fp32"]
    assert trainer_speed.main(argv) == 0
    text = doc.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ")][1:]
    assert [row.split("|")[1].strip() for row in rows] == ["budget"]
    assert "Variant diverges failed and is left out: NonFiniteLossError" in text
    assert "Variant fp32 = budget's settings." in text  # the smoke budget trains in fp32
    assert "diverges: failed (NonFiniteLossError" in capsys.readouterr().out


def test_gpu_script_runs_every_benchmark_with_arguments_they_accept(tmp_path):
    # bench/gpu.sh is meant for a lent GPU machine: check its wiring here with stand-ins for
    # nvidia-smi and python that only record how they were called.
    import os
    import shlex
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    log = tmp_path / "calls.txt"
    for name in ("nvidia-smi", "fake-python"):
        stub = tmp_path / name
        stub.write_text(
            f'#!/bin/sh\nprintf "%s\\n" "$(basename $0) $*" >> {shlex.quote(str(log))}\n'
        )
        stub.chmod(0o755)
    env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}", PYTHON="fake-python")
    out = subprocess.run(
        ["bash", str(root / "bench" / "gpu.sh"), str(tmp_path / "doc.md")],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    calls = [line.split() for line in log.read_text().splitlines()]
    assert calls[0][0] == "nvidia-smi"
    modules = [c[2] for c in calls[1:]]
    assert modules == [
        "pytest", "bench.train_step", "bench.trainer_speed", "bench.time_to_quality",
        "bench.time_to_quality", "bench.sampling",
    ]  # fmt: skip
    assert "t_sampling=loss-aware" in calls[5]  # the gpu budget with the cpu budget's recipe
    assert calls[1][3:] == ["-q", "-p", "no:cacheprovider", "-o", "addopts=", "tests/test_cuda.py"]
    for call in calls[2:]:
        module = importlib.import_module(call[2])
        args = module.parse_args(call[3:])  # the flags the script passes must parse
        assert args.device == "cuda" and args.doc == str(tmp_path / "doc.md")
        if call[2] == "bench.time_to_quality":  # its --set fields must be the config's
            from ddpm_teach.training import TrainConfig

            config = TrainConfig.from_budget("glyph-digits", args.budget, **dict(args.set))
            assert all(getattr(config, k) == v for k, v in args.set)
