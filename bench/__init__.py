"""Benchmarks for ddpm-teach, side by side with Hugging Face diffusers (issue 7).

Each script runs as ``python -m bench.NAME``, prints a table and appends a dated section (machine,
versions, load, the exact command) to ``docs/benchmarks.md``:

    train_step       U-Net training step, ours vs diffusers.UNet2DModel at matched size
    sampling         DDPM / DDIM loops, ours vs diffusers' schedulers, same network
    sampling_batch   sampling on the CPU against the number of images per network call
    trainer_speed    the budgets' whole training step under several settings (bf16, compile, ...)
    time_to_quality  seconds of training until eight-Gaussians / glyph digits look right
    course_time      wall time of the notebooks and of the whole test suite

Every script takes ``--tiny`` (a few iterations at toy sizes, for the CI smoke test), ``--device
cpu|cuda`` and ``--doc PATH`` (where to append; ``--doc -`` appends nothing). Timings alternate the
two contenders (A B A B ...) in one process and report medians and per-pair ratios, which stay
meaningful on a shared, noisy machine.
"""
