"""GroupNorm and SiLU in one kernel, for channels_last tensors on the CPU.

Every ResBlock of the U-Net computes ``conv(SiLU(GroupNorm(x)))``. On the CPU, oneDNN runs a
convolution fastest with its activations stored channels_last (pixels major, channels minor): in
the usual NCHW layout it reorders every activation into its own blocked layout and back (9 of the
24 ms of a 64 x 32 x 28 x 28 bfloat16 convolution's forward and backward). But torch's GroupNorm
is 18-75x slower on channels_last input than on NCHW, which ate the whole gain (docs/benchmarks.md,
"What we tried on the U-Net"). This module supplies the missing piece: a C++ kernel
(``csrc/group_norm_silu.cpp``) for GroupNorm, optionally followed by SiLU, on channels_last
float32 or bfloat16 tensors, forward and backward, in two passes over the activations each way.

The math is exactly ``F.silu(F.group_norm(x, G, gamma, beta, eps))`` (Wu & He 2018): for each
sample and group of C/G channels, the mean and variance over the group's channels and pixels,
z = (x - mean) / sqrt(var + eps) * gamma + beta, then y = z * sigmoid(z). The tests check it
against that formula in float64.

The kernel is compiled on first use by ``torch.utils.cpp_extension`` (about 15-40 s once; the
build is cached under ``TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``). It
needs a C++ compiler with OpenMP (g++ on Linux and Colab); where there is none, or with
``DDPM_TEACH_FUSED=0`` in the environment, :func:`available` is False and
:func:`group_norm_silu` falls back to torch's ops, after one warning. Nothing here runs for NCHW
tensors or on a GPU, where torch's own kernels are the fast ones.
"""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Environment variable that turns the compiled kernel off ("0"); anything else leaves it on.
ENV_SWITCH = "DDPM_TEACH_FUSED"
SOURCE = Path(__file__).with_name("csrc") / "group_norm_silu.cpp"
# -ffast-math at compile time only (not when linking, so the process's float mode is untouched)
# lets g++ vectorise exp() over a pixel's channels; -fopenmp makes at::parallel_for parallel.
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
    with _lock:
        if "ok" not in _state:
            try:
                _build()
                _state["ok"] = True
            except Exception as e:  # no compiler, no ninja, a failed build: fall back, say why
                _state["ok"], _state["error"] = False, f"{type(e).__name__}: {e}"
                warnings.warn(
                    "ddpm_teach.fused: could not build the channels_last GroupNorm+SiLU kernel "
                    f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); using torch's "
                    "GroupNorm, which is slow on channels_last tensors",
                    RuntimeWarning,
                    stacklevel=3,
                )
    return bool(_state["ok"])


def unavailable_reason() -> str | None:
    """Why the last build attempt failed (None if it did not, or none was made)."""
    err = _state.get("error")
    return None if err is None else str(err)


def _build() -> None:
    from torch.utils import cpp_extension

    path = os.environ.get("PATH", "")
    try:  # the `ninja` wheel's binary, for a virtual environment that is not activated
        import ninja

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + path
    except ImportError:
        pass
    try:
        cpp_extension.load(
            "ddpm_teach_group_norm_silu",
            [str(SOURCE)],
            extra_cflags=CFLAGS,
            extra_ldflags=["-fopenmp"],
            is_python_module=False,  # registers torch.ops.ddpm_teach.* ; needs no Python headers
            verbose=False,
        )
    finally:
        os.environ["PATH"] = path
    torch.ops.ddpm_teach.group_norm_silu  # noqa: B018 (raises if the ops did not register)


class _GroupNormSiLU(torch.autograd.Function):
    """Autograd wrapper: the kernel's backward gives dx, dgamma and dbeta in one call."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, groups: int, eps: float, silu: bool):
        y, mean, rstd = torch.ops.ddpm_teach.group_norm_silu(x, weight, bias, groups, eps, silu)
        ctx.save_for_backward(x, mean, rstd, weight, bias)
        ctx.groups, ctx.silu = groups, silu
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, mean, rstd, weight, bias = ctx.saved_tensors
        dx, dw, db = torch.ops.ddpm_teach.group_norm_silu_backward(
            dy, x, mean, rstd, weight, bias, ctx.groups, ctx.silu
        )
        return dx, dw.to(weight.dtype), db.to(bias.dtype), None, None, None


def uses_kernel(x: Tensor) -> bool:
    """Whether :func:`group_norm_silu` runs the compiled kernel for ``x``: a CPU float32 or
    bfloat16 (N, C, H, W) tensor stored channels_last (and not inside ``torch.compile``)."""
    return (
        x.device.type == "cpu"
        and x.dim() == 4
        and x.dtype in (torch.float32, torch.bfloat16)
        and x.is_contiguous(memory_format=torch.channels_last)
        and not x.is_contiguous()  # NCHW (or both, e.g. 1 x 1 pixels): torch's kernel is fine
        and not torch.compiler.is_compiling()
        and available()
    )


def group_norm_silu(norm: nn.GroupNorm, x: Tensor, silu: bool = True) -> Tensor:
    """``F.silu(norm(x))`` (or ``norm(x)`` with ``silu=False``), one fused kernel where it pays.

    Args:
        norm: the GroupNorm whose groups, eps, weight and bias are used (affine).
        x: (N, C, H, W) activations.
        silu: apply SiLU after the normalisation.

    Returns:
        A tensor like ``x``, in its memory format. The compiled kernel runs where
        :func:`uses_kernel` says so; everywhere else, torch's GroupNorm and SiLU.
    """
    if norm.affine and uses_kernel(x):
        return _GroupNormSiLU.apply(x, norm.weight, norm.bias, norm.num_groups, norm.eps, silu)
    h = norm(x)
    return F.silu(h) if silu else h
