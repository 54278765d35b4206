"""The forward process of DDPM: a fixed Markov chain that adds Gaussian noise.

Ho, Jain & Abbeel (2020), "Denoising Diffusion Probabilistic Models", section 2:

    q(x_t | x_{t-1}) = N(x_t; sqrt(1 - beta_t) x_{t-1}, beta_t I)                      (eq. 2)
    q(x_t | x_0)     = N(x_t; sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)               (eq. 4)
    q(x_{t-1} | x_t, x_0) = N(x_{t-1}; mu_tilde_t(x_t, x_0), beta_tilde_t I)            (eqs. 6-7)

with alpha_t = 1 - beta_t and alpha_bar_t = prod_{s <= t} alpha_s.

Indexing: the paper counts t = 1..T; here, as in diffusers, index t = 0..T-1 stands for the paper's
t + 1. So ``alpha_bars[0] = alpha_1`` (one step of noise), ``alpha_bars[T-1]`` is the last step, and
"the step before index 0" is the clean data x_0.

Nothing here is learned: the schedule is a fixed table of numbers, kept in float64 so that
products such as alpha_bar_t (about 4e-5 at the end of the linear schedule) lose nothing. Tensors
handed in keep their own dtype and device; the coefficients are cast to match.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["PARAMETERIZATIONS", "NoiseSchedule"]

#: The three things a network can be trained to predict from (x_t, t).
PARAMETERIZATIONS = ("eps", "x0", "v")


class NoiseSchedule:
    """The variance schedule beta_1..beta_T and every quantity derived from it.

    Attributes (float64 tensors of shape (T,), index t = paper's t + 1):
        betas:       beta_t, the variance added at step t.
        alphas:      alpha_t = 1 - beta_t.
        alpha_bars:  alpha_bar_t = prod_{s<=t} alpha_s, the signal kept after t+1 steps.
        alpha_bars_prev: alpha_bar_{t-1}, with alpha_bar before the first step equal to 1.
        sqrt_alpha_bars, sqrt_one_minus_alpha_bars: the coefficients of x_0 and eps in eq. 4.
        posterior_variance: beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t (eq. 7);
            zero at index 0, where x_{t-1} is the data itself.

    Build one with :meth:`linear`, :meth:`cosine` or ``NoiseSchedule(betas)``.
    """

    def __init__(self, betas: Sequence[float] | Tensor) -> None:
        betas = torch.as_tensor(betas, dtype=torch.float64).detach().cpu()
        if betas.ndim != 1 or betas.numel() == 0:
            raise ValueError(
                f"betas: expected a non-empty 1-D sequence, got shape {tuple(betas.shape)}"
            )
        if not torch.isfinite(betas).all() or (betas <= 0).any() or (betas >= 1).any():
            bad = betas[~((betas > 0) & (betas < 1))]
            raise ValueError(
                f"betas: every beta_t must lie in the open interval (0, 1); got {bad[:5].tolist()}"
            )
        self.betas = betas
        self.num_steps = int(betas.numel())
        self.alphas = 1.0 - betas
        self.alpha_bars = torch.cumprod(self.alphas, dim=0)
        self.alpha_bars_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bars[:-1]])
        # The two coefficients of eq. 4, read at every step of training and sampling.
        self.sqrt_alpha_bars = self.alpha_bars.sqrt()
        self.sqrt_one_minus_alpha_bars = (1.0 - self.alpha_bars).sqrt()
        # eq. 7: the variance of q(x_{t-1} | x_t, x_0).
        self.posterior_variance = (1.0 - self.alpha_bars_prev) / (1.0 - self.alpha_bars) * betas
        # eq. 7: mu_tilde_t = coef_x0 * x_0 + coef_xt * x_t.
        self.posterior_coef_x0 = self.alpha_bars_prev.sqrt() * betas / (1.0 - self.alpha_bars)
        self.posterior_coef_xt = (
            self.alphas.sqrt() * (1.0 - self.alpha_bars_prev) / (1.0 - self.alpha_bars)
        )

    # ------------------------------------------------------------------ constructors
    @classmethod
    def linear(
        cls, num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
    ) -> NoiseSchedule:
        """The DDPM paper's schedule: betas rising linearly from 1e-4 to 0.02 over T = 1000 steps.

        For another T the end points are kept as given (pass scaled ones if you want the same
        total noise; ``NoiseSchedule.linear(100, 1e-3, 0.2)`` is roughly T=1000 thinned tenfold).
        """
        _check_num_steps(num_steps)
        return cls(torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64))

    @classmethod
    def cosine(
        cls, num_steps: int = 1000, s: float = 0.008, max_beta: float = 0.999
    ) -> NoiseSchedule:
        """Nichol & Dhariwal (2021), eq. 17: alpha_bar(t) = f(t) / f(0).

        f(t) = cos^2(((t/T + s) / (1 + s)) pi/2),

        betas = 1 - alpha_bar_t / alpha_bar_{t-1}, capped at ``max_beta`` (0.999) so the last steps
        stay finite.
        """
        _check_num_steps(num_steps)
        steps = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        alpha_bar = f / f[0]
        betas = (1.0 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)
        return cls(betas)

    def __repr__(self) -> str:
        return (
            f"NoiseSchedule(num_steps={self.num_steps}, beta_1={self.betas[0].item():.3g}, "
            f"beta_T={self.betas[-1].item():.3g}, alpha_bar_T={self.alpha_bars[-1].item():.3g})"
        )

    def __len__(self) -> int:
        return self.num_steps

    # ------------------------------------------------------------------ helpers
    def check_t(self, t: int | Tensor, batch_size: int | None = None, name: str = "t") -> Tensor:
        """Validate ``t`` and return it as a 1-D int64 tensor (length 1 or ``batch_size``)."""
        if isinstance(t, bool):
            raise TypeError(f"{name}: expected an int or an integer tensor, got a bool")
        if isinstance(t, int):
            # The samplers' case (one step for the whole batch): checked without tensor ops.
            if not 0 <= t < self.num_steps:
                raise ValueError(
                    f"{name}: step indices must lie in 0..{self.num_steps - 1} (index t stands "
                    f"for the paper's t+1), got {t}"
                )
            return torch.tensor([t])
        if isinstance(t, Tensor):
            if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
                raise TypeError(f"{name}: expected an integer tensor, got dtype {t.dtype}")
            if t.ndim == 0:
                t = t.reshape(1)
            elif t.ndim != 1:
                raise ValueError(
                    f"{name}: expected an int or a 1-D tensor with one entry per batch element, "
                    f"got shape {tuple(t.shape)}"
                )
        else:
            raise TypeError(
                f"{name}: expected an int or a 1-D integer tensor, got {type(t).__name__}"
            )
        if batch_size is not None and t.numel() not in (1, batch_size):
            raise ValueError(
                f"{name}: expected one entry per batch element ({batch_size}) or a single step, "
                f"got {t.numel()} entries"
            )
        if t.numel():
            lo, hi = (int(v) for v in torch.aminmax(t))
            if lo < 0 or hi >= self.num_steps:
                raise ValueError(
                    f"{name}: step indices must lie in 0..{self.num_steps - 1} (index t stands "
                    f"for the paper's t+1), got values in {lo}..{hi}"
                )
        return t.long()

    def _coef(self, values: Tensor, t: int | Tensor, x: Tensor, name: str = "t") -> Tensor:
        """``values[t]`` shaped (B, 1, ..., 1) to broadcast against ``x`` of shape (B, ...)."""
        if x.ndim == 0:
            raise ValueError("x: expected a batch of shape (B, ...), got a scalar")
        if isinstance(t, int) and not isinstance(t, bool) and 0 <= t < self.num_steps:
            # One step for the whole batch (the samplers): a slice, copied so that no caller can
            # write into the table through it.
            picked = values[t : t + 1].to(dtype=x.dtype, copy=True)
        else:
            # Gathered on the CPU, where the tables live. With t on the CPU (the trainer keeps
            # it there) nothing waits for the GPU: a non-blocking copy from pageable memory is
            # staged at once, while a blocking one would first wait for all queued GPU work.
            picked = values[self.check_t(t, x.shape[0], name).cpu()].to(dtype=x.dtype)
        out = picked.to(device=x.device, non_blocking=True)
        return out.reshape(-1, *([1] * (x.ndim - 1)))

    def at(self, values: Tensor, t: int | Tensor, x: Tensor) -> Tensor:
        """Public form of the gather-and-broadcast: ``schedule.at(schedule.betas, t, x)``."""
        return self._coef(values, t, x)

    @staticmethod
    def _noise_like(x: Tensor, noise: Tensor | None, generator: torch.Generator | None) -> Tensor:
        if noise is None:
            return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        if noise.shape != x.shape:
            raise ValueError(
                f"noise: expected the shape of the data {tuple(x.shape)}, got {tuple(noise.shape)}"
            )
        return noise.to(dtype=x.dtype)

    # ------------------------------------------------------------------ the forward process
    def q_step(
        self,
        x_prev: Tensor,
        t: int | Tensor,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """One forward step: sample q(x_t | x_{t-1}) = N(sqrt(1-beta_t) x_{t-1}, beta_t I) (eq. 2).

        Args:
            x_prev: x_{t-1}, shape (B, ...); for t = 0 this is the data x_0.
            t: step index 0..T-1, an int or a (B,) integer tensor.
            noise: optional standard normal noise of x_prev's shape.
        Returns:
            x_t, shape (B, ...).
        """
        noise = self._noise_like(x_prev, noise, generator)
        return (
            self._coef(self.alphas.sqrt(), t, x_prev) * x_prev
            + self._coef(self.betas.sqrt(), t, x_prev) * noise
        )

    def q_mean_variance(self, x0: Tensor, t: int | Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance of q(x_t | x_0) (eq. 4): (sqrt(alpha_bar_t) x_0, 1 - alpha_bar_t)."""
        mean = self._coef(self.sqrt_alpha_bars, t, x0) * x0
        variance = self._coef(1.0 - self.alpha_bars, t, x0)
        return mean, variance

    def q_sample(
        self,
        x0: Tensor,
        t: int | Tensor,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Jump straight to step t: x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps (eq. 4).

        Args:
            x0: clean data, shape (B, ...).
            t: step index 0..T-1, an int or a (B,) integer tensor.
            noise: eps ~ N(0, I) of x0's shape; drawn (from ``generator``) when omitted.
        Returns:
            x_t, shape (B, ...).
        """
        noise = self._noise_like(x0, noise, generator)
        return (
            self._coef(self.sqrt_alpha_bars, t, x0) * x0
            + self._coef(self.sqrt_one_minus_alpha_bars, t, x0) * noise
        )

    def q_posterior(self, x0: Tensor, x_t: Tensor, t: int | Tensor) -> tuple[Tensor, Tensor]:
        """The forward process run backwards given x_0: q(x_{t-1} | x_t, x_0) (eqs. 6-7).

        mu_tilde_t = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x_0
                     + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) x_t
        beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t

        Args:
            x0, x_t: shape (B, ...).
            t: step index 0..T-1 of x_t; at t = 0 the posterior is a point mass at x0 (variance 0).
        Returns:
            (mean of shape (B, ...), variance broadcastable to it, shape (B, 1, ..., 1), or
            (1, 1, ..., 1) for an int t).
        """
        if x0.shape != x_t.shape:
            raise ValueError(
                f"x0 and x_t: expected the same shape, got {tuple(x0.shape)} and {tuple(x_t.shape)}"
            )
        mean = (
            self._coef(self.posterior_coef_x0, t, x_t) * x0
            + self._coef(self.posterior_coef_xt, t, x_t) * x_t
        )
        return mean, self._coef(self.posterior_variance, t, x_t)

    # ------------------------------------------------------------------ parameterisations
    def predict_x0_from_eps(self, x_t: Tensor, t: int | Tensor, eps: Tensor) -> Tensor:
        """Invert eq. 4: x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)."""
        _same_shape(x_t, eps, "eps")
        return (x_t - self._coef(self.sqrt_one_minus_alpha_bars, t, x_t) * eps) / self._coef(
            self.sqrt_alpha_bars, t, x_t
        )

    def predict_eps_from_x0(self, x_t: Tensor, t: int | Tensor, x0: Tensor) -> Tensor:
        """Invert eq. 4 for the noise: eps = (x_t - sqrt(alpha_bar_t) x_0) / sqrt(1-alpha_bar_t)."""
        _same_shape(x_t, x0, "x0")
        return (x_t - self._coef(self.sqrt_alpha_bars, t, x_t) * x0) / self._coef(
            self.sqrt_one_minus_alpha_bars, t, x_t
        )

    def v_target(self, x0: Tensor, eps: Tensor, t: int | Tensor) -> Tensor:
        """The v-parameterisation (Salimans & Ho 2022).

        v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0.
        """
        _same_shape(x0, eps, "eps")
        return (
            self._coef(self.sqrt_alpha_bars, t, x0) * eps
            - self._coef(self.sqrt_one_minus_alpha_bars, t, x0) * x0
        )

    def predict_x0_from_v(self, x_t: Tensor, t: int | Tensor, v: Tensor) -> Tensor:
        """x_0 = sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v."""
        _same_shape(x_t, v, "v")
        return (
            self._coef(self.sqrt_alpha_bars, t, x_t) * x_t
            - self._coef(self.sqrt_one_minus_alpha_bars, t, x_t) * v
        )

    def predict_eps_from_v(self, x_t: Tensor, t: int | Tensor, v: Tensor) -> Tensor:
        """eps = sqrt(1 - alpha_bar_t) x_t + sqrt(alpha_bar_t) v."""
        _same_shape(x_t, v, "v")
        return (
            self._coef(self.sqrt_one_minus_alpha_bars, t, x_t) * x_t
            + self._coef(self.sqrt_alpha_bars, t, x_t) * v
        )

    def to_eps(
        self, output: Tensor, x_t: Tensor, t: int | Tensor, prediction: str = "eps"
    ) -> Tensor:
        """Convert a network output in any parameterisation ("eps", "x0" or "v") to epsilon."""
        check_prediction(prediction)
        if prediction == "eps":
            _same_shape(x_t, output, "eps")
            return output
        if prediction == "x0":
            return self.predict_eps_from_x0(x_t, t, output)
        return self.predict_eps_from_v(x_t, t, output)

    def target(self, x0: Tensor, eps: Tensor, t: int | Tensor, prediction: str = "eps") -> Tensor:
        """What a network trained with ``prediction`` outputs for x_t = q_sample(x0, t, eps)."""
        check_prediction(prediction)
        if prediction == "eps":
            return eps
        if prediction == "x0":
            return x0
        return self.v_target(x0, eps, t)

    # ------------------------------------------------------------------ signal-to-noise
    def snr(self, t: int | Tensor) -> Tensor:
        """Signal-to-noise ratio of q(x_t | x_0): alpha_bar_t / (1 - alpha_bar_t), float64."""
        t = self.check_t(t)
        ab = self.alpha_bars[t.cpu()]
        return ab / (1.0 - ab)

    def log_snr(self, t: int | Tensor) -> Tensor:
        """log SNR(t), the natural axis for comparing schedules (Kingma et al. 2021)."""
        return self.snr(t).log()


def check_prediction(prediction: str) -> None:
    """Raise a clear error unless ``prediction`` names a parameterisation."""
    if prediction not in PARAMETERIZATIONS:
        raise ValueError(
            f"prediction: expected one of {PARAMETERIZATIONS} (what the model outputs), "
            f"got {prediction!r}"
        )


def _check_num_steps(num_steps: int) -> None:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps: expected a positive int, got {num_steps!r}")


def _same_shape(x: Tensor, other: Tensor, name: str) -> None:
    if x.shape != other.shape:
        raise ValueError(
            f"{name}: expected shape {tuple(x.shape)} (that of x_t), got {tuple(other.shape)}"
        )
