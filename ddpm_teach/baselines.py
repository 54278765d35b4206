"""The two generative models diffusion is measured against: a small GAN and a small VAE.

Both are plain multilayer perceptrons for low-dimensional data (the 2-D toys), small enough to train
on a CPU in a minute, so that chapter 00 can put numbers on what every diffusion paper's
introduction claims about them.

GAN (Goodfellow et al. 2014). A generator G maps latent noise z ~ N(0, I) to a point; a
discriminator D maps a point to a logit, "real" when high. The two play a game (their eq. 1):

    D maximises  E_data log sigmoid(D(x)) + E_z log(1 - sigmoid(D(G(z))))
    G minimises  -E_z log sigmoid(D(G(z)))      the "non-saturating" loss of their section 3

Nothing in the game asks G to produce *every* mode: a G that puts all its points on one mode the
discriminator currently believes in is paid as well as one that covers the data. That is mode
collapse, and the alternating updates can chase each other round instead of converging.

VAE (Kingma & Welling 2014). An encoder q(z | x) = N(mu(x), diag exp(logvar(x))) and a decoder
p(x | z) = N(m(z), sigma^2 I) are trained together to maximise the evidence lower bound (ELBO)

    log p(x) >= E_{q(z|x)} log p(x | z) - KL(q(z | x) || N(0, I))        (K & W eq. 3)

estimated with one z = mu + exp(logvar / 2) eps (the reparameterisation trick, their eq. 4 and
section 2.4), which lets gradients flow through the sampling. The beta-VAE (Higgins et al. 2017)
weighs the KL term by beta. The decoder is a continuous function of z and the prior N(0, I) has no
gaps, so sampled points also fill the space *between* separate modes: the 2-D face of the "blur"
of VAE images.

Everything random here is drawn from generators seeded by the ``seed`` argument (initial weights
included), so a run repeats exactly on the same machine and thread count.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "GAN",
    "VAE",
    "GANHistory",
    "VAEHistory",
    "gan_losses",
    "gaussian_elbo",
    "gaussian_kl",
    "gaussian_log_likelihood",
    "reparameterise",
    "train_gan",
    "train_vae",
]


# ================================================================================================
# Input checks and the shared network
# ================================================================================================


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
    return value


def _check_positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name}: expected a positive number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    return float(value)


def _check_data(data: Any, dim: int | None = None) -> Tensor:
    """A finite floating (N, D) tensor of at least 2 points; D == dim when given."""
    if not isinstance(data, Tensor):
        raise TypeError(f"data: expected a torch.Tensor of shape (N, D), got {type(data).__name__}")
    if data.ndim != 2 or data.shape[0] < 2:
        raise ValueError(f"data: expected shape (N, D) with N >= 2, got {tuple(data.shape)}")
    if not data.dtype.is_floating_point:
        raise TypeError(f"data: expected floating-point points, got dtype {data.dtype}")
    if not torch.isfinite(data).all():
        raise ValueError("data: contains NaN or infinite values")
    if dim is not None and data.shape[1] != dim:
        raise ValueError(
            f"data: the model is built for points of dimension {dim}, got {data.shape[1]}"
        )
    return data.detach().float()


def _mlp(
    n_in: int, hidden: int, n_out: int, num_layers: int, act: Callable[[], nn.Module]
) -> nn.Sequential:
    """n_in -> hidden -> ... -> hidden -> n_out, ``num_layers`` hidden layers, activation after each."""
    layers: list[nn.Module] = []
    width = n_in
    for _ in range(num_layers):
        layers += [nn.Linear(width, hidden), act()]
        width = hidden
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


def _init_weights(module: nn.Module, seed: int) -> None:
    """Re-draw every parameter from a generator seeded by ``seed`` (PyTorch's default init)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in module.modules():
            if isinstance(m, nn.Linear):
                m.reset_parameters()


def _batches(n: int, batch_size: int, steps: int, g: torch.Generator):
    """Index tensors (batch_size,) for ``steps`` steps: a fresh permutation every epoch."""
    perm, pos = torch.randperm(n, generator=g), 0
    for _ in range(steps):
        if pos + batch_size > n:
            perm, pos = torch.randperm(n, generator=g), 0
        yield perm[pos : pos + batch_size]
        pos += batch_size


# ================================================================================================
# GAN
# ================================================================================================


class GAN(nn.Module):
    """A generator and a discriminator, both MLPs.

    Args:
        dim: dimension of a data point (2 for the toys).
        latent: dimension of the generator's input noise z.
        hidden: width of every hidden layer.
        num_layers: hidden layers of each network.
        seed: if given, the initial weights are drawn from a generator seeded with it, so the
            same seed gives the same network whatever ran before (else from the global RNG).

    ``generator``: (B, latent) -> (B, dim), ReLU. ``discriminator``: (B, dim) -> (B, 1) logits,
    LeakyReLU(0.2) (so that D passes gradient to G even where its units are off).
    """

    def __init__(
        self,
        dim: int = 2,
        latent: int = 2,
        hidden: int = 128,
        num_layers: int = 2,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.dim = _check_int("dim", dim, 1)
        self.latent = _check_int("latent", latent, 1)
        _check_int("hidden", hidden, 1)
        _check_int("num_layers", num_layers, 1)
        self.config = {"dim": dim, "latent": latent, "hidden": hidden, "num_layers": num_layers}
        self.generator = _mlp(latent, hidden, dim, num_layers, nn.ReLU)
        self.discriminator = _mlp(dim, hidden, 1, num_layers, lambda: nn.LeakyReLU(0.2))
        if seed is not None:
            _init_weights(self, _check_int("seed", seed, 0))

    def generate(self, z: Tensor) -> Tensor:
        """G(z): latent codes (B, latent) -> points (B, dim)."""
        if z.ndim != 2 or z.shape[1] != self.latent:
            raise ValueError(f"z: expected shape (B, {self.latent}), got {tuple(z.shape)}")
        return self.generator(z)

    def discriminate(self, x: Tensor) -> Tensor:
        """D(x): points (B, dim) -> logits (B,); sigmoid(D(x)) is D's belief that x is real."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x: expected shape (B, {self.dim}), got {tuple(x.shape)}")
        return self.discriminator(x).squeeze(1)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n points G(z), z ~ N(0, I) drawn from ``generator``: shape (n, dim), on the CPU."""
        _check_int("n", n, 1)
        device = next(self.parameters()).device
        z = torch.randn(n, self.latent, generator=generator).to(device)
        return self.generate(z).cpu()


def gan_losses(real_logits: Tensor, fake_logits: Tensor) -> tuple[Tensor, Tensor]:
    """The discriminator's and the generator's losses from D's logits (Goodfellow et al. 2014).

    d_loss = -mean log sigmoid(D(x)) - mean log(1 - sigmoid(D(G(z))))      (minus their eq. 1)
    g_loss = -mean log sigmoid(D(G(z)))                          (the non-saturating loss)

    With softplus(u) = log(1 + e^u): -log sigmoid(u) = softplus(-u) and -log(1 - sigmoid(u)) =
    softplus(u), which stays finite for any logit. At D's equilibrium (sigmoid = 1/2 everywhere)
    d_loss = 2 ln 2 = 1.386 and g_loss = ln 2 = 0.693.

    Args:
        real_logits: D(x) for data points, shape (B,).
        fake_logits: D(G(z)) for generated points, shape (B',).
    Returns:
        (d_loss, g_loss), two scalars.
    """
    d_loss = F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    g_loss = F.softplus(-fake_logits).mean()
    return d_loss, g_loss


@dataclass
class GANHistory:
    """What :func:`train_gan` returns: the trained model and one entry per step.

    d_loss, g_loss: the two losses of :func:`gan_losses` at each step.
    d_real, d_fake: mean sigmoid(D) on the step's data and generated points (D's beliefs).
    """

    model: GAN
    steps: list[int] = field(default_factory=list)
    d_loss: list[float] = field(default_factory=list)
    g_loss: list[float] = field(default_factory=list)
    d_real: list[float] = field(default_factory=list)
    d_fake: list[float] = field(default_factory=list)


def train_gan(
    data: Tensor,
    steps: int,
    gan: GAN | None = None,
    *,
    batch_size: int = 256,
    lr_g: float = 1e-3,
    lr_d: float = 1e-3,
    seed: int = 0,
    log_every: int = 100,
    on_log: Callable[[int, GAN], Any] | None = None,
) -> GANHistory:
    """Train a GAN by alternating one discriminator step and one generator step.

    Each step: a batch of data x and of z ~ N(0, I); one Adam step on D's loss with G fixed, then
    one on G's (non-saturating) loss against the updated D, both from :func:`gan_losses`.
    Adam with beta_1 = 0.5, as DCGAN (Radford et al. 2016) recommends for GANs.

    Args:
        data: training points (N, dim).
        steps: number of (D, G) update pairs.
        gan: the model to train; default ``GAN(dim=data.shape[1])`` with weights seeded by ``seed``.
        batch_size: points per batch, for the data and for the generator alike.
        lr_g, lr_d: learning rates of the generator and the discriminator.
        seed: seeds the default model's weights, the batches and every z.
        log_every: call ``on_log`` every this many steps (and after the last).
        on_log: ``on_log(step, gan)`` with the model in eval mode, e.g. to sample and measure mode
            coverage during training; the global random state is restored around it.
    Returns:
        :class:`GANHistory` with the trained model and the losses of every step.
    Raises:
        FloatingPointError: a loss became NaN or infinite (naming the step).
    """
    if gan is not None and not isinstance(gan, GAN):  # before gan.dim is read below
        raise TypeError(f"gan: expected a GAN, got {type(gan).__name__}")
    data = _check_data(data, gan.dim if gan is not None else None)
    _check_int("steps", steps, 0)
    _check_int("batch_size", batch_size, 1)
    _check_int("seed", seed, 0)
    _check_int("log_every", log_every, 1)
    lr_g, lr_d = _check_positive("lr_g", lr_g), _check_positive("lr_d", lr_d)
    if gan is None:
        gan = GAN(dim=data.shape[1], seed=seed)
    batch_size = min(batch_size, len(data))
    device = next(gan.parameters()).device
    data = data.to(device)
    opt_d = torch.optim.Adam(gan.discriminator.parameters(), lr=lr_d, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(gan.generator.parameters(), lr=lr_g, betas=(0.5, 0.999))
    g = torch.Generator().manual_seed(seed + 1)  # + 1: not the stream of the initial weights
    history = GANHistory(gan)
    for step, idx in enumerate(_batches(len(data), batch_size, steps, g), start=1):
        gan.train()
        real = data[idx.to(device)]
        z = torch.randn(batch_size, gan.latent, generator=g).to(device)
        # discriminator step: G's output is detached, so only D learns from it
        real_logits = gan.discriminate(real)
        fake_logits = gan.discriminate(gan.generate(z).detach())
        d_loss, _ = gan_losses(real_logits, fake_logits)
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        # generator step, against the discriminator just updated; only G's optimiser steps
        fake_logits = gan.discriminate(gan.generate(z))
        _, g_loss = gan_losses(real_logits.detach(), fake_logits)
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()

        d_value, g_value = d_loss.item(), g_loss.item()
        if not (math.isfinite(d_value) and math.isfinite(g_value)):
            raise FloatingPointError(
                f"train_gan: loss is not finite at step {step} (d_loss {d_value}, g_loss "
                f"{g_value}); lower lr_g / lr_d"
            )
        history.steps.append(step)
        history.d_loss.append(d_value)
        history.g_loss.append(g_value)
        history.d_real.append(torch.sigmoid(real_logits).mean().item())
        history.d_fake.append(torch.sigmoid(fake_logits).mean().item())
        if on_log is not None and (step % log_every == 0 or step == steps):
            _call_quietly(on_log, step, gan)
    gan.eval()
    return history


def _call_quietly(on_log: Callable[[int, Any], Any], step: int, model: nn.Module) -> None:
    """on_log(step, model) in eval mode, without gradients, leaving the global RNG as it was."""
    was_training = model.training
    model.eval()
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        on_log(step, model)
    model.train(was_training)


# ================================================================================================
# VAE
# ================================================================================================


def reparameterise(mu: Tensor, logvar: Tensor, eps: Tensor) -> Tensor:
    """z = mu + sigma * eps with sigma = exp(logvar / 2): a draw from N(mu, diag sigma^2).

    The reparameterisation trick (Kingma & Welling 2014, section 2.4): the randomness sits in
    eps ~ N(0, I), an input, so z is a differentiable function of mu and logvar.

    Args:
        mu, logvar: the encoder's mean and log-variance, shape (B, latent).
        eps: standard normal noise of the same shape.
    Returns:
        z, shape (B, latent).
    """
    return mu + torch.exp(0.5 * logvar) * eps


def gaussian_log_likelihood(x: Tensor, mean: Tensor, sigma: float | Tensor) -> Tensor:
    """log N(x; mean, sigma^2 I), summed over the coordinates: (B, D) -> (B,).

    = -|x - mean|^2 / (2 sigma^2) - (D / 2) log(2 pi sigma^2).
    """
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    d = x.shape[-1]
    sq = (x - mean).square().sum(dim=-1)
    return -sq / (2 * sigma**2) - 0.5 * d * torch.log(2 * math.pi * sigma**2)


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)), summed over the latent coordinates: (B, L) -> (B,).

    = 1/2 sum_j (mu_j^2 + exp(logvar_j) - 1 - logvar_j)      (Kingma & Welling 2014, appendix B)
    """
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(dim=-1)


def gaussian_elbo(
    x: Tensor, x_mean: Tensor, sigma: float | Tensor, mu: Tensor, logvar: Tensor
) -> Tensor:
    """One-sample ELBO of each example for a Gaussian decoder N(x_mean, sigma^2 I) (K & W eq. 3).

    ELBO = log N(x; x_mean, sigma^2 I) - KL(N(mu, diag exp(logvar)) || N(0, I)), with x_mean the
    decoder's output at one z drawn from q(z | x) (see :func:`reparameterise`). In nats.

    Args:
        x, x_mean: data and decoder mean, (B, D).
        sigma: the decoder's standard deviation (a number or a 0-d tensor).
        mu, logvar: the encoder's outputs, (B, L).
    Returns:
        (B,), a lower bound on log p(x) in expectation over z.
    """
    return gaussian_log_likelihood(x, x_mean, sigma) - gaussian_kl(mu, logvar)


class VAE(nn.Module):
    """A Gaussian VAE: encoder q(z | x) = N(mu(x), diag exp(logvar(x))), decoder N(m(z), sigma^2 I).

    Args:
        dim: dimension of a data point.
        latent: dimension of z (the prior is N(0, I)).
        hidden: width of every hidden layer.
        num_layers: hidden layers of the encoder and of the decoder (SiLU).
        sigma: the decoder's fixed standard deviation, in data units (default: the eight
            Gaussians' own spread, 0.1).
        seed: if given, the initial weights are drawn from a generator seeded with it.
    """

    def __init__(
        self,
        dim: int = 2,
        latent: int = 2,
        hidden: int = 128,
        num_layers: int = 2,
        sigma: float = 0.1,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.dim = _check_int("dim", dim, 1)
        self.latent = _check_int("latent", latent, 1)
        _check_int("hidden", hidden, 1)
        _check_int("num_layers", num_layers, 1)
        self.sigma = _check_positive("sigma", sigma)
        self.config = {
            "dim": dim,
            "latent": latent,
            "hidden": hidden,
            "num_layers": num_layers,
            "sigma": sigma,
        }
        self.encoder = _mlp(dim, hidden, 2 * latent, num_layers, nn.SiLU)
        self.decoder = _mlp(latent, hidden, dim, num_layers, nn.SiLU)
        if seed is not None:
            _init_weights(self, _check_int("seed", seed, 0))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """q(z | x): points (B, dim) -> (mu, logvar), each (B, latent)."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x: expected shape (B, {self.dim}), got {tuple(x.shape)}")
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: Tensor) -> Tensor:
        """The decoder's mean m(z): (B, latent) -> (B, dim)."""
        if z.ndim != 2 or z.shape[1] != self.latent:
            raise ValueError(f"z: expected shape (B, {self.latent}), got {tuple(z.shape)}")
        return self.decoder(z)

    def loss_terms(
        self, x: Tensor, beta: float = 1.0, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The beta-weighted negative ELBO and its two parts, averaged over the batch.

        Returns (loss, nll, kl): nll = -mean log p(x | z) (one z per example, reparameterised),
        kl = mean KL(q(z | x) || N(0, I)), loss = nll + beta * kl (beta = 1: the negative ELBO).
        """
        mu, logvar = self.encode(x)
        eps = torch.randn(mu.shape, generator=generator).to(mu.device)
        z = reparameterise(mu, logvar, eps)
        nll = -gaussian_log_likelihood(x, self.decode(z), self.sigma).mean()
        kl = gaussian_kl(mu, logvar).mean()
        return nll + beta * kl, nll, kl

    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator | None = None, decoder_noise: bool = True
    ) -> Tensor:
        """n points from the model: z ~ N(0, I), x = m(z) + sigma * noise (only m(z) if not
        ``decoder_noise``). Shape (n, dim), on the CPU."""
        _check_int("n", n, 1)
        device = next(self.parameters()).device
        z = torch.randn(n, self.latent, generator=generator).to(device)
        x = self.decode(z).cpu()
        if decoder_noise:
            x = x + self.sigma * torch.randn(x.shape, generator=generator)
        return x


@dataclass
class VAEHistory:
    """What :func:`train_vae` returns: the trained model and one entry per step.

    loss: nll + beta * kl; nll: -log p(x | z); kl: KL(q(z | x) || N(0, I)); all in nats per point.
    """

    model: VAE
    beta: float
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    nll: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)


def train_vae(
    data: Tensor,
    steps: int,
    vae: VAE | None = None,
    *,
    beta: float = 1.0,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    log_every: int = 100,
    on_log: Callable[[int, VAE], Any] | None = None,
) -> VAEHistory:
    """Train a VAE with Adam on the beta-weighted negative ELBO, nll + beta * kl.

    Args:
        data: training points (N, dim).
        steps: optimiser steps.
        vae: the model to train; default ``VAE(dim=data.shape[1])`` with weights seeded by ``seed``.
        beta: weight of the KL term (1: the ELBO itself; Higgins et al. 2017 for other values).
        batch_size, lr: of each Adam step.
        seed: seeds the default model's weights, the batches and every eps.
        log_every, on_log: ``on_log(step, vae)`` every ``log_every`` steps and after the last.
    Returns:
        :class:`VAEHistory` with the trained model and the loss terms of every step.
    Raises:
        FloatingPointError: the loss became NaN or infinite (naming the step).
    """
    if vae is not None and not isinstance(vae, VAE):  # before vae.dim is read below
        raise TypeError(f"vae: expected a VAE, got {type(vae).__name__}")
    data = _check_data(data, vae.dim if vae is not None else None)
    _check_int("steps", steps, 0)
    _check_int("batch_size", batch_size, 1)
    _check_int("seed", seed, 0)
    _check_int("log_every", log_every, 1)
    lr = _check_positive("lr", lr)
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta < math.inf:
        raise ValueError(f"beta: expected a finite number >= 0, got {beta!r}")
    if vae is None:
        vae = VAE(dim=data.shape[1], seed=seed)
    batch_size = min(batch_size, len(data))
    device = next(vae.parameters()).device
    data = data.to(device)
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed + 1)
    history = VAEHistory(vae, float(beta))
    for step, idx in enumerate(_batches(len(data), batch_size, steps, g), start=1):
        vae.train()
        loss, nll, kl = vae.loss_terms(data[idx.to(device)], beta, generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"train_vae: loss is {value} at step {step}; lower lr")
        history.steps.append(step)
        history.loss.append(value)
        history.nll.append(nll.item())
        history.kl.append(kl.item())
        if on_log is not None and (step % log_every == 0 or step == steps):
            _call_quietly(on_log, step, vae)
    vae.eval()
    return history
