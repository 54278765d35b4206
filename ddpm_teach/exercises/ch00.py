"""Chapter 00 exercises: why diffusion. Mode coverage, the GAN's losses, the VAE's sampling trick
and its bound: the pieces the chapter measures GANs and VAEs with."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import baselines, metrics
from ..data import EIGHT_GAUSSIANS_CENTERS
from . import exercise


def _as_tensors(out: Any) -> tuple[Tensor, ...]:
    """Numbers and tensors of a returned tuple, all as tensors (so ints and floats compare)."""
    return tuple(torch.as_tensor(v) for v in out)


# ------------------------------------------------------------------------------- mode coverage
def _mode_cases() -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(0)
    centers = EIGHT_GAUSSIANS_CENTERS.double()
    # Case 1: the eight Gaussians, modes given 40, 30, 5 (exactly min_count), 3, 0, ... samples,
    # plus points scattered between the modes.
    per_mode = [40, 30, 5, 3, 0, 12, 0, 20]
    near = [centers[k] + 0.08 * torch.randn(m, 2, generator=g, dtype=torch.float64)
            for k, m in enumerate(per_mode)]  # fmt: skip
    stray = 3 * torch.rand(25, 2, generator=g, dtype=torch.float64) - 1.5
    case1 = torch.cat([*near, stray])[torch.randperm(135, generator=g)]
    # Case 2: a radius of 1.0 > half the distance between neighbours (0.77): points between two
    # modes lie within the radius of both, but count only for the nearest.
    angle = 2 * math.pi * torch.rand(300, generator=g, dtype=torch.float64)
    radius = 2 + 0.3 * torch.randn(300, generator=g, dtype=torch.float64)
    case2 = torch.stack([radius * angle.cos(), radius * angle.sin()], dim=1)
    # Case 3: three modes in 3-D, radius 2 (so distance and squared distance disagree).
    centers3 = torch.tensor(
        [[0.0, 0.0, 0.0], [5.0, 0.0, 0.0], [0.0, 5.0, 5.0]], dtype=torch.float64
    )
    picks = torch.tensor([0] * 30 + [1] * 10 + [2] * 4)
    case3 = centers3[picks] + 1.2 * torch.randn(44, 3, generator=g, dtype=torch.float64)
    return [
        {"samples": case1, "centers": centers, "radius": torch.tensor(0.3, dtype=torch.float64),
         "min_count": torch.tensor(5)},
        {"samples": case2, "centers": centers, "radius": torch.tensor(1.0, dtype=torch.float64),
         "min_count": torch.tensor(30)},
        {"samples": case3, "centers": centers3, "radius": torch.tensor(2.0, dtype=torch.float64),
         "min_count": torch.tensor(4)},
    ]  # fmt: skip


@exercise(
    "mode-coverage",
    chapter="00",
    title="Counting covered modes",
    task=(
        "return (modes_hit, share_near, per_mode_counts): per_mode_counts[k] is the number of "
        "samples whose nearest centre is centers[k] and whose Euclidean distance to it is at most "
        "radius, shape (K,); share_near is the share of all samples counted there (a number in "
        "[0, 1]); modes_hit is the number of modes with at least min_count samples."
    ),
    cases=_mode_cases,
    normalize=_as_tensors,
)
def count_modes(
    samples: Tensor, centers: Tensor, radius: Tensor, min_count: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    m = metrics.mode_coverage(
        samples, centers, radius=float(radius), min_share=0.0, min_count=int(min_count)
    )
    return torch.tensor(m.modes_hit), torch.tensor(m.share_near), m.per_mode_counts


def _counts(samples, centers, radius, min_count, *, distance=None, nearest=True, rule=None):
    """(modes_hit, share_near, counts) with a chosen distance, assignment and covering rule."""
    d = torch.cdist(samples, centers) if distance is None else distance(samples, centers)
    if nearest:
        best, which = d.min(dim=1)
        near = best <= radius
        counts = torch.bincount(which[near], minlength=centers.shape[0])
    else:  # a sample counts for every centre within the radius
        within = d <= radius
        near = within.any(dim=1)
        counts = within.sum(dim=0)
    hit = (counts >= min_count) if rule is None else rule(counts, min_count)
    return hit.sum(), near.double().mean(), counts


@count_modes.mistake(
    "no-radius",
    "you counted every sample for its nearest mode, however far from it: a point halfway between "
    "two modes is a sample of neither. Count a sample only when its distance to its nearest "
    "centre is at most radius (then share_near is below 1 for a sampler that strays).",
)
def _(samples, centers, radius, min_count):
    return _counts(samples, centers, torch.tensor(math.inf), min_count)


@count_modes.mistake(
    "every-centre-within-radius",
    "some samples were counted for two modes: you counted a sample for every centre within "
    "radius. Each sample belongs to its nearest centre only (argmin of the distances), and counts "
    "there if that distance is at most radius.",
)
def _(samples, centers, radius, min_count):
    return _counts(samples, centers, radius, min_count, nearest=False)


@count_modes.mistake(
    "squared-distance",
    "you compared the squared distance with radius: either take the square root (torch.cdist "
    "gives distances) or compare with radius ** 2.",
)
def _(samples, centers, radius, min_count):
    return _counts(
        samples, centers, radius, min_count, distance=lambda a, b: torch.cdist(a, b).square()
    )


@count_modes.mistake(
    "min-count-ignored",
    "a mode with a few stray samples counted as covered: you counted every mode with at least "
    "one sample. A mode is covered only with at least min_count samples.",
)
def _(samples, centers, radius, min_count):
    return _counts(samples, centers, radius, min_count, rule=lambda c, m: c > 0)


@count_modes.mistake(
    "strict-threshold",
    "a mode with exactly min_count samples must count as covered: use `counts >= min_count`, "
    "not `>`.",
)
def _(samples, centers, radius, min_count):
    return _counts(samples, centers, radius, min_count, rule=lambda c, m: c > m)


@count_modes.mistake(
    "count-not-share",
    "share_near must be a share of all samples, a number in [0, 1]: you returned how many "
    "samples are near a mode; divide by the number of samples.",
)
def _(samples, centers, radius, min_count):
    hit, share, counts = _counts(samples, centers, radius, min_count)
    return hit, share * samples.shape[0], counts


# ------------------------------------------------------------------------------- GAN losses
def _gan_cases() -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(1)
    out = []
    for n_real, n_fake in [(6, 4), (5, 9), (12, 12)]:
        real = 4 * torch.rand(n_real, generator=g, dtype=torch.float64) - 1.5
        fake = 4 * torch.rand(n_fake, generator=g, dtype=torch.float64) - 2.5
        out.append({"real_logits": real, "fake_logits": fake})
    return out


@exercise(
    "gan-loss",
    chapter="00",
    title="The GAN's two losses",
    task=(
        "given the discriminator's logits u on data (real_logits) and on generated points "
        "(fake_logits), with D = sigmoid(u), return (d_loss, g_loss): d_loss = -mean log D(real) "
        "- mean log(1 - D(fake)), and the non-saturating g_loss = -mean log D(fake); two scalars."
    ),
    cases=_gan_cases,
    normalize=_as_tensors,
)
def gan_losses(real_logits: Tensor, fake_logits: Tensor) -> tuple[Tensor, Tensor]:
    return baselines.gan_losses(real_logits, fake_logits)


@gan_losses.mistake(
    "saturating",
    "your g_loss is the original minimax one, mean log(1 - D(fake)): when D confidently rejects "
    "the fakes (D(fake) near 0, early in training) its gradient vanishes. The non-saturating "
    "loss of Goodfellow et al. (section 3) is -mean log D(fake).",
)
def _(real_logits, fake_logits):
    d, _ = baselines.gan_losses(real_logits, fake_logits)
    return d, -F.softplus(fake_logits).mean()


@gan_losses.mistake(
    "g-loss-sign",
    "your g_loss has the wrong sign: you returned mean log D(fake), which the generator would "
    "make *smaller* by getting caught. Minimising -mean log D(fake) pushes D(fake) up.",
)
def _(real_logits, fake_logits):
    d, g = baselines.gan_losses(real_logits, fake_logits)
    return d, -g


@gan_losses.mistake(
    "labels-swapped",
    "your discriminator has real and fake swapped: it is rewarded for calling data fake. d_loss "
    "is -mean log D(real) - mean log(1 - D(fake)), with D = sigmoid(logit).",
)
def _(real_logits, fake_logits):
    swapped, _ = baselines.gan_losses(fake_logits, real_logits)
    return swapped, baselines.gan_losses(real_logits, fake_logits)[1]


@gan_losses.mistake(
    "no-fake-term",
    "your d_loss only has the data term -mean log D(real): D must also learn to reject the "
    "generated points, - mean log(1 - D(fake)).",
)
def _(real_logits, fake_logits):
    _, g = baselines.gan_losses(real_logits, fake_logits)
    return F.softplus(-real_logits).mean(), g


@gan_losses.mistake(
    "sum-not-mean",
    "you summed over the batch: take the mean over each batch, so that the losses do not grow "
    "with the batch size (and the two terms of d_loss weigh the same when the batches differ).",
)
def _(real_logits, fake_logits):
    d = F.softplus(-real_logits).sum() + F.softplus(fake_logits).sum()
    return d, F.softplus(-fake_logits).sum()


@gan_losses.mistake(
    "sigmoid-twice",
    "the sigmoid was applied twice: the inputs are logits u, and D = sigmoid(u) once. Passing "
    "sigmoid(u) to `F.binary_cross_entropy_with_logits` (or `F.softplus`) applies it again; "
    "give those the logits themselves.",
)
def _(real_logits, fake_logits):
    return baselines.gan_losses(torch.sigmoid(real_logits), torch.sigmoid(fake_logits))


# ------------------------------------------------------------------------------- reparameterise
def _reparam_cases() -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(2)
    out = []
    for shape in [(4, 2), (3, 5), (6, 1)]:
        mu = torch.randn(shape, generator=g, dtype=torch.float64)
        logvar = 5 * torch.rand(shape, generator=g, dtype=torch.float64) - 3.5  # in [-3.5, 1.5)
        eps = torch.randn(shape, generator=g, dtype=torch.float64)
        out.append({"mu": mu, "logvar": logvar, "eps": eps})
    return out


@exercise(
    "reparameterise",
    chapter="00",
    title="The reparameterisation trick",
    task=(
        "return z = mu + sigma * eps with sigma = exp(logvar / 2), the standard deviation of "
        "q(z | x) = N(mu, diag sigma^2); shape (B, L) like mu."
    ),
    cases=_reparam_cases,
)
def reparameterise(mu: Tensor, logvar: Tensor, eps: Tensor) -> Tensor:
    return baselines.reparameterise(mu, logvar, eps)


@reparameterise.mistake(
    "variance-as-std",
    "you scaled eps by exp(logvar) = sigma^2, the variance; the standard deviation is "
    "exp(logvar / 2) (logvar is the log of the variance, not of the standard deviation).",
)
def _(mu, logvar, eps):
    return mu + logvar.exp() * eps


@reparameterise.mistake(
    "logvar-as-std",
    "you scaled eps by logvar itself: it is the *log* of the variance (it can be negative); the "
    "standard deviation is exp(logvar / 2).",
)
def _(mu, logvar, eps):
    return mu + logvar * eps


@reparameterise.mistake(
    "precision",
    "you scaled eps by exp(-logvar / 2) = 1 / sigma: the sign in the exponent is wrong. "
    "sigma = exp(+logvar / 2).",
)
def _(mu, logvar, eps):
    return mu + torch.exp(-0.5 * logvar) * eps


@reparameterise.mistake(
    "forgot-mean",
    "you forgot the mean: sigma * eps is a draw from N(0, sigma^2); shift it by mu.",
)
def _(mu, logvar, eps):
    return torch.exp(0.5 * logvar) * eps


@reparameterise.mistake(
    "no-noise",
    "you returned the mean mu: z must be a random draw, mu + sigma * eps. Without eps the "
    "decoder never sees the spread of q(z | x), and the bound is not the ELBO.",
)
def _(mu, logvar, eps):
    return mu.clone()


# ------------------------------------------------------------------------------- the ELBO
def _elbo_cases() -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(3)
    out = []
    for b, d, latent, sigma in [(4, 2, 3, 0.1), (3, 5, 2, 0.5), (5, 3, 1, 2.0)]:
        x = torch.randn(b, d, generator=g, dtype=torch.float64)
        x_mean = x + 2 * sigma * torch.randn(b, d, generator=g, dtype=torch.float64)
        mu = torch.randn(b, latent, generator=g, dtype=torch.float64)
        logvar = 4 * torch.rand(b, latent, generator=g, dtype=torch.float64) - 3  # in [-3, 1)
        out.append(
            {"x": x, "x_mean": x_mean, "sigma": torch.tensor(sigma, dtype=torch.float64),
             "mu": mu, "logvar": logvar}
        )  # fmt: skip
    return out


@exercise(
    "elbo-gaussian",
    chapter="00",
    title="The ELBO of a Gaussian VAE",
    task=(
        "return the ELBO of each example, shape (B,): log N(x; x_mean, sigma^2 I) - KL(N(mu, "
        "diag exp(logvar)) || N(0, I)), where log N(x; m, sigma^2 I) = -|x - m|^2 / (2 sigma^2) "
        "- (D / 2) log(2 pi sigma^2) and KL = 1/2 sum_j (mu_j^2 + exp(logvar_j) - 1 - logvar_j), "
        "each summed over its coordinates."
    ),
    cases=_elbo_cases,
    hint="One number per example: sum over the coordinates (dim=-1), not over the batch.",
)
def gaussian_elbo(x: Tensor, x_mean: Tensor, sigma: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    return baselines.gaussian_elbo(x, x_mean, sigma, mu, logvar)


def _log_lik(x, m, sigma, scale=None, normaliser=True):
    """log N(x; m, sigma^2 I) summed over coordinates, optionally with the wrong variance."""
    var = sigma**2 if scale is None else scale
    out = -(x - m).square().sum(-1) / (2 * var)
    if normaliser:
        out = out - 0.5 * x.shape[-1] * torch.log(2 * math.pi * var)
    return out


def _kl(mu, logvar):
    return baselines.gaussian_kl(mu, logvar)


@gaussian_elbo.mistake(
    "kl-added",
    "you added the KL term: the ELBO is the expected log-likelihood *minus* KL(q(z | x) || p(z)); "
    "the KL is the price of the encoder straying from the prior.",
)
def _(x, x_mean, sigma, mu, logvar):
    return _log_lik(x, x_mean, sigma) + _kl(mu, logvar)


@gaussian_elbo.mistake(
    "no-normaliser",
    "your reconstruction term is only -|x - x_mean|^2 / (2 sigma^2): log N(x; m, sigma^2 I) also "
    "has -(D / 2) log(2 pi sigma^2). It does not change the gradients when sigma is fixed, but "
    "without it the number is not a bound on log p(x).",
)
def _(x, x_mean, sigma, mu, logvar):
    return _log_lik(x, x_mean, sigma, normaliser=False) - _kl(mu, logvar)


@gaussian_elbo.mistake(
    "sigma-as-variance",
    "you used sigma where sigma^2 belongs: sigma is the decoder's standard deviation, so the "
    "squared error is divided by 2 sigma^2 and the normaliser is (D / 2) log(2 pi sigma^2).",
)
def _(x, x_mean, sigma, mu, logvar):
    return _log_lik(x, x_mean, sigma, scale=sigma) - _kl(mu, logvar)


@gaussian_elbo.mistake(
    "squared-error-unscaled",
    "your reconstruction term is the plain squared error: a Gaussian decoder divides it by "
    "2 sigma^2 (and adds -(D / 2) log(2 pi sigma^2)); sigma sets how much the reconstruction "
    "weighs against the KL.",
)
def _(x, x_mean, sigma, mu, logvar):
    return -(x - x_mean).square().sum(-1) - _kl(mu, logvar)


@gaussian_elbo.mistake(
    "kl-missing-half",
    "your KL is twice too large: KL(N(mu, sigma^2) || N(0, 1)) = 1/2 (mu^2 + sigma^2 - 1 - "
    "log sigma^2) per coordinate; the 1/2 is missing.",
)
def _(x, x_mean, sigma, mu, logvar):
    return _log_lik(x, x_mean, sigma) - 2 * _kl(mu, logvar)


@gaussian_elbo.mistake(
    "logvar-as-log-std",
    "your KL treats logvar as the log of the standard deviation (exp(2 logvar), 2 logvar): "
    "logvar is the log of the variance, so sigma^2 = exp(logvar) and log sigma^2 = logvar.",
)
def _(x, x_mean, sigma, mu, logvar):
    return _log_lik(x, x_mean, sigma) - _kl(mu, 2 * logvar)


@gaussian_elbo.mistake(
    "mean-over-coordinates",
    "you averaged over the coordinates: the log-density of independent coordinates is the *sum* "
    "of their log-densities, and so is the KL of a diagonal Gaussian; sum over dim=-1.",
)
def _(x, x_mean, sigma, mu, logvar):
    return _log_lik(x, x_mean, sigma) / x.shape[-1] - _kl(mu, logvar) / mu.shape[-1]


@gaussian_elbo.mistake(
    "batch-mean",
    "you returned the mean over the batch: the exercise asks for one ELBO per example, shape "
    "(B,) (a training loss would then take -elbo.mean()).",
)
def _(x, x_mean, sigma, mu, logvar):
    return (_log_lik(x, x_mean, sigma) - _kl(mu, logvar)).mean()
