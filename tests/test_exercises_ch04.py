"""Chapter 04's exercises (ddpm_teach/exercises/ch04.py): the U-Net.

Each reference is checked against truth found another way: the embedding against the formula
written out with ``math.sin`` and against the network's own ``timestep_embedding``; the decoder
widths against the widths a real forward pass feeds each expanding-path ResBlock (hooks); the
downsampled sizes against the feature maps of a real U-Net and against ceil(n / 2^k). Every mistake
model is diagnosed by its own message and stubs are "not attempted".
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ddpm_teach.exercises import EXERCISES, check, exercises_for_chapter
from ddpm_teach.unet import UNet, timestep_embedding

CH04 = ["timestep-embedding", "skip-concat-channels", "downsampled-size"]
PAIRS = [(e, m.name) for e in CH04 for m in EXERCISES[e].mistakes]


def test_the_chapter_poses_its_exercises_in_order():
    assert [ex.id for ex in exercises_for_chapter("04")] == CH04
    assert EXERCISES["timestep-embedding"].signature == "timestep_embedding(t, dim)"
    assert (
        EXERCISES["skip-concat-channels"].signature
        == "decoder_in_channels(base_channels, channel_mults, num_res_blocks)"
    )
    assert EXERCISES["downsampled-size"].signature == "downsampled_size(size, k)"
    for exercise_id in CH04:
        assert len(EXERCISES[exercise_id].mistakes) >= 3


# ------------------------------------------------------------------------ the exercise mechanism
@pytest.mark.parametrize("exercise_id", CH04)
def test_reference_passes(exercise_id):
    result = check(exercise_id, EXERCISES[exercise_id].reference)
    assert result.passed and result.mistake is None, result.message


@pytest.mark.parametrize(("exercise_id", "mistake"), PAIRS, ids=[f"{e}:{m}" for e, m in PAIRS])
def test_each_mistake_is_diagnosed_by_its_own_message(exercise_id, mistake):
    model = next(m for m in EXERCISES[exercise_id].mistakes if m.name == mistake)
    result = check(exercise_id, model.fn)
    assert not result.passed
    assert result.mistake == mistake, result.message
    assert result.message == f"❌ {model.message}"


@pytest.mark.parametrize(("exercise_id", "mistake"), PAIRS, ids=[f"{e}:{m}" for e, m in PAIRS])
def test_each_mistake_really_differs_from_the_reference(exercise_id, mistake):
    ex = EXERCISES[exercise_id]
    model = next(m for m in ex.mistakes if m.name == mistake)

    def as_array(out):
        return np.asarray(torch.as_tensor(out, dtype=torch.float64))

    differs = [
        as_array(model.fn(**c)).shape != as_array(ex.reference(**c)).shape
        or not np.allclose(as_array(model.fn(**c)), as_array(ex.reference(**c)))
        for c in ex.cases()
    ]
    assert any(differs)


@pytest.mark.parametrize("exercise_id", CH04)
def test_a_stub_is_not_attempted(exercise_id):
    def stub(*args):
        raise NotImplementedError

    result = check(exercise_id, stub)
    assert result.mistake == "not-attempted"
    assert EXERCISES[exercise_id].task in result.message


@pytest.mark.parametrize("exercise_id", CH04)
def test_the_test_inputs_are_the_same_every_time(exercise_id):
    first, second = EXERCISES[exercise_id].cases(), EXERCISES[exercise_id].cases()
    for a, b in zip(first, second, strict=True):
        assert a.keys() == b.keys()
        for x, y in zip(a.values(), b.values(), strict=True):
            assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y


@pytest.mark.parametrize("exercise_id", ["skip-concat-channels", "downsampled-size"])
def test_checking_leaves_the_global_random_state_alone(exercise_id):
    # The references build modules (random initial weights); a notebook's later cells must not
    # depend on whether the student ran a check.
    state = torch.random.get_rng_state()
    check(exercise_id, EXERCISES[exercise_id].reference)
    assert torch.equal(state, torch.random.get_rng_state())


# ------------------------------------------------------------------------ timestep-embedding
def _embedding_by_hand(t: int, dim: int) -> list[float]:
    half = dim // 2
    freqs = [10000.0 ** (-i / (half - 1)) for i in range(half)]
    return [math.sin(t * w) for w in freqs] + [math.cos(t * w) for w in freqs]


def test_the_embedding_is_the_formula_written_out():
    ref = EXERCISES["timestep-embedding"].reference
    for case in EXERCISES["timestep-embedding"].cases():
        got = ref(case["t"], case["dim"])
        assert got.shape == (len(case["t"]), case["dim"])
        for row, t in zip(got.tolist(), case["t"].tolist(), strict=True):
            assert row == pytest.approx(_embedding_by_hand(t, case["dim"]), abs=1e-12)
    emb = ref(torch.tensor([0]), 8)[0]
    assert emb[:4].tolist() == [0.0] * 4 and emb[4:].tolist() == [1.0] * 4  # t = 0


def test_the_embedding_is_what_the_network_uses():
    ref = EXERCISES["timestep-embedding"].reference
    t = torch.arange(0, 1000, 37)
    for dim in (8, 16, 64):
        # float32 inside the network: arguments up to ~1000 carry ~1e-4 of rounding
        assert torch.allclose(timestep_embedding(t, dim).double(), ref(t, dim), atol=2e-4)
    # ... and on the exercise's small step indices the float32 network passes the check itself
    assert check("timestep-embedding", timestep_embedding).passed


def test_no_test_argument_sits_near_a_zero_of_sin_or_cos():
    """Float32 rounding moves t * w_i by ~1e-6; near a zero of sin or cos that would be a large
    relative error, and a correct float32 answer could fail the check's rtol."""
    for case in EXERCISES["timestep-embedding"].cases():
        half = case["dim"] // 2
        w = 10000.0 ** (-torch.arange(half, dtype=torch.float64) / (half - 1))
        args = case["t"].double()[:, None] * w
        k = (args / (math.pi / 2)).round()  # the nearest zero of sin or cos is k pi / 2
        distance = (args - k * math.pi / 2).abs()
        # near 0 itself sin(x) ~ x and cos(x) ~ 1 keep the relative error small
        assert ((k == 0) | (distance > 0.05)).all(), args[(k > 0) & (distance <= 0.05)]


def test_a_float32_embedding_written_differently_passes():
    def timestep_embedding(t, dim):
        half = dim // 2
        freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float32) / (half - 1))
        args = t.float()[:, None] * freqs
        return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)

    assert check("timestep-embedding", timestep_embedding).passed


# ------------------------------------------------------------------------ skip-concat-channels
def _widths_seen_by_a_forward_pass(base, mults, nrb):
    """The channels each expanding-path ResBlock receives in a real forward pass."""
    net = UNet(1, base, mults, nrb, attention_levels=(), norm_groups=1).eval()
    seen = []
    hooks = [
        block.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[1]))
        for level in net.up
        for block in level.blocks
    ]
    size = 2 ** (len(mults) - 1) * 3
    with torch.no_grad():
        net(torch.zeros(1, 1, size, size), 0)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize(
    "config",
    [(16, (1, 2, 2), 1), (8, (1, 2, 3), 2), (4, (1, 3), 1), (8, (1, 2, 2, 2), 2), (4, (2,), 3)],
)
def test_decoder_widths_are_what_a_forward_pass_feeds_the_blocks(config):
    assert EXERCISES["skip-concat-channels"].reference(*config) == _widths_seen_by_a_forward_pass(
        *config
    )


def test_decoder_widths_of_the_cpu_budget_by_hand():
    # skips pushed: input conv 16, level 0: 16, down 16, level 1: 32, down 32, level 2: 32
    # popped last in, first out onto h = 32, 32, 32, 32, 32, 16 (h's width before each block)
    assert EXERCISES["skip-concat-channels"].reference(16, (1, 2, 2), 1) == [64, 64, 64, 48, 48, 32]


@pytest.mark.parametrize("as_type", [list, tuple, torch.tensor], ids=["list", "tuple", "tensor"])
def test_widths_may_come_back_as_a_list_tuple_or_tensor(as_type):
    reference = EXERCISES["skip-concat-channels"].reference
    assert check("skip-concat-channels", lambda b, m, n: as_type(reference(b, m, n))).passed


def test_a_wrong_number_of_widths_gets_the_hint():
    result = check("skip-concat-channels", lambda b, m, n: [b] * len(m))
    assert result.mistake == "shape"
    assert "len(channel_mults) * (num_res_blocks + 1)" in result.message


# ------------------------------------------------------------------------ downsampled-size
def test_downsampled_sizes_are_ceil_of_halving():
    ref = EXERCISES["downsampled-size"].reference
    for size in range(1, 40):
        for k in range(5):
            assert ref(size, k) == math.ceil(size / 2**k)


def test_downsampled_sizes_are_the_unets_feature_map_sizes():
    ref = EXERCISES["downsampled-size"].reference
    net = UNet(1, 8, (1, 2, 2, 2), 1, attention_levels=()).eval()
    feats = net.feature_maps(torch.zeros(1, 1, 32, 40), 0)
    for level in range(4):
        assert feats[f"down{level}"].shape[-2:] == (ref(32, level), ref(40, level))


@pytest.mark.parametrize(
    "answer", [int, torch.tensor, lambda v: torch.tensor([v])], ids=["int", "0-dim", "1-element"]
)
def test_a_size_may_come_back_as_an_int_or_a_tensor(answer):
    reference = EXERCISES["downsampled-size"].reference
    assert check("downsampled-size", lambda size, k: answer(reference(size, k))).passed


def test_the_formula_students_are_given_passes():
    def downsampled_size(size, k):
        for _ in range(k):
            size = (size + 2 * 1 - 3) // 2 + 1
        return size

    assert check("downsampled-size", downsampled_size).passed
