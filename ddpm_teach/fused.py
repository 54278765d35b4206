"""GroupNorm and SiLU in one kernel, for channels_last tensors on the CPU.

Every ResBlock of the U-Net computes ``conv(SiLU(GroupNorm(x)))``. On the CPU, oneDNN runs a
convolution fastest with its activations stored channels_last (pixels major, channels minor): in
the usual NCHW layout it reorders every activation into its own blocked layout and back (9 of the
24 ms of a 64 x 32 x 28 x 28 bfloat16 convolution's forward and backward). But torch's GroupNorm
is 18-75x slower on channels_last input than on NCHW, which ate the whole gain (docs/benchmarks.md,
"What we tried on the U-Net"). This module supplies the missing piece: a C++ kernel
(``csrc/group_norm_silu.cpp``) for GroupNorm, optionally followed by SiLU, on channels_last
float32 or bfloat16 tensors, forward and backward, in two passes over the activations each way.
With it, channels_last makes the ``cpu`` budget's training 1.03-1.17x faster on a 2-core EPYC
and 1.45x on a 2-core Xeon with AMX, its sampling 1.4x (two threads), and the digits U-Net of
``bench.train_step`` 1.3-1.7x diffusers' in bfloat16 (docs/benchmarks.md).

The math is exactly ``F.silu(F.group_norm(x, G, gamma, beta, eps))`` (Wu & He 2018): for each
sample and group of C/G channels, the mean and variance over the group's channels and pixels,
z = (x - mean) / sqrt(var + eps) * gamma + beta, then y = z * sigmoid(z). The tests check it
against that formula in float64.

The kernel is compiled on first use by ``torch.utils.cpp_extension`` (15-25 s once, for this
CPU: ``-march=native``; the build is cached under ``TORCH_EXTENSIONS_DIR``, by default
``~/.cache/torch_extensions``). It needs a C++ compiler with OpenMP (g++ on Linux and Colab;
tested with g++ 12, and with clang 14 given its OpenMP headers, ``libomp-dev`` on Debian, through
``CXX=clang++``: without them clang stops at a missing ``omp.h``). Where the build fails (one
warning says why) or ``DDPM_TEACH_FUSED=0`` is set, :func:`available` is False and
:func:`group_norm_silu` falls back to torch's ops. Nothing here runs for NCHW
tensors or on a GPU, where torch's own kernels are the fast ones.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import threading
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Environment variable that turns the compiled kernel off ("0"); anything else leaves it on.
ENV_SWITCH = "DDPM_TEACH_FUSED"
SOURCE = Path(__file__).with_name("csrc") / "group_norm_silu.cpp"
# -ffast-math at compile time only (not when linking, so the process's float mode is untouched)
# lets g++ vectorise the channel loops (their sums, rounding, divisions); -fopenmp makes
# at::parallel_for parallel.
CFLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp"]

_lock = threading.Lock()
_state: dict[str, object] = {}  # "ok": bool once tried; "error": why not


def available() -> bool:
    """Whether the compiled kernel can be used, building and loading it on the first call.

    False when ``DDPM_TEACH_FUSED=0`` or when the build fails (the reason is warned once and kept
    in :func:`unavailable_reason`).
    """
    if os.environ.get(ENV_SWITCH, "1").strip() == "0":
        return False
    if "ok" in _state:  # decided: every GroupNorm call asks, so no lock once it is
        return bool(_state["ok"])
    with _lock:
        if "ok" not in _state:
            try:
                _build()
                _state["ok"] = True
            except Exception as e:  # no compiler, no ninja, a failed build: fall back, say why
                _state["ok"], _state["error"] = False, _gist(e)
                _state["error_detail"] = f"{type(e).__name__}: {e}"  # the whole build log
                warnings.warn(
                    "ddpm_teach.fused: could not build the channels_last GroupNorm+SiLU kernel "
                    f"({_state['error']}); using torch's GroupNorm, which is slow on "
                    "channels_last tensors",
                    RuntimeWarning,
                    stacklevel=3,
                )
    return bool(_state["ok"])


def _gist(err: Exception) -> str:
    """The line of a build error that says what went wrong (the compiler's 'error:' or the
    shell's 'not found'), not the command lines ninja prints before it."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for marker in ("error:", "not found", "No such file"):
        for line in lines:
            if marker in line:
                return line[:300]
    return lines[0][:300] if lines else type(err).__name__


def unavailable_reason() -> str | None:
    """Why the last build attempt failed, in one line (None if it did not, or none was made);
    the whole build log is in ``_state["error_detail"]``."""
    err = _state.get("error")
    return None if err is None else str(err)


def _build_tag() -> str:
    """A short hash of this CPU's instruction-set flags and the torch and Python versions: the
    build is for this CPU only (-march=native) and this torch's headers, so a home directory
    shared by different machines or environments must not share it."""
    key = f"{platform.machine()} {platform.processor()} {torch.__version__} {platform.python_version()}"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):  # x86, arm
                key += line
                break
    return hashlib.sha1(key.encode()).hexdigest()[:10]


#: A build lock older than this was left by a killed process (a build takes well under a minute).
STALE_LOCK_SECONDS = 600


def _build() -> None:
    from torch.utils import cpp_extension

    name = f"ddpm_teach_group_norm_silu_{_build_tag()}"
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()
    build_dir = Path(root) / name
    build_dir.mkdir(parents=True, exist_ok=True)
    # torch serialises builds with a lock file and waits, without end, while it exists; a process
    # killed mid-build (a notebook kernel restarted) leaves it behind, so clear an old one.
    lock = build_dir / "lock"
    with contextlib.suppress(OSError):
        if time.time() - lock.stat().st_mtime > STALE_LOCK_SECONDS:
            lock.unlink()
    path = os.environ.get("PATH")
    try:  # the `ninja` wheel's binary, for a virtual environment that is not activated
        import ninja

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + (path or "")
    except ImportError:
        pass
    try:
        cpp_extension.load(
            name,
            [str(SOURCE)],
            extra_cflags=CFLAGS,
            extra_ldflags=["-fopenmp"],
            build_directory=str(build_dir),
            is_python_module=False,  # registers torch.ops.ddpm_teach.* ; needs no Python headers
            verbose=False,
        )
    finally:
        if path is None:
            os.environ.pop("PATH", None)
        else:
            os.environ["PATH"] = path
    torch.ops.ddpm_teach.group_norm_silu  # noqa: B018 (raises if the ops did not register)


# torch.compile traces through group_norm_silu; the opaque op would break its graph, so under
# compile it takes torch's ops. torch.compiler.is_compiling is torch >= 2.3.
_is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None) or (
    lambda: bool(getattr(torch, "_dynamo", None) and torch._dynamo.is_compiling())
)


def is_channels_last(x: Tensor) -> bool:
    """Whether ``x`` is an (N, C, H, W) tensor stored channels_last and not also NCHW (a tensor
    of 1 x 1 pixels, or of one channel, is both, and NCHW code handles it as it is)."""
    return (
        x.dim() == 4
        and x.is_contiguous(memory_format=torch.channels_last)
        and not x.is_contiguous()
    )


def uses_kernel(x: Tensor) -> bool:
    """Whether :func:`group_norm_silu` runs the compiled kernel for ``x``: a CPU float32 or
    bfloat16 (N, C, H, W) tensor stored channels_last (and not inside ``torch.compile``)."""
    return (
        x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.bfloat16)
        and is_channels_last(x)  # NCHW (or both, e.g. 1 x 1 pixels): torch's kernel is fine
        and not _is_compiling()
        and available()
    )


def group_norm_silu(
    norm: nn.GroupNorm, x: Tensor, silu: bool = True, shift: Tensor | None = None
) -> Tensor:
    """``F.silu(norm(x + shift))`` (or without the SiLU), one fused kernel where it pays.

    Args:
        norm: the GroupNorm whose groups, eps, weight and bias are used (affine).
        x: (N, C, H, W) activations.
        silu: apply SiLU after the normalisation.
        shift: None, or (N, C): a value per sample and channel added to every pixel before the
            normalisation (the ResBlock's time embedding). The kernel adds it on the fly: on
            channels_last bfloat16 tensors torch's broadcast add is 15x slower than on NCHW
            (1.8 against 0.13 ms at 64 x 16 x 28 x 28), and fused it costs no pass of its own.

    Returns:
        A tensor like ``x``, in its memory format; ``x`` itself is left as it is. The compiled
        kernel runs where :func:`uses_kernel` says so; everywhere else, torch's ops (for a
        channels_last CPU tensor, on an NCHW copy).
    """
    if shift is not None and (shift.dim() != 2 or tuple(shift.shape) != tuple(x.shape[:2])):
        raise ValueError(
            f"shift: expected (N, C) = {tuple(x.shape[:2])}, one value per sample and channel, "
            f"got {tuple(shift.shape)}"
        )
    if norm.affine and uses_kernel(x):
        # One autograd node (written in C++ with the kernel): its backward gives dx, dgamma,
        # dbeta and dshift in one call, and refuses a second derivative.
        return torch.ops.ddpm_teach.group_norm_silu_autograd(
            x, norm.weight, norm.bias, norm.num_groups, norm.eps, silu, shift
        )
    if shift is not None:
        x = x + shift.to(x.dtype)[:, :, None, None]  # keep x's dtype
    # torch's CPU GroupNorm on channels_last input is 18-75x slower than on NCHW, and its backward
    # crashes (torch 2.13) when x needs no gradient: normalise an NCHW copy, then copy back.
    cl = x.device.type == "cpu" and is_channels_last(x)
    h = norm(x.contiguous() if cl else x)
    h = F.silu(h) if silu else h
    return h.contiguous(memory_format=torch.channels_last) if cl else h
