"""Tests for ddpm_teach.budgets: selection by name, environment and hardware; the numbers' sense."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ddpm_teach.budgets import BUDGETS, ENV_VAR, Budget, budget
from ddpm_teach.unet import UNet


def test_explicit_name_beats_environment(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "gpu")
    b = budget("smoke")
    assert isinstance(b, Budget) and b.name == "smoke"


def test_environment_variable_chooses(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "smoke")
    assert budget().name == "smoke"
    monkeypatch.setenv(ENV_VAR, " CPU ")  # case and spaces forgiven
    assert budget().name == "cpu"


@pytest.mark.parametrize("cuda", [True, False])
def test_default_follows_cuda(monkeypatch, cuda):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    b = budget()
    assert b.name == ("gpu" if cuda else "cpu")
    assert b.device == ("cuda" if cuda else "cpu")


def test_empty_environment_variable_is_unset(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert budget().name == "cpu"


def test_unknown_name_lists_the_budgets(monkeypatch):
    with pytest.raises(ValueError, match=r"name: unknown budget 'laptop'.*smoke, cpu, gpu"):
        budget("laptop")
    monkeypatch.setenv(ENV_VAR, "tpu")
    with pytest.raises(ValueError, match=rf"\${ENV_VAR}: unknown budget 'tpu'.*smoke, cpu, gpu"):
        budget()


def test_budget_is_frozen():
    b = budget("smoke")
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.train_steps = 5  # type: ignore[misc]


@pytest.mark.parametrize("name", list(BUDGETS))
def test_model_kwargs_build_a_unet_for_digits_and_cifar(name):
    b = budget(name)
    for channels, side in ((1, 28), (3, 32)):
        net = UNet(channels, **b.model_kwargs())
        assert net(torch.zeros(1, channels, side, side), 0).shape == (1, channels, side, side)


def test_cpu_budget_is_the_measured_small_model():
    # The 267k-parameter U-Net of the CPU measurements, attention only in the bottleneck.
    b = budget("cpu")
    assert UNet(1, **b.model_kwargs()).num_parameters() == 267_313
    assert b.attention_levels == () and b.batch_size == 64
    assert b.bf16  # the trainer autocasts only where the CPU has native bf16
    # On an H200 the gpu U-Net's step is host-bound and autocast made it slower (budgets docstring).
    assert not budget("gpu").bf16


def test_budgets_grow_from_smoke_to_gpu():
    s, c, g = budget("smoke"), budget("cpu"), budget("gpu")
    n = [UNet(1, **b.model_kwargs()).num_parameters() for b in (s, c, g)]
    assert n[0] < n[1] < n[2]
    assert s.train_steps < c.train_steps <= g.train_steps < g.cifar_train_steps
    assert s.toy_train_steps < c.toy_train_steps


def test_train_steps_for_each_kind_of_data():
    b = budget("gpu")
    assert b.train_steps_for("eight-gaussians") == b.toy_train_steps
    assert b.train_steps_for("glyph-digits") == b.train_steps
    assert b.train_steps_for("mnist") == b.train_steps
    assert b.train_steps_for("cifar10") == b.cifar_train_steps
    assert b.as_dict()["name"] == "gpu"
