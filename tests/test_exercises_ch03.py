"""Chapter 03's exercises (ddpm_teach/exercises/ch03.py) and the computation its notebook relies on.

The new exercises, "ddpm-step" and "l-simple", are checked against answers computed here
independently of the package (plain Python floats, element by element), every mistake model is
diagnosed by its own message and really differs from the reference, other correct implementations
pass, and stubs are "not attempted". The notebook's numerical reverse step (Bayes' rule on a grid)
is checked against the closed-form Gaussian posterior, where one exists.
"""

from __future__ import annotations

import math
from pathlib import Path

import jupytext
import pytest
import torch
import torch.nn.functional as F

from ddpm_teach.analytic import GaussianMixture
from ddpm_teach.exercises import EXERCISES, check, exercises_for_chapter
from ddpm_teach.exercises._inputs import _schedules

NEW = ["ddpm-step", "l-simple"]
PAIRS = [(i, m.name) for i in NEW for m in EXERCISES[i].mistakes]
NOTEBOOK_SCRIPT = Path(__file__).resolve().parents[1] / "notebooks" / "03_reverse_chain.py"


def test_chapter_03_poses_four_exercises_in_order():
    assert [ex.id for ex in exercises_for_chapter("03")] == [
        "posterior-mean-var",
        "predict-x0",
        "ddpm-step",
        "l-simple",
    ]
    assert EXERCISES["ddpm-step"].signature == "reverse_step(x_t, t, eps, z, betas)"
    assert EXERCISES["l-simple"].signature == "l_simple(model, x0, t, eps, betas)"


# ------------------------------------------------------------------------ known truth, by hand
def _tables(betas: list[float]) -> tuple[list[float], list[float], list[float]]:
    """alpha_t, alpha_bar_t and alpha_bar_{t-1} (1 before the first step), in Python floats."""
    alphas = [1 - b for b in betas]
    bars, prod = [], 1.0
    for a in alphas:
        prod *= a
        bars.append(prod)
    return alphas, bars, [1.0, *bars[:-1]]


def _step_by_hand(x_t, t, eps, z, betas) -> torch.Tensor:
    """Eq. 11 plus sqrt(beta_tilde_t) z, one value at a time."""
    alphas, bars, prev = _tables(betas.tolist())
    out = torch.empty_like(x_t)
    for i, step in enumerate(t.tolist()):
        a, ab, ab_prev, b = alphas[step], bars[step], prev[step], betas[step].item()
        sigma = math.sqrt((1 - ab_prev) / (1 - ab) * b)
        for j in range(x_t[i].numel()):
            xv, ev, zv = x_t[i].flatten()[j].item(), eps[i].flatten()[j].item(), z[i].flatten()[j]
            out[i].view(-1)[j] = (xv - b / math.sqrt(1 - ab) * ev) / math.sqrt(a) + sigma * zv
    return out


def test_the_step_reference_is_eq_11_plus_noise():
    for case in EXERCISES["ddpm-step"].cases():
        got = EXERCISES["ddpm-step"].reference(*case.values())
        assert torch.allclose(got, _step_by_hand(*case.values()), rtol=1e-12, atol=1e-12)


def test_the_step_with_the_true_noise_lands_on_the_posterior_mean():
    """eq. 10: with eps the noise that made x_t from x_0 and z = 0, the step is mu_tilde(x_t, x_0)."""
    betas = _schedules()[0]
    alphas, bars, prev = _tables(betas.tolist())
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 4, 7, 11])
    ab = torch.tensor(bars, dtype=torch.float64)[t][:, None]
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    got = EXERCISES["ddpm-step"].reference(x_t, t, eps, torch.zeros_like(x_t), betas)
    for i, step in enumerate(t.tolist()):
        a, ab_t, ab_prev, b = alphas[step], bars[step], prev[step], betas[step].item()
        mean = (math.sqrt(ab_prev) * b * x0[i] + math.sqrt(a) * (1 - ab_prev) * x_t[i]) / (1 - ab_t)
        assert torch.allclose(got[i], mean, atol=1e-12)
    assert torch.allclose(got[0], x0[0], atol=1e-12)  # the last step of the chain returns x_0


def test_the_last_step_adds_no_noise():
    betas = _schedules()[1]
    x_t, eps, z = torch.randn(3, 4, 2, generator=torch.Generator().manual_seed(1)).double()
    t = torch.zeros(4, dtype=torch.long)
    ref = EXERCISES["ddpm-step"].reference
    assert torch.equal(ref(x_t, t, eps, z, betas), ref(x_t, t, eps, 100 * z, betas))


def _loss_by_hand(model, x0, t, eps, betas) -> float:
    _, bars, _ = _tables(betas.tolist())
    ab = torch.tensor(bars, dtype=torch.float64)[t].reshape(-1, *[1] * (x0.ndim - 1))
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    errors = (model(x_t, t) - eps).flatten().tolist()
    return sum(e * e for e in errors) / len(errors)


def test_the_loss_reference_is_the_mean_squared_noise_error():
    for case in EXERCISES["l-simple"].cases():
        got = EXERCISES["l-simple"].reference(*case.values())
        assert got.ndim == 0
        assert got.item() == pytest.approx(_loss_by_hand(*case.values()), rel=1e-12)


def test_the_loss_is_zero_for_a_network_that_knows_the_noise():
    case = EXERCISES["l-simple"].cases()[1]
    eps = case["eps"]
    assert EXERCISES["l-simple"].reference(lambda x_t, t: eps, *list(case.values())[1:]) == 0


# ------------------------------------------------------------------------ the check's verdicts
@pytest.mark.parametrize("exercise_id", NEW)
def test_reference_passes(exercise_id):
    result = check(exercise_id, EXERCISES[exercise_id].reference)
    assert result.passed, result.message


@pytest.mark.parametrize(("exercise_id", "mistake"), PAIRS, ids=[f"{e}:{m}" for e, m in PAIRS])
def test_each_mistake_is_diagnosed_by_its_own_message(exercise_id, mistake):
    model = next(m for m in EXERCISES[exercise_id].mistakes if m.name == mistake)
    result = check(exercise_id, model.fn)
    assert not result.passed
    assert result.mistake == mistake, result.message
    assert result.message == f"❌ {model.message}"


@pytest.mark.parametrize(("exercise_id", "mistake"), PAIRS, ids=[f"{e}:{m}" for e, m in PAIRS])
def test_each_mistake_really_differs_from_the_reference(exercise_id, mistake):
    """On at least one test input, by far more than the check's tolerance."""
    ex = EXERCISES[exercise_id]
    model = next(m for m in ex.mistakes if m.name == mistake)
    gaps = []
    for case in ex.cases():
        want, got = ex.reference(*case.values()), model.fn(*case.values())
        if want.shape != got.shape:
            return
        gaps.append((want - got).abs().max().item())
    assert max(gaps) > 1e-3


@pytest.mark.parametrize("exercise_id", NEW)
def test_a_stub_is_not_attempted(exercise_id):
    def stub(*args):
        raise NotImplementedError("replace me")

    result = check(exercise_id, stub)
    assert not result.passed and result.mistake == "not-attempted"


def test_a_float32_step_through_the_posterior_of_x0_hat_passes():
    """The other road to eq. 11: x0_hat from eps (eq. 4), then the posterior mean (eq. 7)."""

    def reverse_step(x_t, t, eps, z, betas):
        betas = betas.float()
        ab = torch.cumprod(1 - betas, 0)
        ab_prev = torch.cat([torch.ones(1), ab[:-1]])
        shape = (-1,) + (1,) * (x_t.ndim - 1)
        a, ab, ab_prev, b = (v[t].view(shape) for v in (1 - betas, ab, ab_prev, betas))
        x_t, eps, z = x_t.float(), eps.float(), z.float()
        x0_hat = (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()
        mean = (ab_prev.sqrt() * b * x0_hat + a.sqrt() * (1 - ab_prev) * x_t) / (1 - ab)
        return mean + ((1 - ab_prev) / (1 - ab) * b).sqrt() * z

    result = check("ddpm-step", reverse_step)
    assert result.passed, result.message


@pytest.mark.parametrize("form", ["float", "one-element", "mse_loss"])
def test_the_loss_may_be_a_float_or_a_one_element_tensor(form):
    def l_simple(model, x0, t, eps, betas):
        ab = torch.cumprod(1 - betas, 0)[t].view(-1, *[1] * (x0.ndim - 1))
        pred = model(ab.sqrt() * x0 + (1 - ab).sqrt() * eps, t)
        if form == "mse_loss":
            return F.mse_loss(pred.float(), eps.float())
        loss = ((pred - eps) ** 2).mean()
        return loss.item() if form == "float" else loss.reshape(1)

    result = check("l-simple", l_simple)
    assert result.passed, result.message


def test_a_model_called_on_the_wrong_step_is_not_passed():
    def l_simple(model, x0, t, eps, betas):
        ab = torch.cumprod(1 - betas, 0)[t].view(-1, *[1] * (x0.ndim - 1))
        return ((model(ab.sqrt() * x0 + (1 - ab).sqrt() * eps, t + 1) - eps) ** 2).mean()

    result = check("l-simple", l_simple)
    assert not result.passed and result.mistake == "values", result.message


# ------------------------------------------------------------------------ the notebook's Bayes grid
def _notebook_namespace() -> dict:
    """Run the notebook cell that defines reverse_step_density (and its helpers)."""
    nb = jupytext.read(NOTEBOOK_SCRIPT, fmt="py:percent")
    cells = [
        c.source
        for c in nb.cells
        if c.cell_type == "code" and "def reverse_step_density(" in c.source
    ]
    assert len(cells) == 1, f"expected one cell defining reverse_step_density in {NOTEBOOK_SCRIPT}"
    namespace = {"torch": torch, "math": math, "GaussianMixture": GaussianMixture}
    exec(cells[0], namespace)
    return namespace


@pytest.mark.parametrize(("beta", "x_t"), [(0.001, 0.3), (0.05, -1.2), (0.5, 0.0), (0.9, 2.0)])
def test_the_notebooks_reverse_step_of_a_gaussian_is_the_gaussian_posterior(beta, x_t):
    """For q_{t-1} = N(m, s^2) Bayes gives N(v (sqrt(1-beta) x_t / beta + m / s^2), v) exactly,
    with v = 1 / ((1 - beta) / beta + 1 / s^2), for any beta."""
    ns = _notebook_namespace()
    m, s = 0.4, 0.7
    grid = torch.linspace(-6, 6, 6001, dtype=torch.float64)
    p = ns["reverse_step_density"](GaussianMixture([1.0], [[m]], s), x_t, beta, grid)
    var = 1 / ((1 - beta) / beta + 1 / s**2)
    mean = var * (math.sqrt(1 - beta) * x_t / beta + m / s**2)
    exact = torch.distributions.Normal(mean, math.sqrt(var)).log_prob(grid).exp()
    assert (p.sum() * (grid[1] - grid[0])).item() == pytest.approx(1.0, abs=1e-12)
    assert ns["total_variation"](p, exact, grid) < 1e-4
    _, fit_mean, fit_var = ns["gaussian_fit"](p, grid)
    assert fit_mean.item() == pytest.approx(mean, abs=1e-6)
    assert fit_var.item() == pytest.approx(var, rel=1e-4)


def test_the_notebooks_bimodal_reverse_step_is_gaussian_only_for_small_beta():
    ns = _notebook_namespace()
    bimodal, grid = ns["bimodal"], ns["grid"]

    def tv(beta: float, x_t: float) -> float:
        p = ns["reverse_step_density"](bimodal, x_t, beta, grid)
        return ns["total_variation"](p, ns["gaussian_fit"](p, grid)[0], grid)

    for x_t in (0.0, 0.5, 1.0):
        assert tv(1e-4, x_t) < 1e-3
        assert tv(0.9, x_t) > 0.3
        assert tv(1e-3, x_t) < tv(1e-2, x_t) < tv(1e-1, x_t) + 1e-9
