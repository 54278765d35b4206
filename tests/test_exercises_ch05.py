"""Chapter 05's exercises (ddpm_teach/exercises/ch05.py): the loss, the EMA step, the warm-up.

Each reference is checked against an answer computed here by hand (plain formulas and loops) and
against what the trainer itself does; every mistake model is diagnosed by its own message; stubs
are "not attempted"; ways of writing a right answer that students use (in-place updates, float32,
Python floats) pass.
"""

from __future__ import annotations

import math

import pytest
import torch

from ddpm_teach.exercises import EXERCISES, check, exercises_for_chapter
from ddpm_teach.mlp import MLPDenoiser
from ddpm_teach.schedule import NoiseSchedule
from ddpm_teach.training import TrainConfig, Trainer, ema_update

CH05 = ["l-simple-loss", "ema-update", "warmup-lr"]
PAIRS = [(e, m.name) for e in CH05 for m in EXERCISES[e].mistakes]


def test_the_chapter_poses_its_exercises_in_order():
    assert [ex.id for ex in exercises_for_chapter("05")] == CH05
    assert (
        EXERCISES["l-simple-loss"].signature == "l_simple(model_out, x0, eps, t, betas, prediction)"
    )
    assert EXERCISES["ema-update"].signature == "ema_step(ema, params, decay)"
    assert EXERCISES["warmup-lr"].signature == "warmup_lr(step, base_lr, warmup_steps)"
    for exercise_id in CH05:
        assert len(EXERCISES[exercise_id].mistakes) >= 3


@pytest.mark.parametrize("exercise_id", CH05)
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


@pytest.mark.parametrize("exercise_id", CH05)
def test_a_stub_is_not_attempted(exercise_id):
    def stub(*args):
        raise NotImplementedError

    result = check(exercise_id, stub)
    assert result.mistake == "not-attempted"
    assert EXERCISES[exercise_id].task in result.message


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("exercise_id", CH05)
def test_the_test_inputs_are_deterministic(exercise_id):
    first, second = EXERCISES[exercise_id].cases(), EXERCISES[exercise_id].cases()
    assert len(first) == len(second) >= 3
    for a, b in zip(first, second, strict=True):
        assert a.keys() == b.keys()
        assert all(_same(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ L_simple: known truth
def _loss_by_hand(model_out, x0, eps, t, betas, prediction) -> float:
    """Eq. 14 element by element, alpha_bar by a Python loop, in float64."""
    alpha_bar, running = [], 1.0
    for b in betas.tolist():
        running *= 1 - b
        alpha_bar.append(running)
    total, count = 0.0, 0
    for i in range(x0.shape[0]):
        ab = alpha_bar[int(t[i])]
        rows = (model_out[i].flatten(), x0[i].flatten(), eps[i].flatten())
        for o, x, e in zip(*(r.tolist() for r in rows), strict=True):
            target = {"eps": e, "x0": x, "v": math.sqrt(ab) * e - math.sqrt(1 - ab) * x}
            total += (o - target[prediction]) ** 2
            count += 1
    return total / count


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_l_simple_reference_is_eq_14_by_hand(prediction):
    g = torch.Generator().manual_seed(0)
    betas = NoiseSchedule.linear(50, 1e-3, 0.1).betas
    x0, eps, out = (torch.randn(3, 1, 2, 2, generator=g, dtype=torch.float64) for _ in range(3))
    t = torch.tensor([0, 17, 49])
    ref = EXERCISES["l-simple-loss"].reference(out, x0, eps, t, betas, prediction)
    assert ref.shape == ()
    assert ref.item() == pytest.approx(_loss_by_hand(out, x0, eps, t, betas, prediction), rel=1e-12)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_l_simple_reference_is_the_loss_the_trainer_logs(prediction):
    data = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    cfg = TrainConfig(
        data="eight-gaussians", model="mlp", model_kwargs={"hidden": 16, "num_layers": 1},
        num_steps=40, prediction=prediction, train_steps=1, batch_size=8, log_every=1,
        num_samples=0, sample_steps=1, device="cpu",
    )  # fmt: skip
    trainer = Trainer(cfg, data, progress=False)
    x0, t, eps = trainer._batch(0)  # the batch of step 0, as the trainer will draw it
    with torch.no_grad():
        out = trainer.model(trainer.schedule.q_sample(x0, t, eps), t)
    trainer.train()
    logged = trainer.history[0][1]
    betas = trainer.schedule.betas
    ref = EXERCISES["l-simple-loss"].reference(
        out.double(), x0.double(), eps.double(), t, betas, prediction
    )
    assert ref.item() == pytest.approx(logged, rel=1e-5)


def test_l_simple_written_as_students_write_it_passes():
    def l_simple(model_out, x0, eps, t, betas, prediction):
        ab = torch.cumprod(1 - betas, dim=0)[t].float().view(-1, *[1] * (x0.ndim - 1))
        if prediction == "eps":
            target = eps
        elif prediction == "x0":
            target = x0
        else:
            target = ab.sqrt() * eps - (1 - ab).sqrt() * x0
        return ((model_out.float() - target.float()) ** 2).mean().item()  # float32, a float

    assert check("l-simple-loss", l_simple).passed


def test_a_per_example_loss_gets_the_one_number_hint():
    result = check("l-simple-loss", lambda out, x0, eps, t, betas, p: ((out - eps) ** 2).mean(0))
    assert result.mistake == "shape"
    assert "expected shape (), got (2,)" in result.message
    assert "one number for the whole batch" in result.message


# ------------------------------------------------------------------ EMA: known truth
def test_ema_step_reference_is_the_formula_and_leaves_its_inputs_alone():
    ema = {"w": torch.tensor([1.0, 2.0], dtype=torch.float64), "b": torch.tensor([0.0])}
    params = {"w": torch.tensor([3.0, 0.0], dtype=torch.float64), "b": torch.tensor([10.0])}
    before = {k: v.clone() for k, v in ema.items()}
    out = EXERCISES["ema-update"].reference(ema, params, 0.75)
    assert list(out) == ["w", "b"]
    torch.testing.assert_close(out["w"], torch.tensor([1.5, 1.5], dtype=torch.float64))
    torch.testing.assert_close(out["b"], torch.tensor([2.5]))
    assert all(torch.equal(ema[k], before[k]) for k in ema)  # a new dict, inputs untouched


def test_ema_step_reference_matches_the_trainers_update_on_a_real_network():
    torch.manual_seed(0)
    model, average = MLPDenoiser(hidden=16, num_layers=1), MLPDenoiser(hidden=16, num_layers=1)
    ema = {k: v.detach().clone() for k, v in average.named_parameters()}
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    ema_update(average, model, 0.9)
    out = EXERCISES["ema-update"].reference(ema, params, 0.9)
    for name, p in average.named_parameters():
        torch.testing.assert_close(out[name], p.detach(), rtol=0, atol=1e-7)


def test_ema_step_written_in_place_or_with_lerp_passes():
    def in_place(ema, params, decay):
        for k in ema:
            ema[k].mul_(decay).add_(params[k], alpha=1 - decay)
        return ema

    def with_lerp(ema, params, decay):
        return {k: torch.lerp(ema[k], params[k], 1 - decay) for k in ema}

    def float32(ema, params, decay):
        return {k: decay * ema[k].float() + (1 - decay) * params[k].float() for k in ema}

    for fn in (in_place, with_lerp, float32):
        assert check("ema-update", fn).passed, fn.__name__


def test_wrong_in_place_ema_updates_get_their_own_diagnosis():
    # The check hands each call its own copies of the dicts: a wrong update written in place
    # must not turn the case's ema into its own answer (then every such mistake read "unchanged").
    def swapped_in_place(ema, params, decay):
        for k in ema:
            ema[k].lerp_(params[k], decay)
        return ema

    def missing_one_minus_in_place(ema, params, decay):
        for k in ema:
            ema[k].mul_(decay).add_(params[k])
        return ema

    assert check("ema-update", swapped_in_place).mistake == "weights-swapped"
    assert check("ema-update", missing_one_minus_in_place).mistake == "missing-one-minus-decay"


def test_ema_outputs_of_the_wrong_form_are_named():
    as_list = check("ema-update", lambda ema, params, decay: [ema[k] for k in ema])
    assert not as_list.passed and as_list.mistake == "type"
    assert "returned a list of 3; expected a dict with the keys of `ema`." in as_list.message

    def weights_only(ema, params, decay):
        return {k: decay * ema[k] + (1 - decay) * params[k] for k in ema if k != "conv.bias"}

    partial = check("ema-update", weights_only)
    assert (
        not partial.passed and "keys differ from `ema`'s (missing 'conv.bias')" in partial.message
    )


def test_ema_check_messages_describe_dicts_briefly():
    result = check("ema-update", lambda ema, params, decay: {k: ema[k] @ params[k] for k in ema})
    assert result.mistake == "exception"
    assert "ema={'conv.weight': shape (2, 1, 3, 3), 'conv.bias': shape (2,)" in result.message
    assert "tensor(" not in result.message


# ------------------------------------------------------------------ warm-up: known truth
def test_warmup_lr_reference_by_hand():
    ref = EXERCISES["warmup-lr"].reference
    assert ref(0, 0.1, 10) == pytest.approx(0.01)
    assert ref(4, 0.1, 10) == pytest.approx(0.05)
    assert ref(9, 0.1, 10) == pytest.approx(0.1)  # the last warm-up step reaches base_lr
    assert ref(10_000, 0.1, 10) == pytest.approx(0.1)
    assert ref(0, 0.3, 0) == 0.3  # no warm-up


def test_warmup_lr_reference_is_what_the_trainer_sets():
    data = torch.randn(64, 2, generator=torch.Generator().manual_seed(2))
    cfg = TrainConfig(
        data="eight-gaussians", model="mlp", model_kwargs={"hidden": 8, "num_layers": 1},
        num_steps=40, train_steps=12, batch_size=8, lr=3e-3, warmup_steps=5, log_every=1,
        num_samples=0, sample_steps=1, device="cpu",
    )  # fmt: skip
    trainer = Trainer(cfg, data, progress=False)
    trainer.train()
    logged = [entry["lr"] for entry in trainer.log]  # the lr each step ran with
    expected = [EXERCISES["warmup-lr"].reference(s, 3e-3, 5) for s in range(12)]
    assert logged == pytest.approx(expected, rel=1e-12)
    assert logged[:5] == pytest.approx([6e-4, 1.2e-3, 1.8e-3, 2.4e-3, 3e-3])


def test_warmup_lr_that_forgets_no_warmup_gets_the_error_named():
    def warmup_lr(step, base_lr, warmup_steps):
        return base_lr * min(1.0, (step + 1) / warmup_steps)

    result = check("warmup-lr", warmup_lr)
    assert result.mistake == "exception"
    assert "test input 6 of 6 (step=7, base_lr=0.3, warmup_steps=0)" in result.message
    assert "ZeroDivisionError" in result.message


def test_ema_step_reference_pairs_entries_by_key_not_by_position():
    ema = {"a": torch.zeros(1), "b": torch.ones(2)}
    params = {"b": torch.full((2,), 3.0), "a": torch.full((1,), 5.0)}  # other key order
    out = EXERCISES["ema-update"].reference(ema, params, 0.5)
    torch.testing.assert_close(out["a"], torch.tensor([2.5]))
    torch.testing.assert_close(out["b"], torch.tensor([2.0, 2.0]))
