"""Chapter 06 exercises: evaluation.

bits-per-dim        the bound of eq. 5 in nats per image, turned into bits per dimension
gaussian-kl         KL between two Gaussians, the building block of every term of the bound
frechet-1d          the Frechet distance of two 1-D Gaussians, the FID in one dimension
nearest-neighbour   each sample's nearest training image, the memorisation check
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..likelihood import gaussian_kl as _package_gaussian_kl
from ..metrics import frechet_distance as _package_frechet
from . import exercise


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------- bits-per-dim
def _bpd_cases() -> list[dict[str, Any]]:
    # Images with one and with three channels, and 2-D points: D = 784, 192 and 2. Values around
    # a few bits per dimension, as a real bound gives.
    g = _g(60)
    out = []
    for shape in [(4, 1, 28, 28), (3, 3, 8, 8), (5, 2)]:
        x0 = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
        dims = math.prod(shape[1:])
        bits = 1 + 4 * torch.rand(shape[0], generator=g, dtype=torch.float64)
        out.append({"nats": bits * dims * math.log(2), "x0": x0})
    return out


@exercise(
    "bits-per-dim",
    chapter="06",
    title="Nats per image to bits per dimension",
    task=(
        "given the bound in nats per example, `nats` of shape (B,), and the batch `x0` of shape "
        "(B, ...) it was computed on, return the bound in bits per dimension, shape (B,): divide "
        "by ln 2 (nats to bits) and by D, the number of values in one example (784 for a 28 x 28 "
        "grey image, 3072 for a 32 x 32 colour one)."
    ),
    cases=_bpd_cases,
    hint="One number per example: D is the size of one example, x0[0].numel(), not of the batch.",
)
def bits_per_dim(nats: Tensor, x0: Tensor) -> Tensor:
    # The last line of likelihood.bits_per_dim, which computes the nats itself with vlb(...).
    return nats / (x0[0].numel() * math.log(2))


@bits_per_dim.mistake(
    "nats-per-dim",
    "you divided by D only: that is nats per dimension. A bit is ln 2 = 0.693 nats, so divide by "
    "D ln 2 (your numbers are 1.44 times too small).",
)
def _(nats, x0):
    return nats / x0[0].numel()


@bits_per_dim.mistake(
    "bits-per-image",
    "you converted to bits but did not divide by the number of dimensions D = x0[0].numel(): "
    "that is bits per image. Bits per dimension divides by D as well, so that images of "
    "different sizes compare.",
)
def _(nats, x0):
    return nats / math.log(2)


@bits_per_dim.mistake(
    "times-ln2",
    "you multiplied by ln 2; going from nats to bits divides by ln 2 (one bit is ln 2 = 0.693 "
    "nats, so there are more bits than nats).",
)
def _(nats, x0):
    return nats * math.log(2) / x0[0].numel()


@bits_per_dim.mistake(
    "log10",
    "you divided by ln 10, which gives decimal digits (bans); bits need ln 2.",
)
def _(nats, x0):
    return nats / (x0[0].numel() * math.log(10))


@bits_per_dim.mistake(
    "batch-size-in-d",
    "you divided by x0.numel(), the values of the whole batch; D is the size of one example, "
    "x0[0].numel(), because `nats` already holds one number per example.",
)
def _(nats, x0):
    return nats / (x0.numel() * math.log(2))


@bits_per_dim.mistake(
    "pixels-not-values",
    "you counted pixels, H * W, and left out the channels; every value is a dimension, so D = "
    "C * H * W = x0[0].numel() (3072, not 1024, for CIFAR-10).",
)
def _(nats, x0):
    return nats / (x0.shape[-1] * x0.shape[-2] * math.log(2))


@bits_per_dim.mistake(
    "batch-mean",
    "you averaged over the batch; return one number per example, shape (B,) (the notebook "
    "averages afterwards).",
)
def _(nats, x0):
    return (nats / (x0[0].numel() * math.log(2))).mean()


# ----------------------------------------------------------------------------------- gaussian-kl
def _kl_cases() -> list[dict[str, Any]]:
    # Variances between 0.05 and 3 on both sides, so that swapping them or dropping a square
    # root always moves the answer; the second case broadcasts one variance over an image.
    g = _g(61)
    out = []
    for shape, var2_shape in [((4, 2), (4, 2)), ((3, 1, 4, 4), (3, 1, 1, 1)), ((6,), (6,))]:
        m1 = torch.randn(shape, generator=g, dtype=torch.float64)
        m2 = m1 + torch.randn(shape, generator=g, dtype=torch.float64)
        v1 = 0.05 + 2.95 * torch.rand(shape, generator=g, dtype=torch.float64)
        v2 = 0.05 + 2.95 * torch.rand(var2_shape, generator=g, dtype=torch.float64)
        out.append({"mean1": m1, "var1": v1, "mean2": m2, "var2": v2})
    return out


@exercise(
    "gaussian-kl",
    chapter="06",
    title="KL between two Gaussians",
    task=(
        "return KL(N(mean1, var1) || N(mean2, var2)) elementwise, in nats: "
        "1/2 (log(var2 / var1) + (var1 + (mean1 - mean2)^2) / var2 - 1). The arguments are "
        "variances, not standard deviations, and broadcast against each other."
    ),
    cases=_kl_cases,
    hint="Elementwise: one KL per value, the broadcast shape of the inputs; do not sum.",
)
def gaussian_kl(mean1: Tensor, var1: Tensor, mean2: Tensor, var2: Tensor) -> Tensor:
    return _package_gaussian_kl(mean1, var1, mean2, var2)


def _kl(m1: Tensor, v1: Tensor, m2: Tensor, v2: Tensor) -> Tensor:
    return 0.5 * (torch.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / v2 - 1)


@gaussian_kl.mistake(
    "reversed",
    "you computed KL(N(mean2, var2) || N(mean1, var1)), the other direction: the KL is not "
    "symmetric. In the bound the first argument is the forward posterior q and the second the "
    "model p_theta, and the variance that divides is the second one, var2.",
)
def _(mean1, var1, mean2, var2):
    return _kl(mean2, var2, mean1, var1)


@gaussian_kl.mistake(
    "no-half",
    "your KL is twice too large: the factor 1/2 in front is missing.",
)
def _(mean1, var1, mean2, var2):
    return 2 * _kl(mean1, var1, mean2, var2)


@gaussian_kl.mistake(
    "variance-squared",
    "you treated var1 and var2 as standard deviations (squaring them, or taking 2 log of their "
    "ratio); they already are variances.",
)
def _(mean1, var1, mean2, var2):
    return _kl(mean1, var1**2, mean2, var2**2)


@gaussian_kl.mistake(
    "std-as-variance",
    "you used the standard deviations sqrt(var1), sqrt(var2) where the variances belong; the "
    "formula takes the variances themselves.",
)
def _(mean1, var1, mean2, var2):
    return _kl(mean1, var1.sqrt(), mean2, var2.sqrt())


@gaussian_kl.mistake(
    "minus-one-missing",
    "the -1 is missing: check that two identical Gaussians give KL = 0 (yours gives 1/2 for "
    "each value).",
)
def _(mean1, var1, mean2, var2):
    return _kl(mean1, var1, mean2, var2) + 0.5


@gaussian_kl.mistake(
    "log-ratio-flipped",
    "the log term is upside down: it is log(var2 / var1), the log of the second variance over "
    "the first.",
)
def _(mean1, var1, mean2, var2):
    return _kl(mean1, var1, mean2, var2) - torch.log(var2 / var1)


@gaussian_kl.mistake(
    "divided-by-var1",
    "you divided the squared mean difference by var1; both var1 and (mean1 - mean2)^2 are "
    "divided by var2, the variance of the second Gaussian.",
)
def _(mean1, var1, mean2, var2):
    return 0.5 * (torch.log(var2 / var1) + var1 / var2 + (mean1 - mean2) ** 2 / var1 - 1)


@gaussian_kl.mistake(
    "summed",
    "you summed over all values; return the KL of each value (elementwise). The bound sums over "
    "an image's values later, one sum per image.",
)
def _(mean1, var1, mean2, var2):
    return _kl(mean1, var1, mean2, var2).sum()


# ------------------------------------------------------------------------------------ frechet-1d
def _frechet_cases() -> list[dict[str, Any]]:
    g = _g(62)
    out = []
    for n in (5, 4, 6):
        mu1 = torch.randn(n, generator=g, dtype=torch.float64)
        mu2 = mu1 + 2 * torch.randn(n, generator=g, dtype=torch.float64)
        var1 = 0.1 + 3 * torch.rand(n, generator=g, dtype=torch.float64)
        var2 = 0.1 + 3 * torch.rand(n, generator=g, dtype=torch.float64)
        out.append({"mu1": mu1, "var1": var1, "mu2": mu2, "var2": var2})
    return out


@exercise(
    "frechet-1d",
    chapter="06",
    title="The Frechet distance of two 1-D Gaussians",
    task=(
        "return the squared Frechet distance between N(mu1, var1) and N(mu2, var2), elementwise "
        "(shape (B,)): (mu1 - mu2)^2 + var1 + var2 - 2 sqrt(var1 var2). This is the FID's "
        "formula |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) in one dimension."
    ),
    cases=_frechet_cases,
    hint="One distance per pair of Gaussians, shape (B,); do not sum or average.",
)
def frechet_1d(mu1: Tensor, var1: Tensor, mu2: Tensor, var2: Tensor) -> Tensor:
    # metrics.frechet_distance, the digit-FID's formula, on 1 x 1 covariances one pair at a time.
    values = [
        _package_frechet(np.array([m1]), np.array([[v1]]), np.array([m2]), np.array([[v2]]))
        for m1, v1, m2, v2 in zip(
            mu1.tolist(), var1.tolist(), mu2.tolist(), var2.tolist(), strict=True
        )
    ]
    return torch.tensor(values, dtype=torch.float64)


def _fd(mu1: Tensor, var1: Tensor, mu2: Tensor, var2: Tensor) -> Tensor:
    # = (mu1 - mu2)^2 + var1 + var2 - 2 sqrt(var1 var2), written so that it cannot go below 0
    return (mu1 - mu2) ** 2 + (var1.sqrt() - var2.sqrt()) ** 2


@frechet_1d.mistake(
    "not-squared",
    "you returned the distance itself, sqrt(...); the FID (and this exercise) report its "
    "square: (mu1 - mu2)^2 + var1 + var2 - 2 sqrt(var1 var2).",
)
def _(mu1, var1, mu2, var2):
    return _fd(mu1, var1, mu2, var2).sqrt()


@frechet_1d.mistake(
    "variance-difference",
    "you compared the variances, (var1 - var2)^2; the formula compares the standard deviations: "
    "var1 + var2 - 2 sqrt(var1 var2) = (sqrt(var1) - sqrt(var2))^2.",
)
def _(mu1, var1, mu2, var2):
    return (mu1 - mu2) ** 2 + (var1 - var2) ** 2


@frechet_1d.mistake(
    "no-sqrt-in-cross-term",
    "the cross term is 2 sqrt(var1 var2), the 1-D case of 2 tr((S1 S2)^(1/2)); you left out the "
    "square root.",
)
def _(mu1, var1, mu2, var2):
    return (mu1 - mu2) ** 2 + var1 + var2 - 2 * var1 * var2


@frechet_1d.mistake(
    "missing-factor-2",
    "the cross term needs its factor 2: - 2 sqrt(var1 var2). Check that two equal Gaussians "
    "give 0.",
)
def _(mu1, var1, mu2, var2):
    return (mu1 - mu2) ** 2 + var1 + var2 - (var1 * var2).sqrt()


@frechet_1d.mistake(
    "means-only",
    "you compared the means only; the Frechet distance also compares the spreads: add "
    "var1 + var2 - 2 sqrt(var1 var2). (Two sets with the same mean but different variety must "
    "not score 0.)",
)
def _(mu1, var1, mu2, var2):
    return (mu1 - mu2) ** 2


@frechet_1d.mistake(
    "absolute-mean-difference",
    "the mean term is squared: (mu1 - mu2)^2, not |mu1 - mu2|.",
)
def _(mu1, var1, mu2, var2):
    return (mu1 - mu2).abs() + var1 + var2 - 2 * (var1 * var2).sqrt()


@frechet_1d.mistake(
    "summed",
    "you summed over the pairs; return one distance per pair, shape (B,).",
)
def _(mu1, var1, mu2, var2):
    return _fd(mu1, var1, mu2, var2).sum()


# ----------------------------------------------------------------------------- nearest-neighbour
def _nn_cases() -> list[dict[str, Any]]:
    g = _g(63)
    out = []
    for n, m, shape in [(4, 9, (1, 5, 5)), (3, 7, (2, 3, 3)), (5, 6, (4,))]:
        train = torch.rand((m, *shape), generator=g, dtype=torch.float64) * 2 - 1
        samples = torch.rand((n, *shape), generator=g, dtype=torch.float64) * 2 - 1
        samples[0] = train[2] + 0.01  # one near-copy of a training image
        out.append({"samples": samples, "train": train})
    return out


def _distances(samples: Tensor, train: Tensor) -> Tensor:
    return torch.cdist(samples.flatten(1), train.flatten(1))


@exercise(
    "nearest-neighbour",
    chapter="06",
    title="Each sample's nearest training image",
    task=(
        "for each sample, shape (N, ...), find the nearest image of `train`, shape (M, ...), by "
        "the Euclidean distance over all values (flatten each image); return (distances, "
        "indices), both of shape (N,): the distance to it and its index in `train`."
    ),
    cases=_nn_cases,
    hint="One (distance, index) per sample: shapes (N,) and (N,).",
)
def nearest_neighbour(samples: Tensor, train: Tensor) -> tuple[Tensor, Tensor]:
    dist, idx = _distances(samples, train).min(dim=1)
    return dist, idx


@nearest_neighbour.mistake(
    "squared",
    "your distances are squared; return the Euclidean distance itself, sqrt(sum of squared "
    "differences) (the nearest image is right).",
)
def _(samples, train):
    dist, idx = _distances(samples, train).min(dim=1)
    return dist**2, idx


@nearest_neighbour.mistake(
    "farthest",
    "you found the farthest training image (max); the nearest one is the min over `train`.",
)
def _(samples, train):
    dist, idx = _distances(samples, train).max(dim=1)
    return dist, idx


@nearest_neighbour.mistake(
    "wrong-direction",
    "you found, for each training image, its nearest sample (M results); the check goes the "
    "other way: for each sample, its nearest training image (N results).",
)
def _(samples, train):
    dist, idx = _distances(samples, train).min(dim=0)
    return dist, idx


@nearest_neighbour.mistake(
    "per-value-rms",
    "you divided by sqrt(D) (a root-mean-square per value); return the plain Euclidean distance "
    "over all D values.",
)
def _(samples, train):
    dist, idx = _distances(samples, train).min(dim=1)
    return dist / math.sqrt(samples[0].numel()), idx


@nearest_neighbour.mistake(
    "l1",
    "you used the sum of absolute differences (L1); the task asks for the Euclidean (L2) distance.",
)
def _(samples, train):
    dist, idx = torch.cdist(samples.flatten(1), train.flatten(1), p=1).min(dim=1)
    return dist, idx


@nearest_neighbour.mistake(
    "mean-distance",
    "you returned the mean distance to all training images; the check needs the nearest one, "
    "the min (a copy of one training image hides in a mean).",
)
def _(samples, train):
    d = _distances(samples, train)
    return d.mean(dim=1), d.argmin(dim=1)
