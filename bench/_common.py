"""What every benchmark shares: arguments, the machine record, A/B timing, tables, the doc.

Timing method (the same in every script): the contenders run in alternation, A B A B ..., after
warm-up, in one process, so that a burst of load from another process hits both alike. Each call
is timed on the wall clock (with ``torch.cuda.synchronize()`` on both sides on a GPU) and, on the
CPU, also by the process's CPU time. We report per-contender medians and the median of the
per-pair ratios (B's time / A's time of the same round), with its interquartile range.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

#: Where the scripts append their sections unless told otherwise.
DEFAULT_DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


# ================================================================================================
# Arguments and device
# ================================================================================================


def base_parser(name: str, description: str) -> argparse.ArgumentParser:
    """A parser with the options every script takes: --tiny, --device, --doc, --threads."""
    parser = argparse.ArgumentParser(prog=f"python -m bench.{name}", description=description)
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="a few iterations at toy sizes (the CI smoke test); the numbers mean nothing",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--doc",
        default=str(DEFAULT_DOC),
        help="markdown file to append the dated section to ('-' appends nothing)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads on the CPU (default: torch's choice, usually one per core)",
    )
    return parser


def setup(args: argparse.Namespace) -> torch.device:
    """Check the device, set the CPU thread count; returns the torch.device to run on."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available on this machine")
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"--threads: expected a positive int, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    return torch.device(args.device)


def sync(device: torch.device) -> None:
    """Wait for queued GPU work (a no-op on the CPU), so that a clock reading means something."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ================================================================================================
# The machine record
# ================================================================================================


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_average() -> str:
    """The 1/5/15-minute load averages, or 'n/a' where the OS has none."""
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except (OSError, AttributeError):
        return "n/a"


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except ImportError:
        return "not installed"


def machine_info(device: torch.device) -> dict[str, str]:
    """Everything a reader needs to weigh the numbers: hardware, versions, load, date."""
    info = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{cpu_model()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
        "versions": (
            f"torch {torch.__version__}, diffusers {_version('diffusers')}, "
            f"Python {platform.python_version()}"
        ),
        "load_start": load_average(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    else:
        info["gpu"] = "none used (this run is CPU-only)"
    return info


# ================================================================================================
# Timing
# ================================================================================================


@dataclass
class Timings:
    """Per-call seconds of one contender: wall clock and process CPU time (CPU device only)."""

    wall: list[float]
    cpu: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.wall)


def alternate(
    contenders: dict[str, Callable[[], Any]],
    iters: int,
    warmup: int,
    device: torch.device,
) -> dict[str, Timings]:
    """Run each contender ``warmup`` times, then ``iters`` rounds of A B C ..., timing every call.

    Returns one :class:`Timings` per name, in the order given.
    """
    if iters < 1 or warmup < 0:
        raise ValueError(f"iters: expected >= 1 (and warmup >= 0), got {iters} ({warmup})")
    for _ in range(warmup):
        for fn in contenders.values():
            fn()
    sync(device)
    out = {name: Timings([], []) for name in contenders}
    for _ in range(iters):
        for name, fn in contenders.items():
            sync(device)
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            sync(device)
            t1, c1 = time.perf_counter(), time.process_time()
            out[name].wall.append(t1 - t0)
            out[name].cpu.append(c1 - c0)
    return out


@dataclass
class Ratio:
    """Median and interquartile range of per-round ratios slow / fast (> 1: A is faster)."""

    median: float
    q1: float
    q3: float

    def __str__(self) -> str:
        return f"{self.median:.3f} [{self.q1:.2f}-{self.q3:.2f}]"


def pair_ratio(a: Sequence[float], b: Sequence[float]) -> Ratio:
    """Speed-up of A over B from times measured in the same rounds: median of b_i / a_i."""
    ratios = sorted(bi / ai for ai, bi in zip(a, b, strict=True))
    if len(ratios) < 4:
        return Ratio(statistics.median(ratios), ratios[0], ratios[-1])
    q = statistics.quantiles(ratios, n=4)
    return Ratio(statistics.median(ratios), q[0], q[2])


# ================================================================================================
# Tables and the doc
# ================================================================================================


def fmt(value: float, digits: int = 3) -> str:
    """A number with ``digits`` significant digits ('n/a' for NaN / None)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}g}" if abs(value) < 10**digits else f"{value:.0f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table; cells are str()-ed."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def command_line(script: str, argv: Sequence[str] | None) -> str:
    """The command that reproduces this run."""
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python -m", f"bench.{script}", *map(shlex.quote, args)]).strip()


def write_section(
    doc: str,
    script: str,
    argv: Sequence[str] | None,
    info: dict[str, str],
    body: str,
) -> Path | None:
    """Append a dated section (machine, versions, load, command, body) to ``doc``.

    ``doc == '-'`` writes nothing. A missing file is created with a one-line title.
    Returns the path written.
    """
    if doc == "-":
        return None
    path = Path(doc)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        "",
        f"### {script} — {info['date']}",
        "",
        f"- Command: `{command_line(script, argv)}`",
        f"- CPU: {info['cpu']}",
        f"- GPU: {info['gpu']}",
        f"- Versions: {info['versions']}",
        f"- Load average (1/5/15 min): {info['load_start']} at the start, {load_average()} at the end",
        "",
        body.rstrip(),
        "",
    ]
    existing = path.read_text() if path.exists() else "# Benchmarks\n"
    path.write_text(existing.rstrip("\n") + "\n" + "\n".join(lines))
    return path


def report(
    doc: str, script: str, argv: Sequence[str] | None, info: dict[str, str], body: str
) -> None:
    """Print ``body`` and append it to the doc."""
    print(body)
    path = write_section(doc, script, argv, info, body)
    if path is not None:
        print(f"\nappended to {path}")


# ================================================================================================
# Matched networks
# ================================================================================================


@dataclass(frozen=True)
class NetConfig:
    """One U-Net size, expressed so that both implementations can be built from it.

    channels: width of each level (diffusers' ``block_out_channels``); each must be a multiple
    of channels[0] (ours builds widths as base * mult). attention: levels (0 = full resolution)
    whose ResBlocks are followed by self-attention; both nets also have one in the middle.
    """

    name: str
    in_channels: int
    size: int
    channels: tuple[int, ...]
    layers: int
    attention: tuple[int, ...]
    batch: int

    @property
    def groups(self) -> int:
        return math.gcd(32, self.channels[0])

    def describe(self) -> str:
        attn = ",".join(str(self.size >> a) for a in self.attention) or "-"
        return (
            f"{self.in_channels}x{self.size}x{self.size}, channels {self.channels}, "
            f"{self.layers} res blocks/level, attention at {attn} px + middle, batch {self.batch}"
        )


def build_ours(cfg: NetConfig) -> nn.Module:
    """ddpm_teach.UNet at ``cfg`` (dropout off, as in the diffusers peer)."""
    from ddpm_teach.unet import UNet

    base = cfg.channels[0]
    if any(c % base for c in cfg.channels):
        raise ValueError(f"channels: every width must be a multiple of {base}, got {cfg.channels}")
    return UNet(
        cfg.in_channels,
        base_channels=base,
        channel_mults=[c // base for c in cfg.channels],
        num_res_blocks=cfg.layers,
        attention_levels=cfg.attention,
        dropout=0.0,
        norm_groups=cfg.groups,
    )


class DiffusersEps(nn.Module):
    """diffusers.UNet2DModel behind our model interface: ``model(x_t, t) -> eps`` (a tensor)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.net(x, t).sample


def build_diffusers(cfg: NetConfig) -> nn.Module:
    """diffusers.UNet2DModel with the same blocks as :func:`build_ours` (single-head attention)."""
    from diffusers import UNet2DModel

    levels = range(len(cfg.channels))
    down = tuple("AttnDownBlock2D" if i in cfg.attention else "DownBlock2D" for i in levels)
    up = tuple("AttnUpBlock2D" if i in cfg.attention else "UpBlock2D" for i in reversed(levels))
    net = UNet2DModel(
        sample_size=cfg.size,
        in_channels=cfg.in_channels,
        out_channels=cfg.in_channels,
        block_out_channels=cfg.channels,
        layers_per_block=cfg.layers,
        down_block_types=down,
        up_block_types=up,
        attention_head_dim=None,  # one head as wide as the block, like ours
        norm_num_groups=cfg.groups,
        dropout=0.0,
    )
    return DiffusersEps(net)


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def check_matched(ours: nn.Module, theirs: nn.Module, tolerance: float = 0.15) -> None:
    """Refuse to compare networks whose parameter counts differ by more than ``tolerance``."""
    a, b = num_parameters(ours), num_parameters(theirs)
    if abs(a - b) > tolerance * b:
        raise RuntimeError(
            f"parameters differ by more than {tolerance:.0%}: ours {a}, diffusers {b}"
        )


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs that ``fn()`` performs, counted by torch.utils.flop_counter (matmuls and convs).

    Attention is routed through SDPA's math backend while counting: the counter sees its matmuls
    there but counts 0 for the fused CPU kernel, which would leave out diffusers' attention
    (ours computes short sequences with plain matmuls, which it always counts).
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def count_ops(fn: Callable[[], Any]) -> int:
    """ATen operator calls that ``fn()`` dispatches (views and autocast's casts included).

    Each one costs the host a few microseconds of dispatch, and each non-view one launches at
    least one kernel on a GPU: where a step is bound by the host rather than by arithmetic (small
    networks on a fast GPU), this count, not the FLOPs, sets its time.
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    class _Counter(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.calls += 1
            return func(*args, **(kwargs or {}))

    counter = _Counter()
    with counter:
        fn()
    return counter.calls
