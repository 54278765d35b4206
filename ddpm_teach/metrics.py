"""Sample-quality numbers that work offline, each printed beside its floor.

A number such as "MMD 0.003" or "FID 4.1" means nothing alone: two independent draws of the *data
itself* already differ by a finite amount that depends on the sample count. So every report here
also measures fresh data against the same reference with the same sample count (the *floor*) and
prints it beside the score. A sampler is as good as these metrics can tell when it sits at the
floor.

2-D toy data (:func:`toy_report`):

* :func:`mode_coverage`: how many of the eight Gaussians receive samples, and what share of the
  samples lies near some mode (within 3 std, where 98.9 % of the data lies).
* :func:`mmd`: the unbiased estimate of the squared maximum mean discrepancy with a sum of RBF
  kernels (Gretton et al. 2012, eq. 3); zero in expectation when the two sets share a distribution.
* :func:`sliced_wasserstein`: the Wasserstein-2 distance averaged over random 1-D projections.

Glyph digits (:func:`digit_report`), judged by the digit probe of :mod:`ddpm_teach.probe`, an
11-class CNN whose eleventh class is "not a digit":

* the share of samples confidently (p >= 0.9) classified as a digit, which is 0 % for pure noise
  and about 98.5 % for real data (see :func:`digit_floors`);
* class coverage (how many of the 10 digits occur among the confident samples) and the entropy of
  their class histogram (ln 10 = 2.303 nats when balanced; a mode-collapse detector);
* digit-FID: the Frechet distance (Heusel et al. 2017) between Gaussian fits to the probe's 64-d
  penultimate features of the samples and of reference glyph digits. It is not comparable to the
  Inception FID of papers; :func:`standard_fid` computes that one when the user has the weights.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from .data import EIGHT_GAUSSIANS_CENTERS, EIGHT_GAUSSIANS_STD, TOY_DATASETS, glyph_digits, toy_2d
from .probe import DEFAULT_WEIGHTS, NOT_A_DIGIT, DigitProbe, load_probe, probe_name

__all__ = [
    "DEFAULT_BANDWIDTHS",
    "REF_SEED",
    "DigitFloors",
    "DigitReport",
    "ModeCoverage",
    "ToyReport",
    "digit_floors",
    "digit_report",
    "frechet_distance",
    "gaussian_fit",
    "load_probe",
    "mmd",
    "mode_coverage",
    "probe_outputs",
    "sliced_wasserstein",
    "standard_fid",
    "toy_report",
]

#: RBF bandwidths (in data units) summed by :func:`mmd`: from the eight Gaussians' std (0.1) up
#: to the scale of the whole data set (2).
DEFAULT_BANDWIDTHS = (0.1, 0.2, 0.5, 1.0, 2.0)

#: Seed of the reference glyph digits in :func:`digit_report`; the floor set uses REF_SEED + 1.
#: Both are far from the probe's training seeds.
REF_SEED = 20_000
_FLOOR_SEED = 30_000  # the "fresh data" of digit_floors


# ================================================================================================
# Input checks
# ================================================================================================


def _check_points(x: Tensor, name: str, min_rows: int = 2) -> Tensor:
    """A finite floating (n, d) tensor with n >= min_rows."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of shape (n, d), got {type(x).__name__}")
    if x.ndim != 2 or x.shape[0] < min_rows or x.shape[1] < 1:
        raise ValueError(
            f"{name}: expected shape (n, d) with n >= {min_rows}, got {tuple(x.shape)}"
        )
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name}: expected a floating tensor, got dtype {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return x


def _check_images(images: Tensor, name: str = "images", channels: tuple[int, ...] = (1,)) -> Tensor:
    """A finite floating (N, C, H, W) batch in [-1, 1]; (N, 1, 28, 28) unless told otherwise."""
    if not isinstance(images, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(images).__name__}")
    if channels == (1,):
        if images.ndim != 4 or tuple(images.shape[1:]) != (1, 28, 28):
            raise ValueError(
                f"{name}: expected glyph-digit images of shape (N, 1, 28, 28), got "
                f"{tuple(images.shape)}"
            )
    elif images.ndim != 4 or images.shape[1] not in channels:
        raise ValueError(
            f"{name}: expected images of shape (N, C, H, W) with C in {channels}, got "
            f"{tuple(images.shape)}"
        )
    if images.shape[0] < 2:
        raise ValueError(
            f"{name}: need at least 2 images to fit a covariance, got {images.shape[0]}"
        )
    if not images.dtype.is_floating_point:
        raise TypeError(
            f"{name}: expected floating images in [-1, 1], got dtype {images.dtype} "
            "(for uint8 images in [0, 255] use x / 127.5 - 1)"
        )
    if not torch.isfinite(images).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    lo, hi = images.min().item(), images.max().item()
    if lo < -1 - 1e-5 or hi > 1 + 1e-5:  # tolerate float rounding only
        raise ValueError(
            f"{name}: values must lie in [-1, 1], the DDPM data range; got min {lo:.3g}, "
            f"max {hi:.3g}. Clamp sampler output with images.clamp(-1, 1)."
        )
    if lo >= 0:
        warnings.warn(
            f"{name}: every value is >= 0, but the data range is [-1, 1] with background -1; "
            "were [0, 1] images passed? Use 2 * x - 1.",
            stacklevel=3,
        )
    return images


# ================================================================================================
# 2-D toy data
# ================================================================================================


class ModeCoverage(NamedTuple):
    """Result of :func:`mode_coverage`; unpacks as (modes_hit, share_near, per_mode_counts)."""

    modes_hit: int  # modes with enough samples near them
    share_near: float  # share of all samples within `radius` of some mode
    per_mode_counts: Tensor  # (K,) int64, samples within `radius` of each mode


def mode_coverage(
    samples: Tensor,
    centers: Tensor = EIGHT_GAUSSIANS_CENTERS,
    radius: float = 3 * EIGHT_GAUSSIANS_STD,
    min_share: float = 0.01,
    min_count: int = 5,
) -> ModeCoverage:
    """Which modes of a mixture a sampler reaches, and how many of its samples land on a mode.

    A sample counts for mode k when k is its nearest centre and it lies within ``radius`` of it.
    Rule: **mode k is covered when it gets at least max(min_count, min_share * n) samples**, i.e.
    at least 1 % of the samples and at least 5 of them, so a few stray points do not count as a
    mode (with 8 equal modes each should get 12.5 %). With the default 3 std radius, data itself
    puts 1 - exp(-9/2) = 98.9 % of 2-D Gaussian samples near a mode.

    Args:
        samples: (n, 2) points (any dimension d, matching ``centers``).
        centers: (K, d) mode centres; default the eight Gaussians of :mod:`ddpm_teach.data`.
        radius: distance within which a sample is "near" a mode.

    Returns:
        :class:`ModeCoverage` (modes_hit, share_near, per_mode_counts (K,)).
    """
    samples = _check_points(samples, "samples", min_rows=1)
    centers = _check_points(torch.as_tensor(centers), "centers", min_rows=1)
    if centers.shape[1] != samples.shape[1]:
        raise ValueError(
            f"centers: expected dimension {samples.shape[1]} like samples, got {centers.shape[1]}"
        )
    if not radius > 0:
        raise ValueError(f"radius: expected a positive distance, got {radius}")
    if not 0 <= min_share <= 1:
        raise ValueError(f"min_share: expected a share in [0, 1], got {min_share}")
    dist = torch.cdist(samples.double(), centers.double().to(samples.device))  # (n, K)
    nearest, which = dist.min(dim=1)
    near = nearest <= radius
    counts = torch.bincount(which[near].cpu(), minlength=centers.shape[0])
    needed = max(min_count, min_share * samples.shape[0])
    return ModeCoverage(int((counts >= needed).sum()), near.double().mean().item(), counts)


def _kernel_mean(a: Tensor, b: Tensor, bandwidths: tuple[float, ...], same: bool) -> float:
    """Mean of sum_s exp(-|a_i - b_j|^2 / (2 s^2)) over pairs (i, j), i != j when ``same``.

    Row blocks keep memory at 1024 x len(b) float64 whatever the sizes.
    """
    total = 0.0
    for i in range(0, a.shape[0], 1024):
        d2 = torch.cdist(a[i : i + 1024], b).square_()
        for s in bandwidths:
            total += torch.exp(d2 / (-2 * s * s)).sum().item()
    if same:  # drop the diagonal: k(x_i, x_i) = 1 for every kernel
        n = a.shape[0]
        return (total - n * len(bandwidths)) / (n * (n - 1))
    return total / (a.shape[0] * b.shape[0])


def _check_bandwidths(bandwidths: tuple[float, ...]) -> tuple[float, ...]:
    bandwidths = tuple(float(s) for s in bandwidths)
    if not bandwidths or any(not s > 0 for s in bandwidths):
        raise ValueError(f"bandwidths: expected positive kernel widths, got {bandwidths}")
    return bandwidths


def mmd(x: Tensor, y: Tensor, bandwidths: tuple[float, ...] = DEFAULT_BANDWIDTHS) -> float:
    """Unbiased estimate of MMD^2(P, Q) from x ~ P and y ~ Q (Gretton et al. 2012, eq. 3).

    MMD^2 = E k(x, x') + E k(y, y') - 2 E k(x, y) with k the sum of RBF kernels
    exp(-|a - b|^2 / (2 s^2)) over ``bandwidths``. The within-set means skip i = j, which makes
    the estimate unbiased: zero in expectation when P = Q, so it can come out slightly negative.

    Args:
        x: (n, d) samples, n >= 2.
        y: (m, d) samples, m >= 2.
        bandwidths: kernel widths s in data units (default suits the 2-D toys).

    Returns:
        the estimate, a float (computed in float64).
    """
    x, y = _check_points(x, "x").double(), _check_points(y, "y").double()
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"y: expected dimension {x.shape[1]} like x, got {y.shape[1]}")
    bandwidths = _check_bandwidths(bandwidths)
    y = y.to(x.device)
    return (
        _kernel_mean(x, x, bandwidths, True)
        + _kernel_mean(y, y, bandwidths, True)
        - 2 * _kernel_mean(x, y, bandwidths, False)
    )


def _w2_squared_1d(a: Tensor, b: Tensor) -> Tensor:
    """Exact squared W2 between the empirical distributions of each column: (n, P), (m, P) -> (P,).

    In 1-D, W2^2 = integral over q in (0, 1) of (F_a^-1(q) - F_b^-1(q))^2. Both quantile functions
    are step functions, constant between consecutive levels of {i/n} and {j/m}; evaluating them
    at the middle of each such interval gives the integral exactly, for any n and m.
    """
    a, b = a.sort(dim=0).values, b.sort(dim=0).values
    n, m = a.shape[0], b.shape[0]
    levels = torch.cat([torch.arange(1, n + 1) / n, torch.arange(1, m + 1) / m]).double()
    levels = torch.unique(levels)  # sorted, ends at 1
    width = torch.diff(levels, prepend=levels.new_zeros(1))
    mid = levels - width / 2
    ia = (mid * n).floor().long().clamp_max(n - 1).to(a.device)
    ib = (mid * m).floor().long().clamp_max(m - 1).to(a.device)
    return ((a[ia] - b[ib]).square() * width.to(a.device)[:, None]).sum(dim=0)


def sliced_wasserstein(
    x: Tensor, y: Tensor, n_projections: int = 128, generator: torch.Generator | None = None
) -> float:
    """Sliced Wasserstein-2 distance: sqrt(mean over random unit directions u of W2^2(u.x, u.y)).

    Each projection is an exact 1-D optimal-transport problem (sort and match quantiles), so the
    only randomness is the choice of directions, drawn from ``generator`` (default: a fresh one
    seeded 0, so the same inputs always give the same number).

    Args:
        x: (n, d) samples; y: (m, d) samples (n and m may differ).
        n_projections: number of random directions.

    Returns:
        the distance, in data units (a float).
    """
    x, y = _check_points(x, "x").double(), _check_points(y, "y").double()
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"y: expected dimension {x.shape[1]} like x, got {y.shape[1]}")
    if isinstance(n_projections, bool) or not isinstance(n_projections, int) or n_projections < 1:
        raise ValueError(f"n_projections: expected a positive int, got {n_projections!r}")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    directions = torch.randn(x.shape[1], n_projections, generator=generator, dtype=torch.float64)
    directions = (directions / directions.norm(dim=0)).to(x.device)
    return _w2_squared_1d(x @ directions, y.to(x.device) @ directions).mean().sqrt().item()


@dataclass(frozen=True)
class ToyReport:
    """Numbers for 2-D samples, each beside its floor (fresh data, same count, same reference).

    ``modes_hit``, ``share_near`` and their data values are None for toys without discrete modes.
    MMD^2 is unbiased, so ``mmd_floor`` scatters around 0 (it can be negative): a score within a
    few times |mmd_floor| of 0 is at the floor. SW2 is positive and its floor is plain to read.
    """

    name: str
    n: int
    n_ref: int
    mmd: float
    mmd_floor: float
    swd: float
    swd_floor: float
    modes_hit: int | None = None
    n_modes: int | None = None
    share_near: float | None = None
    per_mode_counts: tuple[int, ...] | None = None
    data_modes_hit: int | None = None
    data_share_near: float | None = None

    def summary(self) -> str:
        """One line, rounded, with the data-vs-data floor beside each number."""
        parts = [f"{self.name} n={self.n}:"]
        if self.modes_hit is not None:
            k = self.n_modes
            parts.append(
                f"modes {self.modes_hit}/{k} (data {self.data_modes_hit}/{k}), near a mode "
                f"{100 * self.share_near:.1f}% (data {100 * self.data_share_near:.1f}%),"
            )
        parts.append(
            f"MMD^2 {self.mmd:.2e} (floor {self.mmd_floor:.2e}), "
            f"SW2 {self.swd:.3f} (floor {self.swd_floor:.3f}) vs {self.n_ref} reference points"
        )
        return " ".join(parts)

    def __str__(self) -> str:
        return self.summary()


def toy_report(
    samples: Tensor,
    name: str = "eight-gaussians",
    n_ref: int = 4096,
    seed: int = 0,
    bandwidths: tuple[float, ...] = DEFAULT_BANDWIDTHS,
    n_projections: int = 128,
) -> ToyReport:
    """Score 2-D samples against a toy distribution, with the data-vs-data floor beside each number.

    The reference is ``toy_2d(name, n_ref, seed)``; the floor scores ``toy_2d(name, n, seed + 1)``
    (fresh data with the samples' count n) against the same reference, with the same kernels and
    the same projection directions. Mode coverage is reported for "eight-gaussians" only.

    Args:
        samples: (n, 2) points from the sampler being judged.
        name: one of :data:`ddpm_teach.data.TOY_DATASETS`.
        n_ref: reference sample count.
        seed: seed of the reference set, of the fresh set (seed + 1) and of the projections.
    """
    samples = _check_points(samples, "samples")
    if samples.shape[1] != 2:
        raise ValueError(
            f"samples: expected 2-D points of shape (n, 2), got {tuple(samples.shape)}"
        )
    if name not in TOY_DATASETS:
        raise ValueError(f"name: unknown toy data set {name!r}; expected one of {TOY_DATASETS}")
    if isinstance(n_ref, bool) or not isinstance(n_ref, int) or n_ref < 2:
        raise ValueError(f"n_ref: expected an int >= 2, got {n_ref!r}")
    bandwidths = _check_bandwidths(bandwidths)
    n = samples.shape[0]
    samples = samples.detach().double().cpu()
    ref = toy_2d(name, n_ref, seed).double()
    fresh = toy_2d(name, n, seed + 1).double()

    k_ref = _kernel_mean(ref, ref, bandwidths, True)  # shared by score and floor

    def mmd_to_ref(x: Tensor) -> float:
        return (
            _kernel_mean(x, x, bandwidths, True)
            + k_ref
            - 2 * _kernel_mean(x, ref, bandwidths, False)
        )

    def swd_to_ref(x: Tensor) -> float:
        return sliced_wasserstein(x, ref, n_projections, torch.Generator().manual_seed(seed))

    extra = {}
    if name == "eight-gaussians":
        cov, data_cov = mode_coverage(samples), mode_coverage(fresh)
        extra = dict(
            modes_hit=cov.modes_hit,
            n_modes=len(EIGHT_GAUSSIANS_CENTERS),
            share_near=cov.share_near,
            per_mode_counts=tuple(cov.per_mode_counts.tolist()),
            data_modes_hit=data_cov.modes_hit,
            data_share_near=data_cov.share_near,
        )
    return ToyReport(
        name=name,
        n=n,
        n_ref=n_ref,
        mmd=mmd_to_ref(samples),
        mmd_floor=mmd_to_ref(fresh),
        swd=swd_to_ref(samples),
        swd_floor=swd_to_ref(fresh),
        **extra,
    )


# ================================================================================================
# Frechet distance between Gaussians
# ================================================================================================


def gaussian_fit(features: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (d,) and unbiased covariance (d, d), in float64, of features (n, d), n >= 2."""
    f = np.asarray(features.detach().cpu() if isinstance(features, Tensor) else features)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features: expected shape (n, d) with n >= 2, got {f.shape}")
    f = f.astype(np.float64)
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix, via eigh."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Squared Frechet (Wasserstein-2) distance between N(mu1, sigma1) and N(mu2, sigma2).

        d^2 = |mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2))

    (Dowson & Landau 1982; the FID of Heusel et al. 2017 applies it to Inception features.)
    sigma1 sigma2 is not symmetric, but it is similar to S = sigma1^(1/2) sigma2 sigma1^(1/2),
    which is symmetric PSD with the same eigenvalues, so tr((sigma1 sigma2)^(1/2)) = sum of sqrt
    of eig(S): two symmetric eigendecompositions (numpy, float64) instead of scipy's sqrtm.

    Args:
        mu1, mu2: means (d,); sigma1, sigma2: covariances (d, d), symmetric PSD.

    Returns:
        d^2 >= 0, a float (called "FID" when the features are Inception's).
    """
    mu1, mu2 = (
        np.atleast_1d(np.asarray(mu1, np.float64)),
        np.atleast_1d(np.asarray(mu2, np.float64)),
    )
    sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    for name, value, shape in (
        ("mu1", mu1, (d,)),
        ("mu2", mu2, (d,)),
        ("sigma1", sigma1, (d, d)),
        ("sigma2", sigma2, (d, d)),
    ):
        if value.shape != shape:
            raise ValueError(f"{name}: expected shape {shape}, got {value.shape}")
        if not np.isfinite(value).all():
            raise ValueError(f"{name}: contains NaN or infinite values")
    root1 = _sqrt_psd(sigma1)
    middle = root1 @ sigma2 @ root1
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    tr_sqrt = np.sqrt(np.clip(eig, 0, None)).sum()
    value = float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_sqrt)
    return max(value, 0.0)  # equal Gaussians can give -1e-12 from rounding


# ================================================================================================
# Glyph digits: the probe's verdict
# ================================================================================================


def _probe_on(device: str, weights: str) -> DigitProbe:
    return _probe_cached(device, weights, probe_name(weights))


@functools.lru_cache(maxsize=8)
def _probe_cached(device: str, weights: str, name: str) -> DigitProbe:
    return load_probe(device, weights)  # `name` (the weights' hash) keys the cache


def _weights_path(weights: str | os.PathLike[str] | None) -> str:
    return str(Path(weights or DEFAULT_WEIGHTS).resolve())


def probe_outputs(
    images: Tensor, weights: str | os.PathLike[str] | None = None
) -> tuple[Tensor, Tensor]:
    """Run the digit probe: class probabilities (N, 11) and penultimate features (N, 64).

    Args:
        images: (N, 1, 28, 28) in [-1, 1], on any device (the probe follows them).
        weights: probe weights file (default: the shipped ones).

    Returns:
        probs (N, 11) float32 (columns 0-9 the digits, 10 "not a digit") and features (N, 64),
        both on the CPU.
    """
    return _probe_outputs(_check_images(images), _weights_path(weights))


@torch.no_grad()
def _probe_outputs(images: Tensor, weights: str, batch_size: int = 1024) -> tuple[Tensor, Tensor]:
    """:func:`probe_outputs` for images already checked."""
    probe = _probe_on(str(images.device), weights)
    probs, feats = [], []
    for i in range(0, images.shape[0], batch_size):
        f = probe.feature(images[i : i + batch_size].float())
        probs.append(probe.head(f).softmax(dim=1).cpu())
        feats.append(f.cpu())
    return torch.cat(probs), torch.cat(feats)


@functools.lru_cache(maxsize=16)
def _glyph_reference(n: int, seed: int, weights: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian fit of probe features of glyph_digits(n, seed); cached, notebooks ask repeatedly.

    ``name`` (the weights' hash) is part of the cache key, so retrained weights refit.
    """
    return gaussian_fit(_probe_outputs(glyph_digits(n, seed)[0], weights)[1])


@dataclass(frozen=True)
class DigitReport:
    """The digit probe's verdict on a batch of images; see :func:`digit_report`."""

    n: int  # number of images judged
    threshold: float  # probability needed to call an image a confident digit
    confident_share: float  # share of images called a digit with p >= threshold
    not_a_digit_share: float  # share whose most likely class is "not a digit"
    class_counts: tuple[int, ...]  # (10,) confident images per digit
    coverage: int  # digits holding >= min_share of the confident images (max 10)
    entropy: float  # of the confident images' class histogram, nats (max ln 10)
    digit_fid: float  # Frechet distance, probe features, samples vs reference
    fid_floor: float  # the same between two independent reference sets of n images
    feature_net: str  # e.g. "digit_probe@1a2b3c4d (64-d penultimate)"
    reference: str  # where the reference images came from
    min_share: float = 0.01

    @property
    def max_entropy(self) -> float:
        """ln 10: the entropy of a perfectly balanced histogram over the 10 digits."""
        return math.log(10)

    def summary(self) -> str:
        """One readable line with rounded numbers and the floor, net and count beside the FID."""
        return (
            f"digits n={self.n}: {100 * self.confident_share:.1f}% confident "
            f"(p>={self.threshold:g}), {self.coverage}/10 classes, entropy {self.entropy:.2f}"
            f"/{self.max_entropy:.2f} nats, {100 * self.not_a_digit_share:.1f}% not a digit, "
            f"digit-FID {self.digit_fid:.2f} (data-vs-data floor {self.fid_floor:.2f}; "
            f"{self.feature_net}, n={self.n})"
        )

    def __str__(self) -> str:
        return self.summary()


def digit_report(
    images: Tensor,
    ref_images: Tensor | None = None,
    threshold: float = 0.9,
    *,
    ref_seed: int = REF_SEED,
    min_share: float = 0.01,
    weights: str | os.PathLike[str] | None = None,
) -> DigitReport:
    """Judge digit samples with the digit probe: confident share, coverage, entropy, digit-FID.

    * confident: the probe's most likely class is a digit and its probability >= ``threshold``.
    * coverage: digits holding at least ``min_share`` (1 %) of the confident images (and at least
      one), so a stray misclassification does not count as a class.
    * entropy: -sum_k p_k ln p_k of the confident images' class histogram; ln 10 = 2.303 when
      balanced, 0 when every confident sample is the same digit.
    * digit-FID: :func:`frechet_distance` between Gaussian fits of the probe's 64-d features of
      ``images`` and of n reference images; the floor is the same distance between two
      independent reference sets of n images, so it shows how far the score can drop at this n.
      Expect the floor to shrink as n grows (the estimate is biased upwards, roughly as 1/n),
      and to vary between seeds: at n = 1000, fresh glyph digits scored 2.4 +- 0.4 (12 seeds)
      against a floor of 2.1, pure noise about 12,000. Read "within ~1.5x of the floor" as
      "as good as this metric can tell".

    Args:
        images: (N, 1, 28, 28) in [-1, 1] (clamp sampler output first), N >= 2.
        ref_images: reference images; default fresh ``glyph_digits(N, ref_seed)`` and, for the
            floor, ``glyph_digits(N, ref_seed + 1)``. If given, it needs at least 2N images: a
            random (seeded) half of 2N is the reference, the other half the floor set.
        threshold: probability in (0, 1] needed for a confident digit.
        weights: probe weights file (default: the shipped ones).

    Returns:
        :class:`DigitReport`; ``print(report)`` shows one line.
    """
    images = _check_images(images)
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold: expected a probability in (0, 1], got {threshold}")
    if not 0 <= min_share <= 1:
        raise ValueError(f"min_share: expected a share in [0, 1], got {min_share}")
    n, path = images.shape[0], _weights_path(weights)
    net = probe_name(path)
    probs, feats = _probe_outputs(images, path)
    p, cls = probs.max(dim=1)
    confident = (cls != NOT_A_DIGIT) & (p >= threshold)
    counts = torch.bincount(cls[confident], minlength=NOT_A_DIGIT)[:NOT_A_DIGIT]
    n_conf = int(counts.sum())
    share = counts.double() / max(n_conf, 1)
    coverage = int(((counts > 0) & (share >= min_share)).sum())
    seen = share[share > 0]
    entropy = max(0.0, float(-(seen * seen.log()).sum()))  # max: one class gives -0.0

    if ref_images is None:
        ref_fit = _glyph_reference(n, ref_seed, path, net)
        floor_fit = _glyph_reference(n, ref_seed + 1, path, net)
        reference = f"glyph_digits(n, seed={ref_seed}); floor vs seed {ref_seed + 1}"
    else:
        ref_images = _check_images(ref_images, "ref_images")
        if ref_images.shape[0] < 2 * n:
            raise ValueError(
                f"ref_images: need at least 2 * {n} = {2 * n} images (n for the score, n more for "
                f"the data-vs-data floor), got {ref_images.shape[0]}"
            )
        order = torch.randperm(
            ref_images.shape[0], generator=torch.Generator().manual_seed(ref_seed)
        )
        ref_fit = gaussian_fit(_probe_outputs(ref_images[order[:n]], path)[1])
        floor_fit = gaussian_fit(_probe_outputs(ref_images[order[n : 2 * n]], path)[1])
        reference = f"ref_images ({ref_images.shape[0]}), two random halves of {n}"
    sample_fit = gaussian_fit(feats)
    return DigitReport(
        n=n,
        threshold=threshold,
        confident_share=confident.double().mean().item(),
        not_a_digit_share=(cls == NOT_A_DIGIT).double().mean().item(),
        class_counts=tuple(counts.tolist()),
        coverage=coverage,
        entropy=entropy,
        digit_fid=frechet_distance(*sample_fit, *ref_fit),
        fid_floor=frechet_distance(*ref_fit, *floor_fit),
        feature_net=f"{net} ({feats.shape[1]}-d penultimate)",
        reference=reference,
        min_share=min_share,
    )


@dataclass(frozen=True)
class DigitFloors:
    """What :func:`digit_report` says about real data and about pure noise, at the same n."""

    data: DigitReport  # fresh glyph digits: the best a sampler can score
    noise: DigitReport  # N(0, I) clamped to [-1, 1]: what an untrained sampler emits

    def summary(self) -> str:
        return f"data:  {self.data.summary()}\nnoise: {self.noise.summary()}"

    def __str__(self) -> str:
        return self.summary()


def digit_floors(
    n: int = 1000, seed: int = _FLOOR_SEED, threshold: float = 0.9, ref_seed: int = REF_SEED
) -> DigitFloors:
    """The two ends of the scale for :func:`digit_report` at sample count ``n``.

    ``data`` judges fresh ``glyph_digits(n, seed)``; ``noise`` judges standard normal noise
    (seeded with ``seed``) clamped to [-1, 1]; both against the default glyph reference.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n: expected an int >= 2, got {n!r}")
    if seed in (ref_seed, ref_seed + 1):
        raise ValueError(f"seed: must differ from the reference seeds {ref_seed}, {ref_seed + 1}")
    data = glyph_digits(n, seed)[0]
    noise = torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed)).clamp(-1, 1)
    return DigitFloors(
        data=digit_report(data, threshold=threshold, ref_seed=ref_seed),
        noise=digit_report(noise, threshold=threshold, ref_seed=ref_seed),
    )


# ================================================================================================
# The standard FID, where the user has it
# ================================================================================================

#: Inception weights each backend loads from torch.hub's checkpoint folder (or downloads there).
_INCEPTION_WEIGHTS = {
    "torchmetrics": "weights-inception-2015-12-05-6726825d.pth",  # via torch-fidelity
    "pytorch-fid": "pt_inception-2015-12-05-6726825d.pth",
}
_INSTALL = {
    "torchmetrics": "pip install 'torchmetrics[image]'  (torchmetrics + torch-fidelity)",
    "pytorch-fid": "pip install pytorch-fid",
}


def _backend_available(backend: str) -> bool:
    try:
        if backend == "torchmetrics":
            import torch_fidelity  # noqa: F401
            from torchmetrics.image.fid import FrechetInceptionDistance  # noqa: F401
        else:
            from pytorch_fid.inception import InceptionV3  # noqa: F401
    except ImportError:
        return False
    return True


def _to_uint8_rgb(images: Tensor) -> Tensor:
    """[-1, 1] (N, 1 or 3, H, W) -> uint8 RGB (N, 3, H, W), as if saved to PNG and read back."""
    x = ((images.detach() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def standard_fid(
    samples: Tensor,
    reference: Tensor,
    backend: str = "auto",
    device: str | torch.device = "cpu",
    batch_size: int = 50,
    allow_download: bool = False,
) -> float:
    """The Inception-v3 FID of papers, through torchmetrics or pytorch-fid if installed.

    Images are quantized to uint8 (as a PNG would be), grey ones repeated to RGB, and resized to
    299 x 299 by the backend. Nothing is downloaded unless ``allow_download=True``: the backend's
    Inception weights must already be in torch.hub's checkpoint folder. FIDs from fewer than
    ~10,000 images, or from different backends, are not comparable with published numbers.

    Args:
        samples, reference: (N, 1 or 3, H, W) in [-1, 1].
        backend: "torchmetrics", "pytorch-fid" or "auto" (the first one installed).

    Raises:
        ImportError: no backend installed (the message says what to pip install).
        FileNotFoundError: the Inception weights are not cached and ``allow_download`` is False.
    """
    samples = _check_images(samples, "samples", channels=(1, 3))
    reference = _check_images(reference, "reference", channels=(1, 3))
    if backend not in ("auto", *_INCEPTION_WEIGHTS):
        raise ValueError(
            f"backend: expected 'auto', 'torchmetrics' or 'pytorch-fid', got {backend!r}"
        )
    candidates = tuple(_INCEPTION_WEIGHTS) if backend == "auto" else (backend,)
    found = [b for b in candidates if _backend_available(b)]
    if not found:
        raise ImportError(
            f"standard_fid needs {' or '.join(candidates)}, which is not installed. Install one: "
            + "; or ".join(_INSTALL[b] for b in candidates)
            + ". For an offline number use digit_report(...).digit_fid instead."
        )
    backend = found[0]
    checkpoint = Path(torch.hub.get_dir()) / "checkpoints" / _INCEPTION_WEIGHTS[backend]
    if not checkpoint.is_file() and not allow_download:
        raise FileNotFoundError(
            f"standard_fid: the Inception weights for {backend} are not at {checkpoint}; pass "
            "allow_download=True to let the backend fetch them (about 100 MB), or copy them there."
        )
    x_fake, x_real = _to_uint8_rgb(samples), _to_uint8_rgb(reference)
    if backend == "torchmetrics":
        from torchmetrics.image.fid import FrechetInceptionDistance

        metric = FrechetInceptionDistance(feature=2048).to(device)
        for x, real in ((x_real, True), (x_fake, False)):
            for i in range(0, x.shape[0], batch_size):
                metric.update(x[i : i + batch_size].to(device), real=real)
        return float(metric.compute())

    from pytorch_fid.inception import InceptionV3

    model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).to(device).eval()

    @torch.no_grad()
    def features(x: Tensor) -> np.ndarray:
        out = []
        for i in range(0, x.shape[0], batch_size):
            batch = x[i : i + batch_size].to(device).float() / 255  # InceptionV3 expects [0, 1]
            out.append(model(batch)[0].flatten(1).cpu())
        return torch.cat(out).numpy()

    return frechet_distance(*gaussian_fit(features(x_fake)), *gaussian_fit(features(x_real)))
