"""Train a DDPM from the command line: ``python -m ddpm_teach.train --data glyph-digits --out runs/g``.

The run budget (``--budget``, else ``$DDPM_TEACH_BUDGET``, else gpu/cpu by what is present) sizes
everything; flags override single numbers. 2-D toy sets train the MLP and write scatter plots,
image sets train the U-Net and write image grids. Into ``--out``: ``last.pt`` (the checkpoint,
rewritten atomically every tenth of the run) and ``samples_STEP.png`` (EMA previews). The last line
printed is a summary: steps, wall time, images/s.

Several GPUs or machines: launch the same command with ``torchrun`` (e.g.
``torchrun --nproc_per_node=8 -m ddpm_teach.train ...``); ``--batch-size`` stays the global batch.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence

from .budgets import BUDGETS, budget
from .data import DATASETS
from .schedule import PARAMETERIZATIONS
from .training import COMPILE_MODES, SCHEDULE_KINDS, T_SAMPLINGS, TrainConfig, Trainer


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments (also used by the docs)."""
    p = argparse.ArgumentParser(
        prog="python -m ddpm_teach.train",
        description="Train a denoising diffusion model (DDPM) on a toy or image data set.",
    )
    p.add_argument("--data", required=True, choices=DATASETS, help="training set")
    p.add_argument("--out", required=True, help="output folder for last.pt and sample PNGs")
    p.add_argument(
        "--budget", choices=list(BUDGETS), default=None,
        help="run size (default: $DDPM_TEACH_BUDGET, else gpu with CUDA, else cpu)",
    )  # fmt: skip
    p.add_argument("--steps", type=int, help="optimiser steps (default: the budget's)")
    p.add_argument("--batch-size", type=int, help="global batch size, over all processes")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--prediction", choices=PARAMETERIZATIONS, help="network target")
    p.add_argument("--schedule", choices=SCHEDULE_KINDS, help="noise schedule")
    p.add_argument("--timesteps", type=int, help="T, the length of the diffusion chain")
    p.add_argument(
        "--min-snr-gamma",
        type=_gamma,
        help="Min-SNR-gamma loss weighting (a positive number), or 'none' for the paper's L_simple "
        "(default: the budget's)",
    )
    p.add_argument(
        "--t-sampling",
        choices=T_SAMPLINGS,
        help="how t is drawn: uniform (the paper's) or loss-aware (importance sampling where the "
        "loss is large; default: the budget's)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of every random number (default 0)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--data-size", type=int, help="examples to load or generate")
    p.add_argument("--data-root", help="cache folder of the real image sets")
    p.add_argument("--download", action="store_true", help="download a missing real data set")
    p.add_argument("--sample-every", type=int, help="steps between sample previews")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints")
    p.add_argument("--log-every", type=int, help="steps between loss read-outs")
    p.add_argument("--num-samples", type=int, help="samples per preview (0: none)")
    p.add_argument("--device", help="cuda, cuda:1, cpu (default: the budget's)")
    p.add_argument(
        "--compile",
        nargs="?",
        const="default",
        choices=COMPILE_MODES,
        help="torch.compile the network, optionally in a mode (reduce-overhead: CUDA graphs)",
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="channels_last memory format (default: the budget's; the cpu budget uses it, with "
        "ddpm_teach.fused's GroupNorm kernel)",
    )
    p.add_argument(
        "--no-bf16",
        action="store_true",
        help="no bf16 autocast (on by the cpu budget where the CPU has native bf16)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig the parsed arguments describe."""
    overrides = {
        "train_steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "prediction": args.prediction,
        "schedule": args.schedule,
        "num_steps": args.timesteps,
        "data_size": args.data_size,
        "data_root": args.data_root,
        "sample_every": args.sample_every,
        "checkpoint_every": args.checkpoint_every,
        "log_every": args.log_every,
        "num_samples": args.num_samples,
        "device": args.device,
        "channels_last": args.channels_last,
        "t_sampling": args.t_sampling,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if args.min_snr_gamma is not None:  # 0.0 stands for 'none', the paper's L_simple
        overrides["min_snr_gamma"] = args.min_snr_gamma or None
    b = budget(args.budget)
    if "num_steps" in overrides:  # DDIM previews cannot take more steps than the chain has
        overrides.setdefault("sample_steps", min(b.ddim_steps, overrides["num_steps"]))
    config = TrainConfig.from_budget(
        args.data,
        b,
        seed=args.seed,
        out_dir=args.out,
        download=args.download,
        compile=args.compile or False,
        **overrides,
    )
    if args.no_bf16:
        config.bf16 = False
    return config


def _speed_notes(trainer: Trainer) -> str:
    """' (bf16 autocast, channels_last)', or the part that applies, or ''."""
    notes = [
        name
        for name, on in (("bf16 autocast", trainer.bf16), ("channels_last", trainer.channels_last))
        if on
    ]
    return f" ({', '.join(notes)})" if notes else ""


def _gamma(text: str) -> float:
    """--min-snr-gamma: a positive number, or 'none' (returned as 0.0: no weighting)."""
    if text.strip().lower() == "none":
        return 0.0
    try:
        value = float(text)
    except ValueError:
        value = math.nan  # refused below, with the same message
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a positive number or 'none', got {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps: expected a positive number of optimiser steps, got {args.steps}")
    try:
        config = config_from_args(args)
        start = time.perf_counter()
        # Building the trainer checks the rest (T, device, a checkpoint to resume, --out): a bad
        # value is a usage error, not a traceback.
        trainer = Trainer(config, resume=args.resume, progress=not args.no_progress)
    except (ValueError, TypeError, RuntimeError, FileNotFoundError, FileExistsError) as err:
        parser.error(str(err))
    try:
        if trainer.is_main:
            print(
                f"{config.data}: {len(trainer.data)} examples of shape "
                f"{tuple(trainer.data.shape[1:])}; {trainer.model_kind} with "
                f"{sum(p.numel() for p in trainer.model.parameters()):,} parameters on "
                f"{trainer.device} x {trainer.world_size}"
                f"{_speed_notes(trainer)}; step {trainer.step} of "
                f"{config.train_steps}",
                flush=True,
            )
        trainer.train()
        if trainer.is_main:
            s = trainer.summary()
            wall = time.perf_counter() - start
            print(
                f"done: {s['steps']} steps, wall time {wall:.1f} s (training {s['train_time_s']:.1f} "
                f"s), {s['images_per_s']:.0f} images/s, final loss {s['final_loss']:.4f}, "
                f"checkpoint {s['checkpoint']}",
                flush=True,
            )
    finally:
        trainer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
