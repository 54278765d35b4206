"""The variational bound on -log p_theta(x_0), term by term (DDPM eq. 5).

    L = E_q[ D_KL(q(x_T | x_0) || p(x_T))                                      L_T, the prior term
           + sum_{t>1} D_KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t))    L_{t-1}, the denoising terms
           - log p_theta(x_0 | x_1) ]                                            L_0, the decoder

Every KL is between Gaussians and is computed in closed form; only x_t is sampled (one draw of
q(x_t | x_0) per term). With step indices t = 0..T-1 standing for the paper's 1..T, index 0 holds the
decoder term L_0 and index t >= 1 the KL term whose model step starts at x_t.

The decoder is either the paper's discretised Gaussian over 256 bins of [-1, 1] (eq. 13, for 8-bit
images, giving a true bound on a discrete likelihood and so bits/dim) or a plain Gaussian density
(for continuous data such as the toy sets; then the bound is on a density).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from .sampling import Model, _reverse_variance, model_eps
from .schedule import NoiseSchedule

__all__ = [
    "DECODERS",
    "VLBTerms",
    "bits_per_dim",
    "discretized_gaussian_log_likelihood",
    "gaussian_kl",
    "vlb",
]

DECODERS = ("discretized", "gaussian")


class VLBTerms(NamedTuple):
    """The bound split into its terms, all in nats per example.

    prior: L_T, shape (B,).
    terms: shape (B, T): terms[:, 0] is the decoder term L_0 = -log p(x_0 | x_1); terms[:, t] for
        t >= 1 is the KL of the reverse step out of x_t (the paper's L_{t-1} with t counted from 1).
    """

    prior: Tensor
    terms: Tensor

    @property
    def total(self) -> Tensor:
        """The negative ELBO, shape (B,)."""
        return self.prior + self.terms.sum(dim=1)


def gaussian_kl(mean1: Tensor, var1: Tensor, mean2: Tensor, var2: Tensor) -> Tensor:
    """Elementwise KL(N(mean1, var1) || N(mean2, var2)) in nats (tensors broadcast)."""
    return 0.5 * (var2.log() - var1.log() + (var1 + (mean1 - mean2) ** 2) / var2 - 1.0)


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """log P(x) for 8-bit data in [-1, 1] under N(mean, std^2) binned into 256 levels (eq. 13).

    Each value owns the interval x +- 1/255; the end bins extend to -inf and +inf.
    """
    upper = torch.where(x > 0.999, torch.full_like(x, math.inf), x + 1 / 255)
    lower = torch.where(x < -0.999, torch.full_like(x, -math.inf), x - 1 / 255)
    cdf_upper = torch.special.ndtr((upper - mean) / std)
    cdf_lower = torch.special.ndtr((lower - mean) / std)
    # log(Phi(b) - Phi(a)), computed on whichever tail keeps its precision.
    prob = torch.where(
        mean > x,
        cdf_upper - cdf_lower,
        torch.special.ndtr(-(lower - mean) / std) - torch.special.ndtr(-(upper - mean) / std),
    )
    return prob.clamp(min=1e-12).log()


def _check_decoder(decoder: str) -> None:
    if decoder not in DECODERS:
        raise ValueError(f"decoder: expected one of {DECODERS}, got {decoder!r}")


@torch.no_grad()
def vlb(
    model: Model,
    schedule: NoiseSchedule,
    x0: Tensor,
    variance: str = "small",
    decoder: str = "discretized",
    generator: torch.Generator | None = None,
    *,
    prediction: str = "eps",
    terms: bool = False,
    progress: bool = False,
) -> Tensor | VLBTerms:
    """The negative ELBO of eq. 5 for each example of x0, in nats.

    Args:
        model: ``model(x_t, t)`` returning eps (or x0 / v, see ``prediction``), as for the samplers.
        schedule: the forward process.
        x0: data, shape (B, ...); in [-1, 1] and on the 8-bit grid for the discretised decoder.
        variance: sigma_t^2 of the reverse steps: "small" (beta_tilde_t; at t = 0, where it is 0,
            beta_tilde of the next step is used, as in improved-diffusion) or "large" (beta_t).
        decoder: "discretized" (eq. 13) or "gaussian" (a density).
        generator: for the draws of x_t ~ q(x_t | x_0).
        terms: return a :class:`VLBTerms` with the per-t terms instead of the total.
    Returns:
        (B,) negative ELBO in nats, or VLBTerms.
    """
    _check_decoder(decoder)
    sigma2_table = _reverse_variance(schedule, variance).clone()
    if variance == "small" and schedule.num_steps > 1:
        sigma2_table[0] = schedule.posterior_variance[1]
    if decoder == "discretized" and (x0.min() < -1 or x0.max() > 1):
        raise ValueError(
            "x0: the discretized decoder expects 8-bit data scaled to [-1, 1], got values in "
            f"[{x0.min().item():.3g}, {x0.max().item():.3g}]"
        )
    batch, model_dtype = x0.shape[0], x0.dtype
    x0 = x0.to(torch.float64)  # the bound is accumulated in float64; the model sees its own dtype
    sum_dims = tuple(range(1, x0.ndim))
    out = x0.new_zeros(batch, schedule.num_steps)
    steps = range(schedule.num_steps)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="vlb", leave=False)
    for step in steps:
        t = torch.full((batch,), step, dtype=torch.long)  # on the CPU: no GPU sync per step
        x_t = schedule.q_sample(x0, t, generator=generator)
        eps = model_eps(model, schedule, x_t.to(model_dtype), t, prediction)
        x0_hat = schedule.predict_x0_from_eps(x_t, t, eps.to(x_t.dtype))
        model_mean, _ = schedule.q_posterior(x0_hat, x_t, t)
        sigma2 = schedule.at(sigma2_table, t, x_t)
        if step == 0:
            if decoder == "discretized":
                nll = -discretized_gaussian_log_likelihood(x0, model_mean, sigma2.sqrt())
            else:
                nll = 0.5 * ((x0 - model_mean) ** 2 / sigma2 + sigma2.log() + math.log(2 * math.pi))
            out[:, 0] = nll.sum(dim=sum_dims)
        else:
            true_mean, true_var = schedule.q_posterior(x0, x_t, t)
            kl = gaussian_kl(true_mean, true_var, model_mean, sigma2)
            out[:, step] = kl.sum(dim=sum_dims)
    mean_T, var_T = schedule.q_mean_variance(x0, schedule.num_steps - 1)
    prior = gaussian_kl(mean_T, var_T, torch.zeros_like(mean_T), torch.ones_like(var_T))
    result = VLBTerms(prior.sum(dim=sum_dims), out)
    return result if terms else result.total


def bits_per_dim(
    model: Model,
    schedule: NoiseSchedule,
    x0: Tensor,
    variance: str = "small",
    generator: torch.Generator | None = None,
    *,
    prediction: str = "eps",
    progress: bool = False,
) -> Tensor:
    """The bound for 8-bit images in [-1, 1] in bits per dimension, shape (B,).

    bits/dim = L / (D ln 2) with the discretised decoder, D the number of values per image
    (784 for a 28x28 digit); the DDPM paper reports 3.70-3.75 on CIFAR-10.
    """
    nats = vlb(
        model,
        schedule,
        x0,
        variance,
        "discretized",
        generator,
        prediction=prediction,
        progress=progress,
    )
    return nats / (x0[0].numel() * math.log(2))
