"""Sampling on the CPU against the number of images per network call.

A U-Net called on a thousand images at once allocates tens of MiB for each activation. glibc
hands blocks that large back to the operating system when they are freed, so the next call
page-faults all of them in again. ``training.sampling_net`` therefore calls a U-Net on the CPU
on chunks of at most ``SAMPLING_CHUNK_BYTES`` of first-level activations
(``training.Chunked``). This script measures the two things behind that choice:

* the network alone, one pass over ``--n`` images in calls of each chunk size: ms, images/s
  and minor page faults per pass, in float32 and (on a CPU with native bf16) under bf16
  autocast;
* DDIM over ``--n`` images, one network call a step against ``sampling_net``'s chunks,
  alternating in one process, and whether the two give the same samples.

The network is the run budget's U-Net for glyph digits (1 x 28 x 28), untrained (the arithmetic,
and so the time, is the same as a trained one's), in the layout the trainer uses on the CPU.

    python -m bench.sampling_batch --threads 2
    python -m bench.sampling_batch --threads 2 --budget gpu --n 256 --steps 10
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ._common import alternate, base_parser, machine_info, markdown_table, pair_ratio, report, setup

try:  # page-fault counts come from getrusage, which Windows lacks
    import resource
except ImportError:  # pragma: no cover - Windows
    resource = None  # type: ignore[assignment]

SHAPE = (1, 28, 28)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = base_parser("sampling_batch", __doc__.splitlines()[0])
    parser.add_argument("--budget", default=None, help="run budget (default: cpu; smoke if --tiny)")
    parser.add_argument("--n", type=int, default=1024, help="images to sample")
    parser.add_argument(
        "--chunks", type=int, nargs="+", default=None, help="images per call (default: 16 .. n)"
    )
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps of the whole-chain rows")
    parser.add_argument("--iters", type=int, default=3, help="alternating rounds")
    parser.add_argument(
        "--chunk-mib",
        type=float,
        default=None,
        help="try sampling_net with this limit instead of training.SAMPLING_CHUNK_BYTES "
        "(MiB of first-level activations a call)",
    )
    args = parser.parse_args(argv)
    if args.tiny:
        args.budget = args.budget or "smoke"
        args.n, args.steps, args.iters = min(args.n, 8), min(args.steps, 2), 1
        args.chunks = args.chunks or [2, args.n]
        # Small enough that sampling_net splits the tiny batch, so the smoke test runs that path.
        args.chunk_mib = args.chunk_mib or 0.1
    if args.chunk_mib is not None and not args.chunk_mib > 0:
        raise SystemExit(f"--chunk-mib: expected a positive number, got {args.chunk_mib}")
    args.budget = args.budget or "cpu"
    if args.chunks is None:
        args.chunks = [c for c in (16, 32, 64, 128, 256, 512) if c < args.n] + [args.n]
    if args.n < 1 or args.steps < 1 or args.iters < 1 or min(args.chunks) < 1:
        raise SystemExit("--n, --steps, --iters and --chunks: expected >= 1")
    if args.device != "cpu":
        raise SystemExit("--device: this benchmark is about the CPU's allocator; use cpu")
    return args


def faults() -> int:
    """Minor page faults of this process so far (0 where getrusage is missing)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource else 0


def counted(fn: Callable[[], object], into: list[int]) -> Callable[[], object]:
    """``fn``, appending the page faults of each call to ``into``."""

    def run() -> object:
        start = faults()
        fn()
        into.append(faults() - start)
        return None

    return run


def chain(
    net: nn.Module, schedule: object, shape: tuple[int, ...], steps: int, out: dict, key: str
) -> Callable[[], object]:
    """DDIM over ``steps`` steps with eta = 1 from a fixed seed, its samples kept in out[key]."""
    from ddpm_teach.sampling import ddim_sample

    def run() -> object:
        g = torch.Generator().manual_seed(2)
        out[key] = ddim_sample(
            net, schedule, shape, num_steps=steps, eta=1.0, generator=g, clip_x0=True
        )
        return None

    return run


NET_HEADERS = [
    "precision", "images per call (at most)", "MiB per call", "ms per pass", "images/s",
    "page faults per pass",
]  # fmt: skip
CHAIN_HEADERS = [
    "precision", "sampling_net's calls x images (at most)", "s, one call a step", "s, sampling_net",
    "speed-up [IQR]", "max abs difference of the samples",
]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from ddpm_teach import training

    limit = training.SAMPLING_CHUNK_BYTES
    if args.chunk_mib is not None:  # an experiment: sampling_net reads the limit at each call
        training.SAMPLING_CHUNK_BYTES = int(args.chunk_mib * 2**20)
    try:
        return run(args, argv)
    finally:
        training.SAMPLING_CHUNK_BYTES = limit


def run(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    """The measurements and the report, with ``training.SAMPLING_CHUNK_BYTES`` as set."""
    device = setup(args)
    info = machine_info(device)
    from ddpm_teach import budgets, fused, training
    from ddpm_teach.training import (
        BF16Sampling,
        Chunked,
        has_native_bf16,
        make_schedule,
        sampling_net,
    )
    from ddpm_teach.unet import UNet

    b = budgets.budget(args.budget)
    torch.manual_seed(0)
    model = UNet(in_channels=SHAPE[0], **b.model_kwargs()).eval()
    channels_last = b.channels_last and fused.available()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    schedule = make_schedule(b.schedule, b.num_steps)
    x = torch.randn(args.n, *SHAPE, generator=torch.Generator().manual_seed(1))
    t = torch.full((args.n,), b.num_steps // 2)
    precisions = [False] + ([True] if has_native_bf16(device) else [])

    net_rows, chain_rows = [], []
    with torch.no_grad():
        for bf16 in precisions:
            name = "bf16 autocast" if bf16 else "fp32"
            itemsize = 2 if bf16 else 4
            whole = BF16Sampling(model) if bf16 else model
            fns, pf = {}, {}
            for c in args.chunks:
                net = Chunked(whole, c)
                pf[c] = []
                fns[c] = counted(lambda net=net: net(x, t), pf[c])
            times = alternate(fns, iters=args.iters, warmup=1, device=device)
            for c, tm in times.items():
                mib = model.base_channels * SHAPE[1] * SHAPE[2] * itemsize * min(c, args.n) / 2**20
                per_pass = sorted(pf[c][1:])[len(pf[c][1:]) // 2]  # the warm-up call excluded
                net_rows.append(
                    [name, c, f"{mib:.1f}", f"{tm.median * 1e3:.0f}",
                     f"{args.n / tm.median:.0f}", per_pass]
                )  # fmt: skip
                print("  " + " | ".join(map(str, net_rows[-1])))

            shape = (args.n, *SHAPE)
            chunked = sampling_net(model, shape, device, bf16=bf16)
            inner = chunked.model if bf16 else chunked
            calls = inner.num_calls(args.n) if isinstance(inner, Chunked) else 1
            size = f"{calls} x {-(-args.n // calls)}"  # calls x the largest chunk
            out: dict[str, torch.Tensor] = {}
            chains = {
                "one call": chain(whole, schedule, shape, args.steps, out, "one call"),
                "sampling_net": chain(chunked, schedule, shape, args.steps, out, "sampling_net"),
            }
            times = alternate(chains, iters=args.iters, warmup=0, device=device)
            diff = (out["one call"] - out["sampling_net"]).abs().max().item()
            one, chunks = times["one call"], times["sampling_net"]
            speed_up = pair_ratio(chunks.wall, one.wall)
            row = [name, size, f"{one.median:.2f}", f"{chunks.median:.2f}", str(speed_up)]
            chain_rows.append([*row, f"{diff:.1e}"])
            print("  " + " | ".join(map(str, chain_rows[-1])))

    body = "\n".join(
        [
            markdown_table(NET_HEADERS, net_rows),
            "",
            markdown_table(CHAIN_HEADERS, chain_rows),
            "",
            f"Budget {args.budget!r}'s U-Net {b.model_kwargs()}, untrained, "
            f"{'channels_last' if channels_last else 'NCHW'}, {args.n} images of {SHAPE}. First "
            "table: the network alone at t = T/2, one pass over the images in calls of each size, "
            f"medians of {args.iters} alternating rounds after one warm-up; 'MiB per call' = "
            "base_channels x H x W values per image x images per call (the first level's "
            "activations; the skip concatenations hold two to three times as much); page faults: "
            "minor faults of the process (getrusage; 0 where it is missing). Second table: DDIM "
            f"over {args.steps} steps with eta = 1 and x_0 clipping, the network called on all "
            "images at once against `training.sampling_net` (calls of at most "
            f"{training.SAMPLING_CHUNK_BYTES / 2**20:.3g} MiB of first-level activations), the "
            f"same generator seed for both, medians of {args.iters} alternating rounds; speed-up = "
            "median of the per-round ratios one call / sampling_net.",
        ]
    )
    report(args.doc, "sampling_batch", argv, info, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
