"""The compiled channels_last GroupNorm+SiLU kernel (ddpm_teach.fused) against torch's ops."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ddpm_teach import fused
from ddpm_teach.unet import UNet

CL = torch.channels_last

needs_kernel = pytest.mark.skipif(
    not fused.available(), reason=f"kernel not built: {fused.unavailable_reason()}"
)


def _reference(x, norm, silu):
    """The formula in float64: F.group_norm then F.silu."""
    h = F.group_norm(
        x.double(), norm.num_groups, norm.weight.double(), norm.bias.double(), norm.eps
    )
    return F.silu(h) if silu else h


def _case(n, c, size, groups, seed=0):
    g = torch.Generator().manual_seed(seed)
    # A mean far from 0 next to a small spread: the variance must not cancel.
    x = torch.randn(n, c, size, size, generator=g) * 0.5 + 20.0 * torch.randn(
        1, c, 1, 1, generator=g
    )
    norm = nn.GroupNorm(groups, c)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(c, generator=g))
        norm.bias.copy_(torch.randn(c, generator=g))
    dy = torch.randn(n, c, size, size, generator=g)
    return x, norm, dy


@needs_kernel
@pytest.mark.parametrize("shift", [False, True], ids=["", "shift"])
@pytest.mark.parametrize("silu", [True, False])
@pytest.mark.parametrize(
    ("dtype", "tol"), [(torch.float32, 2e-5), (torch.bfloat16, 2e-2)], ids=["fp32", "bf16"]
)
@pytest.mark.parametrize(
    ("n", "c", "size", "groups"), [(3, 32, 7, 32), (2, 64, 5, 32), (2, 12, 6, 3)]
)
def test_kernel_matches_group_norm_then_silu(n, c, size, groups, dtype, tol, silu, shift):
    x, norm, dy = _case(n, c, size, groups)
    xk = x.to(dtype).contiguous(memory_format=CL).requires_grad_()
    # A shift per sample and channel, as large as the channel means: it moves the statistics.
    s = (10.0 * torch.randn(n, c, generator=torch.Generator().manual_seed(1))).to(dtype)
    s = s.requires_grad_() if shift else None
    assert fused.uses_kernel(xk)
    y = fused.group_norm_silu(norm, xk, silu=silu, shift=s)
    y.backward(dy.to(dtype).contiguous(memory_format=CL))
    assert y.dtype == dtype and y.is_contiguous(memory_format=CL)
    assert xk.grad.dtype == dtype and xk.grad.is_contiguous(memory_format=CL)
    got = {"y": y, "dx": xk.grad, "dgamma": norm.weight.grad, "dbeta": norm.bias.grad}

    xr = xk.detach().double().requires_grad_()  # the same (rounded) input, in float64
    ref_norm = nn.GroupNorm(groups, c, eps=norm.eps).double()
    ref_norm.load_state_dict(norm.state_dict())
    if shift:
        sr = s.detach().double().requires_grad_()
        yr = _reference(xr + sr[:, :, None, None], ref_norm, silu)
    else:
        yr = _reference(xr, ref_norm, silu)
    yr.backward(dy.to(dtype).double())
    want = {"y": yr, "dx": xr.grad, "dgamma": ref_norm.weight.grad, "dbeta": ref_norm.bias.grad}
    scale = {key: ref.abs().max() for key, ref in want.items()}
    if shift:
        assert s.grad.dtype == dtype and s.grad.shape == (n, c)
        got["dshift"], want["dshift"] = s.grad, sr.grad
        # dshift sums dx over the pixels; with one channel per group it is 0 (the norm removes a
        # per-channel shift), so there its error is measured against the size of one dx.
        scale["dshift"] = max(sr.grad.abs().max(), xr.grad.abs().max())
    for key, ref in want.items():
        err = (got[key].double() - ref).abs().max() / scale[key]
        assert err < tol, f"{key}: relative error {err:.2e} (tolerance {tol})"


@needs_kernel
def test_kernel_is_not_used_where_torch_is_fast():
    norm = nn.GroupNorm(4, 8)
    x = torch.randn(2, 8, 5, 5)
    assert not fused.uses_kernel(x)  # NCHW
    assert not fused.uses_kernel(x.double().contiguous(memory_format=CL))  # float64
    assert not fused.uses_kernel(
        x[:, :, :1, :1].contiguous(memory_format=CL)
    )  # 1 x 1: both layouts
    assert fused.uses_kernel(x.contiguous(memory_format=CL))
    # Outside the kernel the result is torch's, to the bit.
    torch.testing.assert_close(fused.group_norm_silu(norm, x), F.silu(norm(x)), rtol=0, atol=0)


@needs_kernel
def test_kernel_refuses_bad_input_by_name():
    x = torch.randn(2, 8, 5, 5).contiguous(memory_format=CL)
    with pytest.raises(RuntimeError, match=r"groups \(3\) must divide the 8 channels"):
        torch.ops.ddpm_teach.group_norm_silu(x, torch.ones(8), torch.zeros(8), 3, 1e-5, True)
    with pytest.raises(RuntimeError, match="must be channels_last"):
        torch.ops.ddpm_teach.group_norm_silu(
            torch.randn(2, 8, 5, 5), torch.ones(8), torch.zeros(8), 4, 1e-5, True
        )


@needs_kernel
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-autocast"])
def test_channels_last_unet_matches_nchw_through_the_kernel(bf16):
    """The whole U-Net, forward and backward: channels_last (the kernel) against NCHW (torch)."""
    kwargs = dict(base_channels=16, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(1,))
    torch.manual_seed(0)
    model = UNet(1, dropout=0.0, **kwargs)
    with torch.no_grad():  # leave the zero-initialised convs' start: a real signal everywhere
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model_cl = UNet(1, dropout=0.0, **kwargs)
    model_cl.load_state_dict(model.state_dict())
    model_cl = model_cl.to(memory_format=CL)
    x, t = torch.randn(4, 1, 12, 12), torch.tensor([0, 10, 500, 999])
    outs, grads, calls = [], [], []
    for m, xin in ((model, x), (model_cl, x.contiguous(memory_format=CL))):
        with torch.profiler.profile() as prof:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = m(xin, t)
            out.float().square().mean().backward()
        outs.append(out.float())
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
        names = [e.name for e in prof.events()]
        calls.append([names.count(f"ddpm_teach::group_norm_silu{s}") for s in ("", "_backward")])
    # NCHW never reaches the kernel; channels_last runs every GroupNorm of the network through
    # it, once forward and once backward.
    assert calls[0] == [0, 0]
    assert calls[1] == [sum(isinstance(m, nn.GroupNorm) for m in model.modules())] * 2
    tol = 3e-2 if bf16 else 1e-4
    assert (outs[0] - outs[1]).abs().max() < tol * outs[0].abs().max()
    assert (grads[0] - grads[1]).abs().max() < tol * grads[0].abs().max()


@needs_kernel
def test_shift_of_the_wrong_shape_is_refused_by_name():
    norm = nn.GroupNorm(4, 8)
    x = torch.randn(2, 8, 5, 5)
    for xin in (x, x.contiguous(memory_format=CL)):  # torch's path and the kernel's
        for bad in (torch.randn(2, 4), torch.randn(8), torch.randn(2, 8, 1, 1)):
            with pytest.raises(ValueError, match=r"shift: expected \(N, C\) = \(2, 8\)"):
                fused.group_norm_silu(norm, xin, shift=bad)
    with pytest.raises(RuntimeError, match=r"shift must be \(N, C\)"):
        torch.ops.ddpm_teach.group_norm_silu(
            x.contiguous(memory_format=CL), norm.weight, norm.bias, 4, 1e-5, True, torch.ones(3, 8)
        )


def test_shift_outside_the_kernel_is_added_before_the_norm_and_x_is_left_alone():
    norm = nn.GroupNorm(4, 8)
    x, s = torch.randn(2, 8, 5, 5), torch.randn(2, 8, requires_grad=True)
    before = x.clone()
    got = fused.group_norm_silu(norm, x, shift=s)
    torch.testing.assert_close(got, F.silu(norm(x + s[:, :, None, None])), rtol=0, atol=0)
    torch.testing.assert_close(x, before, rtol=0, atol=0)
    (ds,) = torch.autograd.grad(got.sum(), s)
    s_ref = s.detach().requires_grad_()
    (ds_ref,) = torch.autograd.grad(F.silu(norm(x + s_ref[:, :, None, None])).sum(), s_ref)
    torch.testing.assert_close(ds, ds_ref)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_the_result_keeps_x_dtype_whatever_the_shift_dtype(layout):
    norm = nn.GroupNorm(4, 8)
    x = torch.randn(2, 8, 5, 5, dtype=torch.bfloat16)
    if layout == "channels_last":
        x = x.contiguous(memory_format=CL)
    s = torch.randn(2, 8)  # float32 beside bfloat16 activations
    got = fused.group_norm_silu(norm.to(torch.bfloat16) if layout == "nchw" else norm, x, shift=s)
    assert got.dtype == torch.bfloat16


def test_falls_back_to_torch_when_switched_off(monkeypatch):
    monkeypatch.setenv(fused.ENV_SWITCH, "0")
    assert not fused.available()
    norm = nn.GroupNorm(4, 8)
    x = torch.randn(2, 8, 5, 5).contiguous(memory_format=CL)
    assert not fused.uses_kernel(x)
    y = fused.group_norm_silu(norm, x)
    torch.testing.assert_close(y, F.silu(norm(x.contiguous())), rtol=0, atol=0)
    assert y.is_contiguous(memory_format=CL)  # x's layout, though computed on an NCHW copy


def test_fallback_backward_on_channels_last_input_without_grad():
    # torch 2.13's own GroupNorm backward crashes (SIGSEGV) on a channels_last CPU input that
    # needs no gradient; the fallback normalises an NCHW copy. In a subprocess, so that a crash
    # fails this test instead of killing the test run.
    code = (
        "import torch\n"
        "from ddpm_teach import fused\n"
        "norm = torch.nn.GroupNorm(4, 8)\n"
        "x = torch.randn(2, 8, 3, 3).contiguous(memory_format=torch.channels_last)\n"
        "fused.group_norm_silu(norm, x).sum().backward()\n"
        "assert norm.weight.grad is not None\n"
    )
    env = {**os.environ, fused.ENV_SWITCH: "0"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_failed_build_warns_once_and_falls_back(monkeypatch):
    monkeypatch.delenv(fused.ENV_SWITCH, raising=False)
    monkeypatch.setattr(fused, "_state", {})

    def broken() -> None:
        raise RuntimeError("Error building extension: no compiler\nmore lines")

    monkeypatch.setattr(fused, "_build", broken)
    with pytest.warns(RuntimeWarning, match=r"could not build .* no compiler"):
        assert not fused.available()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call neither rebuilds nor warns
        assert not fused.available()
    assert "no compiler" in fused.unavailable_reason()
    norm = nn.GroupNorm(2, 4)
    x = torch.randn(1, 4, 3, 3).contiguous(memory_format=CL)
    torch.testing.assert_close(fused.group_norm_silu(norm, x), F.silu(norm(x)))


def test_kernel_source_ships_with_the_package():
    import fnmatch
    from pathlib import Path

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    root = Path(fused.__file__).parent
    pyproject = tomllib.loads((root.parent / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["ddpm_teach"]
    relative = fused.SOURCE.relative_to(root).as_posix()
    assert fused.SOURCE.is_file()
    assert any(fnmatch.fnmatch(relative, g) for g in globs), (relative, globs)


@pytest.mark.parametrize(("age", "removed"), [(3600, True), (5, False)])
def test_a_stale_build_lock_is_cleared_before_building(tmp_path, monkeypatch, age, removed):
    """torch waits forever on a build lock; one left by a killed process must not hang us."""
    import os
    import time

    from torch.utils import cpp_extension

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    lock = tmp_path / f"ddpm_teach_group_norm_silu_{fused._build_tag()}" / "lock"
    lock.parent.mkdir()
    lock.touch()
    os.utime(lock, (time.time() - age,) * 2)
    seen = {}

    def fake_load(name, sources, build_directory, **kwargs):
        seen["lock"] = lock.exists()
        seen["dir"] = build_directory
        raise RuntimeError("stop here")

    monkeypatch.setattr(cpp_extension, "load", fake_load)
    with pytest.raises(RuntimeError, match="stop here"):
        fused._build()
    assert seen == {"lock": not removed, "dir": str(lock.parent)}


def test_the_kernel_is_built_where_ci_requires_it():
    """.ci/run sets DDPM_TEACH_REQUIRE_FUSED=1: there a failed build must fail, not skip, the
    kernel's tests."""
    import os

    if os.environ.get("DDPM_TEACH_REQUIRE_FUSED") != "1":
        pytest.skip("DDPM_TEACH_REQUIRE_FUSED is not set")
    assert fused.available(), fused.unavailable_reason()


@needs_kernel
def test_far_negative_inputs_give_zero_not_nan():
    # sigmoid(z) for z < -88: exp(-z) overflows; the kernel must still give silu(z) = -0.
    norm = nn.GroupNorm(1, 32)
    with torch.no_grad():
        norm.bias.fill_(-100.0)
    x = torch.randn(2, 32, 4, 4).contiguous(memory_format=CL).requires_grad_()
    y = fused.group_norm_silu(norm, x)
    y.sum().backward()
    for t in (y, x.grad, norm.weight.grad, norm.bias.grad):
        assert torch.isfinite(t).all()
    assert y.abs().max() < 1e-30


@needs_kernel
def test_silu_is_accurate_across_the_range_of_its_exp():
    # The kernel computes exp with its own polynomial. Its z (the normalised x, returned as is
    # with silu=False) is rounded to float32 like any other; silu of that very z, from z = -75
    # to 75 (sigmoid from 3e-33 to 1; exp's argument is capped at 80), must match float64
    # element by element to float32's precision. Measured: 3.3e-7 at most; without its f^5
    # term the polynomial is off by 5.9e-5.
    norm = nn.GroupNorm(1, 16)
    with torch.no_grad():
        norm.weight.fill_(75.0 / 3**0.5)  # x uniform in [-1, 1] has std 1/sqrt(3)
    x = torch.linspace(-1, 1, 16 * 32 * 32).reshape(1, 16, 32, 32)
    x = x.contiguous(memory_format=CL).requires_grad_()
    z = fused.group_norm_silu(norm, x.detach(), silu=False).double()
    y = fused.group_norm_silu(norm, x)
    assert z.min() < -74 and z.max() > 74
    want = F.silu(z)
    err = ((y.double() - want).abs() / want.abs().clamp_min(1e-300)).max()
    assert err < 2e-6, f"y: relative error {err:.2e}"
    # The backward's silu'(z), through the whole GroupNorm backward, against float64.
    y.backward(torch.ones_like(x))
    xr = x.detach().double().requires_grad_()
    F.silu(F.group_norm(xr, 1, norm.weight.double(), norm.bias.double(), norm.eps)).sum().backward()
    err = ((x.grad.double() - xr.grad).abs() / xr.grad.abs().max()).max()
    assert err < 2e-5, f"dx: relative error {err:.2e}"


@needs_kernel
def test_eps_counts_when_the_variance_is_tiny():
    # A spread of 1e-3 (variance 1e-6) next to eps = 1e-5: eps sets most of the scale.
    x, norm, _ = _case(2, 16, 5, 4)
    x = (x - x.mean()) * 1e-3
    for eps in (1e-5, 1e-3):
        norm.eps = eps
        got = fused.group_norm_silu(norm, x.contiguous(memory_format=CL))
        want = _reference(x, norm, silu=True)
        assert (got.double() - want).abs().max() < 1e-5 * want.abs().max()


@needs_kernel
def test_bfloat16_output_is_rounded_to_nearest():
    x, norm, _ = _case(4, 32, 8, 8)
    xb = x.to(torch.bfloat16)
    got = fused.group_norm_silu(norm, xb.contiguous(memory_format=CL))
    want = _reference(xb.double(), norm, silu=True).to(torch.bfloat16)
    # float32 arithmetic, then one rounding: equal to the float64 result's rounding almost
    # everywhere (truncating instead would miss about half).
    assert (got == want).double().mean() > 0.98


@needs_kernel
def test_backward_takes_any_layout_and_dtype_of_dy_and_refuses_double_backward():
    x, norm, dy = _case(2, 16, 6, 4)
    xk = x.to(torch.bfloat16).contiguous(memory_format=CL).requires_grad_()
    y = fused.group_norm_silu(norm, xk)
    (grad_nchw,) = torch.autograd.grad(y, xk, dy, retain_graph=True)  # float32, NCHW
    (grad_cl,) = torch.autograd.grad(
        y, xk, dy.to(torch.bfloat16).contiguous(memory_format=CL), retain_graph=True
    )
    torch.testing.assert_close(grad_nchw, grad_cl)
    # A second derivative would silently miss the kernel's part: refused with a reason.
    with pytest.raises(RuntimeError, match="the fused kernel has no second derivative"):
        torch.autograd.grad(y.square().sum(), xk, create_graph=True)
    with torch.inference_mode():  # no autograd at all: the op still runs
        torch.testing.assert_close(fused.group_norm_silu(norm, xk), y.detach())


def test_a_build_failure_is_summed_up_by_its_cause_not_the_command_line():
    log = (
        "Error building extension 'ddpm_teach_group_norm_silu_x': [1/2] c++ -MMD -O3 -c a.cpp\n"
        "FAILED: [code=1] group_norm_silu.o\n"
        "c++ -MMD -MF group_norm_silu.o.d -O3 -march=native -c a.cpp -o group_norm_silu.o\n"
        "{}\n"
        "ninja: build stopped: subcommand failed.\n"
    )
    no_compiler = RuntimeError(log.format("/bin/sh: 1: c++: not found"))
    assert fused._gist(no_compiler) == "/bin/sh: 1: c++: not found"
    bad_code = RuntimeError(log.format("a.cpp:3:1: error: expected ';' before '}' token"))
    assert fused._gist(bad_code) == "a.cpp:3:1: error: expected ';' before '}' token"
