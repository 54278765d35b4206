"""Seconds of training until the samples look right, with ddpm_teach's trainer and run budgets.

Two goals, each checked at regular evaluations during one training run. Columns: seconds of
training (``Trainer.train_time``, evaluations excluded); the process CPU seconds spent training
(with ``--threads 1``, what an idle core would take, whatever the load); the wall clock
including the evaluations.

(a) eight Gaussians (MLP, the budget's toy settings): all 8 modes covered AND the MMD^2 to the
    reference at the data floor, i.e. no larger than data itself scores: at most the mean + 2 sd
    of the MMD^2 of independent fresh data sets of the same size against the same reference.
    Samples come from full ancestral sampling (all T steps; cheap for the MLP), so the sampler
    adds no error of its own. Goal on a 2-core laptop: <= 30 s.
(b) glyph digits (U-Net at the ``cpu`` budget): >= 90 % of samples confidently classified as a
    digit by the digit probe AND all 10 classes present (``ddpm_teach.metrics.digit_report``).
    Samples come from the budget's preview sampler (DDIM over ``ddim_steps`` with
    ``sample_eta``). Goal: <= 10 min.

    python -m bench.time_to_quality                  # both, cpu budget (the digits part is long)
    python -m bench.time_to_quality --only toy
    python -m bench.time_to_quality --only digits --digits-eval-every 3600 --set lr=1e-3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence

import torch

from ._common import base_parser, machine_info, markdown_table, report, setup


def toy_floor(name: str, n: int, n_ref: int, draws: int) -> tuple[float, float]:
    """Mean and sd of MMD^2(fresh data of size n, reference) over ``draws`` fresh sets."""
    from ddpm_teach.data import toy_2d
    from ddpm_teach.metrics import mmd

    ref = toy_2d(name, n_ref, 0)  # the reference toy_report uses (seed 0)
    values = [mmd(toy_2d(name, n, 1000 + k), ref) for k in range(draws)]
    return statistics.mean(values), statistics.stdev(values)


def run_toy(args: argparse.Namespace, device: torch.device) -> tuple[list[list[str]], str]:
    """Train the eight-Gaussians MLP, evaluating every ``toy_eval_every`` steps, until the goal."""
    from ddpm_teach.metrics import toy_report
    from ddpm_teach.sampling import ddpm_sample
    from ddpm_teach.training import TrainConfig, Trainer

    name = "eight-gaussians"
    config = TrainConfig.from_budget(name, args.budget, device=device.type)
    max_steps = args.toy_max_steps or config.train_steps
    n = args.toy_n or config.num_samples
    floor_mean, floor_sd = toy_floor(name, n, args.n_ref, args.floor_draws)
    threshold = floor_mean + 2 * floor_sd
    trainer = Trainer(config, progress=False)
    rows, reached, start, cpu = [], None, time.perf_counter(), 0.0
    while trainer.step < max_steps:
        c0 = time.process_time()
        trainer.train(min(args.toy_eval_every, max_steps - trainer.step))
        cpu += time.process_time() - c0
        g = torch.Generator(trainer.device).manual_seed(args.seed)
        samples = ddpm_sample(trainer.ema_model(), trainer.schedule, (n, 2), g, device=device)
        r = toy_report(samples.cpu(), name, n_ref=args.n_ref)
        ok = r.modes_hit == r.n_modes and r.mmd <= threshold
        rows.append(
            [
                "eight-gaussians",
                str(trainer.step),
                f"{trainer.train_time:.1f}",
                f"{cpu:.1f}",
                f"{time.perf_counter() - start:.1f}",
                f"modes {r.modes_hit}/{r.n_modes}, near a mode {100 * r.share_near:.1f}% "
                f"(data {100 * r.data_share_near:.1f}%), MMD^2 {r.mmd:.2e} (floor "
                f"{floor_mean:.1e} ± {floor_sd:.1e})",
                "**yes**" if ok else "no",
            ]
        )
        print("  " + " | ".join(rows[-1]))
        if ok:
            reached = trainer.train_time
            break
    verdict = (
        f"(a) eight Gaussians: goal reached after {reached:.1f} s of training "
        f"({cpu:.1f} CPU s; step {trainer.step}; goal <= 30 s)"
        if reached is not None
        else f"(a) eight Gaussians: goal NOT reached within {max_steps} steps "
        f"({trainer.train_time:.1f} s of training, {cpu:.1f} CPU s)"
    )
    setup_note = (
        f"{verdict}. Budget {args.budget!r}: MLP {config.model_kwargs}, batch "
        f"{config.batch_size}, lr {config.lr}; {n} samples by ancestral sampling over all "
        f"{config.num_steps} steps (EMA weights); MMD^2 floor = mean ± sd over "
        f"{args.floor_draws} fresh data sets of {n} vs {args.n_ref} reference points; "
        "'at the floor' = MMD^2 <= mean + 2 sd."
    )
    return rows, setup_note


def run_digits(args: argparse.Namespace, device: torch.device) -> tuple[list[list[str]], str]:
    """Train the glyph-digit U-Net at the budget, evaluating every ``digits_eval_every`` steps."""
    from ddpm_teach.training import BF16Sampling, TrainConfig, Trainer

    try:
        from ddpm_teach.metrics import digit_report
    except ImportError as err:
        return [], f"(b) glyph digits: unmeasured, ddpm_teach.metrics is unavailable ({err})"
    overrides = dict(args.set)
    if args.digits_max_steps:  # the run's length, which the learning-rate decay follows
        overrides["train_steps"] = args.digits_max_steps
    if args.digits_data_size:
        overrides["data_size"] = args.digits_data_size
    config = TrainConfig.from_budget("glyph-digits", args.budget, device=device.type, **overrides)
    max_steps = config.train_steps
    every = args.digits_eval_every or max(1, max_steps // 6)
    start = time.perf_counter()
    trainer = Trainer(config, progress=False)
    data_s = time.perf_counter() - start
    rows, reached, start, cpu = [], None, time.perf_counter(), 0.0
    while trainer.step < max_steps:
        c0 = time.process_time()
        trainer.train(min(every, max_steps - trainer.step))
        cpu += time.process_time() - c0
        samples = trainer.sample(args.digits_n, seed=args.seed).clamp(-1, 1)
        try:
            r = digit_report(samples)
        except (FileNotFoundError, OSError, RuntimeError) as err:
            return rows, f"(b) glyph digits: unmeasured, digit_report failed ({err})"
        ok = r.confident_share >= 0.9 and r.coverage == 10
        rows.append(
            [
                "glyph digits",
                str(trainer.step),
                f"{trainer.train_time:.1f}",
                f"{cpu:.1f}",
                f"{time.perf_counter() - start:.1f}",
                f"{100 * r.confident_share:.1f}% confident, {r.coverage}/10 classes, "
                f"digit-FID {r.digit_fid:.2f} (floor {r.fid_floor:.2f})",
                "**yes**" if ok else "no",
            ]
        )
        print("  " + " | ".join(rows[-1]))
        if ok:
            reached = trainer.train_time
            break
    verdict = (
        f"(b) glyph digits: goal reached after {reached:.0f} s of training "
        f"({cpu:.0f} CPU s; step {trainer.step}; goal <= 600 s)"
        if reached is not None
        else f"(b) glyph digits: goal NOT reached within {max_steps} steps "
        f"({trainer.train_time:.0f} s of training, {cpu:.0f} CPU s)"
    )
    # How Trainer.sample ran the network: the trainer's own decision.
    precision = "bf16 autocast" if BF16Sampling.applies(trainer.bf16, device) else "float32"
    setup_note = (
        f"{verdict}. Budget {args.budget!r}"
        + (f" with {', '.join(f'{k}={v}' for k, v in args.set)}" if args.set else "")
        + f": U-Net {config.model_kwargs}, batch {config.batch_size}, lr {config.lr} "
        f"(lr_decay {config.lr_decay}), EMA {config.ema_decay}, {config.data_size} glyph digits (rendering and "
        f"set-up took {data_s:.0f} s, not counted); {args.digits_n} samples per evaluation by "
        f"DDIM-{config.sample_steps} with eta {config.sample_eta} (EMA weights, {precision}); "
        "goal = >= 90 % confident (p >= 0.9) and 10/10 classes."
    )
    return rows, setup_note


def _override(text: str) -> tuple[str, object]:
    """FIELD=VALUE with VALUE read as JSON when it parses (numbers, true, null), else a string."""
    field, sep, value = text.partition("=")
    if not sep or not field:
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE, got {text!r}")
    try:
        return field, json.loads(value)
    except json.JSONDecodeError:
        return field, value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = base_parser("time_to_quality", __doc__.splitlines()[0])
    parser.add_argument("--only", choices=("toy", "digits"), default=None)
    parser.add_argument("--budget", default=None, help="run budget (default cpu; smoke if --tiny)")
    parser.add_argument("--toy-eval-every", type=int, default=100)
    parser.add_argument("--toy-max-steps", type=int, default=None, help="default: the budget's")
    parser.add_argument("--toy-n", type=int, default=None, help="samples per evaluation")
    parser.add_argument("--n-ref", type=int, default=4096, help="toy reference points")
    parser.add_argument("--floor-draws", type=int, default=8, help="fresh sets for the floor")
    parser.add_argument("--digits-eval-every", type=int, default=None, help="default: max / 6")
    parser.add_argument("--digits-max-steps", type=int, default=None, help="default: budget's")
    parser.add_argument("--digits-n", type=int, default=500, help="samples per evaluation")
    parser.add_argument("--digits-data-size", type=int, default=None, help="default: budget's")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        type=_override,
        metavar="FIELD=VALUE",
        help="override a TrainConfig field of the digits run, e.g. --set lr=1e-3 --set "
        "lr_decay=none (repeatable)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.tiny:
        args.threads = args.threads or 1
        args.budget = args.budget or "smoke"
        args.toy_max_steps = args.toy_max_steps or 40
        args.toy_eval_every = min(args.toy_eval_every, 20)
        args.toy_n, args.n_ref, args.floor_draws = args.toy_n or 64, 128, 3
        args.digits_max_steps = args.digits_max_steps or 4
        args.digits_eval_every = args.digits_eval_every or args.digits_max_steps
        args.digits_n = min(args.digits_n, 8)
        args.digits_data_size = args.digits_data_size or 64
    args.budget = args.budget or "cpu"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = setup(args)
    info = machine_info(device)
    rows, notes = [], []
    for part, run in (("toy", run_toy), ("digits", run_digits)):
        if args.only in (None, part):
            part_rows, note = run(args, device)
            rows += part_rows
            notes.append(note)
    body = "\n".join(
        [
            markdown_table(
                [
                    "data",
                    "step",
                    "train s",
                    "train CPU s",
                    "wall s (with evals)",
                    "quality",
                    "goal met",
                ],
                rows,
            ),
            "",
            *[f"- {note}" for note in notes],
        ]
    )
    report(args.doc, "time_to_quality", argv, info, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
