"""Tests for ddpm_teach.unet: shapes, gradients, time conditioning, validation, feature maps."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from ddpm_teach.unet import AttentionBlock, UNet, Upsample, timestep_embedding

torch.set_num_threads(1)

TINY = dict(base_channels=16, num_res_blocks=1)


def perturb_zero_params(model: torch.nn.Module, seed: int = 0, std: float = 0.05) -> None:
    """Give the zero-initialised parameters (final conv, last conv of each block, attention
    output, GroupNorm biases) small random values, so gradients and outputs are generic."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * std)


def batch(c: int, hw: int, b: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, c, hw, hw, generator=torch.Generator().manual_seed(seed))


T2 = torch.tensor([3, 700])


# ---------------------------------------------------------------- timestep embedding
def test_timestep_embedding_shape_and_t0():
    emb = timestep_embedding(torch.zeros(5, dtype=torch.long), 16)
    assert emb.shape == (5, 16) and emb.dtype == torch.float32
    assert torch.equal(emb[:, :8], torch.zeros(5, 8))  # sin(0) = 0
    assert torch.equal(emb[:, 8:], torch.ones(5, 8))  # cos(0) = 1


def test_timestep_embedding_values_match_formula():
    t = torch.tensor([1, 17, 999])
    dim, half = 10, 5
    emb = timestep_embedding(t, dim).double()
    for row, step in enumerate(t.tolist()):
        for i in range(half):
            w = 10000.0 ** (-i / (half - 1))  # 1 down to 1/10000
            assert emb[row, i].item() == pytest.approx(math.sin(step * w), abs=1e-4)
            assert emb[row, half + i].item() == pytest.approx(math.cos(step * w), abs=1e-4)


def test_timestep_embedding_odd_dim_scalar_and_errors():
    emb = timestep_embedding(3, 7)
    assert emb.shape == (1, 7) and emb[0, -1] == 0.0
    assert torch.allclose(emb[:, :6], timestep_embedding(torch.tensor([3]), 6))
    with pytest.raises(ValueError, match="dim"):
        timestep_embedding(torch.tensor([1]), 1)
    with pytest.raises(ValueError, match="t"):
        timestep_embedding(torch.zeros(2, 2), 8)


# ---------------------------------------------------------------- shapes
@pytest.mark.parametrize(
    ("kwargs", "c", "hw", "out_c"),
    [
        (dict(in_channels=1, channel_mults=(1, 2, 2)), 1, 28, 1),  # 28 -> 14 -> 7
        (dict(in_channels=3, channel_mults=(1, 2, 2, 2)), 3, 32, 3),  # 32 -> 16 -> 8 -> 4
        (dict(in_channels=1, channel_mults=(1, 2), attention_levels=(0,)), 1, 28, 1),
        (dict(in_channels=3, channel_mults=(1, 2, 2), attention_levels=()), 3, 32, 3),
        (dict(in_channels=3, channel_mults=(1, 2, 2, 2), attention_levels=(0, 1, 2, 3)), 3, 32, 3),
        (dict(in_channels=3, out_channels=6, channel_mults=(1, 2)), 3, 32, 6),  # learned variance
        (dict(in_channels=1, out_channels=2, channel_mults=(1, 2, 2)), 1, 28, 2),
        (dict(in_channels=1, channel_mults=(1,), attention_levels=()), 1, 28, 1),  # one level
        (dict(in_channels=1, channel_mults=(1, 2, 2), num_res_blocks=2), 1, 28, 1),
    ],
)
def test_output_shape(kwargs, c, hw, out_c):
    model = UNet(**{**TINY, **kwargs})
    out = model(batch(c, hw), T2)
    assert out.shape == (2, out_c, hw, hw)


def test_non_square_input():
    model = UNet(1, base_channels=16, channel_mults=(1, 2, 2), num_res_blocks=1)
    assert model(torch.randn(2, 1, 28, 12), T2).shape == (2, 1, 28, 12)


def test_zero_init_output_is_zero_and_default_widths():
    model = UNet(3, base_channels=16, channel_mults=(1, 2), num_res_blocks=1)
    assert torch.equal(model(batch(3, 16), T2), torch.zeros(2, 3, 16, 16))
    # The DDPM CIFAR-10 network (C=128, mults 1,2,2,2, 2 blocks, attention at 16x16): 35.7M.
    assert UNet(3, base_channels=128).num_parameters() == pytest.approx(35.7e6, rel=0.002)


# ---------------------------------------------------------------- skip ablation
def test_skip_ablation_builds_runs_and_is_smaller():
    kw = dict(in_channels=1, base_channels=16, channel_mults=(1, 2, 2))
    with_skips, without = UNet(**kw), UNet(**kw, skip_connections=False)
    assert without.num_parameters() < with_skips.num_parameters()
    # Same blocks, but the decoder's first ResBlocks read only the upsampled path.
    ins_with = [b.in_channels for lvl in with_skips.up for b in lvl.blocks]
    ins_without = [b.in_channels for lvl in without.up for b in lvl.blocks]
    assert len(ins_with) == len(ins_without) == 3 * 3
    assert ins_without == [32, 32, 32, 32, 32, 32, 32, 16, 16]
    assert ins_with == [64, 64, 64, 64, 64, 48, 48, 32, 32]
    perturb_zero_params(without)
    out = without(batch(1, 28), T2)
    assert out.shape == (2, 1, 28, 28) and out.abs().sum() > 0


# ---------------------------------------------------------------- gradients
def test_gradients_exist_for_fresh_model():
    model = UNet(3, **TINY, channel_mults=(1, 2))
    model(batch(3, 16), T2).square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_gradients_reach_every_parameter_when_weights_nonzero():
    model = UNet(3, **TINY, channel_mults=(1, 2, 2), attention_levels=(0, 1))
    perturb_zero_params(model)
    target = batch(3, 32, seed=1)
    F.mse_loss(model(batch(3, 32), T2), target).backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert dead == []


def test_zero_init_opens_up_after_a_few_optimiser_steps():
    """From the zero init, gradient first reaches only the final conv; the last conv of each
    block opens on step 2, and everything receives gradient from the third backward on."""
    torch.manual_seed(0)
    model = UNet(1, **TINY, channel_mults=(1, 2), dropout=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, target = batch(1, 16), batch(1, 16, seed=1)
    dead_per_step = []
    for _ in range(3):
        opt.zero_grad()
        F.mse_loss(model(x, T2), target).backward()
        dead_per_step.append({n for n, p in model.named_parameters() if not p.grad.any()})
        opt.step()
    assert "out_conv.weight" not in dead_per_step[0]
    assert "down.0.blocks.0.conv1.weight" in dead_per_step[0]  # blocked by zero conv2 / out_conv
    assert dead_per_step[2] == set()


# ---------------------------------------------------------------- time conditioning
def test_time_embedding_changes_output():
    model = UNet(1, **TINY, channel_mults=(1, 2, 2)).eval()
    perturb_zero_params(model)
    x = batch(1, 28)
    out0, out1 = model(x, torch.tensor([0, 0])), model(x, torch.tensor([500, 500]))
    assert (out0 - out1).abs().max() > 1e-3 * out0.abs().max()


def test_t_broadcasting_int_and_0d():
    model = UNet(1, **TINY, channel_mults=(1, 2)).eval()
    perturb_zero_params(model)
    x = batch(1, 16)
    ref = model(x, torch.tensor([42, 42]))
    assert torch.equal(model(x, 42), ref)
    assert torch.equal(model(x, torch.tensor(42)), ref)
    assert torch.equal(model(x, torch.tensor([42])), ref)
    # per-sample t: sample 0 with t=42 matches the batch run
    assert torch.allclose(model(x, torch.tensor([42, 7]))[0], ref[0], atol=1e-6)


# ---------------------------------------------------------------- validation
def test_bad_spatial_size_errors():
    model = UNet(1, **TINY, channel_mults=(1, 2, 2))
    with pytest.raises(ValueError, match=r"divisible by 4 for 3 levels; got 30x30"):
        model(torch.randn(2, 1, 30, 30), T2)
    model4 = UNet(1, **TINY, channel_mults=(1, 2, 2, 2))
    with pytest.raises(ValueError, match=r"divisible by 8 for 4 levels; got 28x28"):
        model4(torch.randn(2, 1, 28, 28), T2)


def test_bad_input_errors():
    model = UNet(1, **TINY, channel_mults=(1, 2))
    with pytest.raises(ValueError, match="channels"):
        model(torch.randn(2, 3, 16, 16), T2)
    with pytest.raises(ValueError, match="x: expected"):
        model(torch.randn(1, 16, 16), T2)
    with pytest.raises(ValueError, match="t: expected"):
        model(torch.randn(2, 1, 16, 16), torch.tensor([1, 2, 3]))


@pytest.mark.parametrize(
    ("kwargs", "argname"),
    [
        (dict(attention_levels=(3,)), "attention_levels"),  # only 3 levels: 0..2
        (dict(attention_levels=(-1,)), "attention_levels"),
        (dict(base_channels=0), "base_channels"),
        (dict(in_channels=0), "in_channels"),
        (dict(out_channels=-2), "out_channels"),
        (dict(channel_mults=(1, 0, 2)), "channel_mults"),
        (dict(channel_mults=()), "channel_mults"),
        (dict(num_res_blocks=0), "num_res_blocks"),
        (dict(dropout=1.0), "dropout"),
        (dict(dropout="0.5"), "dropout"),
        (dict(dropout=None), "dropout"),
        (dict(attention_levels=(True,)), "attention_levels"),  # a bool is not a level
        (dict(attention_levels=(1.0,)), "attention_levels"),
        (dict(norm_groups=5), "norm_groups"),  # 5 does not divide 16
        (dict(base_channels=24, norm_groups=16), "norm_groups"),
    ],
)
def test_constructor_validation(kwargs, argname):
    args = {"in_channels": 1, "base_channels": 16, "channel_mults": (1, 2, 2), **kwargs}
    with pytest.raises((ValueError, TypeError), match=argname):
        UNet(**args)


def test_norm_groups_default():
    for base, groups in [(16, 16), (64, 32), (128, 32), (24, 8)]:
        model = UNet(1, base_channels=base, channel_mults=(1,), attention_levels=())
        assert model.config["norm_groups"] == groups
        assert model.out_norm.num_groups == groups


# ---------------------------------------------------------------- feature maps
def test_feature_maps_shapes_and_order():
    model = UNet(1, base_channels=16, channel_mults=(1, 2, 3), num_res_blocks=1).eval()
    x = batch(1, 28)
    feats = model.feature_maps(x, 10)
    assert list(feats) == ["down0", "down1", "down2", "mid", "up2", "up1", "up0"]
    expected = {
        "down0": (2, 16, 28, 28),
        "down1": (2, 32, 14, 14),
        "down2": (2, 48, 7, 7),
        "mid": (2, 48, 7, 7),
        "up2": (2, 48, 7, 7),
        "up1": (2, 32, 14, 14),
        "up0": (2, 16, 28, 28),
    }
    assert {k: tuple(v.shape) for k, v in feats.items()} == expected
    assert not any(v.requires_grad for v in feats.values())
    out, feats2 = model(x, 10, return_features=True)
    assert torch.equal(out, model(x, 10))
    assert all(torch.equal(feats[k], feats2[k]) for k in feats)


# ---------------------------------------------------------------- determinism, config
def test_eval_is_deterministic_and_train_uses_dropout():
    model = UNet(1, **TINY, channel_mults=(1, 2), dropout=0.5)
    perturb_zero_params(model)
    x = batch(1, 16)
    model.train()
    assert not torch.equal(model(x, T2), model(x, T2))  # dropout active: the test can fail
    model.eval()
    assert torch.equal(model(x, T2), model(x, T2))


def test_config_rebuilds_identical_architecture():
    model = UNet(
        3, base_channels=16, channel_mults=[1, 2, 2], attention_levels=(2, 1), out_channels=6
    )
    config = json.loads(json.dumps(model.config))  # JSON-able
    rebuilt = UNet(**config)
    sd, sd2 = model.state_dict(), rebuilt.state_dict()
    assert list(sd) == list(sd2)
    assert all(sd[k].shape == sd2[k].shape for k in sd)
    perturb_zero_params(model)
    rebuilt.load_state_dict(model.state_dict())
    x = batch(3, 32)
    assert torch.equal(model.eval()(x, T2), rebuilt.eval()(x, T2))
    assert rebuilt.config == model.config


# ---------------------------------------------------------------- attention, formats, dtypes
def test_attention_block_matches_naive_formula():
    torch.manual_seed(0)
    block = AttentionBlock(8, groups=4)
    perturb_zero_params(block)
    x = torch.randn(2, 8, 4, 6)
    q, k, v = block.qkv(block.norm(x)).flatten(2).chunk(3, dim=1)  # each (B, C, HW)
    w = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(8), dim=-1)  # (B, HW, HW)
    h = (v @ w.transpose(1, 2)).reshape(2, 8, 4, 6)  # out[:, :, i] = sum_j w[i, j] v[:, :, j]
    expected = x + block.proj(h)
    assert torch.allclose(block(x), expected, atol=1e-5)


def test_channels_last_matches_contiguous():
    model = UNet(3, **TINY, channel_mults=(1, 2, 2), attention_levels=(0, 1)).eval()
    perturb_zero_params(model)
    x = batch(3, 32)
    ref, feats = model(x, T2, return_features=True)
    # Layouts never mix: every activation of an NCHW run is NCHW, of a channels_last run
    # channels_last (a mixed add or cat would silently convert whole tensors).
    assert all(f.is_contiguous() for f in feats.values())
    model_cl = model.to(memory_format=torch.channels_last)
    out, feats = model_cl(x.contiguous(memory_format=torch.channels_last), T2, return_features=True)
    assert all(f.is_contiguous(memory_format=torch.channels_last) for f in feats.values())
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, ref, atol=1e-5)


def test_autocast_bfloat16():
    model = UNet(3, **TINY, channel_mults=(1, 2, 2)).eval()
    perturb_zero_params(model)
    x = batch(3, 32)
    ref = model(x, T2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, T2)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    rel = (out.float() - ref).norm() / ref.norm()
    assert rel < 0.05


def test_bfloat16_weights():
    model = UNet(1, **TINY, channel_mults=(1, 2)).eval().to(torch.bfloat16)
    out = model(batch(1, 16).to(torch.bfloat16), T2)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 1, 16, 16)


def test_every_block_starts_as_identity_on_its_skip_path():
    """Zero init (improved-diffusion): each residual branch starts at exactly zero."""
    model = UNet(3, **TINY, channel_mults=(1, 2), attention_levels=(0, 1)).eval()
    x, emb_act = torch.randn(2, 16, 8, 8), torch.randn(2, 64)
    for level in model.down:
        for block, attn in zip(level.blocks, level.attns, strict=True):
            y = block.skip(x)  # identity, or a 1x1 conv where the width changes
            assert torch.equal(block(x, emb_act), y)
            assert torch.equal(attn(y), y)
            x = y


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_upsample_is_nearest_neighbour(channels_last, bf16):
    # float32 NCHW takes the repeat_interleave path on the CPU, the rest torch's kernel.
    up = Upsample(4)
    x = torch.randn(2, 4, 5, 3, dtype=torch.bfloat16 if bf16 else torch.float32)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        expected = up.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        out = up(x)
    assert out.shape == (2, 4, 10, 6) and torch.allclose(out, expected, atol=1e-6)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last


@pytest.mark.parametrize("channels_last", [False, True])
def test_attention_explicit_and_fused_paths_agree(channels_last, monkeypatch):
    """On the CPU, short sequences take the explicit softmax path, long ones SDPA: same numbers,
    same gradients, and the output keeps the input's memory layout on both."""
    torch.manual_seed(0)
    block = AttentionBlock(8, groups=4)
    perturb_zero_params(block)
    x = torch.randn(2, 8, 4, 6)  # 24 positions: the explicit path
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    assert x.shape[2] * x.shape[3] <= AttentionBlock.MATH_MAX_POSITIONS
    results = []
    for limit in (AttentionBlock.MATH_MAX_POSITIONS, 0):  # 0: every size takes the fused kernel
        monkeypatch.setattr(AttentionBlock, "MATH_MAX_POSITIONS", limit)
        xi = x.detach().clone().requires_grad_()
        out = block(xi)
        assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
        out.square().sum().backward()
        results.append((out.detach(), xi.grad, block.qkv.weight.grad.clone()))
        block.zero_grad()
    for explicit, fused in zip(*results, strict=True):
        assert torch.allclose(explicit, fused, atol=1e-5)
