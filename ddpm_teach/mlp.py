"""A small time-conditioned MLP: the denoiser for 2-D toy data.

The network has the same contract as the U-Net, ``model(x_t, t) -> output`` with the output of
x_t's shape (the predicted eps, x0 or v), so the same training loop and samplers drive both. For
points in the plane a U-Net would be absurd; a few residual layers of width 128 learn eight
Gaussians in seconds on a CPU.

    t ──sinusoid──> (B, E) ──Linear, SiLU, Linear──> emb (B, H)
    x (B, dim) ──Linear──> h (B, H)
    num_layers times:  h = h + Linear(SiLU(h + emb))       time enters every layer
    ──SiLU, Linear──> (B, dim)

Adding the time embedding before every nonlinearity (not only at the input) lets each layer act
differently at different noise levels, as the U-Net's residual blocks do.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from .unet import timestep_embedding

__all__ = ["MLPDenoiser"]


class MLPDenoiser(nn.Module):
    """eps_theta(x_t, t) for low-dimensional data.

    Args:
        dim: dimension of a data point (2 for the toy sets).
        hidden: width H of every hidden layer.
        num_layers: residual layers between the input and the output projection.
        time_embed_dim: width E of the sinusoidal embedding of t (see ``unet.timestep_embedding``).

    ``forward(x, t)`` maps x (B, dim) and t (B,) (or an int) to (B, dim). ``self.config`` is a
    JSON-able dict of the arguments: ``MLPDenoiser(**model.config)`` rebuilds the architecture.
    """

    def __init__(
        self, dim: int = 2, hidden: int = 128, num_layers: int = 3, time_embed_dim: int = 32
    ) -> None:
        super().__init__()
        for name, value, low in (
            ("dim", dim, 1),
            ("hidden", hidden, 1),
            ("num_layers", num_layers, 0),
            ("time_embed_dim", time_embed_dim, 2),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
        self.config: dict[str, Any] = {
            "dim": dim,
            "hidden": hidden,
            "num_layers": num_layers,
            "time_embed_dim": time_embed_dim,
        }
        self.dim, self.time_embed_dim = dim, time_embed_dim
        self.time_mlp = nn.Sequential(
            nn.Linear(time_embed_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden)
        )
        self.input = nn.Linear(dim, hidden)
        self.layers = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(num_layers))
        self.output = nn.Linear(hidden, dim)

    def num_parameters(self) -> int:
        """Number of parameters."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, x: Tensor, t: Tensor | int) -> Tensor:
        """Predict the noise (or x0 / v) in x_t.

        Args:
            x: x_t, shape (B, dim).
            t: step indices, shape (B,), or an int / one-element tensor for the whole batch.
        Returns:
            shape (B, dim).
        """
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x: expected shape (B, {self.dim}), got {tuple(x.shape)}")
        t = timestep_embedding(t, self.time_embed_dim).to(device=x.device, dtype=x.dtype)
        if t.shape[0] == 1:
            t = t.expand(x.shape[0], -1)
        elif t.shape[0] != x.shape[0]:
            raise ValueError(
                f"t: expected {x.shape[0]} step indices (one per row of x), got {t.shape[0]}"
            )
        emb = self.time_mlp(t)  # (B, H)
        h = self.input(x)  # (B, H)
        for layer in self.layers:
            h = h + layer(F.silu(h + emb))
        return self.output(F.silu(h))  # (B, dim)
