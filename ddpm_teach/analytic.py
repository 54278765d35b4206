"""Exact answers for Gaussian-mixture data: the denoiser a perfect network would learn.

If x_0 ~ sum_k w_k N(mu_k, Sigma_k) in d dimensions, every marginal of the forward process is again a
mixture of Gaussians (eq. 4 is a linear map plus independent Gaussian noise):

    q_t(x_t) = sum_k w_k N(x_t; sqrt(ab) mu_k, ab Sigma_k + (1 - ab) I),    ab = alpha_bar_t.

From it follow, in closed form,
  * the posterior responsibilities r_k(x_t) = P(component k | x_t),
  * E[x_0 | x_t] = sum_k r_k (mu_k + sqrt(ab) Sigma_k C_k^{-1} (x_t - sqrt(ab) mu_k)), C_k as above,
  * the optimal epsilon-predictor E[eps | x_t] = (x_t - sqrt(ab) E[x_0 | x_t]) / sqrt(1 - ab), which is
    what L_simple (eq. 14) is minimised by,
  * the score grad log q_t(x_t) = -E[eps | x_t] / sqrt(1 - ab) (Tweedie; the "scaled score" view).

``GaussianMixture(...).denoiser(schedule)`` is a callable ``(x_t, t) -> eps`` that the samplers take in
place of a trained network, so the reverse chain can be checked against known truth. Data of any
shape (B, ...) is flattened to (B, d) with d = the mixture's dimension.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .schedule import NoiseSchedule

__all__ = ["ExactDenoiser", "GaussianMixture"]


class GaussianMixture:
    """A mixture of K Gaussians in d dimensions, held in float64.

    Args:
        weights: (K,) non-negative, normalised here.
        means: (K, d).
        covs: (K, d, d) covariance matrices, or (K,) / (K, d) standard deviations (isotropic /
            diagonal), or a single float std shared by all components.

    ``GaussianMixture.standard(d)`` is N(0, I) in d dimensions.
    """

    def __init__(
        self,
        weights: Sequence[float] | Tensor,
        means: Sequence[Sequence[float]] | Tensor,
        covs: float | Sequence | Tensor = 1.0,
    ) -> None:
        w = torch.as_tensor(weights, dtype=torch.float64)
        mu = torch.as_tensor(means, dtype=torch.float64)
        if mu.ndim == 1:  # K one-dimensional components
            mu = mu[:, None]
        if w.ndim != 1 or mu.ndim != 2 or mu.shape[0] != w.shape[0]:
            raise ValueError(
                f"weights and means: expected shapes (K,) and (K, d), got {tuple(w.shape)} and "
                f"{tuple(mu.shape)}"
            )
        if not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ValueError(
                f"weights: expected finite non-negative numbers with a positive sum, got {w}"
            )
        k, d = mu.shape
        c = torch.as_tensor(covs, dtype=torch.float64)
        if c.ndim == 0:  # one std for all
            cov = (c**2) * torch.eye(d, dtype=torch.float64).expand(k, d, d)
        elif c.shape == (k,):  # isotropic std per component
            cov = (c**2)[:, None, None] * torch.eye(d, dtype=torch.float64)
        elif c.shape == (k, d):  # diagonal stds
            cov = torch.diag_embed(c**2)
        elif c.shape == (k, d, d):
            cov = c
        else:
            raise ValueError(
                f"covs: expected a float std, (K,) or (K, d) stds, or (K, d, d) covariances for "
                f"K={k}, d={d}; got shape {tuple(c.shape)}"
            )
        cov = 0.5 * (cov + cov.transpose(-1, -2)).contiguous()
        evals, evecs = torch.linalg.eigh(cov)
        if (evals < -1e-12).any():
            raise ValueError("covs: every covariance must be positive semi-definite")
        self._evals, self._evecs = evals.clamp(min=0), evecs
        self.weights = w / w.sum()
        self.means = mu
        self.covs = cov
        self.dim = d

    @classmethod
    def standard(cls, dim: int, std: float = 1.0) -> GaussianMixture:
        """One Gaussian N(0, std^2 I) in ``dim`` dimensions."""
        return cls([1.0], torch.zeros(1, dim), std)

    def __repr__(self) -> str:
        return f"GaussianMixture(K={len(self.weights)}, dim={self.dim})"

    # ------------------------------------------------------------------ the data distribution
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n samples of x_0, float64 (n, d)."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        chol = torch.linalg.cholesky(self.covs + 1e-12 * torch.eye(self.dim, dtype=torch.float64))
        return self.means[k] + (chol[k] @ z[:, :, None])[:, :, 0]

    def log_prob(self, x: Tensor) -> Tensor:
        """log q(x_0) in nats, shape (B,) for x of shape (B, ...) flattening to d."""
        return self._log_prob(self._flat(x), 1.0)

    # ------------------------------------------------------------------ the noised marginals
    def marginal(self, schedule: NoiseSchedule, t: int) -> GaussianMixture:
        """q_t as a GaussianMixture: means sqrt(ab) mu_k, covariances ab Sigma_k + (1 - ab) I."""
        t = int(schedule.check_t(t)[0])
        ab = float(schedule.alpha_bars[t])
        eye = torch.eye(self.dim, dtype=torch.float64)
        return GaussianMixture(
            self.weights, math.sqrt(ab) * self.means, ab * self.covs + (1 - ab) * eye
        )

    def log_prob_t(self, x_t: Tensor, schedule: NoiseSchedule, t: int | Tensor) -> Tensor:
        """log q_t(x_t), the exact marginal density of x_t (eq. 4 applied to the mixture), shape (B,)."""
        x = self._flat(x_t)
        return self._log_prob(x, self._alpha_bar(schedule, t, x))

    def posterior_x0_mean(self, x_t: Tensor, schedule: NoiseSchedule, t: int | Tensor) -> Tensor:
        """E[x_0 | x_t], shape of x_t."""
        x = self._flat(x_t)
        ab = self._alpha_bar(schedule, t, x)  # (B,)
        log_r, cond_means = self._components(x, ab)
        x0 = (log_r.softmax(dim=1)[:, :, None] * cond_means).sum(dim=1)
        return x0.reshape(x_t.shape).to(x_t.dtype)

    def eps(self, x_t: Tensor, schedule: NoiseSchedule, t: int | Tensor) -> Tensor:
        """The optimal noise prediction E[eps | x_t] (the minimiser of L_simple), shape of x_t."""
        x = self._flat(x_t)
        ab = self._alpha_bar(schedule, t, x)[:, None]
        x0 = self._flat(self.posterior_x0_mean(x_t.to(torch.float64), schedule, t))
        return ((x - ab.sqrt() * x0) / (1 - ab).sqrt()).reshape(x_t.shape).to(x_t.dtype)

    def score(self, x_t: Tensor, schedule: NoiseSchedule, t: int | Tensor) -> Tensor:
        """grad_x log q_t(x_t) = -E[eps | x_t] / sqrt(1 - alpha_bar_t), shape of x_t."""
        ab = schedule.at(schedule.alpha_bars, t, x_t)
        return -self.eps(x_t, schedule, t) / (1 - ab).sqrt()

    def denoiser(self, schedule: NoiseSchedule, prediction: str = "eps") -> ExactDenoiser:
        """A model ``(x_t, t) -> eps`` (or x0 / v) for the samplers: the Bayes-optimal network."""
        return ExactDenoiser(self, schedule, prediction)

    # ------------------------------------------------------------------ internals
    def _flat(self, x: Tensor) -> Tensor:
        if x.ndim < 1:
            raise ValueError("x: expected a batch of shape (B, ...), got a scalar")
        flat = x.reshape(x.shape[0], -1).to(torch.float64)
        if flat.shape[1] != self.dim:
            raise ValueError(
                f"x: expected {self.dim} numbers per example (the mixture's dimension), got shape "
                f"{tuple(x.shape)}"
            )
        return flat

    @staticmethod
    def _alpha_bar(schedule: NoiseSchedule, t: int | Tensor, x: Tensor) -> Tensor:
        return schedule.at(schedule.alpha_bars, t, x.new_zeros(x.shape[0], 1))[:, 0].to(x.device)

    def _log_prob(self, x: Tensor, ab: Tensor | float) -> Tensor:
        log_r, _ = self._components(x, ab, need_means=False)
        return torch.logsumexp(log_r, dim=1)

    def _components(
        self, x: Tensor, ab: Tensor | float, need_means: bool = True
    ) -> tuple[Tensor, Tensor | None]:
        """log(w_k N(x; sqrt(ab) mu_k, C_k)) as (B, K), and E[x_0 | x, k] as (B, K, d).

        With Sigma_k = U_k diag(lam_k) U_k^T, C_k = ab Sigma_k + (1 - ab) I has the same eigenvectors
        and eigenvalues ab lam_k + 1 - ab, so no per-step factorisation is needed.
        """
        ab = torch.as_tensor(ab, dtype=torch.float64).expand(x.shape[0])[:, None, None]  # (B,1,1)
        diff = x[:, None, :] - ab.sqrt() * self.means[None]  # (B, K, d)
        proj = torch.einsum("kij,bki->bkj", self._evecs, diff)  # U_k^T diff
        lam = ab * self._evals[None] + (1 - ab)  # eigenvalues of C_k, (B, K, d)
        maha = (proj**2 / lam).sum(-1)
        log_n = -0.5 * (maha + lam.log().sum(-1) + self.dim * math.log(2 * math.pi))
        log_r = self.weights.log()[None] + log_n
        if not need_means:
            return log_r, None
        # Gaussian conditioning: E[x_0 | x_t, k] = mu_k + sqrt(ab) Sigma_k C_k^{-1} (x_t - sqrt(ab) mu_k)
        shrunk = self._evals[None] * proj / lam  # diag(lam_k) U_k^T C_k^{-1} diff
        cond = self.means[None] + ab.sqrt() * torch.einsum("kij,bkj->bki", self._evecs, shrunk)
        return log_r, cond


class ExactDenoiser:
    """The Bayes-optimal network for mixture data: ``model(x_t, t)`` returns E[eps | x_t] (or x0, v).

    Pass it to ``ddpm_sample`` / ``ddim_sample`` / ``vlb`` as the model.
    """

    def __init__(self, mixture: GaussianMixture, schedule: NoiseSchedule, prediction: str = "eps"):
        from .schedule import check_prediction

        check_prediction(prediction)
        self.mixture, self.schedule, self.prediction = mixture, schedule, prediction

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        eps = self.mixture.eps(x_t, self.schedule, t)
        if self.prediction == "eps":
            return eps
        x0 = self.schedule.predict_x0_from_eps(x_t, t, eps)
        return x0 if self.prediction == "x0" else self.schedule.v_target(x0, eps, t)

    def __repr__(self) -> str:
        return f"ExactDenoiser({self.mixture!r}, prediction={self.prediction!r})"
