"""Training steps per second of ddpm_teach's Trainer at a run budget, under a few settings.

``bench.train_step`` times the network alone against diffusers; this times the whole training step
the budgets run (batch gather, q_sample, forward, loss, backward, clipping, fused AdamW, EMA), so
that a budget's settings (bf16 autocast, channels_last, torch.compile, Min-SNR weighting, batch)
are chosen by measurement. The variants train in alternation, a chunk of steps each per round, in
one process; the table gives medians and each variant's speed relative to the first.

Variants are overrides of the budget's TrainConfig for glyph digits:

    python -m bench.trainer_speed --device cuda --budget gpu
    python -m bench.trainer_speed --threads 1 --budget cpu --variants budget fp32
    python -m bench.trainer_speed --device cuda --budget gpu --variants budget compile cuda-graphs

A column "CPU ms/step" close to "ms/step" on a GPU says the step is bound by the host (Python,
kernel launches), not by the GPU: then fewer, larger kernels (compile, CUDA graphs) pay, and
lower precision does not.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from typing import Any

from ._common import (
    alternate,
    base_parser,
    machine_info,
    markdown_table,
    pair_ratio,
    report,
    setup,
)

#: name -> TrainConfig overrides (relative to the budget's glyph-digits config).
VARIANTS: dict[str, dict[str, Any]] = {
    "budget": {},
    "fp32": {"bf16": False},
    "bf16": {"bf16": True},
    "channels-last": {"channels_last": True},
    "nchw": {"channels_last": False},
    "compile": {"compile": True},
    "fp32-compile": {"bf16": False, "compile": True},
    # torch.compile's CUDA graphs: one launch replays the whole forward or backward.
    "cuda-graphs": {"compile": "reduce-overhead"},
    "min-snr": {"min_snr_gamma": 1.0},
    "l-simple": {"min_snr_gamma": None},
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = base_parser("trainer_speed", __doc__.splitlines()[0])
    parser.add_argument("--budget", default=None, help="run budget (default: cpu; smoke if --tiny)")
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=sorted(VARIANTS),
        default=None,
        help="settings to time, the first being the reference (default: budget fp32 bf16 "
        "channels-last, plus compile, fp32-compile and cuda-graphs on CUDA)",
    )
    parser.add_argument("--chunk", type=int, default=None, help="steps per timed call")
    parser.add_argument("--iters", type=int, default=5, help="alternating rounds")
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="untimed chunks per variant, besides the first one that builds it",
    )
    parser.add_argument("--data-size", type=int, default=8192, help="glyph digits rendered")
    args = parser.parse_args(argv)
    if args.tiny:
        args.budget = args.budget or "smoke"
        args.chunk = args.chunk or 2
        args.iters, args.data_size = min(args.iters, 2), min(args.data_size, 64)
    args.budget = args.budget or "cpu"
    if args.variants is None:
        args.variants = ["budget", "fp32", "bf16", "channels-last"]
        if args.device == "cuda":
            args.variants += ["compile", "fp32-compile", "cuda-graphs"]
    args.chunk = args.chunk or (50 if args.device == "cuda" else 10)
    if args.chunk < 1 or args.iters < 1 or args.warmup < 0:
        raise SystemExit("--chunk and --iters: expected >= 1, --warmup >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = setup(args)
    info = machine_info(device)
    from ddpm_teach.data import glyph_digits
    from ddpm_teach.training import TrainConfig, Trainer

    data, _ = glyph_digits(args.data_size, seed=0)
    trainers, failed, same_as = {}, {}, {}
    for name in dict.fromkeys(args.variants):
        # A variant that cannot train (a compile mode this machine lacks, say) is reported and
        # left out, so that one experiment cannot cost a lent GPU's whole run.
        try:
            config = TrainConfig.from_budget(
                "glyph-digits", args.budget, device=device.type, data_size=args.data_size,
                train_steps=10**9, num_samples=0, out_dir=None, log_every=args.chunk,
                **VARIANTS[name],
            )  # fmt: skip
            same = [other for other, tr in trainers.items() if tr.config == config]
            if same:  # e.g. fp32 at a budget that trains in fp32 already
                same_as[name] = same[0]
                print(f"  {name}: the same settings as {same[0]}, not timed twice")
                continue
            trainers[name] = Trainer(config, data, progress=False)
            trainers[name].train(args.chunk)  # compiles, picks kernels, builds optimiser state
        except Exception as err:  # any failure of a variant is its result
            failed[name] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            trainers.pop(name, None)
            print(f"  {name}: failed ({failed[name]})")
    if not trainers:
        raise SystemExit(f"every variant failed: {failed}")
    times = alternate(
        {name: (lambda tr=tr: tr.train(args.chunk)) for name, tr in trainers.items()},
        iters=args.iters,
        warmup=args.warmup,
        device=device,
    )
    first = next(iter(times))
    rows = []
    for name, t in times.items():
        tr = trainers[name]
        cfg = tr.config
        ms = 1000 * t.median / args.chunk
        cpu_ms = 1000 * statistics.median(t.cpu) / args.chunk
        speed = pair_ratio(t.wall, times[first].wall)  # per-round ratios: robust to load bursts
        cpu_speed = pair_ratio(t.cpu, times[first].cpu)
        rows.append(
            [
                name,
                ", ".join(f"{k}={v}" for k, v in VARIANTS[name].items()) or "-",
                "bf16" if tr.bf16 else "fp32",
                str(cfg.batch_size),
                f"{ms:.2f}",
                f"{cpu_ms:.2f}",
                f"{1000 / ms:.1f}",
                f"{cfg.batch_size * 1000 / ms:.0f}",
                str(speed),
                str(cpu_speed),
            ]
        )
        print("  " + " | ".join(rows[-1]))
    cfg = trainers[first].config
    body = "\n".join(
        [
            markdown_table(
                [
                    "variant",
                    "overrides",
                    "precision used",
                    "batch",
                    "ms/step",
                    "CPU ms/step",
                    "steps/s",
                    "img/s",
                    f"speed vs {first} [IQR]",
                    "CPU-time ratio [IQR]",
                ],
                rows,
            ),
            "",
            f"Budget {args.budget!r}, glyph digits ({args.data_size} rendered): U-Net "
            f"{cfg.model_kwargs}, prediction {cfg.prediction}, min_snr_gamma {cfg.min_snr_gamma}. "
            f"Medians of {args.iters} alternating rounds of {args.chunk} steps per variant after "
            f"{args.warmup + 1} warm-up chunk(s); a step = batch gather + q_sample + forward + loss + "
            "backward + clipping + fused AdamW + EMA, as the trainer runs it; 'precision used' is "
            "what the trainer chose (bf16 only where the device has it natively). Speed: median "
            f"of the per-round ratios {first}'s time / the variant's (> 1: faster than {first}), "
            "by wall clock and by process CPU time."
            + "".join(f" Variant {name} = {other}'s settings." for name, other in same_as.items())
            + "".join(
                f" Variant {name} failed and is left out: {why}." for name, why in failed.items()
            ),
        ]
    )
    report(args.doc, "trainer_speed", argv, info, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
