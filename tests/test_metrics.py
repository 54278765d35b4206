"""Metrics against known truth: hand-computed MMD and W2, scipy's sqrtm, data vs noise floors."""

from __future__ import annotations

import hashlib
import math
import sys

import numpy as np
import pytest
import torch
from scipy import linalg

from ddpm_teach.data import EIGHT_GAUSSIANS_CENTERS, EIGHT_GAUSSIANS_STD, glyph_digits, toy_2d
from ddpm_teach.metrics import (
    digit_floors,
    digit_report,
    frechet_distance,
    gaussian_fit,
    mmd,
    mode_coverage,
    probe_outputs,
    sliced_wasserstein,
    standard_fid,
    toy_report,
)
from ddpm_teach.probe import DEFAULT_WEIGHTS, load_probe, probe_card, probe_name

N = 1000  # images per digit report: enough for a 64-d covariance, fast on one core


@pytest.fixture(scope="module")
def fresh_digits() -> tuple[torch.Tensor, torch.Tensor]:
    # Seed 7: not a training seed (0..), not a reference seed (20000, 20001).
    return glyph_digits(N, seed=7)


@pytest.fixture(scope="module")
def many_digits() -> tuple[torch.Tensor, torch.Tensor]:
    return glyph_digits(10 * N, seed=8)  # exactly N of each digit


@pytest.fixture(scope="module")
def noise() -> torch.Tensor:
    return torch.randn(N, 1, 28, 28, generator=torch.Generator().manual_seed(1)).clamp(-1, 1)


# ------------------------------------------------------------------------------------------------
# The probe
# ------------------------------------------------------------------------------------------------


def test_probe_is_shipped_small_and_loads():
    assert DEFAULT_WEIGHTS.is_file()
    assert DEFAULT_WEIGHTS.stat().st_size < 1_000_000
    probe = load_probe()
    x = glyph_digits(4, seed=5)[0]
    assert probe(x).shape == (4, 11)
    assert probe.feature(x).shape == (4, 64)
    assert not probe.training and not any(p.requires_grad for p in probe.parameters())
    card = probe_card()
    assert card["sha256"] == hashlib.sha256(DEFAULT_WEIGHTS.read_bytes()).hexdigest()
    assert card["held_out"]["digits"]["accuracy"] >= 0.97


def test_probe_name_follows_the_weights(tmp_path):
    state = load_probe().state_dict()
    copy = tmp_path / "copy.pt"
    torch.save(state, copy)
    assert probe_name(copy) == probe_name() == probe_card()["name"]
    state["head.bias"][0] += 1.0
    torch.save(state, tmp_path / "changed.pt")
    assert probe_name(tmp_path / "changed.pt") != probe_name()
    images = glyph_digits(20, seed=6)[0]
    report = digit_report(images, weights=tmp_path / "changed.pt")
    assert report.feature_net.startswith(probe_name(tmp_path / "changed.pt"))


def test_load_probe_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="path: no probe weights"):
        load_probe(path=tmp_path / "nope.pt")


def test_probe_reads_fresh_digits(fresh_digits):
    images, labels = fresh_digits
    probs, feats = probe_outputs(images)
    assert probs.shape == (N, 11) and feats.shape == (N, 64)
    assert torch.allclose(probs.sum(1), torch.ones(N), atol=1e-5)
    assert (probs.argmax(1) == labels).float().mean() >= 0.97


# ------------------------------------------------------------------------------------------------
# digit_report
# ------------------------------------------------------------------------------------------------


def test_real_digits_are_confident_and_cover_every_class(fresh_digits):
    report = digit_report(fresh_digits[0])
    assert report.n == N
    assert report.confident_share >= 0.95
    assert report.coverage == 10
    assert report.entropy == pytest.approx(math.log(10), abs=0.02)  # labels are balanced
    assert sum(report.class_counts) == round(report.confident_share * N)


@pytest.mark.parametrize("kind", ["gaussian", "uniform"])
def test_pure_noise_is_not_a_digit(kind, noise):
    if kind == "uniform":
        images = 2 * torch.rand(N, 1, 28, 28, generator=torch.Generator().manual_seed(2)) - 1
    else:
        images = noise
    report = digit_report(images)
    assert report.confident_share <= 0.05
    assert report.not_a_digit_share >= 0.9


def _shift(images: torch.Tensor, px: int) -> torch.Tensor:
    """Move images px pixels right and down; what leaves the frame is lost, background comes in."""
    padded = torch.nn.functional.pad(images, (px, 0, px, 0), value=-1.0)
    return padded[..., :28, :28]


def _fade(images: torch.Tensor, ink: float) -> torch.Tensor:
    return -1 + ink * (images + 1)


@pytest.mark.parametrize(
    ("name", "change", "lo", "hi"),
    [
        ("shifted 2 px", lambda x: _shift(x, 2), 0.9, 1.0),
        ("faded to 70 %", lambda x: _fade(x, 0.7), 0.9, 1.0),
        ("shifted 9 px", lambda x: _shift(x, 9), 0.0, 0.05),
        ("faded to 25 %", lambda x: _fade(x, 0.25), 0.0, 0.05),
        ("inverted", lambda x: -x, 0.0, 0.05),
    ],
)
def test_probe_reads_imperfect_digits_but_not_broken_ones(fresh_digits, name, change, lo, hi):
    share = digit_report(change(fresh_digits[0])).confident_share
    assert lo <= share <= hi, f"{name}: {share:.3f} confident"


def test_collapsed_sampler_covers_one_class(many_digits):
    images, labels = many_digits
    threes = images[labels == 3][:N]
    report = digit_report(threes)
    assert report.coverage == 1
    assert int(np.argmax(report.class_counts)) == 3
    assert report.entropy < 0.1 * math.log(10)


def test_coverage_ignores_stray_classes(many_digits):
    # Coverage needs >= 1 % of the confident images: 30 sevens among 1000 count, 4 do not
    # (unless min_share is 0, when any confident seven counts).
    images, labels = many_digits
    threes, sevens = images[labels == 3], images[labels == 7]
    assert digit_report(torch.cat([threes[:970], sevens[:30]])).coverage == 2
    few = torch.cat([threes[:996], sevens[:4]])
    assert digit_report(few).coverage == 1
    assert digit_report(few, min_share=0.0).coverage >= 2  # any confident seven now counts


def test_digit_fid_data_sits_at_floor_noise_far_above(fresh_digits, noise):
    data = digit_report(fresh_digits[0])
    junk = digit_report(noise)
    # Same reference and n, so the same floor.
    assert data.fid_floor == junk.fid_floor > 0
    assert data.digit_fid < 2 * data.fid_floor  # seeds scatter about +-20 % around the floor
    assert junk.digit_fid > 50 * junk.fid_floor
    # A milder defect lands in between: faint noise on every digit.
    grainy = (fresh_digits[0] + 0.4 * noise).clamp(-1, 1)
    middle = digit_report(grainy).digit_fid
    assert data.digit_fid < middle < junk.digit_fid


def test_digit_report_with_own_reference(fresh_digits):
    ref = glyph_digits(2 * N, seed=11)[0]
    report = digit_report(fresh_digits[0], ref_images=ref)
    assert report.digit_fid < 2 * report.fid_floor
    assert "ref_images" in report.reference
    with pytest.raises(ValueError, match="ref_images: need at least 2 \\* 1000"):
        digit_report(fresh_digits[0], ref_images=ref[: N + 5])


def test_summary_is_one_readable_line(fresh_digits):
    report = digit_report(fresh_digits[0])
    line = str(report)
    assert line == report.summary() and "\n" not in line
    for part in ("confident", "10/10 classes", "digit-FID", "floor", "digit_probe@", f"n={N}"):
        assert part in line
    name = probe_card()["name"]
    assert report.feature_net.startswith(name)


def test_digit_floors_span_the_scale():
    floors = digit_floors(500)
    assert floors.data.confident_share >= 0.95 and floors.data.coverage == 10
    assert floors.noise.confident_share <= 0.05
    assert floors.noise.digit_fid > 50 * floors.data.digit_fid
    assert len(str(floors).splitlines()) == 2
    with pytest.raises(ValueError, match="seed"):
        digit_floors(500, seed=20_000)


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        (torch.zeros(10, 28, 28), ValueError, r"images: expected .*\(N, 1, 28, 28\)"),
        (torch.zeros(10, 3, 28, 28), ValueError, r"images: expected .*\(N, 1, 28, 28\)"),
        (torch.zeros(10, 1, 32, 32), ValueError, r"images: expected .*\(N, 1, 28, 28\)"),
        (torch.full((10, 1, 28, 28), 1.5), ValueError, r"images: values must lie in \[-1, 1\]"),
        (torch.full((10, 1, 28, 28), -2.0), ValueError, r"images: values must lie in \[-1, 1\]"),
        (torch.zeros(10, 1, 28, 28, dtype=torch.uint8), TypeError, "images: expected floating"),
        (torch.full((10, 1, 28, 28), float("nan")), ValueError, "images: contains NaN"),
        (torch.zeros(1, 1, 28, 28), ValueError, "images: need at least 2"),
        (np.zeros((10, 1, 28, 28)), TypeError, "images: expected a torch.Tensor"),
    ],
)
def test_digit_report_rejects_bad_images(bad, error, match):
    with pytest.raises(error, match=match):
        digit_report(bad)


def test_digit_report_rejects_bad_arguments(fresh_digits):
    with pytest.raises(ValueError, match="threshold"):
        digit_report(fresh_digits[0], threshold=1.5)
    with pytest.raises(ValueError, match=r"ref_images: expected .*\(N, 1, 28, 28\)"):
        digit_report(fresh_digits[0], ref_images=torch.zeros(4 * N, 28, 28))


def test_images_in_zero_one_range_warn():
    images = (glyph_digits(20, seed=12)[0] + 1) / 2
    with pytest.warns(UserWarning, match=r"\[0, 1\] images"):
        digit_report(images)


# ------------------------------------------------------------------------------------------------
# Frechet distance
# ------------------------------------------------------------------------------------------------


def _scipy_frechet(mu1, s1, mu2, s2) -> float:
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("d", [1, 3, 16, 64])
def test_frechet_matches_scipy_sqrtm(d):
    rng = np.random.default_rng(d)
    a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = a @ a.T + 0.1 * np.eye(d), b @ b.T / d + 0.01 * np.eye(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    ours = frechet_distance(mu1, s1, mu2, s2)
    assert ours == pytest.approx(_scipy_frechet(mu1, s1, mu2, s2), rel=1e-8, abs=1e-8)


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # scipy on singular input
def test_frechet_matches_scipy_on_feature_fits():
    # Fitted covariances of real features, rank-deficient where ReLU units never fire.
    rng = np.random.default_rng(0)
    f1 = np.maximum(rng.normal(size=(300, 20)) @ rng.normal(size=(20, 20)), 0)
    f2 = np.maximum(rng.normal(size=(300, 20)) @ rng.normal(size=(20, 20)) + 0.3, 0)
    f1[:, :3] = 0  # dead units: zero rows and columns in the covariance
    ours = frechet_distance(*gaussian_fit(f1), *gaussian_fit(f2))
    assert ours == pytest.approx(_scipy_frechet(*gaussian_fit(f1), *gaussian_fit(f2)), rel=1e-6)


def test_frechet_known_values():
    # 1-D: W2^2 between N(m1, s1^2) and N(m2, s2^2) is (m1 - m2)^2 + (s1 - s2)^2.
    assert frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(9 + 1)
    # Commuting (diagonal) covariances: sum of (sqrt(a) - sqrt(b))^2.
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
    expected = ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(np.zeros(3), np.diag(a), np.zeros(3), np.diag(b)) == pytest.approx(
        expected
    )
    s = np.cov(np.random.default_rng(1).normal(size=(50, 5)), rowvar=False)
    assert frechet_distance(np.ones(5), s, np.ones(5), s) == pytest.approx(0, abs=1e-9)


def test_frechet_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"sigma2: expected shape \(2, 2\)"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(3))
    with pytest.raises(ValueError, match="features"):
        gaussian_fit(np.zeros((1, 4)))


# ------------------------------------------------------------------------------------------------
# Toy data
# ------------------------------------------------------------------------------------------------


def _one_mode(n: int, k: int = 2, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return EIGHT_GAUSSIANS_CENTERS[k] + EIGHT_GAUSSIANS_STD * torch.randn(n, 2, generator=g)


def test_mode_coverage_of_data_and_of_one_mode():
    hit, near, counts = mode_coverage(toy_2d("eight-gaussians", 4000, seed=5))
    assert hit == 8
    assert near == pytest.approx(1 - math.exp(-4.5), abs=0.01)  # 3 std in 2-D: 98.9 %
    assert counts.shape == (8,) and int(counts.sum()) == round(near * 4000)
    cov = mode_coverage(_one_mode(4000, k=2))
    assert cov.modes_hit == 1 and int(cov.per_mode_counts.argmax()) == 2


def test_mode_coverage_rule_needs_five_and_one_percent():
    centers = EIGHT_GAUSSIANS_CENTERS
    # 7 well-fed modes and one with exactly 4 points (below 5): 7 covered; with 5 points, 8.
    base = torch.cat([centers[k].expand(60, 2) for k in range(7)])
    assert mode_coverage(torch.cat([base, centers[7].expand(4, 2)])).modes_hit == 7
    assert mode_coverage(torch.cat([base, centers[7].expand(5, 2)])).modes_hit == 8
    # With 10,000 points, 1 % is 100: a mode with 50 points is not covered.
    big = torch.cat([centers[k].expand(1400, 2) for k in range(7)] + [centers[7].expand(50, 2)])
    assert mode_coverage(big).modes_hit == 7
    # Points between modes are near none of them.
    far = mode_coverage(torch.zeros(100, 2))
    assert far.modes_hit == 0 and far.share_near == 0


def test_mmd_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 2, generator=g, dtype=torch.float64)
    y = torch.randn(4, 2, generator=g, dtype=torch.float64) + 0.5
    bw = (0.5, 2.0)

    def k(a, b):
        d2 = float(((a - b) ** 2).sum())
        return sum(math.exp(-d2 / (2 * s * s)) for s in bw)

    xx = sum(k(x[i], x[j]) for i in range(5) for j in range(5) if i != j) / 20
    yy = sum(k(y[i], y[j]) for i in range(4) for j in range(4) if i != j) / 12
    xy = sum(k(x[i], y[j]) for i in range(5) for j in range(4)) / 20
    assert mmd(x, y, bandwidths=bw) == pytest.approx(xx + yy - 2 * xy, rel=1e-10)


def test_mmd_data_near_floor_shift_clearly_above():
    ref = toy_2d("eight-gaussians", 2000, seed=0)
    same = mmd(toy_2d("eight-gaussians", 800, seed=1), ref)
    floor = mmd(toy_2d("eight-gaussians", 800, seed=2), ref)
    shifted = mmd(toy_2d("eight-gaussians", 800, seed=1) + torch.tensor([0.15, 0.0]), ref)
    scale = max(abs(same), abs(floor))
    assert scale < 2e-3
    assert shifted > 10 * scale


def test_sliced_wasserstein_known_values():
    # 1-D, equal sizes: a shift by c moves every quantile by c.
    x = torch.randn(500, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert sliced_wasserstein(x, x + 0.7, n_projections=3) == pytest.approx(0.7, rel=1e-9)
    # 1-D, unequal sizes, by hand: quantile steps {0, 1} vs {0, 0.5, 1} differ by 0.5 on
    # q in [1/3, 2/3), so W2^2 = 0.25 / 3.
    a, b = torch.tensor([[0.0], [1.0]]), torch.tensor([[0.0], [0.5], [1.0]])
    assert sliced_wasserstein(a, b, n_projections=1) == pytest.approx(math.sqrt(0.25 / 3))
    # 2-D shift c: mean of (u.c)^2 over unit u is |c|^2 / 2.
    y = torch.randn(400, 2, generator=torch.Generator().manual_seed(1))
    c = torch.tensor([0.6, -0.8])
    swd = sliced_wasserstein(y, y + c, n_projections=4000)
    assert swd == pytest.approx(1 / math.sqrt(2), rel=0.03)


def test_toy_report_data_vs_one_mode():
    good = toy_report(toy_2d("eight-gaussians", 1000, seed=42), n_ref=2000)
    assert good.modes_hit == 8 and good.data_modes_hit == 8 and good.n_modes == 8
    assert good.share_near == pytest.approx(good.data_share_near, abs=0.015)
    assert good.swd < 2 * good.swd_floor
    assert abs(good.mmd) < 3e-3 and abs(good.mmd_floor) < 3e-3
    bad = toy_report(_one_mode(1000), n_ref=2000)
    assert bad.modes_hit == 1
    assert bad.mmd > 20 * max(abs(bad.mmd_floor), 1e-4)
    assert bad.swd > 5 * bad.swd_floor
    assert bad.mmd_floor == good.mmd_floor  # same seeds, same n: the same floor
    line = str(bad)
    assert "\n" not in line and "modes 1/8 (data 8/8)" in line and "floor" in line


def test_toy_report_other_toys_have_no_modes():
    report = toy_report(toy_2d("moons", 500, seed=3), name="moons", n_ref=1000)
    assert report.modes_hit is None and "modes" not in str(report)
    assert report.swd < 2 * report.swd_floor


def test_toy_inputs_are_checked():
    with pytest.raises(ValueError, match=r"samples: expected 2-D points"):
        toy_report(torch.zeros(10, 3))
    with pytest.raises(ValueError, match="name: unknown toy"):
        toy_report(torch.zeros(10, 2), name="spiral")
    with pytest.raises(ValueError, match=r"y: expected dimension 2"):
        mmd(torch.zeros(5, 2), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="x: contains NaN"):
        sliced_wasserstein(torch.full((5, 2), float("nan")), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="bandwidths"):
        mmd(torch.zeros(5, 2), torch.zeros(5, 2), bandwidths=(0.0,))
    with pytest.raises(ValueError, match="centers: expected dimension 2"):
        mode_coverage(torch.zeros(5, 2), centers=torch.zeros(3, 3))


# ------------------------------------------------------------------------------------------------
# Standard FID
# ------------------------------------------------------------------------------------------------


def test_standard_fid_says_what_to_install(monkeypatch):
    for name in ("torchmetrics", "torchmetrics.image.fid", "torch_fidelity", "pytorch_fid"):
        monkeypatch.setitem(sys.modules, name, None)  # import now raises ImportError
    images = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with pytest.raises(ImportError, match="pip install pytorch-fid"):
        standard_fid(images, images)
    with pytest.raises(ImportError, match=r"torchmetrics\[image\]"):
        standard_fid(images, images, backend="torchmetrics")
    with pytest.raises(ValueError, match="backend"):
        standard_fid(images, images, backend="inception")


def test_probe_cli_refuses_non_positive_sizes_before_training(capsys):
    from ddpm_teach import probe

    for flag in ("--threads", "--epochs", "--digits", "--junk"):
        with pytest.raises(SystemExit):
            probe.main([flag, "0", "--out", "/nonexistent/never-written.pt"])
        assert f"{flag}: expected a positive number, got 0" in capsys.readouterr().err
