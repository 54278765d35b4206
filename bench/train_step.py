"""U-Net training step, ddpm_teach.UNet vs diffusers.UNet2DModel at a matched configuration.

One step = forward, L_simple (MSE) loss, backward, AdamW step; the same fused AdamW for both
networks, the same batch, the same precision. The networks are built from one
:class:`~bench._common.NetConfig`: same widths, res blocks, attention placement and single-head
attention, so parameter counts agree (printed; refused beyond 15 %) and forward FLOPs are counted
for both with ``torch.utils.flop_counter.FlopCounterMode``. Headline: img/s ratio and FLOP-rate
ratio, ours / diffusers (> 1: ours is faster), as medians over alternating rounds.

    python -m bench.train_step                      # CPU: digits config, batch 64 and 8, fp32 + bf16,
                                                    # ours in NCHW and channels_last
    python -m bench.train_step --device cuda --peak-tflops 989   # adds a CIFAR-10-size config
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ddpm_teach import fused

from ._common import (
    NetConfig,
    alternate,
    base_parser,
    build_diffusers,
    build_ours,
    check_matched,
    count_flops,
    count_ops,
    machine_info,
    markdown_table,
    num_parameters,
    pair_ratio,
    report,
    setup,
)

DIGITS = dict(in_channels=1, size=28, channels=(32, 64, 64), layers=2, attention=(2,))
CONFIGS = {
    "digits-b64": NetConfig("digits-b64", batch=64, **DIGITS),
    "digits-b8": NetConfig("digits-b8", batch=8, **DIGITS),
    # DDPM's CIFAR-10 network (35.7M parameters, attention at 16 x 16), for a GPU.
    "cifar-b128": NetConfig(
        "cifar-b128",
        in_channels=3,
        size=32,
        channels=(128, 256, 256, 256),
        layers=2,
        attention=(1,),
        batch=128,
    ),
    "tiny": NetConfig(
        "tiny", in_channels=1, size=8, channels=(8, 16), layers=1, attention=(1,), batch=2
    ),
}
DEFAULTS = {"cpu": ["digits-b64", "digits-b8"], "cuda": ["digits-b64", "digits-b8", "cifar-b128"]}


def make_step(
    model: nn.Module, batch: tuple, precision: str, device: torch.device
) -> Callable[[], None]:
    """One training step of ``model`` on ``batch`` = (x, t, target), as a closure."""
    x, t, target = batch
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(x, t)
        loss = F.mse_loss(out.float(), target)  # eq. 14
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def run_config(
    cfg: NetConfig, precisions: Sequence[str], args: argparse.Namespace, device: torch.device
) -> list[list[str]]:
    """Time both networks on one config at each precision; one table row per precision."""
    g = torch.Generator().manual_seed(0)
    shape = (cfg.batch, cfg.in_channels, cfg.size, cfg.size)
    x = torch.randn(shape, generator=g).to(device)
    t = torch.randint(0, 1000, (cfg.batch,), generator=g).to(device)
    target = torch.randn(shape, generator=g).to(device)

    torch.manual_seed(0)
    ours, theirs = build_ours(cfg).to(device), build_diffusers(cfg).to(device)
    check_matched(ours, theirs)
    params = (num_parameters(ours), num_parameters(theirs))
    fwd = [count_flops(lambda m=m: m(x, t)) for m in (ours, theirs)]

    def fwd_bwd(m: nn.Module) -> None:
        F.mse_loss(m(x, t), target).backward()

    step_flops = [count_flops(lambda m=m: fwd_bwd(m)) for m in (ours, theirs)]
    print(
        f"{cfg.name}: {cfg.describe()}\n  parameters ours {params[0]:,} / diffusers {params[1]:,};"
        f" forward GFLOP ours {fwd[0] / 1e9:.3f} / diffusers {fwd[1] / 1e9:.3f};"
        f" step (fwd+bwd) GFLOP {step_flops[0] / 1e9:.3f} / {step_flops[1] / 1e9:.3f}"
    )
    variants = {"nchw": ours} if "nchw" in args.layouts else {}
    if "channels_last" in args.layouts:
        if device.type == "cpu" and not fused.available():
            print(f"  channels_last skipped: no fused kernel ({fused.unavailable_reason()})")
        else:
            ours_cl = build_ours(cfg).to(device)
            ours_cl.load_state_dict(ours.state_dict())
            variants["channels_last"] = ours_cl.to(memory_format=torch.channels_last)
    cl = torch.channels_last
    batch_cl = (x.contiguous(memory_format=cl), t, target.contiguous(memory_format=cl))
    rows = []
    for precision in precisions:
        steps = {
            f"ours {layout}": make_step(
                net, batch_cl if layout == "channels_last" else (x, t, target), precision, device
            )
            for layout, net in variants.items()
        }
        steps["diffusers"] = make_step(theirs, (x, t, target), precision, device)
        for step in steps.values():  # the first step also creates AdamW's state: not counted
            step()
        ops = {name: count_ops(step) for name, step in steps.items()}
        times = alternate(steps, iters=args.iters, warmup=args.warmup, device=device)
        b = times["diffusers"]
        for layout in variants:
            a = times[f"ours {layout}"]
            speed = pair_ratio(a.wall, b.wall)
            cpu_speed = pair_ratio(a.cpu, b.cpu) if device.type == "cpu" else None
            rate = [f / tm.median for f, tm in zip(step_flops, (a, b), strict=True)]  # FLOP/s
            flop_ratio = speed.median * step_flops[0] / step_flops[1]
            unit, scale = ("TFLOP/s", 1e12) if device.type == "cuda" else ("GFLOP/s", 1e9)
            row = [
                cfg.name,
                precision,
                layout,
                f"{params[0] / 1e6:.3f}M / {params[1] / 1e6:.3f}M",
                f"{fwd[0] / 1e9:.3g} / {fwd[1] / 1e9:.3g}",
                f"{a.median * 1e3:.1f} / {b.median * 1e3:.1f}",
                f"{cfg.batch / a.median:.1f} / {cfg.batch / b.median:.1f}",
                f"{rate[0] / scale:.3g} / {rate[1] / scale:.3g} {unit}",
                str(speed),
                f"**{flop_ratio:.3f}**",
                str(cpu_speed) if cpu_speed else "-",
                f"{ops[f'ours {layout}']:,} / {ops['diffusers']:,}",
            ]
            if args.peak_tflops:
                row.append(" / ".join(f"{100 * r / (args.peak_tflops * 1e12):.1f}%" for r in rate))
            rows.append(row)
            print("  " + " | ".join(row))
    return rows


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = base_parser("train_step", __doc__.splitlines()[0])
    parser.add_argument(
        "--configs",
        nargs="+",
        choices=sorted(CONFIGS),
        default=None,
        help="default: digits at batch 64 and 8 (and cifar-b128 on CUDA)",
    )
    parser.add_argument(
        "--precision",
        nargs="+",
        choices=("fp32", "bf16"),
        default=None,
        help="fp32, and/or bf16 autocast for both networks (default: both on CPU, bf16 on CUDA)",
    )
    parser.add_argument(
        "--layouts",
        nargs="+",
        choices=("nchw", "channels_last"),
        default=None,
        help="memory formats for ours (diffusers always runs NCHW, its fastest): default both "
        "on CPU, where channels_last runs ddpm_teach.fused's GroupNorm kernel; nchw on CUDA",
    )
    parser.add_argument("--iters", type=int, default=None, help="timed rounds (default 10)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed rounds (default 3)")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the device's dense bf16 peak, for MFU (H100/H200 SXM: ~989)",
    )
    args = parser.parse_args(argv)
    if args.tiny:
        args.threads = args.threads or 1  # tiny tensors: extra threads only add contention
        args.configs = args.configs or ["tiny"]
        args.iters, args.warmup = args.iters or 2, 1 if args.warmup is None else args.warmup
    args.configs = args.configs or DEFAULTS[args.device]
    args.precision = args.precision or (["bf16"] if args.device == "cuda" else ["fp32", "bf16"])
    args.layouts = args.layouts or (
        ["nchw"] if args.device == "cuda" else ["nchw", "channels_last"]
    )
    args.iters = args.iters or 10
    args.warmup = 3 if args.warmup is None else args.warmup
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = setup(args)
    info = machine_info(device)
    rows = []
    for name in args.configs:
        rows += run_config(CONFIGS[name], args.precision, args, device)
    headers = [
        "config",
        "precision",
        "ours layout",
        "params ours / diffusers",
        "fwd GFLOP ours / diff.",
        "step ms ours / diff.",
        "img/s ours / diff.",
        "achieved ours / diff.",
        "img/s ratio [IQR]",
        "FLOP-rate ratio",
        "CPU-time ratio [IQR]",
        "ATen ops/step ours / diff.",
    ]
    if args.peak_tflops:
        headers.append(f"MFU ours / diff. (peak {args.peak_tflops:g} TFLOP/s)")
    configs = "; ".join(f"{n}: {CONFIGS[n].describe()}" for n in args.configs)
    body = "\n".join(
        [
            markdown_table(headers, rows),
            "",
            f"Configs: {configs}. Ratios are ours / diffusers (> 1: ours faster): median of "
            f"{args.iters} alternating rounds after {args.warmup} warm-up rounds, "
            "[interquartile range]. Step = forward + MSE + backward + fused AdamW; achieved "
            "rate = counted forward+backward FLOPs / median step time. bf16 = autocast for both. "
            "ATen ops = operator calls of one whole step (views and casts included): where the "
            "host, not the arithmetic, sets the pace (small networks on a GPU), fewer ops is "
            "what makes a step faster. Ours layout: nchw, or channels_last (weights and "
            "activations; on the CPU its GroupNorm+SiLU runs ddpm_teach.fused's kernel); "
            "diffusers runs NCHW, its fastest (torch's GroupNorm is slow on channels_last).",
        ]
    )
    report(args.doc, "train_step", argv, info, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
