"""Draw samples from a checkpoint: ``python -m ddpm_teach.sample --checkpoint runs/g/last.pt``.

Loads the EMA weights (``--raw`` for the trained ones) on the CPU or a GPU, runs the reverse chain
(on a CPU with native bf16, under bf16 autocast when the run's config trains under it, as the
cpu budget's does; ``--fp32`` for float32 throughout) and writes a PNG: an image grid, or a
scatter plot for a 2-D toy model. ``--gif`` also writes the reverse trajectory, x_T to x_0, as an
animation. ``--report`` also judges the samples with
``ddpm_teach.metrics``: the digit probe's report (confident share, class coverage, digit-FID with
its floor) for a 28 x 28 digits model, the toy report (mode coverage, MMD with floors) for a 2-D one.

Samplers:
    ddpm   ancestral sampling (Algorithm 2). With ``--steps`` below T it runs on an evenly spaced
           subsequence of the steps, as DDIM with eta = 1, which is exactly ancestral sampling of
           the respaced chain (Song et al. 2021, section 4.1).
    ddim   DDIM over ``--steps`` steps with ``--eta`` (default 0: deterministic).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from . import fused
from .sampling import Trajectory, ddim_sample, ddpm_sample
from .training import BF16Sampling, load_checkpoint, sampling_net, save_preview

_GIF_FRAMES = 50  # about this many frames, whatever the number of steps
# The digit sets the probe of --report was made for (it also judges the 2-D sets).
_PROBE_DATA = ("glyph-digits", "mnist")


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    p = argparse.ArgumentParser(
        prog="python -m ddpm_teach.sample", description="Sample from a trained DDPM checkpoint."
    )
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by ddpm_teach.train")
    p.add_argument("--sampler", choices=("ddpm", "ddim"), default="ddpm", help="default ddpm")
    p.add_argument(
        "--steps", type=int, help="sampling steps (default: T for ddpm, 50 or T if less for ddim)"
    )
    p.add_argument("--eta", type=float, help="DDIM noise, 0..1 (default 0; ddim only)")
    p.add_argument("--n", type=int, help="samples (default 64 images or 2000 points)")
    p.add_argument("--out", required=True, help="the PNG to write")
    p.add_argument("--gif", help="also write the reverse trajectory as this GIF")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise (default 0)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--raw", action="store_true", help="the trained weights instead of the EMA")
    p.add_argument(
        "--fp32",
        action="store_true",
        help="float32 throughout (by default a run configured for bf16 autocast samples under "
        "it on a CPU with native bf16: for the cpu budget's DDIM-100 1.6x faster with the same "
        "scores)",
    )
    p.add_argument(
        "--report",
        action="store_true",
        help="judge the samples: digit probe (glyph-digits, mnist) or toy report (2-D data)",
    )
    return p


def _report_refusal(data: str) -> str | None:
    """Why --report cannot judge samples of ``data``, or None when it can."""
    from .data import TOY_DATASETS  # here: matplotlib's fonts are slow to import

    if data in TOY_DATASETS or data in _PROBE_DATA:
        return None
    return f"--report: no offline metric for {data!r}; it judges {(*TOY_DATASETS, *_PROBE_DATA)}"


def report(samples: torch.Tensor, data: str) -> str:
    """The metrics module's verdict on ``samples`` of a model trained on ``data``, as text.

    Raises:
        ValueError: for a data set it cannot judge (the probe knows 28 x 28 digits only).
    """
    from . import metrics

    refusal = _report_refusal(data)
    if refusal:
        raise ValueError(refusal)
    if data in _PROBE_DATA:
        return metrics.digit_report(samples.cpu().clamp(-1, 1)).summary()
    return metrics.toy_report(samples.cpu(), data).summary()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not Path(args.checkpoint).is_file():
        parser.error(f"--checkpoint: no file at {args.checkpoint}")
    if args.eta is not None and args.sampler != "ddim":
        parser.error("--eta: only for --sampler ddim (DDPM's ancestral steps are eta = 1)")
    eta = 0.0 if args.eta is None else args.eta
    if not 0.0 <= eta <= 1.0:  # NaN fails too
        parser.error(f"--eta: expected a number in 0..1 (0 = deterministic), got {args.eta}")
    # Checked before anything is sampled: a bad file name would otherwise fail at the end.
    from PIL import Image

    if Path(args.out).suffix.lower() not in Image.registered_extensions():
        parser.error(f"--out: expected an image file name such as samples.png, got {args.out}")
    if args.gif and Path(args.gif).suffix.lower() != ".gif":
        parser.error(f"--gif: expected a file name ending in .gif, got {args.gif}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device_type = torch.device(device).type
    except RuntimeError:
        parser.error(f"--device: expected cpu, cuda or cuda:N, got {device!r}")
    if device_type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device: {device} asked for, but CUDA is not available here")
    model, ema, schedule, config = load_checkpoint(args.checkpoint, map_location=device)
    net = model if args.raw else ema
    # mmap: read only the entry needed, not the weights a second time.
    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=True, mmap=True)
    data_shape = ckpt["data_shape"]
    is_image = len(data_shape) == 3
    # A run trained channels_last samples in that layout on the CPU, where ddpm_teach.fused's
    # GroupNorm kernel makes it pay (torch's own is slow on that layout; GPUs: unmeasured).
    if is_image and config.channels_last and device_type == "cpu" and fused.available():
        net = net.to(memory_format=torch.channels_last)
    n = args.n if args.n is not None else (64 if is_image else 2000)
    T = schedule.num_steps
    steps = args.steps if args.steps is not None else (T if args.sampler == "ddpm" else min(50, T))
    if n < 1:
        parser.error(f"--n: expected a positive number of samples, got {n}")
    if not 1 <= steps <= T:
        parser.error(f"--steps: expected 1..{T} (the model's T), got {steps}")
    refusal = _report_refusal(config.data) if args.report else None
    if refusal:  # refuse before sampling, not after
        parser.error(refusal)

    # A run configured for bf16 autocast samples under it on a CPU that computes bf16 natively,
    # as the trainer decides for training (1.6x faster for the cpu budget's U-Net, the same
    # scores; GPUs: unmeasured, float32); on a CPU a large n goes through the network in chunks.
    bf16 = not args.fp32 and BF16Sampling.applies(config.bf16, device)
    net = sampling_net(net, (n, *data_shape), device, bf16=bf16)
    generator = torch.Generator(device).manual_seed(args.seed)
    common = dict(
        generator=generator,
        prediction=config.prediction,
        clip_x0=is_image,
        return_trajectory=bool(args.gif),
        trajectory_stride=max(1, steps // _GIF_FRAMES),
        device=device,
    )
    start = time.perf_counter()
    if args.sampler == "ddpm" and steps == T:
        result = ddpm_sample(net, schedule, (n, *data_shape), **common)
    else:
        eta = 1.0 if args.sampler == "ddpm" else eta
        result = ddim_sample(net, schedule, (n, *data_shape), num_steps=steps, eta=eta, **common)
    seconds = time.perf_counter() - start
    samples = (result.sample if isinstance(result, Trajectory) else result).cpu()
    save_preview(samples, args.out)
    precision = "bf16 autocast" if bf16 else "float32"
    print(
        f"wrote {args.out}: {n} samples, {args.sampler} with {steps} steps, {seconds:.1f} s "
        f"({precision})"
    )
    if args.report:
        print(report(samples, config.data))
    if args.gif:
        from .viz import save_gif

        ts = result.timesteps  # -1 at the end: viz captions it as the sample x_0
        lim = 3.0 if not is_image else None
        save_gif(list(result.xs), ts, args.gif, schedule=schedule, lim=lim)
        print(f"wrote {args.gif}: {len(ts)} frames of the reverse trajectory")
    return 0


if __name__ == "__main__":
    sys.exit(main())
