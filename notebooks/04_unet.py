# %% [markdown]
# # 04 The U-Net
#
# Chapter 03 ran the reverse chain with a network $\epsilon_\theta(x_t, t)$ that predicts the noise
# in $x_t$. Any function with that signature would do: it takes a noisy image of shape
# (B, 1, 28, 28) and a step index per image, and returns a tensor of the same shape. This chapter
# builds the one DDPM uses, a **U-Net** (Ronneberger et al. 2015) made of residual blocks, with the
# step $t$ fed into every block and self-attention at low resolution (Ho et al. 2020, section 4 and
# appendix B). We assemble it from its blocks, check it weight for weight against the package's
# `ddpm_teach.UNet`, ask why it must be told $t$, look inside a trained one, and measure what its
# skip connections buy.
#
# **Learning objectives.** After this chapter you can:
#
# - build the contracting path, bottleneck and expanding path from small blocks;
# - explain why the network must know $t$ and what the time embedding looks like;
# - measure what skip connections buy.
#
# You need chapter 02's closed form $x_t = \sqrt{\bar\alpha_t}\, x_0 + \sqrt{1-\bar\alpha_t}\,
# \epsilon$ (eq. 4) and a little PyTorch (`nn.Module`, `nn.Conv2d`). Code indices $t = 0, \dots,
# T-1$ stand for the paper's $1, \dots, T$, as in earlier chapters.

# %% tags=["setup", "nbval-ignore-output"]
# Setup: on Colab, install the course package; everywhere, seed the random number generators,
# pick the device and print the run budget (set DDPM_TEACH_BUDGET=smoke|cpu|gpu to change it).
import sys

if "google.colab" in sys.modules:
    try:
        import ddpm_teach
    except ImportError:
        import subprocess

        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "git+https://github.com/ddpm-teach/ddpm-teach"], check=True)

from ddpm_teach.course import setup_notebook

BUDGET = setup_notebook(seed=0)

# %%
import copy
import math
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ddpm_teach import viz
from ddpm_teach.analytic import GaussianMixture
from ddpm_teach.data import glyph_digits
from ddpm_teach.metrics import digit_floors, digit_report
from ddpm_teach.schedule import NoiseSchedule
from ddpm_teach.training import TrainConfig, Trainer
from ddpm_teach.unet import AttentionBlock, Downsample, ResBlock, UNet, Upsample, timestep_embedding

linear = NoiseSchedule.linear()  # the paper's schedule, T = 1000, for the sections before training
digits, labels = glyph_digits(8, seed=0)  # (8, 1, 28, 28) in [-1, 1]
print("digits:", labels.tolist())

# %% [markdown]
# ## 1. What the network has to do
#
# Training (Algorithm 1, chapter 05) draws a clean image $x_0$, a step $t$ and noise $\epsilon$, and
# minimises the simple loss (eq. 14)
#
# $$L_\text{simple} = \big\| \epsilon - \epsilon_\theta\big(\sqrt{\bar\alpha_t}\, x_0 +
#   \sqrt{1-\bar\alpha_t}\, \epsilon,\ t\big) \big\|^2 .$$
#
# So $\epsilon_\theta$ must output one number per pixel (the noise in it), and deciding what is
# noise at a pixel takes context at every scale. At small $t$ the noise is a faint grain on sharp
# strokes, and a pixel's neighbours say what the stroke should look like there. At large $t$ the
# strokes are buried, and only the layout of the whole image hints at which digit it was. A stack of
# 3x3 convolutions at full resolution sees too little: each one widens the view by one pixel on
# each side, so a view 28 pixels wide takes 14 of them. The U-Net's answer is to **go down** (halve the
# resolution, so that each 3x3 convolution sees twice as far), think at the bottom, and **come back
# up** to full resolution for the per-pixel answer; **skip connections** hand the fine detail of
# each resolution straight across to the way up, so it need not squeeze through the bottom.
#
# Here is the shape of the computation for the network we will train, the cpu budget's (base width
# $C = 16$, widths $16, 32, 32$ at $28, 14, 7$ pixels, one residual block per level on the way down,
# two on the way up):
#
# ```
# x_t (B, 1, 28, 28)                                                     eps (B, 1, 28, 28)
#   │ conv                                                                     ▲ conv
# 28x28: 16 ─ ResBlock ─ 16 ────────────── skips ──────────────▶ 2 ResBlocks ─ 16
#                        │ down                                                ▲ up
# 14x14:                 16 ─ ResBlock ─ 32 ────── skips ──────▶ 2 ResBlocks ─ 32
#                                        │ down                                ▲ up
#   7x7:                                 32 ─ ResBlock ─ 32 ───▶ 2 ResBlocks ─ 32
#                                                        │       ▲
#                                                        └───────┘
#                                            bottleneck: ResBlock, attention, ResBlock
#
# t ─ sinusoids (B, 16) ─ MLP ─ (B, 64), added inside every ResBlock
# ```

# %% [markdown]
# ## 2. The blocks, one at a time
#
# We follow one small batch through each block: two digits noised to $t = 300$, lifted to 16
# channels by a 3x3 convolution (the U-Net's input layer).

# %%
t_demo = torch.tensor([300, 300])
x_t = linear.q_sample(digits[:2], t_demo, generator=torch.Generator().manual_seed(1))
input_conv = nn.Conv2d(1, 16, 3, padding=1)
h = input_conv(x_t)
emb = torch.randn(2, 64)  # stands in for the time embedding of section 4: one vector per image
print("x_t:", tuple(x_t.shape), "-> input conv ->", tuple(h.shape))

# %% [markdown]
# **The residual block** (`ResBlock`) is where the work happens. With GN group normalisation, SiLU
# the activation $z \mapsto z\,\sigma(z)$ and $e$ the time embedding,
#
# $$h = \mathrm{conv}_1\big(\mathrm{SiLU}(\mathrm{GN}(x))\big) + W_e\, \mathrm{SiLU}(e), \qquad
#   \text{out} = \mathrm{skip}(x) + \mathrm{conv}_2\big(\mathrm{SiLU}(\mathrm{GN}(h))\big).$$
#
# $W_e\, \mathrm{SiLU}(e)$ is one number per output channel, added at every pixel: that is how $t$
# gets in (section 4). $\mathrm{skip}$ is the identity, or a 1x1 convolution when the block changes
# the width. The block keeps height and width. One detail from improved-diffusion (Nichol &
# Dhariwal 2021): $\mathrm{conv}_2$ starts at zero, so an untrained block is exactly its skip path,
# and a deep stack of them starts out as a gentle function of its input.

# %%
same = ResBlock(16, 16, emb_channels=64, dropout=0.0, groups=16)
wider = ResBlock(16, 32, emb_channels=64, dropout=0.0, groups=16)
print("ResBlock(16 -> 16):", tuple(h.shape), "->", tuple(same(h, emb).shape))
print("ResBlock(16 -> 32):", tuple(h.shape), "->", tuple(wider(h, emb).shape))
print("untrained ResBlock(16 -> 16) is the identity:", torch.equal(same(h, emb), h))
print(f"parameters: {sum(p.numel() for p in same.parameters()):,} and "
      f"{sum(p.numel() for p in wider.parameters()):,}")

# %% [markdown]
# **Down and up.** `Downsample` is a 3x3 convolution with stride 2, which halves height and width;
# `Upsample` repeats every pixel 2x2 (nearest neighbour) and smooths with a 3x3 convolution. Neither
# changes the width.

# %%
down, up = Downsample(16), Upsample(16)
print("Downsample:", tuple(h.shape), "->", tuple(down(h).shape), "->", tuple(down(down(h)).shape))
print("Upsample:  ", tuple(down(down(h)).shape), "->", tuple(up(down(down(h))).shape))

# %% [markdown]
# **Self-attention** (`AttentionBlock`) lets every position look at every other one in a single
# step, which convolutions take many layers to do. The $HW$ positions each get a query, key and
# value vector $q, k, v \in \mathbb{R}^C$ (1x1 convolutions), and each position's output is
# $\sum_j \mathrm{softmax}_j(q^\top k_j / \sqrt{C})\, v_j$, added back onto the input. Its cost
# grows as $(HW)^2$, so DDPM uses it only at 16x16 and below; the cpu budget keeps only the one in
# the bottleneck, at 7x7 (section 7 asks what it buys). Like the ResBlock it starts as the
# identity.

# %%
attn = AttentionBlock(32, groups=16)
h7 = torch.randn(2, 32, 7, 7)
print("AttentionBlock:", tuple(h7.shape), "->", tuple(attn(h7).shape),
      f"  ({7 * 7} positions, each attending to all {7 * 7})")

# %% [markdown]
# ## 3. Assembling the U-Net
#
# Now the whole network, written out: the cpu budget's configuration, $C = 16$ with widths
# $C \cdot (1, 2, 2)$, one ResBlock per level on the way down, no attention except in the
# bottleneck. The **contracting path** pushes every activation it makes (the input convolution's,
# each ResBlock's, each downsample's) onto a stack; the **expanding path** pops them, last in first
# out, and concatenates each onto its input along the channels. That is why each level on the way
# up has one ResBlock more than on the way down (one per pushed activation), and why their input
# widths are uneven: $32 + 16 = 48$ where the 14x14 path meets a 16-channel activation from the
# level above.


# %%
class HandUNet(nn.Module):
    """The cpu-budget U-Net written out by hand: x_t (B, 1, 28, 28), t (B,) -> eps (B, 1, 28, 28)."""

    def __init__(self):
        super().__init__()

        def res(c_in, c_out):
            return ResBlock(c_in, c_out, emb_channels=64, dropout=0.0, groups=16)

        # time embedding: sinusoids (B, 16) -> MLP -> (B, 64)
        self.time_mlp = nn.Sequential(nn.Linear(16, 64), nn.SiLU(), nn.Linear(64, 64))
        self.input_conv = nn.Conv2d(1, 16, 3, padding=1)
        # contracting path
        self.enc0, self.down0 = res(16, 16), Downsample(16)  # 28 x 28
        self.enc1, self.down1 = res(16, 32), Downsample(32)  # 14 x 14
        self.enc2 = res(32, 32)  # 7 x 7
        # bottleneck
        self.mid1, self.mid_attn, self.mid2 = res(32, 32), AttentionBlock(32, 16), res(32, 32)
        # expanding path: each ResBlock's input is [h, skip], so its width is h's plus the skip's
        self.dec2a, self.dec2b, self.up2 = res(32 + 32, 32), res(32 + 32, 32), Upsample(32)
        self.dec1a, self.dec1b, self.up1 = res(32 + 32, 32), res(32 + 16, 32), Upsample(32)
        self.dec0a, self.dec0b = res(32 + 16, 16), res(16 + 16, 16)
        self.out_norm, self.out_conv = nn.GroupNorm(16, 16), nn.Conv2d(16, 1, 3, padding=1)

    def forward(self, x, t):
        e = F.silu(self.time_mlp(timestep_embedding(t, 16)))  # (B, 64), shared by every ResBlock
        # contracting path: s0..s5 are the skips
        s0 = self.input_conv(x)  # (B, 16, 28, 28)
        s1 = self.enc0(s0, e)  # (B, 16, 28, 28)
        s2 = self.down0(s1)  # (B, 16, 14, 14)
        s3 = self.enc1(s2, e)  # (B, 32, 14, 14)
        s4 = self.down1(s3)  # (B, 32, 7, 7)
        s5 = self.enc2(s4, e)  # (B, 32, 7, 7)
        # bottleneck
        h = self.mid2(self.mid_attn(self.mid1(s5, e)), e)  # (B, 32, 7, 7)
        # expanding path: skips taken last in, first out
        h = self.dec2a(torch.cat([h, s5], dim=1), e)  # 32 + 32 -> 32, 7 x 7
        h = self.dec2b(torch.cat([h, s4], dim=1), e)  # 32 + 32 -> 32
        h = self.up2(h)  # (B, 32, 14, 14)
        h = self.dec1a(torch.cat([h, s3], dim=1), e)  # 32 + 32 -> 32
        h = self.dec1b(torch.cat([h, s2], dim=1), e)  # 32 + 16 -> 32
        h = self.up1(h)  # (B, 32, 28, 28)
        h = self.dec0a(torch.cat([h, s1], dim=1), e)  # 32 + 16 -> 16
        h = self.dec0b(torch.cat([h, s0], dim=1), e)  # 16 + 16 -> 16
        return self.out_conv(F.silu(self.out_norm(h)))  # (B, 1, 28, 28)


hand = HandUNet()

# %% [markdown]
# Let us watch a batch go through it. A forward hook on each block records the shapes it receives
# and returns:

# %%
rows = []
hooks = [
    module.register_forward_hook(
        lambda m, inputs, out, name=name: rows.append((name, inputs[0].shape, out.shape))
    )
    for name, module in hand.named_children()
]
with torch.no_grad():
    out = hand(x_t, t_demo)
for hook in hooks:
    hook.remove()
print(f"{'block':12s}{'input':>22s}{'output':>22s}")
for name, shape_in, shape_out in rows:
    print(f"{name:12s}{tuple(shape_in)!s:>22s}{tuple(shape_out)!s:>22s}")

# %% [markdown]
# The resolution goes 28, 14, 7 and back; the widths at the concatenations are 64, 64, 64, 48, 48
# and 32 (the inputs of `dec2a` to `dec0b`), and the output has the input's shape.
#
# **Is it the package's U-Net?** `ddpm_teach.UNet` builds the same network from a configuration
# (it loops over levels instead of naming each block). If the two are the same, they have the same
# parameters, in the same order and shapes, and with the same weights they compute the same
# function. The package's untrained network outputs exactly 0 (its last convolution starts at zero),
# which would make any comparison pass, so we first give every one of its parameters random values,
# then copy them into the hand-built network.

# %%
package = UNet(1, base_channels=16, channel_mults=(1, 2, 2), num_res_blocks=1,
               attention_levels=(), dropout=0.0)
print(f"parameters: by hand {sum(p.numel() for p in hand.parameters()):,}, "
      f"ddpm_teach.UNet {package.num_parameters():,}")

g = torch.Generator().manual_seed(2)
with torch.no_grad():
    for p_package, p_hand in zip(package.parameters(), hand.parameters(), strict=True):
        assert p_package.shape == p_hand.shape
        p_package.copy_(0.2 * torch.randn(p_package.shape, generator=g))
        p_hand.copy_(p_package)
    t_pair = torch.tensor([10, 700])
    out_package, out_hand = package(x_t, t_pair), hand(x_t, t_pair)
print("outputs agree to 1e-5:", torch.allclose(out_package, out_hand, atol=1e-5),
      f"(outputs have std {out_package.std():.2f})")
print("... and differ when t differs:",
      not torch.allclose(package(x_t, torch.tensor([700, 10])), out_hand, atol=1e-2))

# %% [markdown]
# Same parameter count, same output. From now on we use `ddpm_teach.UNet`. Its `feature_maps`
# method returns the activation at the end of each level, which gives the same shape walk in one
# call (`down0` to `down2` on the way down, `mid` in the bottleneck, `up2` to `up0` on the way up):

# %%
for name, fmap in package.feature_maps(x_t, t_pair).items():
    print(f"{name:6s}{tuple(fmap.shape)!s:>18s}")

# %% [markdown]
# **Which image sizes work?** A downsampling convolution (3x3, stride 2, padding 1) maps $n$ pixels
# to $\lfloor (n + 2 - 3)/2 \rfloor + 1 = \lceil n/2 \rceil$ (exercise 3 asks you to derive the
# general case), while upsampling doubles. For 28 pixels and three levels the trip is
# $28 \to 14 \to 7 \to 14 \to 28$ and every skip meets an activation of its own size. With four
# levels it is $28 \to 14 \to 7 \to 4 \to 8$, and an 8x8 map cannot be concatenated with a 7x7 skip.
# So $H$ and $W$ must be divisible by $2^{\text{levels}-1}$, and `UNet` says so before it starts.
# (For MNIST-sized images with four levels, pad them to 32x32.)

# %%
four_levels = UNet(1, base_channels=16, channel_mults=(1, 2, 2, 2))
try:
    four_levels(torch.zeros(1, 1, 28, 28), 0)
except ValueError as err:
    print("ValueError:", err)
print("padded to 32 x 32:", tuple(four_levels(torch.zeros(1, 1, 32, 32), 0).shape))

# %% [markdown]
# ## 4. The time embedding
#
# ### Why the network must know $t$
#
# Take the simplest data there is: a one-pixel image that is black ($x_0 = -1$) or white
# ($x_0 = +1$), with equal probability. For this data the best possible noise prediction, the
# minimiser of $L_\text{simple}$, is known exactly: it is $\mathbb{E}[\epsilon \mid x_t, t]$,
# which `GaussianMixture.eps` computes (chapter 03). Here it is against $x_t$, at four steps:

# %%
one_pixel = GaussianMixture([0.5, 0.5], [[-1.0], [1.0]], 1e-3)  # two (almost) point masses
grid_x = torch.linspace(-3, 3, 301, dtype=torch.float64)[:, None]
fig, ax = plt.subplots(figsize=(6, 3.4), layout="constrained")
for t in [50, 150, 300, 600]:
    best = one_pixel.eps(grid_x, linear, torch.full((len(grid_x),), t))
    ax.plot(grid_x[:, 0], best[:, 0], label=f"t = {t}")
ax.axvline(0.5, color="gray", ls=":")
ax.set(xlabel="$x_t$", ylabel=r"$\mathbb{E}[\epsilon \mid x_t, t]$", ylim=(-6, 6),
       title="the best noise prediction for a one-pixel image")
ax.grid(alpha=0.3)
ax.legend()
plt.show()
at_half = torch.tensor([[0.5]], dtype=torch.float64)
print("at x_t = 0.5 the best prediction is",
      ", ".join(f"{one_pixel.eps(at_half, linear, torch.tensor([t])).item():+.2f} (t = {t})"
                for t in [50, 150, 300, 600]))

# %% [markdown]
# The same input $x_t = 0.5$ calls for four different outputs. At $t = 50$,
# $x_t = 0.98\, x_0 + 0.17\, \epsilon$, so $x_t = 0.5$ must be a white pixel pushed down by
# $\epsilon = (0.5 - 0.98)/0.17 \approx -2.8$. At $t = 600$, $x_t = 0.16\, x_0 + 0.99\, \epsilon$:
# the signal is small, and 0.5 is mostly noise, $\epsilon \approx +0.5$. A network that is not told $t$ has to give one answer for $x_t = 0.5$ whatever $t$ was: the best it
# can do is to average over the steps that could have produced $x_t$, weighted by how likely each is,
#
# $$\mathbb{E}[\epsilon \mid x_t] = \sum_s p(s \mid x_t)\, \mathbb{E}[\epsilon \mid x_t, s],
#   \qquad p(s \mid x_t) \propto q_s(x_t) \quad (\text{steps } s \text{ equally likely}).$$
#
# Both predictors are exact for data made of a few points $\mu_k$: given $s$, the posterior over
# which point was noised is a softmax of $-\|x_t - \sqrt{\bar\alpha_s}\,\mu_k\|^2 / 2(1-\bar\alpha_s)$.
# The function below computes them for every candidate step at once (and we check it against
# `GaussianMixture.eps` first). Then we compare the loss of the best network that knows $t$ with that
# of the best network that does not, at every $t$: once for the one-pixel data, and once for
# 784-pixel images, ten glyph digits.


# %%
def ideal_predictions(x_t, points, alpha_bars):
    """E[eps | x_t, s] (S, n, d) and log q_s(x_t) + const (S, n) for data uniform on ``points`` (K, d),
    at every alpha_bar_s of ``alpha_bars`` (S,); x_t (n, d), float64."""
    dot, x_sq, mu_sq = x_t @ points.T, (x_t**2).sum(1, keepdim=True), (points**2).sum(1)
    eps, log_q = [], []
    for ab in alpha_bars:
        dist_sq = x_sq - 2 * ab.sqrt() * dot + ab * mu_sq  # ||x_t - sqrt(ab) mu_k||^2, (n, K)
        log_n = -0.5 * dist_sq / (1 - ab) - 0.5 * x_t.shape[1] * torch.log(1 - ab)
        x0_hat = log_n.softmax(dim=1) @ points  # E[x_0 | x_t, s]
        eps.append((x_t - ab.sqrt() * x0_hat) / (1 - ab).sqrt())  # eq. 4 solved for eps
        log_q.append(log_n.logsumexp(dim=1))
    return torch.stack(eps), torch.stack(log_q)


def with_and_without_t(points, steps, n, seed):
    """Mean squared error of the best eps-predictor with t and without t, at each of ``steps``."""
    g = torch.Generator().manual_seed(seed)
    alpha_bars = linear.alpha_bars[steps]
    knows_t, blind = [], []
    for i, ab in enumerate(alpha_bars):
        x0 = points[torch.randint(len(points), (n,), generator=g)]
        eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps  # eq. 4
        eps_s, log_q = ideal_predictions(x_t, points, alpha_bars)
        eps_blind = (log_q.softmax(dim=0)[:, :, None] * eps_s).sum(0)  # average over p(s | x_t)
        knows_t.append(((eps_s[i] - eps) ** 2).mean().item())
        blind.append(((eps_blind - eps) ** 2).mean().item())
    return np.array(knows_t), np.array(blind)


check_t = torch.tensor([50, 300, 600])
check_x = torch.tensor([[-0.7], [0.5], [1.6]], dtype=torch.float64)
ours = ideal_predictions(check_x, one_pixel.means, linear.alpha_bars[check_t])[0]
package_eps = torch.stack([one_pixel.eps(check_x, linear, t.repeat(3)) for t in check_t])
print("ideal_predictions agrees with GaussianMixture.eps:", torch.allclose(ours, package_eps, atol=1e-4))

steps = list(range(0, 1000, 25))
ten_digits = glyph_digits(10, seed=5)[0].flatten(1).double()  # (10, 784), one of each digit
mse = {
    "one pixel": with_and_without_t(one_pixel.means, steps, n=2000, seed=3),
    "784 pixels (ten digits)": with_and_without_t(ten_digits, steps, n=100, seed=4),
}

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), layout="constrained")
for ax, (name, (knows_t, blind)) in zip(axes, mse.items(), strict=True):
    ax.plot(steps, knows_t, label="knows t")
    ax.plot(steps, blind, "--", label="not told t")
    ax.set(xlabel="t", ylabel="MSE of the best eps-prediction", title=name)
    ax.grid(alpha=0.3)
    ax.legend()
plt.show()
for name, (knows_t, blind) in mse.items():
    print(f"{name:24s} mean MSE over t: knows t {knows_t.mean():.4f}, not told t {blind.mean():.4f}")

# %% [markdown]
# For one pixel, not knowing $t$ is ruinous. From $t = 25$ to $100$ the best blind prediction
# (MSE around 0.9) is hardly better than predicting no noise at all (MSE 1), where the informed
# one is exact, and late in the chain it stays off by about 0.08 where the informed one goes to 0.
#
# For 784-pixel images both errors are tiny: below 0.005 at every $t$, against 1 for predicting no
# noise. The blind one is still worse, but only by thousandths. In high dimension $x_t$ gives its
# own noise level away: the noise adds about $784\,(1-\bar\alpha_t)$ to $\|x_t\|^2$ and shows as
# grain between the strokes, so $p(s \mid x_t)$ is sharply peaked and the blind average picks
# (nearly) the right step. Sun et al. (2025) found the same for trained image models: most still
# work when never told $t$, somewhat worse.
#
# So for images $t$ is not information the network could never recover; it is information it would
# otherwise have to spend capacity estimating, and would get wrong where $x_t$ is ambiguous. Telling
# it is nearly free. And a network trained with $t$ relies on it: in section 6 we hand a trained
# U-Net the wrong $t$ and watch it remove the wrong amount of noise.
#
# ### What the embedding looks like
#
# A step index is one integer; the network gets it as a vector. DDPM uses the sinusoidal position
# embedding of the Transformer (`timestep_embedding`): with $d$ the embedding width, $d/2$
# frequencies $w_i = 10000^{-i/(d/2 - 1)}$ falling geometrically from 1 to $1/10000$, and
#
# $$e(t) = \big(\sin(t w_0), \dots, \sin(t w_{d/2-1}),\ \cos(t w_0), \dots, \cos(t w_{d/2-1})\big).$$
#
# Here it is for all 1000 steps at width $d = 64$ (the gpu budget's $C$; the cpu budget's network
# uses $d = 16$):

# %%
all_t = torch.arange(1000)
E = timestep_embedding(all_t, 64)  # (1000, 64)
fig, (ax_img, ax_cols) = plt.subplots(1, 2, figsize=(11, 3.6), layout="constrained",
                                      gridspec_kw={"width_ratios": [1.2, 1]})
im = ax_img.imshow(E.T.numpy(), aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1,
                   interpolation="nearest")
ax_img.axhline(31.5, color="k", lw=0.8)
ax_img.set(xlabel="t", ylabel="column of e(t)",
           title="timestep_embedding(t, 64): sines (0-31), cosines (32-63)")
fig.colorbar(im, ax=ax_img, shrink=0.8)
for i in [8, 12, 16, 20, 31]:
    period = 2 * math.pi * 10000 ** (i / 31)
    ax_cols.plot(all_t, E[:, i], lw=1, label=f"column {i}: period {period:,.0f} steps")
ax_cols.set(xlabel="t", title="five of the sine columns", ylim=(-1.1, 1.6))
ax_cols.legend(fontsize=7, loc="upper right", ncols=2)
ax_cols.grid(alpha=0.3)
plt.show()

# %% [markdown]
# The first columns oscillate within a few steps (column 0 has period $2\pi$) and tell neighbouring
# steps apart; the last ones barely move over all 1000 steps (the slowest has period
# $2\pi \cdot 10000$) and say roughly where in the chain we are. Because $\sin a \sin b + \cos a \cos b = \cos(a - b)$, the dot product of two embeddings,
#
# $$e(t) \cdot e(s) = \sum_i \cos\big((t - s)\, w_i\big),$$
#
# depends only on the gap $t - s$: nearby steps get similar vectors, distant ones dissimilar, the
# same way at every $t$. The similarity matrix is constant along its diagonals:

# %%
similarity = (E @ E.T) / 32  # cosine similarity: every e(t) has squared length 32
w = 10000 ** (-torch.arange(32, dtype=torch.float64) / 31)  # the 32 frequencies
gaps = torch.arange(-999, 1000, dtype=torch.float64)
profile = torch.cos(gaps[:, None] * w).mean(1)  # sum_i cos(gap w_i) / 32 for every gap
from_gap = profile[all_t[:, None] - all_t[None, :] + 999]  # (1000, 1000), entry [t, s]
print("similarity is a function of t - s alone:", torch.allclose(similarity.double(), from_gap, atol=1e-3))
fig, (ax_mat, ax_gap) = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
im = ax_mat.imshow(similarity.numpy(), cmap="viridis", origin="lower")
ax_mat.set(xlabel="s", ylabel="t", title="e(t) . e(s) / 32")
fig.colorbar(im, ax=ax_mat, shrink=0.8)
ax_gap.plot(gaps[999:1299], profile[999:1299])
ax_gap.set(xlabel="|t - s|", ylabel="similarity", title="similarity against the gap")
ax_gap.grid(alpha=0.3)
plt.show()

# %% [markdown]
# **How $t$ enters the network.** `UNet` embeds $t$ with width $C$, passes it through a small MLP
# (Linear $C \to 4C$, SiLU, Linear $4C \to 4C$; the `time_mlp`) and hands the result to every
# ResBlock, where the projection $W_e\,\mathrm{SiLU}(e)$ adds one learned number per channel. The
# sinusoids give the MLP a smooth, well-spread code of $t$ to work from; the MLP and the projections
# learn what each channel should do at each noise level.

# %% [markdown]
# ## 5. Training with and without skip connections
#
# Claims about architecture are cheap; let us measure one. We train two U-Nets that differ in one
# thing: `UNet(..., skip_connections=False)` drops every concatenation, so the expanding path sees
# only what came through the 7x7 bottleneck. Everything else is the same: the budget's architecture
# otherwise, the same data, seed, steps, batches and noise (the trainer draws them from the seed).
# Each run is 1,200 steps at the `cpu` budget (a few minutes each on two CPU cores; a third of
# `train_steps` under the other budgets), with the package's trainer (`ddpm_teach.training`, chapter 05). Without
# the concatenations the decoder's blocks have narrower inputs, hence fewer parameters (about 17 %
# fewer at the cpu budget); section 7 comes back to that.

# %% tags=["nbval-ignore-output"]
train_steps = 1200 if BUDGET.name == "cpu" else max(BUDGET.train_steps // 3, 10)
data, _ = glyph_digits(BUDGET.data_size, seed=0)
runs = {}
for name, skips in [("with skips", True), ("without skips", False)]:
    config = TrainConfig.from_budget(
        "glyph-digits", BUDGET, train_steps=train_steps, num_samples=0,
        model_kwargs={**BUDGET.model_kwargs(), "skip_connections": skips},
        min_snr_gamma=None,  # the paper's L_simple, as the plots below say (chapter 05 reweights it)
    )
    runs[name] = Trainer(config, data, progress=False)
    start = time.perf_counter()
    runs[name].train()
    print(f"{name:14s} {runs[name].model.num_parameters():,} parameters, {train_steps} steps in "
          f"{time.perf_counter() - start:.0f} s, last logged loss {runs[name].log[-1]['loss']:.4f}")
schedule = runs["with skips"].schedule  # the schedule both were trained with
T = len(schedule)

# %%
fig, ax = plt.subplots(figsize=(7, 3.4), layout="constrained")
window = max(1, train_steps // 30)
for name, run in runs.items():
    steps_done, losses = np.array(run.history).T
    smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
    ax.plot(steps_done[window - 1:], smooth, label=name)
ax.set(xlabel="training step", ylabel=f"L_simple (mean of {window} steps)", yscale="log",
       title="training loss")
ax.grid(alpha=0.3, which="both")
ax.legend()
plt.show()

# %% [markdown]
# Without skips the loss falls later and levels off higher. But the training loss mixes all noise
# levels (each batch draws its own $t$'s), which hides where the difference lies. So we measure it per step: held-out digits, noised at 20 steps with fixed noise,
# and the mean squared error of each network's noise prediction there (the EMA weights, the ones
# that get sampled).

# %% tags=["nbval-ignore-output"]
n_eval = 256 if BUDGET.name != "smoke" else 32
held_out, _ = glyph_digits(n_eval, seed=1)
eval_noise = torch.randn(held_out.shape, generator=torch.Generator().manual_seed(7))
eval_ts = [round(v) for v in np.linspace(0, T - 1, 20)]
models = {name: run.ema_model() for name, run in runs.items()}  # EMA weights, eval mode


@torch.no_grad()
def loss_per_step(model, ts=eval_ts, t_given=None):
    """MSE of model's eps-prediction on the held-out digits at each t of ts (told t_given if set)."""
    out = []
    for t in ts:
        x_t = schedule.q_sample(held_out, t, eval_noise)
        told = torch.full((n_eval,), t if t_given is None else t_given)
        out.append(F.mse_loss(model(x_t, told), eval_noise).item())
    return np.array(out)


per_step = {name: loss_per_step(model) for name, model in models.items()}
for name, values in per_step.items():
    print(f"{name:14s} held-out loss averaged over t: {values.mean():.4f}")
small_t = [i for i, t in enumerate(eval_ts) if t < T // 10]
ratio = per_step["without skips"] / per_step["with skips"]
print(f"loss without skips / with skips: {ratio[small_t].mean():.1f}x for t < {T // 10}, "
      f"{ratio[-5:].mean():.2f}x over the last quarter of the steps")

# %%
fig, (ax_mse, ax_ratio) = plt.subplots(1, 2, figsize=(10, 3.4), layout="constrained")
for name, values in per_step.items():
    ax_mse.plot(eval_ts, values, ".-", label=name)
ax_mse.set(xlabel="t", ylabel="held-out MSE of eps", yscale="log", title="loss at each step")
ax_ratio.plot(eval_ts, ratio, ".-", color="C3")
ax_ratio.axhline(1, color="gray", ls=":")
ax_ratio.set(xlabel="t", ylabel="without skips / with skips", yscale="log",
             title="how much worse without skips")
for ax in (ax_mse, ax_ratio):
    ax.grid(alpha=0.3, which="both")
ax_mse.legend()
plt.show()

# %% [markdown]
# Both curves fall with $t$ (the more noise, the more of $x_t$ *is* noise, and the easier it is to
# name), and the network without skips is worse at every step. In the stored run (cpu budget) it is
# about 1.5 times worse for small $t$, and nearly 3 times worse at the noisiest steps. That last part
# may surprise: is fine detail not a small-$t$ matter? But the target is $\epsilon$, and $\epsilon$
# *is* fine detail at every $t$: one independent number per pixel. At large $t$,
# $x_t = \sqrt{\bar\alpha_t}\, x_0 + \sqrt{1-\bar\alpha_t}\, \epsilon$ is almost $\epsilon$ itself, so the
# best answer is nearly a copy of the input. With skips, the input convolution's activation reaches
# the last block directly and copying is easy; without them, 784 numbers of noise have to be
# squeezed through the 7x7 bottleneck and rebuilt. At small $t$ the job is the fine grain on sharp
# strokes, and the same holds.

# %% [markdown]
# ## 6. Inside the trained network
#
# ### What it predicts
#
# The network outputs noise, but noise is hard to judge by eye. Solving eq. 4 for $x_0$ turns a
# noise prediction into a prediction of the clean image (`NoiseSchedule.predict_x0_from_eps`,
# chapter 03),
#
# $$\hat x_0 = \frac{x_t - \sqrt{1-\bar\alpha_t}\; \epsilon_\theta(x_t, t)}{\sqrt{\bar\alpha_t}},$$
#
# which shows what the network believes is under the noise. Drag the slider over $t$ (or press
# Play): the noisy input, and $\hat x_0$ from each network.

# %% tags=["nbval-ignore-output"]
slider_ts = [round(v) for v in np.linspace(0, T - 1, 40)]
show_digits = held_out[:4]
slider_noise = eval_noise[:4]


@torch.no_grad()
def x0_prediction(model, x_t, t):
    """x0_hat from the model's eps-prediction (eq. 4 inverted), clipped to the data range."""
    told = torch.full((len(x_t),), t)
    return schedule.predict_x0_from_eps(x_t, told, model(x_t, told)).clamp(-1, 1)


noisy = torch.stack([schedule.q_sample(show_digits, t, slider_noise) for t in slider_ts])
panels = {"x_t": noisy}
for name, model in models.items():
    panels[f"x0_hat {name}"] = torch.stack(
        [x0_prediction(model, x, t) for x, t in zip(noisy, slider_ts, strict=True)]
    )
viz.frames_slider(panels, slider_ts, dict.fromkeys(panels, schedule),
                  title="the x_0 each network sees under the noise")

# %% [markdown]
# And for print, three steps side by side:

# %%
print_ts = [T // 20, T // 5, 2 * T // 5, 3 * T // 5]
n_cols = len(models) + 2
fig, axes = plt.subplots(len(print_ts), n_cols, figsize=(1.8 * n_cols, 2 * len(print_ts)),
                         layout="constrained")
for row, t in zip(axes, print_ts, strict=True):
    x = schedule.q_sample(show_digits, t, slider_noise)
    pictures = {"x_t": x, **{name: x0_prediction(m, x, t) for name, m in models.items()},
                "x_0": show_digits}
    for ax, (name, images) in zip(row, pictures.items(), strict=True):
        viz.show_images(images, nrow=2, ax=ax)
        title = {"x_t": f"x_t, t = {t}", "x_0": "x_0 (the truth)"}.get(name, f"x0_hat, {name}")
        ax.set_title(title, fontsize=9)
plt.show()

# %% [markdown]
# At small $t$ both networks clean the digits well. By $t = T/5$ the one without skips leaves grain
# in its $\hat x_0$: noise it failed to predict pixel by pixel stays in the image. By $2T/5$ it
# loses strokes that the network with skips still finds. That is "skip connections keep fine
# detail", seen.
#
# ### Feature maps
#
# What do the levels compute? `UNet.feature_maps` returns the activation at the end of each level.
# Below, for one digit noised a little ($t = T/10$), six channels of each (the six that vary most
# over the image), each with its own colour scale.

# %% tags=["nbval-ignore-output"]
t_feat = T // 10
x_feat = schedule.q_sample(show_digits[:1], t_feat, slider_noise[:1])
feats = models["with skips"].feature_maps(x_feat, t_feat)
fig, axes = plt.subplots(len(feats), 7, figsize=(9, 1.35 * len(feats)), layout="constrained")
for row, (name, fmap) in zip(axes, feats.items(), strict=True):
    fmap = fmap[0]  # (channels, H, W)
    top = fmap.flatten(1).std(1).argsort(descending=True)[:6]
    viz.show_images(x_feat, ax=row[0])
    row[0].set_title(f"{name}\n{fmap.shape[0]} x {fmap.shape[1]} x {fmap.shape[2]}", fontsize=8)
    for ax, c in zip(row[1:], top, strict=True):
        ax.imshow(fmap[c].numpy(), cmap="magma", interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(f"ch {c}", fontsize=7)
plt.show()

# %% [markdown]
# On the way down the maps are the digit, at less and less resolution: stroke edges and the stroke
# itself at 28x28 and 14x14, and at 7x7 a coarse code of where the strokes are. Coming up, `up1` is
# still the digit. The last level, `up0`, looks like noise: it is assembling the output, and the
# output is the noise in $x_t$, not the digit. The network predicts $\epsilon$.

# %% [markdown]
# ### The trained network trusts $t$
#
# Section 4 argued that a network for images could in principle estimate the noise level from
# $x_t$. Ours was always told $t$, so it has no reason to: give it the wrong $t$ and it removes the
# amount of noise that $t$ calls for. Below, held-out digits noised at $t_0 = 3T/10$, and the error of
# the noise prediction when the network is told $t$ instead, for every $t$ on a grid:

# %% tags=["nbval-ignore-output"]
t_true = 3 * T // 10
told_ts = [round(v) for v in np.linspace(0, T - 1, 41)]
net = models["with skips"]
wrong_t = np.array([loss_per_step(net, ts=[t_true], t_given=s)[0] for s in told_ts])
print(f"noised at t = {t_true}; the error is smallest when told t = {told_ts[wrong_t.argmin()]} "
      f"(MSE {wrong_t.min():.3f}); told t = {told_ts[0]}: {wrong_t[0]:.3f}, "
      f"told t = {told_ts[-1]}: {wrong_t[-1]:.3f}")

# %%
fig, (ax_curve, ax_img) = plt.subplots(1, 2, figsize=(11, 3.4), layout="constrained",
                                       gridspec_kw={"width_ratios": [1.1, 1]})
ax_curve.plot(told_ts, wrong_t, ".-")
ax_curve.axvline(t_true, color="gray", ls=":", label=f"true t = {t_true}")
ax_curve.set(xlabel="t the network is told", ylabel="MSE of eps", yscale="log",
             title=f"digits noised at t = {t_true}")
ax_curve.grid(alpha=0.3, which="both")
ax_curve.legend()
x = schedule.q_sample(show_digits, t_true, slider_noise)
told = [t_true // 10, t_true, 2 * t_true]
strip = torch.cat([x] + [x0_prediction(net, x, s) for s in told])
viz.show_images(strip, nrow=4, ax=ax_img)
ax_img.set_title("rows: x_t, then x0_hat when told t = " + ", ".join(map(str, told)), fontsize=9)
plt.show()

# %% [markdown]
# The error is smallest at the true step. Told a smaller $t$, the network expects less noise than
# there is and predicts too little of it, so $\hat x_0$ keeps the grain. Told a larger $t$, it
# takes too much of $x_t$ for noise, strokes included, and the $x_0$ that eq. 4 then implies at
# that $t$ is a faint, broken digit. The network does not measure the noise level; it trusts $t$.
#
# One more look at how $t$ is used: the shift $W_e\, \mathrm{SiLU}(e)$ that the first ResBlock
# adds to each of its channels, for every $t$. Each channel has learned its own smooth schedule.

# %% tags=["nbval-ignore-output"]
with torch.no_grad():
    e = F.silu(net.time_mlp(timestep_embedding(torch.arange(T), net.base_channels)))
    shift = net.down[0].blocks[0].emb_proj(e)  # (T, channels)
fig, ax = plt.subplots(figsize=(7, 2.8), layout="constrained")
im = ax.imshow(shift.T.numpy(), aspect="auto", cmap="RdBu_r", interpolation="nearest",
               vmin=-shift.abs().max(), vmax=shift.abs().max())
ax.set(xlabel="t", ylabel="channel", title="per-channel shift added by the first ResBlock")
ax.yaxis.get_major_locator().set_params(integer=True)
fig.colorbar(im, ax=ax)
plt.show()

# %% [markdown]
# ## 7. What skip connections buy: samples and numbers
#
# Finally the samples themselves. Both networks run the same reverse chain from the same $x_T$:
# the budget's sampler, which at the cpu budget is DDIM over 100 steps with $\eta = 1$, ancestral
# sampling on a subsequence of the steps (chapter 06). The digit probe of `ddpm_teach.metrics`
# judges the results: the share it confidently calls a digit, how many of the ten digits occur, and
# the digit-FID, a Fréchet distance between probe features of the samples and of real glyph digits.
# The FID is printed beside its floor, the distance between two sets of real digits of the same
# size, the best any sampler can score at this sample count. Real digits and pure noise, judged the
# same way, mark the two ends of the scale. A last column counts grey pixels (neither background
# nor stroke): blur and leftover noise raise it.

# %% tags=["nbval-ignore-output"]
n_samples = 256 if BUDGET.name != "smoke" else 32
samples, reports = {}, {}
for name, run in runs.items():
    samples[name] = run.sample(n_samples, seed=123).clamp(-1, 1)  # the same x_T for both
    reports[name] = digit_report(samples[name])
floors = digit_floors(n_samples)  # real glyph digits and pure noise, judged the same way


def grey_share(images):
    """Share of pixels that are neither background (-1) nor stroke (+1): blur or leftover noise."""
    return (images.abs() < 0.5).double().mean().item()


noise_images = torch.randn(n_samples, 1, 28, 28, generator=torch.Generator().manual_seed(8))
judged = {
    **{name: (reports[name], samples[name]) for name in runs},
    "real digits": (floors.data, held_out),
    "pure noise": (floors.noise, noise_images.clamp(-1, 1)),
}
print(f"{f'{n_samples} images each':18s}{'confident':>11s}{'classes':>9s}"
      f"{'digit-FID (floor)':>20s}{'grey pixels':>13s}")
for name, (report, images) in judged.items():
    fid = f"{report.digit_fid:.1f} ({report.fid_floor:.1f})"
    print(f"{name:18s}{report.confident_share:>11.1%}{f'{report.coverage}/10':>9s}{fid:>20s}"
          f"{grey_share(images):>13.1%}")

# %%
fig, axes = plt.subplots(1, len(samples), figsize=(5 * len(samples), 5.3), layout="constrained")
for ax, (name, images) in zip(axes, samples.items(), strict=True):
    viz.show_images(images[:48], nrow=8, ax=ax)
    r = reports[name]
    ax.set_title(f"{name}: {r.confident_share:.0%} confident digits, digit-FID {r.digit_fid:.0f}",
                 fontsize=10)
plt.show()

# %% [markdown]
# In the stored run (cpu budget) the network with skips gives 23 % confident digits, all ten classes
# and a digit-FID of 442; without skips, 5 %, seven classes and 821. Neither is close to real digits
# (99 %, FID 10 against a floor of 8): a sixth of the budget is not enough for good samples, and
# chapter 05 trains longer. But even at this budget the gap is not only in loss and sharpness (the
# grey-pixel share: 21 % with skips, 33 % without, 8 % for real digits). It decides whether the
# samples are digits at all: the network without skips draws fragments of strokes.
#
# **Is it the parameters?** The network without skips also has 17 % fewer parameters, so this
# experiment alone cannot tell the two causes apart. The fair control widens it to the same size:
# `UNet(..., skip_connections=False)` with `base_channels=18` has 280,009 parameters, 5 % more
# than the network with skips. Try it (exercise 4 below).

# %% [markdown]
# **What about attention?** A tempting story is that attention is what makes these networks work.
# At 28x28 the convolutions do most of it: the cpu budget's U-Net has one attention block, at 7x7
# in the bottleneck. Switch it off in the trained network (replace it by the identity, no retraining)
# and measure the held-out loss again:

# %% tags=["nbval-ignore-output"]
no_attention = copy.deepcopy(models["with skips"])
no_attention.mid_attn = nn.Identity()
for level in [*no_attention.down, *no_attention.up]:
    level.attns = None  # the gpu budget also has attention at 14 x 14
without_attn = loss_per_step(no_attention)
print(f"held-out loss averaged over t: {per_step['with skips'].mean():.4f} with attention, "
      f"{without_attn.mean():.4f} with it switched off "
      f"({without_attn.mean() / per_step['with skips'].mean():.2f}x); "
      f"without skips: {per_step['without skips'].mean():.4f} "
      f"({per_step['without skips'].mean() / per_step['with skips'].mean():.2f}x)")

# %% [markdown]
# In the stored run, switching attention off changes the held-out loss by well under 1 % (the
# printout rounds the ratio to 1.00); training without skips cost 58 %. The network does its work
# with convolutions: at 28x28, two
# downsamplings already give a 3x3 convolution a view of most of the image. Attention earns its
# cost on larger images, where convolutions need many layers to connect distant pixels; that is
# why DDPM puts it at 16x16 on 32x32 CIFAR-10, and only there.

# %% [markdown]
# ## Summary
#
# - A U-Net maps $x_t$ and $t$ to a tensor of $x_t$'s shape. The contracting path (ResBlocks and
#   stride-2 convolutions) trades resolution for reach, the bottleneck works at the coarsest scale
#   (7x7 here, with self-attention), and the expanding path (ResBlocks and upsampling) returns to
#   full resolution, taking every activation of the way down as a skip, last in, first out.
#   `ddpm_teach.UNet` is the network we wrote by hand: same parameters, same output.
# - Height and width must be divisible by $2^{\text{levels}-1}$, or the skips do not line up.
# - $t$ enters as a sinusoidal embedding (`timestep_embedding`), through an MLP, as a per-channel
#   shift in every ResBlock. Embeddings of nearby steps are similar, with a similarity that depends
#   only on $t - s$.
# - For one-pixel data the best network that is not told $t$ is far worse than the best one that is;
#   for images the noise level shows in $x_t$ itself and the gap nearly closes. A network trained
#   with $t$ relies on it all the same: told the wrong $t$, it removes the wrong amount of noise.
# - Skip connections, measured at equal training: without them the held-out loss is worse at every
#   $t$ (1.5 times for small $t$, nearly 3 times at the noisiest steps, where the answer is nearly a
#   copy of the input), $\hat x_0$ keeps grain and loses strokes, and at the cpu budget the samples
#   go from 23 % to 5 % recognisable digits. Switching off the bottleneck's attention changes the
#   loss by under 1 %.

# %% [markdown]
# > **Common misconceptions**
# >
# > - *"The U-Net predicts the clean image."* With the $\epsilon$-parameterisation it predicts the
# >   noise: its last level's feature maps look like noise, not like the digit (section 6).
# >   $\hat x_0$ is computed from the prediction by inverting eq. 4. Predicting $x_0$ directly is a
# >   different choice (`prediction="x0"`), equivalent in principle, not what DDPM does.
# > - *"Skip connections are optional decoration."* Without them everything, the noise included,
# >   has to pass through the 7x7 bottleneck. Sections 5 to 7 measured the cost: a worse loss at
# >   every $t$, grainy $\hat x_0$, and far fewer recognisable samples at the same training budget.
# > - *"Attention is what makes it work."* At 28x28 the convolutions do most of the work: switching
# >   off the one attention block of the trained network barely changed its loss. Attention pays on
# >   larger images.
# > - *"The time embedding tells the network what to draw."* It tells it how much noise there is.
# >   For images that could even be estimated from $x_t$; a network trained with $t$ trusts it.
# > - *"A fully convolutional network takes any image size."* Not with skips: each downsampled size
# >   must double back to the size of its skip, so $H$ and $W$ must be divisible by
# >   $2^{\text{levels}-1}$.

# %% [markdown]
# ## Exercises
#
# Each exercise is a function to write in the cell tagged `solution`; the cell after it checks your
# function on fixed inputs and, when it is wrong, says what the mistake looks like.
#
# **Exercise 1: the time embedding.** Return the $(B, d)$ embedding of the step indices `t` (a
# LongTensor of shape (B,)) for an even width `dim`: with `half = dim // 2` and frequencies
# $w_i = 10000^{-i/(\text{half} - 1)}$, column $i$ is $\sin(t w_i)$ and column $\text{half} + i$ is
# $\cos(t w_i)$.

# %% tags=["solution"]
import math

import torch


def timestep_embedding(t, dim):
    """Sinusoidal embedding of the step indices t (B,): (B, dim), sines then cosines."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64) / (half - 1))
    args = t.double()[:, None] * freqs[None, :]  # (B, half)
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


# %%
from ddpm_teach.exercises import check

check("timestep-embedding", timestep_embedding)

# %% [markdown]
# **Exercise 2: how wide is a decoder block's input?** For a U-Net with base width
# `base_channels`, width multipliers `channel_mults` (one per level) and `num_res_blocks` ResBlocks
# per level on the way down, return the input width of every ResBlock of the expanding path, in the
# order they run (deepest level first), as a list of ints. Follow section 3: the contracting path
# pushes the input convolution's output, every ResBlock's output and every downsample's output; each
# expanding ResBlock pops one and concatenates it onto $h$. For the cpu budget's U-Net,
# `decoder_in_channels(16, (1, 2, 2), 1)` is the `[64, 64, 64, 48, 48, 32]` of `HandUNet`.

# %% tags=["solution"]
def decoder_in_channels(base_channels, channel_mults, num_res_blocks):
    """Input widths of the expanding path's ResBlocks, deepest level first."""
    skips = [base_channels]  # the input conv's output
    for level, mult in enumerate(channel_mults):
        skips += [base_channels * mult] * num_res_blocks  # the ResBlocks' outputs
        if level < len(channel_mults) - 1:
            skips.append(base_channels * mult)  # the downsample's output
    width, widths = base_channels * channel_mults[-1], []
    for level in reversed(range(len(channel_mults))):
        for _ in range(num_res_blocks + 1):
            widths.append(width + skips.pop())  # last in, first out
            width = base_channels * channel_mults[level]
    return widths


# %%
from ddpm_teach.exercises import check

check("skip-concat-channels", decoder_in_channels)

# %% [markdown]
# **Exercise 3: how big is a feature map after $k$ downsamplings?** A convolution with kernel size
# $K$, stride $S$ and padding $P$ maps $n$ pixels to $\lfloor (n + 2P - K)/S \rfloor + 1$. Return
# the side length of a `size` x `size` map after `k` Downsample layers ($K = 3$, $S = 2$,
# $P = 1$), as an int. Then use it: which sizes between 20 and 40 survive three downsamplings and
# three upsamplings (doubling) back to their own size?

# %% tags=["solution"]
def downsampled_size(size, k):
    """Side length after k 3x3, stride-2, padding-1 convolutions."""
    for _ in range(k):
        size = (size + 2 * 1 - 3) // 2 + 1
    return size


# %%
from ddpm_teach.exercises import check

check("downsampled-size", downsampled_size)

# %%
print("sizes in 20..40 that a 4-level U-Net takes:",
      [n for n in range(20, 41) if downsampled_size(n, 3) * 2**3 == n])

# %% [markdown]
# **Exercise 4 (an experiment, no check): is it the parameters?** The network without skips has
# 17 % fewer parameters than the one with them. Train the fair control, a network without skips
# widened to `base_channels=18` (280,009 parameters at the cpu budget, 5 % more than the network
# with skips), exactly as in section 5:
#
# ```python
# config = TrainConfig.from_budget(
#     "glyph-digits", BUDGET, train_steps=train_steps, num_samples=0,
#     model_kwargs={**BUDGET.model_kwargs(), "skip_connections": False, "base_channels": 18},
#     min_snr_gamma=None,
# )
# runs["wider, without skips"] = Trainer(config, data, progress=False)
# runs["wider, without skips"].train()
# ```
#
# then rerun the cells after section 5's training cell, through section 7 (they loop over `runs`;
# the training cell itself would start `runs` afresh). Does the gap close?

# %% [markdown]
# ## Next
#
# We have a network and a trainer, and a sixth of the cpu budget already gives some digits. Chapter
# 05 trains for real: the full budget, EMA weights, bf16 mixed precision where the hardware pays
# for it, checkpoints and resuming.
