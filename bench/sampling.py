"""Sampling speed: our DDPM / DDIM loops vs diffusers' scheduler loops, around the same network.

Both loops call the very same network (our UNet, or a trained checkpoint's EMA weights), with the
same betas (diffusers gets ``trained_betas``), the same batch and precision, so only the loop
differs: ``ddpm_sample`` / ``ddim_sample`` against ``DDPMScheduler.step`` / ``DDIMScheduler.step``
(eta = 0, "trailing" spacing, as ours). Reported:

* images/s for DDPM over all T steps and DDIM over 10, 20, 50, 100 steps, alternating the loops;
* the per-step overhead of each loop outside the network (timed with a trivial "network" that
  returns zeros), beside the network's own time per step;
* with ``--checkpoint``, sample quality against steps (``ddpm_teach.metrics.digit_report``:
  confidently classified share, classes covered, digit-FID beside its data floor) for glyph
  digits / MNIST checkpoints: DDIM at each step count with eta 0 and eta 1 (``--quality-etas``),
  and the full DDPM chain.

    python -m bench.sampling                         # CPU, untrained digits-size U-Net, batch 4
    python -m bench.sampling --checkpoint runs/digits/last.pt --quality-n 500
    python -m bench.sampling --device cuda --batch 64
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ddpm_teach.schedule import NoiseSchedule

from ._common import (
    NetConfig,
    alternate,
    base_parser,
    build_ours,
    count_flops,
    fmt,
    machine_info,
    markdown_table,
    pair_ratio,
    report,
    setup,
    sync,
)
from .train_step import CONFIGS

Model = Callable[[Tensor, Tensor], Tensor]
Shape = tuple[int, ...]


class Precision(nn.Module):
    """Run a network under bf16 autocast (or not) and hand back float32, for either loop."""

    def __init__(self, net: nn.Module, bf16: bool) -> None:
        super().__init__()
        self.net, self.bf16 = net, bf16

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.net(x, t).float()


def zeros_model(x: Tensor, t: Tensor) -> Tensor:
    """A trivial 'network' (predicts eps = 0): what is left is the loop's own cost."""
    return torch.zeros_like(x)


# ================================================================================================
# The two loops
# ================================================================================================


def ours_sampler(
    kind: str,
    steps: int,
    schedule: NoiseSchedule,
    shape: Shape,
    device: torch.device,
    clip: bool,
    eta: float = 0.0,
) -> Callable[..., Tensor]:
    """``run(model, seed)``: our ``ddpm_sample`` (all T steps) or ``ddim_sample`` (eta 0 unless
    given: the speed comparison uses 0, as diffusers' DDIMScheduler does by default)."""
    from ddpm_teach.sampling import ddim_sample, ddpm_sample

    def run(model: Model, seed: int = 0) -> Tensor:
        g = torch.Generator(device).manual_seed(seed)
        if kind == "ddpm":
            return ddpm_sample(model, schedule, shape, g, clip_x0=clip, device=device)
        return ddim_sample(model, schedule, shape, steps, eta, g, clip_x0=clip, device=device)

    return run


def diffusers_sampler(
    kind: str, steps: int, schedule: NoiseSchedule, shape: Shape, device: torch.device, clip: bool
) -> Callable[..., Tensor]:
    """``run(model, seed)``: the usual diffusers loop, ``x = scheduler.step(model(x, t), t, x)``,
    with DDPMScheduler (all T steps, "fixed_small" variance) or DDIMScheduler (eta 0)."""
    from diffusers import DDIMScheduler, DDPMScheduler

    betas = schedule.betas.tolist()
    T = schedule.num_steps
    if kind == "ddpm":
        sched = DDPMScheduler(
            num_train_timesteps=T,
            trained_betas=betas,
            variance_type="fixed_small",
            clip_sample=clip,
        )
        sched.set_timesteps(T)
    else:
        sched = DDIMScheduler(
            num_train_timesteps=T,
            trained_betas=betas,
            clip_sample=clip,
            set_alpha_to_one=True,
            timestep_spacing="trailing",
        )
        sched.set_timesteps(steps)

    @torch.no_grad()
    def run(model: Model, seed: int = 0) -> Tensor:
        g = torch.Generator(device).manual_seed(seed)
        x = torch.randn(shape, generator=g, device=device)
        for t in sched.timesteps:
            eps = model(x, t.to(device).expand(shape[0]))
            x = sched.step(eps, t, x, generator=g).prev_sample
        return x

    return run


# ================================================================================================
# Measurements
# ================================================================================================


def speed_rows(samplers, model, shape, args, device, net_flops: int) -> list[list[str]]:
    """images/s of both loops for each (kind, steps), alternating ours / diffusers; achieved
    network FLOP rate (and MFU with --peak-tflops) from the counted forward FLOPs per step."""
    unit, scale = ("TFLOP/s", 1e12) if device.type == "cuda" else ("GFLOP/s", 1e9)
    rows = []
    for kind, steps, ours, theirs in samplers:
        iters = args.ddpm_iters if kind == "ddpm" else args.iters
        times = alternate(
            {"ours": lambda o=ours: o(model), "diffusers": lambda d=theirs: d(model)},
            iters=iters,
            warmup=0,  # the short DDIM chains before this one warmed everything up
            device=device,
        )
        a, b = times["ours"], times["diffusers"]
        ratio = pair_ratio(a.wall, b.wall)
        cpu_ratio = pair_ratio(a.cpu, b.cpu) if device.type == "cpu" else "-"
        name = f"DDPM-{steps}" if kind == "ddpm" else f"DDIM-{steps}"
        rate = [net_flops * steps / tm.median for tm in (a, b)]
        row = [
            name,
            str(shape[0]),
            f"{shape[0] / a.median:.3g} / {shape[0] / b.median:.3g}",
            f"{a.median:.3g} / {b.median:.3g}",
            f"{rate[0] / scale:.3g} / {rate[1] / scale:.3g} {unit}",
            str(ratio),
            str(cpu_ratio),
            str(iters),
        ]
        if args.peak_tflops:
            row.append(" / ".join(f"{100 * r / (args.peak_tflops * 1e12):.1f}%" for r in rate))
        rows.append(row)
        print("  " + " | ".join(rows[-1]))
    return rows


def network_seconds(model: Model, shape, device, n: int = 5) -> float:
    """Median seconds of one network call at the sampling batch (no grad)."""
    x = torch.randn(shape, device=device)
    t = torch.full((shape[0],), 500, device=device, dtype=torch.long)
    times = []
    with torch.no_grad():
        model(x, t)
        for _ in range(n):
            sync(device)
            start = time.perf_counter()
            model(x, t)
            sync(device)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def overhead_rows(samplers, net_s: float, args, device) -> list[list[str]]:
    """Per-step cost of each loop with the trivial network, and its share of a real step."""
    rows = []
    for kind, steps, ours, theirs in samplers:
        times = alternate(
            {"ours": lambda o=ours: o(zeros_model), "diffusers": lambda d=theirs: d(zeros_model)},
            iters=args.iters,
            warmup=1,
            device=device,
        )
        per = [times[k].median / steps for k in ("ours", "diffusers")]
        name = f"DDPM-{steps}" if kind == "ddpm" else f"DDIM-{steps}"
        rows.append(
            [
                name,
                f"{per[0] * 1e6:.0f} / {per[1] * 1e6:.0f}",
                f"{net_s * 1e3:.3g}",
                f"{100 * per[0] / (per[0] + net_s):.2f}% / {100 * per[1] / (per[1] + net_s):.2f}%",
            ]
        )
        print("  " + " | ".join(rows[-1]))
    return rows


def quality_rows(model, schedule, data_shape, args, device) -> tuple[list[list[str]], str]:
    """digit_report of our samples at each step count (glyph-digit-shaped checkpoints only)."""
    if tuple(data_shape) != (1, 28, 28):
        return [], f"quality: skipped, digit metrics need (1, 28, 28) images, not {data_shape}"
    try:
        from ddpm_teach.metrics import digit_report
    except ImportError as err:
        return [], f"quality: skipped, ddpm_teach.metrics is unavailable ({err})"
    shape = (args.quality_n, *data_shape)
    rows = []
    runs = [("ddim", s, eta) for eta in args.quality_etas for s in args.ddim_steps]
    for kind, steps, eta in [*runs, ("ddpm", schedule.num_steps, 1.0)]:
        run = ours_sampler(kind, steps, schedule, shape, device, clip=True, eta=eta)
        start = time.perf_counter()
        samples = run(model, seed=args.seed).clamp(-1, 1).cpu()
        seconds = time.perf_counter() - start
        try:
            r = digit_report(samples)
        except (FileNotFoundError, OSError, RuntimeError) as err:
            return rows, f"quality: stopped, digit_report failed ({type(err).__name__}: {err})"
        name = f"DDPM-{steps}" if kind == "ddpm" else f"DDIM-{steps} (eta {eta:g})"
        rows.append(
            [
                name,
                f"{100 * r.confident_share:.1f}%",
                f"{r.coverage}/10",
                f"{r.digit_fid:.2f} (floor {r.fid_floor:.2f})",
                f"{seconds:.1f}",
            ]
        )
        print("  " + " | ".join(rows[-1]))
    return rows, f"quality: {args.quality_n} samples per row, our loops, x0 clipped to [-1, 1]"


# ================================================================================================
# Main
# ================================================================================================


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = base_parser("sampling", __doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint", help="a ddpm_teach training checkpoint (default: untrained digits U-Net)"
    )
    parser.add_argument("--batch", type=int, default=None, help="default 4 on CPU, 64 on CUDA")
    parser.add_argument("--ddim-steps", type=int, nargs="+", default=None, help="10 20 50 100")
    parser.add_argument("--no-ddpm", action="store_true", help="skip the full-length DDPM chain")
    parser.add_argument("--timesteps", type=int, default=None, help="T without checkpoint (1000)")
    parser.add_argument("--iters", type=int, default=None, help="alternating rounds (default 3)")
    parser.add_argument("--ddpm-iters", type=int, default=1, help="rounds for DDPM (default 1)")
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="fp32 (default: the package samples in float32; on an H200 bf16 autocast made the "
        "small networks slower) or bf16 autocast for the network",
    )
    parser.add_argument(
        "--quality-n", type=int, default=256, help="samples per quality row (0: no quality rows)"
    )
    parser.add_argument(
        "--quality-etas",
        type=float,
        nargs="+",
        default=[0.0, 1.0],
        help="DDIM etas of the quality rows (0: deterministic; 1: ancestral, the budgets' choice)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="device peak (dense bf16), for MFU"
    )
    args = parser.parse_args(argv)
    if args.tiny:
        args.threads = args.threads or 1
        args.batch = args.batch or 2
        args.ddim_steps = args.ddim_steps or [2, 5]
        args.timesteps = args.timesteps or 25
        args.iters = args.iters or 1
        args.quality_n = min(args.quality_n, 8)
    args.batch = args.batch or (64 if args.device == "cuda" else 4)
    args.ddim_steps = args.ddim_steps or [10, 20, 50, 100]
    args.timesteps = args.timesteps or 1000
    args.iters = args.iters or 3
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = setup(args)
    info = machine_info(device)
    from ddpm_teach.training import load_checkpoint, make_schedule

    if args.checkpoint:
        _, net, schedule, config = load_checkpoint(args.checkpoint, map_location=device)
        ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=True, mmap=True)
        data_shape = tuple(ckpt["data_shape"])
        what = f"checkpoint {args.checkpoint} (EMA weights, {config.data}, T={schedule.num_steps})"
    else:
        cfg: NetConfig = CONFIGS["tiny" if args.tiny else "digits-b64"]
        torch.manual_seed(0)
        net = build_ours(cfg).to(device).eval()
        schedule = make_schedule("linear", args.timesteps)
        data_shape = (cfg.in_channels, cfg.size, cfg.size)
        what = f"untrained U-Net ({cfg.describe().rsplit(', batch', 1)[0]}), T={args.timesteps}"
    if len(data_shape) != 3:
        raise SystemExit(f"--checkpoint: expected an image model, got data shape {data_shape}")
    model = Precision(net, args.precision == "bf16")
    shape = (args.batch, *data_shape)
    kinds = [("ddim", s) for s in args.ddim_steps]
    if not args.no_ddpm:
        kinds.append(("ddpm", schedule.num_steps))
    samplers = [
        (
            kind,
            steps,
            ours_sampler(kind, steps, schedule, shape, device, clip=True),
            diffusers_sampler(kind, steps, schedule, shape, device, clip=True),
        )
        for kind, steps in kinds
    ]
    print(f"network: {what}; batch {args.batch}; {args.precision}")
    # warm-up: one short chain of each loop (allocator, oneDNN/cuDNN kernel choice)
    for _, _, ours, theirs in samplers[:1]:
        ours(model), theirs(model)
    with torch.no_grad():
        t_mid = torch.full((shape[0],), schedule.num_steps // 2, device=device, dtype=torch.long)
        net_flops = count_flops(lambda: model(torch.randn(shape, device=device), t_mid))
    speed = speed_rows(samplers, model, shape, args, device, net_flops)
    net_s = network_seconds(model, shape, device)
    overhead = overhead_rows(samplers, net_s, args, device)
    quality, quality_note = [], ""
    if args.checkpoint and args.quality_n > 0:
        quality, quality_note = quality_rows(model, schedule, data_shape, args, device)

    parts = [
        f"Network: {what}; batch {args.batch}; precision {args.precision}; clip x0 on.",
        "",
        markdown_table(
            [
                "sampler",
                "batch",
                "img/s ours / diffusers",
                "s per batch ours / diff.",
                "network rate ours / diff.",
                "speed ratio [IQR]",
                "CPU-time ratio [IQR]",
                "rounds",
            ]
            + (
                [f"MFU ours / diff. (peak {args.peak_tflops:g} TFLOP/s)"]
                if args.peak_tflops
                else []
            ),
            speed,
        ),
        "",
        "Loop overhead outside the network (trivial network returning zeros):",
        "",
        markdown_table(
            [
                "sampler",
                "µs/step ours / diffusers",
                "network ms/step",
                "loop share of a step ours / diff.",
            ],
            overhead,
        ),
    ]
    if quality or quality_note:
        parts += ["", quality_note]
    if quality:
        parts += [
            "",
            markdown_table(["sampler", "confident", "classes", "digit-FID", "sampling s"], quality),
        ]
    parts += [
        "",
        f"Ratios: ours / diffusers speed (> 1: ours faster), median of alternating rounds "
        f"[interquartile range]; the same network object is called by both loops. "
        f"Network alone: {fmt(net_s * 1e3)} ms and {net_flops / 1e9:.3g} GFLOP per call (network "
        "rate = counted forward FLOPs x steps / chain time).",
    ]
    report(args.doc, "sampling", argv, info, "\n".join(parts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
