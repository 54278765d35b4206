# %% [markdown]
# # 00 Why diffusion
#
# Every paper on diffusion models opens with the same paragraph: GANs make sharp samples but train
# unstably and drop modes; VAEs train stably but make blurry samples; diffusion models do both
# things well, at the price of slow sampling. This chapter does not ask you to believe that
# paragraph. We train a small GAN, a small VAE and a small diffusion model on the same 2-D data,
# on a CPU, and **measure** each claim.
#
# **Learning objectives.** By the end of this chapter you can:
#
# - Train a small GAN, VAE and diffusion model on the same 2-D data
# - Measure mode collapse, blur and mode coverage with numbers, not adjectives
#
# You need: what a neural network, a loss and gradient descent are, and what a Gaussian is. The
# diffusion model is only used here, as a black box; chapters 01 to 05 build it from the ground up.
# The GAN and the VAE live in `ddpm_teach.baselines`, the rulers in `ddpm_teach.metrics`.

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
import itertools
import math
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Circle

from ddpm_teach import metrics
from ddpm_teach.baselines import GAN, VAE, train_gan, train_vae
from ddpm_teach.data import EIGHT_GAUSSIANS_CENTERS, EIGHT_GAUSSIANS_STD, toy_2d
from ddpm_teach.sampling import ddpm_sample
from ddpm_teach.training import TrainConfig, Trainer
from ddpm_teach.viz import frames_slider, show_points

# The networks here are tiny: a second thread costs more in coordination than it saves (on a busy
# 2-core machine a training step took roughly 10 to 40 times longer with 2 threads than with 1).
torch.set_num_threads(1)

# One training set for every model; sizes follow the run budget (smoke: seconds, numbers mean
# nothing; cpu: about a minute a model). All three models get the budget's network width and
# depth and its batch size, so they have about the same number of parameters and see the same data.
DATA = toy_2d("eight-gaussians", 20_000, seed=0)
N_SAMPLES = BUDGET.toy_num_samples  # points drawn from each trained model
SIZE = dict(hidden=BUDGET.toy_hidden, num_layers=BUDGET.toy_num_layers)
BATCH = BUDGET.toy_batch_size
STEPS = {"smoke": 200, "cpu": 3000, "gpu": 6000}[BUDGET.name]  # GAN and VAE optimiser steps
SWEEP_STEPS = {"smoke": 100, "cpu": 2000, "gpu": 4000}[BUDGET.name]  # per VAE of the beta sweep
CENTERS, RADIUS = EIGHT_GAUSSIANS_CENTERS, 3 * EIGHT_GAUSSIANS_STD


def draw_modes(ax):
    """The eight centres, each with its 3-std circle: what counts as "near a mode"."""
    for c in CENTERS:
        ax.add_patch(Circle(c.tolist(), RADIUS, fill=False, color="k", lw=0.6, alpha=0.6))


# %% [markdown]
# ## 1. Five ways to build a sampler
#
# A generative model is a recipe for drawing new samples from a distribution $p_{\text{data}}$ it
# only knows through examples. Five families dominate, each with a different way out of the same
# problem (the density of real data is unknown and intractable to normalise):
#
# | family | how it is trained | what goes wrong (the usual claim) |
# |---|---|---|
# | **GAN** (Goodfellow et al. 2014) | a generator $G(z)$ against a discriminator $D(x)$: a two-player game | unstable training; **mode collapse** (some modes never produced); no likelihood |
# | **VAE** (Kingma & Welling 2014) | encoder + decoder, maximise a lower bound (ELBO) on $\log p(x)$ | stable, but **blurry** samples: mass between the modes |
# | **Autoregressive** (PixelCNN, GPT) | exact likelihood, one dimension at a time: $p(x) = \prod_i p(x_i \mid x_{<i})$ | **sequential sampling**: one network call per pixel or token |
# | **Normalising flow** (RealNVP, Glow) | exact likelihood through an invertible network | the **architecture** must be invertible with a cheap Jacobian determinant |
# | **Diffusion** (Ho et al. 2020) | a *fixed* noising process; a network learns to undo it with a **regression** loss | **slow sampling**: hundreds of network calls (later cut by DDIM and others) |
#
# Diffusion's bet: keep what the VAE has (a stable, simple loss and a likelihood bound) without
# asking one network to map noise to data in a single step. The forward process destroys data a
# little at a time (chapters 01 and 02); the network only has to undo one small step (chapter 03),
# which is a plain regression problem; sampling chains many small steps.
#
# We test the GAN, the VAE and diffusion; autoregressive models and flows come back in chapter 07.
#
# ## 2. The test: eight Gaussians, and rulers to measure with
#
# The data (`ddpm_teach.data.toy_2d("eight-gaussians", n)`) are eight round Gaussian blobs of
# standard deviation $\sigma = 0.1$ on a circle of radius 2, equally likely. Neighbouring blobs are
# 15 $\sigma$ apart: a model either puts points on a blob or it does not, and everything in between
# is empty. Two failures are easy to see, and to count:
#
# - **Mode collapse**: some blobs get no samples.
# - **Blur**: samples land between the blobs, where the data never is.
#
# Two numbers from `ddpm_teach.metrics.mode_coverage(samples)` catch them. A sample is **near a
# mode** when it lies within $3\sigma$ of its nearest centre (the circles below); for 2-D Gaussian
# data that holds for $1 - e^{-9/2} = 98.9\,\%$ of the points. **share near** is the share of
# samples near a mode (blur pulls it down); **modes hit** counts the blobs that receive at least
# 1 % of the samples (and at least 5; collapse pulls it down). A third, `metrics.mmd`, compares
# the whole distributions: the squared maximum mean discrepancy $\mathrm{MMD}^2$, zero in
# expectation when the two sets come from the same distribution. Because two finite samples of the
# *same* distribution still differ, `metrics.toy_report` prints every number beside its **floor**:
# the same number for fresh data of the same size.
#
# Before trusting the rulers, calibrate them on four hand-made "samplers": the data itself, a
# sampler that collapsed onto three modes, a blurred one (the data plus noise of std 0.3) and one
# spread evenly along the ring.

# %%
g = torch.Generator().manual_seed(1)
fresh = toy_2d("eight-gaussians", 2000, seed=5)
angle = 2 * math.pi * torch.rand(2000, generator=g)
calibration = {
    "data": fresh,
    "three modes only": EIGHT_GAUSSIANS_CENTERS[torch.randint(0, 3, (2000,), generator=g)]
    + EIGHT_GAUSSIANS_STD * torch.randn(2000, 2, generator=g),
    "blurred (data + noise)": fresh + 0.3 * torch.randn(2000, 2, generator=g),
    "even on the ring": 2 * torch.stack([angle.cos(), angle.sin()], dim=1),
}
fig, axes = plt.subplots(1, 4, figsize=(14, 3.6), layout="constrained")
for ax, (name, points) in zip(axes, calibration.items(), strict=True):
    show_points(points, ax=ax, title=name, size=2)
    draw_modes(ax)
plt.show()

print(f"{'sampler':24} {'modes hit':>9} {'share near':>10} {'MMD^2':>8}   (n = 2000 each)")
for name, points in calibration.items():
    rep = metrics.toy_report(points)
    print(f"{name:24} {rep.modes_hit:>7}/8 {100 * rep.share_near:>9.1f}% {rep.mmd:>8.4f}")
print(f"floor: MMD^2 of other fresh data against the same reference, {rep.mmd_floor:.4f}")

# %% [markdown]
# The rulers separate the failures. Collapse keeps almost every sample near a mode but hits only
# 3/8 modes; blur and the ring hit all 8 modes but put almost two thirds of the samples off them.
# $\mathrm{MMD}^2$ punishes both. For two independent draws of the data it scatters around 0 by
# about $\pm 0.002$ at $n = 2000$ (the data row and the floor), so a model within a few thousandths
# of 0 is as close to the data as this ruler can tell. The data's own share near a mode, 98.9 %, is
# the best any model can do.
#
# ## 3. A GAN
#
# A GAN has two networks (`ddpm_teach.baselines.GAN`, two small MLPs). The **generator** $G$ turns
# latent noise $z \sim \mathcal{N}(0, \mathbf{I})$ into a point $G(z)$; the **discriminator** $D$
# outputs the probability $D(x) = \mathrm{sigmoid}(\text{logit})$ that $x$ is real. They play a
# game (Goodfellow et al. 2014, eq. 1):
#
# $$\min_G \max_D\; \mathbb{E}_{x \sim p_{\text{data}}}\!\left[\log D(x)\right] + \mathbb{E}_{z}\!\left[\log\left(1 - D(G(z))\right)\right].$$
#
# Training alternates: one gradient step makes $D$ better at telling real from fake
# (`d_loss`, the negative of the bracket), then one step makes $G$ better at fooling the new $D$,
# with the "non-saturating" loss $-\mathbb{E}_z \log D(G(z))$ that the same paper recommends
# (`g_loss`); both are `baselines.gan_losses`, trained by `baselines.train_gan`. At the game's
# equilibrium $D = 1/2$ everywhere, so `d_loss` $= 2\ln 2 = 1.386$ and `g_loss` $= \ln 2 = 0.693$.
#
# Note what the game does *not* say: nothing rewards $G$ for covering every mode. A generator that
# puts all its points on one blob that $D$ currently accepts is paid as well as one that covers the
# data. When $D$ learns to reject that blob, $G$ can move to another.
#
# We train two GANs that differ in one number, the discriminator's learning rate: $10^{-4}$
# (ten times smaller than the generator's, a common choice in GAN code for this toy) and
# $10^{-3}$ (the same as the generator's). Every few steps `on_log` draws samples from $G$, always from the
# same 1,000 latent codes, and records the mode coverage.

# %% tags=["nbval-ignore-output"]
LOG_EVERY = max(1, STEPS // 40)


def track_coverage():
    """An on_log callback recording mode_coverage of 1,000 samples (the same z each time)."""
    log = []

    def on_log(step, model):
        samples = model.sample(1000, torch.Generator().manual_seed(0))
        log.append((step, metrics.mode_coverage(samples)))

    return log, on_log


gan_runs = {}
for lr_d in (1e-4, 1e-3):
    log, on_log = track_coverage()
    start = time.perf_counter()
    history = train_gan(
        DATA, STEPS, GAN(**SIZE, seed=0), batch_size=BATCH, lr_g=1e-3, lr_d=lr_d, seed=0,
        log_every=LOG_EVERY, on_log=on_log,
    )  # fmt: skip
    gan_runs[lr_d] = (history, log)
    hits = [cov.modes_hit for _, cov in log]
    print(
        f"GAN lr_d={lr_d:g}: {STEPS} steps in {time.perf_counter() - start:.0f} s; modes hit at the "
        f"{len(log)} checks: min {min(hits)}, max {max(hits)}, last {hits[-1]}"
    )


# %%
def moving_average(x, k):
    """Mean over a sliding window of k steps (shorter at the start)."""
    c = np.cumsum(np.insert(np.asarray(x, dtype=float), 0, 0.0))
    return np.array([(c[i + 1] - c[max(0, i + 1 - k)]) / min(k, i + 1) for i in range(len(x))])


def plot_gan_run(history, log, title):
    """Losses, coverage over training, which modes get the samples, and the final samples."""
    steps = [s for s, _ in log]
    fig = plt.figure(figsize=(15, 3.6), layout="constrained")
    ax_loss, ax_cov, ax_map, ax_pts = fig.subplots(1, 4, width_ratios=[1.2, 1.2, 1.3, 0.9])
    k = max(1, STEPS // 100)
    for name, series, color in (("d_loss", history.d_loss, "C3"), ("g_loss", history.g_loss, "C0")):
        ax_loss.plot(history.steps, series, color=color, alpha=0.25, lw=0.5)
        ax_loss.plot(history.steps, moving_average(series, k), color=color, label=name)
    for level in (2 * math.log(2), math.log(2)):
        ax_loss.axhline(level, color="grey", ls="--", lw=0.8)
    ax_loss.set(xlabel="step", title="losses (dashed: 2 ln 2, ln 2)", ylim=(0.3, 2.0))
    ax_loss.legend(loc="upper right")
    ax_cov.plot(steps, [c.modes_hit for _, c in log], "o-", ms=3, label="modes hit (of 8)")
    ax_cov.set(
        xlabel="step", ylabel="modes hit", ylim=(-0.3, 8.5), title="coverage during training"
    )
    twin = ax_cov.twinx()
    twin.plot(steps, [100 * c.share_near for _, c in log], "s-", ms=2, color="C2", alpha=0.7)
    twin.set_ylabel("share near a mode (%)", color="C2")
    twin.set_ylim(0, 105)
    shares = np.stack([c.per_mode_counts.numpy() / 1000 for _, c in log], axis=1)  # (8, checks)
    im = ax_map.imshow(
        shares, aspect="auto", cmap="magma", vmin=0, vmax=0.5, interpolation="nearest",
        extent=(steps[0], steps[-1], 7.5, -0.5),
    )  # fmt: skip
    ax_map.set(xlabel="step", ylabel="mode", title="share of samples on each mode")
    fig.colorbar(im, ax=ax_map, shrink=0.8)
    show_points(
        history.model.sample(N_SAMPLES, torch.Generator().manual_seed(1)), ax=ax_pts, size=2
    )
    draw_modes(ax_pts)
    ax_pts.set_title("samples at the end")
    fig.suptitle(title)
    plt.show()


history, log = gan_runs[1e-4]
plot_gan_run(history, log, "GAN, discriminator learning rate 1e-4")

# %% [markdown]
# At the cpu budget this GAN **never covers more than one mode** at any of its 40 checks. The
# heatmap shows what it does instead: it puts its samples on one blob, loses it, lands on another
# (the bright cells jump from row to row), and at the checks in between its points lie near no
# mode at all (a column that is black everywhere). At the end every sample sits in one streak
# across a single mode, most of it outside the 3-std circle. Meanwhile the two losses lie on the
# equilibrium lines the whole time, as if all were well. That is **mode collapse**, with the
# **mode hopping** that comes with it: $D$ learns to reject the blob that $G$ occupies, $G$ moves
# to wherever $D$ currently says "real", and the chase repeats.
#
# The second GAN is the same code with the discriminator's learning rate raised to $10^{-3}$:

# %%
history, log = gan_runs[1e-3]
plot_gan_run(history, log, "GAN, discriminator learning rate 1e-3")

# %% [markdown]
# This one covers all 8 modes from step 600 on and ends with 95 % of its samples near a mode:
# when a GAN works, its samples are sharp. It is still not a calm optimisation. In the first few
# hundred steps the losses swing far from equilibrium while coverage climbs; later they jump twice
# (near steps 1,150 and 1,750), and at the second jump the share near a mode falls to 71 % while
# one blob nearly empties (the dark cell of mode 4). Look closely at the final samples, too: the
# blobs are *narrower* than the data's and sit off centre. That is collapse on a smaller scale,
# inside each mode; the scoreboard of section 6 measures it. The table below puts numbers on the
# second half of both runs.

# %% tags=["nbval-ignore-output"]
# Over the second half of training: modes hit (mean and range), how often the set of covered
# modes changed between consecutive checks, the lowest share near a mode, and each loss's mean and
# standard deviation (its oscillation).
print(
    f"{'second half':15} | {'modes hit':>9} {'range':>5} {'changes':>7} {'min near':>8} | "
    f"{'d_loss':>13} {'g_loss':>13}"
)
for lr_d, (history, log) in gan_runs.items():
    late = log[len(log) // 2 :]
    hits = [c.modes_hit for _, c in late]
    covered = [tuple(c.per_mode_counts.ge(10).tolist()) for _, c in late]  # the set of modes
    changes = sum(a != b for a, b in itertools.pairwise(covered))
    near = min(c.share_near for _, c in late)
    d, g_ = (np.array(x[len(x) // 2 :]) for x in (history.d_loss, history.g_loss))
    print(
        f"GAN lr_d {lr_d:<6g} | {np.mean(hits):>9.1f} {min(hits):>2}-{max(hits):<2} {changes:>7} "
        f"{100 * near:>7.1f}% | {d.mean():.3f} ± {d.std():.3f} {g_.mean():.3f} ± {g_.std():.3f}"
    )

# %% [markdown]
# Over the second half of training the collapsed GAN hit 0 or 1 modes and its set of covered modes
# changed 13 times in 20 checks; the other held all 8 modes at every check, yet its share near a
# mode still fell as low as 71 %. Now compare the losses. Their means differ by less than 0.02
# between the two runs, and both sit within 0.04 of the equilibrium values $2 \ln 2 = 1.386$ and
# $\ln 2 = 0.693$. The collapsed run's losses swing a little more (standard deviation 0.048 against
# 0.019 for `d_loss`), but nothing in them says "one mode" rather than "eight". A GAN's loss
# measures the balance of the game, not the quality of the samples, so you cannot watch it to know
# when training has gone wrong, or when to stop.
#
# ## 4. A VAE
#
# A VAE (`ddpm_teach.baselines.VAE`) has an **encoder** that maps a point $x$ to a Gaussian
# $q(z \mid x) = \mathcal{N}(\mu(x), \mathrm{diag}\,\sigma^2(x))$ over latent codes (it outputs
# $\mu$ and $\log \sigma^2$, `logvar`), and a **decoder** that maps a code back to a Gaussian over
# points, $p(x \mid z) = \mathcal{N}(m(z), s^2 \mathbf{I})$ with a fixed $s$ (here $s = 0.1$, the
# data's own spread). Sampling is two lines: $z \sim \mathcal{N}(0, \mathbf{I})$, then
# $x = m(z) + s\,\epsilon$ (`VAE.sample`). Training maximises the evidence lower bound
# (Kingma & Welling 2014, eq. 3):
#
# $$\log p(x) \;\ge\; \mathrm{ELBO}(x) = \mathbb{E}_{q(z \mid x)}\left[\log p(x \mid z)\right] - \mathrm{KL}\left(q(z \mid x)\,\|\,\mathcal{N}(0, \mathbf{I})\right),$$
#
# with $\log p(x \mid z) = -\frac{|x - m(z)|^2}{2 s^2} - \frac{D}{2}\log(2\pi s^2)$ (`baselines.gaussian_log_likelihood`;
# here $D = 2$ is the dimension of $x$, not the discriminator) and the KL in closed form,
# $\frac12\sum_j \left(\mu_j^2 + \sigma_j^2 - 1 - \log\sigma_j^2\right)$
# (`baselines.gaussian_kl`); `baselines.gaussian_elbo` is their difference. The expectation is
# estimated with one code $z = \mu + \sigma\,\epsilon$, $\epsilon \sim \mathcal{N}(0, \mathbf{I})$:
# the **reparameterisation trick** (`baselines.reparameterise`), which keeps $z$ a differentiable
# function of $\mu$ and $\sigma$. Unlike the GAN's game, this is one loss, minimised by ordinary
# gradient descent: `baselines.train_vae` minimises $-\mathrm{ELBO}$.
#
# The $\beta$-VAE (Higgins et al. 2017) weighs the KL by $\beta$: loss $= -\mathbb{E}\log
# p(x \mid z) + \beta\,\mathrm{KL}$. We train the plain VAE ($\beta = 1$) first, with the batch size
# and learning rate the run budget gives the diffusion model, recording its coverage as it trains.

# %% tags=["nbval-ignore-output"]
vae_log, on_log = track_coverage()
start = time.perf_counter()
vae_history = train_vae(
    DATA, STEPS, VAE(**SIZE, seed=0), beta=1.0, batch_size=BATCH, lr=BUDGET.toy_lr, seed=0,
    log_every=LOG_EVERY, on_log=on_log,
)  # fmt: skip
vae = vae_history.model
print(f"VAE beta=1: {STEPS} steps in {time.perf_counter() - start:.0f} s")
print(f"last 100 steps: -ELBO {np.mean(vae_history.loss[-100:]):.3f} nats = "
      f"-log p(x|z) {np.mean(vae_history.nll[-100:]):.3f} + KL {np.mean(vae_history.kl[-100:]):.3f}")  # fmt: skip
cov = metrics.mode_coverage(vae.sample(N_SAMPLES, torch.Generator().manual_seed(1)))
print(f"samples: modes hit {cov.modes_hit}/8, share near a mode {100 * cov.share_near:.1f}%")

# %% [markdown]
# Where do the VAE's samples go, and why? The figure shows, left to right: the loss while training;
# the share of samples near a mode during training; the samples; and the **latent plane**: every
# code $z$ on a grid, coloured by the mode its decoded point $m(z)$ lands on (grey: near no mode),
# with the prior's $1\sigma$, $2\sigma$ and $3\sigma$ circles.

# %% tags=["nbval-ignore-output"]
fig = plt.figure(figsize=(15, 3.7), layout="constrained")
ax_loss, ax_cov, ax_pts, ax_lat = fig.subplots(1, 4)
k = max(1, STEPS // 100)
ax_loss.plot(vae_history.steps, moving_average(vae_history.loss, k), label="-ELBO")
ax_loss.plot(vae_history.steps, moving_average(vae_history.kl, k), label="KL")
ax_loss.set(xlabel="step", ylabel="nats per point", title="loss", ylim=(-3, 10))
ax_loss.legend()
ax_cov.plot(
    [s for s, _ in vae_log], [100 * c.share_near for _, c in vae_log], "s-", ms=2, color="C2"
)
ax_cov.axhline(98.9, color="grey", ls="--", lw=0.8)
ax_cov.set(
    xlabel="step",
    ylabel="share near a mode (%)",
    ylim=(0, 105),
    title="while training (dashed: data)",
)
show_points(vae.sample(N_SAMPLES, torch.Generator().manual_seed(1)), ax=ax_pts, size=2)
draw_modes(ax_pts)
ax_pts.set_title("VAE samples (beta = 1)")
grid = torch.linspace(-3, 3, 241)
zz = torch.stack(torch.meshgrid(grid, grid, indexing="xy"), dim=-1).reshape(-1, 2)
with torch.no_grad():
    decoded = vae.decode(zz)
dist = torch.cdist(decoded, CENTERS)
nearest, which = dist.min(dim=1)
label = torch.where(nearest <= RADIUS, which, torch.full_like(which, 8)).reshape(241, 241)
colors = plt.get_cmap("tab10")(np.arange(10))[[0, 1, 2, 3, 4, 5, 6, 8, 7]]  # 8 modes + grey
ax_lat.imshow(colors[label.numpy()], extent=(-3, 3, -3, 3), origin="lower", interpolation="nearest")
for r in (1, 2, 3):
    ax_lat.add_patch(Circle((0, 0), r, fill=False, color="k", lw=0.6))
ax_lat.set(xlabel="$z_1$", ylabel="$z_2$", title="latent plane: where m(z) lands")
plt.show()
prior_share = metrics.mode_coverage(
    vae.decode(torch.randn(100_000, 2, generator=torch.Generator().manual_seed(2))).detach()
).share_near
print(
    f"share of the prior's mass whose decoded mean m(z) lies near a mode: {100 * prior_share:.1f}%"
)

# %% [markdown]
# The VAE reaches all 8 modes, but at the end of training only 62 % of its samples lie near one
# (the data: 98.9 %); the others are spread along the ring between the blobs and inside it. That is
# what "blur" means for points in the plane: probability spread over places where the data has
# none. The latent plane shows where it comes from. The decoder $m(z)$ is a continuous function,
# so between two codes that decode onto different blobs there are codes that decode into the gap
# between them (the grey wedges), and the prior $\mathcal{N}(0, \mathbf{I})$, which is what sampling
# draws from, puts about a third of its mass there. Training makes the wedges narrower (the share
# near a mode rose from 8 % to 62 % and was still rising when the budget ended), but a continuous
# map cannot jump from one blob to the next: however long it trains, some codes land in between.
#
# **The KL weight.** Does another $\beta$ fix it? A small $\beta$ lets each $q(z \mid x)$ shrink
# to a point, so the codes the data uses no longer fill the prior; a large $\beta$ pushes every
# $q(z \mid x)$ towards the prior itself, until the code says nothing about $x$. Train a VAE for
# each $\beta$ and plot the two rulers against each other.

# %% tags=["nbval-ignore-output"]
BETAS = [0.1, 1.0, 10.0, 30.0, 100.0]
sweep = {}
start = time.perf_counter()
for beta in BETAS:
    h = train_vae(
        DATA,
        SWEEP_STEPS,
        VAE(**SIZE, seed=0),
        beta=beta,
        batch_size=BATCH,
        lr=BUDGET.toy_lr,
        seed=0,
    )
    samples = h.model.sample(N_SAMPLES, torch.Generator().manual_seed(1))
    sweep[beta] = (samples, metrics.mode_coverage(samples), np.mean(h.kl[-100:]))
print(f"{len(BETAS)} VAEs of {SWEEP_STEPS} steps in {time.perf_counter() - start:.0f} s")
print(f"{'beta':>6} {'modes hit':>9} {'share near':>10} {'KL (nats)':>9}")
for beta, (_, c, kl) in sweep.items():
    print(f"{beta:>6g} {c.modes_hit:>7}/8 {100 * c.share_near:>9.1f}% {kl:>9.2f}")

# %%
fig = plt.figure(figsize=(16, 3.4), layout="constrained")
axes = fig.subplots(1, len(BETAS) + 1, width_ratios=[1] * len(BETAS) + [1.35])
for ax, (beta, (samples, c, _)) in zip(axes, sweep.items(), strict=False):
    show_points(samples, ax=ax, size=1.5)
    draw_modes(ax)
    ax.set_title(f"beta = {beta:g}: {c.modes_hit}/8, {100 * c.share_near:.0f}% near", fontsize=10)
    ax.tick_params(labelsize=7)
ax = axes[-1]
for beta, (_, c, _) in sweep.items():
    ax.plot(c.modes_hit, 100 * c.share_near, "o", color="C1")
    ax.annotate(f"beta {beta:g}", (c.modes_hit, 100 * c.share_near), textcoords="offset points",
                xytext=(-46, 3), fontsize=9)  # fmt: skip
ax.plot(8, 98.9, "*", ms=14, color="k")
ax.annotate("data", (8, 98.9), textcoords="offset points", xytext=(-34, -4))
ax.set(xlabel="modes hit (of 8)", ylabel="share near a mode (%)", xlim=(-0.5, 8.7), ylim=(0, 105),
       title="no KL weight reaches the data")  # fmt: skip
ax.grid(alpha=0.3)
plt.show()

# %% [markdown]
# No $\beta$ gets close to the data. The best, $\beta = 10$, puts 68 % of the samples near a mode.
# With a small $\beta = 0.1$ the KL costs little and the encoder makes each $q(z \mid x)$ tiny (a
# KL of 7.2 nats); samples from the prior then mostly land on codes the decoder never learned to
# put on a blob: 11 % near a mode, a diffuse cloud. With a large $\beta = 100$ the KL is squeezed
# to 0.84 nats, less than the $\ln 8 = 2.08$ nats it takes just to say which of the eight blobs
# $x$ came from, so the code cannot name the blob, and the decoder smears its points around the
# ring: 6/8 modes, 9 % near. The KL weight moves the VAE along a trade-off between encoding the
# data precisely and keeping the codes where the prior samples them; it does not remove the
# trade-off.
#
# ## 5. A diffusion model
#
# Now the model this course is about. The forward process adds Gaussian noise in $T$ small steps;
# its closed form (chapter 02, DDPM eq. 4, `NoiseSchedule.q_sample`) is
#
# $$x_t = \sqrt{\bar\alpha_t}\, x_0 + \sqrt{1 - \bar\alpha_t}\,\epsilon, \qquad \epsilon \sim \mathcal{N}(0, \mathbf{I}),$$
#
# where $\bar\alpha_t$ is a fixed number that falls from nearly 1 ($x_t$ is almost $x_0$) to nearly
# 0 ($x_t$ is almost pure noise) as $t$ goes from 1 to $T$ (chapter 01 derives it), and a network
# $\epsilon_\theta(x_t, t)$ (here `ddpm_teach.mlp.MLPDenoiser`, a small MLP that is
# told $t$) learns to recover the noise, by plain regression (DDPM eq. 14, Algorithm 1):
#
# $$L_{\text{simple}} = \mathbb{E}_{x_0, t, \epsilon}\left[\,\big|\epsilon - \epsilon_\theta(x_t, t)\big|^2\right].$$
#
# No game, no second network, no encoder: draw a data point, a step $t$ and a noise, and take a
# gradient step on a mean squared error. The package's training engine (`ddpm_teach.training`:
# `TrainConfig.from_budget`, `Trainer`) does exactly that, with the budget's network size, steps
# and batch, and keeps an exponential moving average of the weights for sampling. Sampling
# (`ddpm_teach.sampling.ddpm_sample`, Algorithm 2, chapter 03) starts from
# $x_T \sim \mathcal{N}(0, \mathbf{I})$ and runs $T$ learned denoising steps back to $x_0$. During
# training the trainer also draws previews (`on_samples`), whose mode coverage we record.

# %% tags=["nbval-ignore-output"]
config = TrainConfig.from_budget("eight-gaussians", BUDGET, seed=0)
previews = []
trainer = Trainer(
    config, DATA, progress=False,
    on_samples=lambda step, samples: previews.append((step, metrics.mode_coverage(samples))),
)  # fmt: skip
start = time.perf_counter()
trainer.train()
print(
    f"diffusion: {config.train_steps} steps, batch {config.batch_size}, T = {config.num_steps}, "
    f"{trainer.model.num_parameters():,} parameters, in {time.perf_counter() - start:.0f} s"
)
for step, c in previews:
    print(
        f"  preview at step {step:5d}: modes hit {c.modes_hit}/8, share near {100 * c.share_near:.1f}%"
    )

# %%
loss_steps, losses = zip(*trainer.history, strict=True)
fig, ax = plt.subplots(figsize=(6, 3.2))
ax.plot(loss_steps, losses, alpha=0.25, lw=0.5, color="C4")
ax.plot(
    loss_steps, moving_average(losses, max(1, len(losses) // 100)), color="C4", label="L_simple"
)
ax.set(
    xlabel="step",
    ylabel="mean squared error",
    title="diffusion: the training loss is a regression loss",
    ylim=(0, 1.1),
)
ax.grid(alpha=0.3)
ax.legend()
plt.show()

# %% [markdown]
# Now sample with the full reverse chain, keeping every few states so that we can watch it. Drag
# the slider (or press Play): the points start as a round Gaussian cloud at $t = T - 1$ (the code
# counts steps from 0, so this is $x_T$) and are pulled, step by step, onto the eight blobs.

# %% tags=["nbval-ignore-output"]
T = trainer.schedule.num_steps
start = time.perf_counter()
trajectory = ddpm_sample(
    trainer.ema_model(), trainer.schedule, (N_SAMPLES, 2), torch.Generator().manual_seed(1),
    return_trajectory=True, trajectory_stride=max(1, T // 50),
)  # fmt: skip
diffusion_seconds = time.perf_counter() - start
diffusion_samples = trajectory.sample
cov = metrics.mode_coverage(diffusion_samples)
print(
    f"{N_SAMPLES} samples, {T} network calls each, in {diffusion_seconds:.1f} s: modes hit {cov.modes_hit}/8, share near {100 * cov.share_near:.1f}%"
)

# %%
frames_slider(
    trajectory.xs[:, :1000],
    trajectory.timesteps,  # T-1, ..., 0, then -1 for the sample x_0 the chain ends on
    trainer.schedule,
    lim=3.5,
    title="Diffusion sampling: from x_T to x_0",
)

# %% [markdown]
# Three things to see. The loss falls quickly and then flattens, near 0.23, without oscillating:
# it is a regression loss, and it does not reach 0 because the noise cannot be read off $x_t$ exactly
# (at large $t$ hardly at all), so some error is irreducible. Every preview covers all 8 modes, and
# the share near a mode climbs steadily, 37, 71, 92, 95, 96 % (previews use a quicker 100-step
# sampler); there is no game to go wrong, only a fit that improves. And the full 1000-step chain
# gives 97.0 % of the samples near a mode, against 98.7 % for fresh data of the same size.
#
# ## 6. The scoreboard
#
# All three models, the same data, the same number of samples, the same rulers, each number beside
# its data-vs-data floor. Two more columns describe the blobs a model draws (`blob_shape` below):
# their **width** (the spread of the samples near a mode around their own mean; the data's is
# $\sigma = 0.1$) and their **offset** from the true centres. **SW2**, also from `toy_report`, is
# the sliced Wasserstein distance: project both sample sets onto random directions and measure how
# far apart the 1-D distributions are; like $\mathrm{MMD}^2$, read it against its floor. The last
# columns are the price: network calls per sample, and the time to draw all the samples.


# %% tags=["nbval-ignore-output"]
def timed(sample):
    """Run sample() and return (samples, seconds)."""
    start = time.perf_counter()
    out = sample()
    return out, time.perf_counter() - start


def count(*modules):
    return sum(p.numel() for m in modules for p in m.parameters())


def blob_shape(samples):
    """The blobs a model draws, against the data's: (width, offset), averaged over the samples
    near a mode. width: per-coordinate std of a blob around its own mean (data: 0.1); offset:
    distance from that mean to the true centre (data: about 0)."""
    distance, mode = torch.cdist(samples.double(), CENTERS.double()).min(dim=1)
    widths, offsets, counts = [], [], []
    for k in range(len(CENTERS)):
        blob = samples.double()[(mode == k) & (distance <= RADIUS)]
        if len(blob) >= 5:
            widths.append(blob.var(dim=0).mean().sqrt().item())
            offsets.append((blob.mean(dim=0) - CENTERS[k]).norm().item())
            counts.append(len(blob))
    if not counts:  # no blob with 5 samples: nothing to measure
        return math.nan, math.nan
    return np.average(widths, weights=counts), np.average(offsets, weights=counts)


gan_lo, gan_hi = gan_runs[1e-4][0].model, gan_runs[1e-3][0].model
seed = torch.Generator().manual_seed
finals = {  # name: (samples, seconds to draw them, network calls per sample, parameters trained)
    "GAN, lr_d 1e-4": (*timed(lambda: gan_lo.sample(N_SAMPLES, seed(1))), 1, count(gan_lo)),
    "GAN, lr_d 1e-3": (*timed(lambda: gan_hi.sample(N_SAMPLES, seed(1))), 1, count(gan_hi)),
    "VAE, beta 1": (*timed(lambda: vae.sample(N_SAMPLES, seed(1))), 1, count(vae)),
    "diffusion (DDPM)": (diffusion_samples, diffusion_seconds, T, count(trainer.model)),
}
print(
    f"{'model':17} {'modes hit':>9} {'near':>6} {'width':>5} {'offset':>6} {'MMD^2':>8} {'SW2':>6}"
    f" | {'calls/sample':>12} {'sampling':>9} {'parameters':>10}"
)
for name, (samples, seconds, calls, params) in finals.items():
    rep = metrics.toy_report(samples)
    width, offset = blob_shape(samples)
    print(
        f"{name:17} {rep.modes_hit:>7}/8 {100 * rep.share_near:>5.1f}% {width:>5.3f} {offset:>6.3f}"
        f" {rep.mmd:>8.4f} {rep.swd:>6.3f} | {calls:>12} {1000 * seconds:>7.0f}ms {params:>10,}"
    )
fresh = toy_2d("eight-gaussians", N_SAMPLES, seed=1)  # the floor's fresh data (toy_report seed + 1)
width, offset = blob_shape(fresh)
print(
    f"{'data (floor)':17} {rep.data_modes_hit:>7}/8 {100 * rep.data_share_near:>5.1f}% "
    f"{width:>5.3f} {offset:>6.3f} {rep.mmd_floor:>8.4f} {rep.swd_floor:>6.3f} | "
    f"({N_SAMPLES} samples each)"
)

# %%
fig, axes = plt.subplots(1, 5, figsize=(17, 3.6), layout="constrained")
show_points(fresh, ax=axes[0], title="data", size=2)
for ax, (name, (samples, *_)) in zip(axes[1:], finals.items(), strict=True):
    show_points(samples, ax=ax, title=name, size=2)
for ax in axes:
    draw_modes(ax)
plt.show()

# %% [markdown]
# The paragraph from the introduction of every diffusion paper, now with numbers (cpu budget):
#
# - **GAN**: mode collapse is real, and so is the instability. With one learning rate the GAN
#   never covered more than 1 of 8 modes; with another it covered all 8, sharply (95 % near a
#   mode), but its blobs are half as wide as the data's (width 0.051 against 0.097) and sit a whole
#   $\sigma$ off centre (offset 0.101): that is why its $\mathrm{MMD}^2$, 0.073, is far above the
#   floor. Its losses looked the same either way.
# - **VAE**: all 8 modes, stable training, but blurred: only 62 % of the samples near a mode, the
#   blobs 30 % too wide (0.127), and no KL weight fixes it.
# - **Diffusion**: all 8 modes, 97 % near a mode, blobs of the right width (0.100) in the right
#   place (offset 0.009, the same as fresh data's), and an $\mathrm{MMD}^2$ of $-0.001$ against a
#   floor of $-0.0005$: as far as this ruler can tell, a sample of the data (the sliced Wasserstein
#   distance, 0.098 against 0.091, is as close). It was trained with a plain regression loss, with
#   about as many parameters as the others.
# - **The price**: 1000 network calls per sample instead of 1; here about 6 s against a few ms for
#   2,000 points, about a thousand times slower (timings depend on the machine). Chapter 06 trades some
#   quality for speed with DDIM, which reuses the same network with far fewer steps.
#
# These are single runs with one seed each, at one budget: a different seed or a longer run would
# move the numbers (the VAE was still improving). What would not change is where each failure comes
# from: the GAN's objective does not ask for every mode, the VAE's continuous decoder must cross the
# gaps, and diffusion asks its network for something simpler, one small denoising step at a time.
#
# > **Common misconceptions**
# >
# > - *"A diffusion model is a GAN with noise added."* There is no discriminator and no game.
# >   One network is trained by regression, $|\epsilon - \epsilon_\theta(x_t, t)|^2$, on inputs made
# >   by a fixed noising process; its loss (section 5) falls and settles like any regression's. The
# >   noise is not a trick to calm a discriminator: it defines the problem the network solves.
# > - *"A GAN's losses tell you whether it is working."* Both GANs above sat near
# >   $2\ln 2$ and $\ln 2$ whether they covered one mode or eight: the losses measure the balance
# >   of the game, not the quality of the samples. Measure the samples.
# > - *"VAEs are blurry because their networks are too small."* Here the VAE had as many
# >   parameters as the diffusion model (67,590 against 70,914) and saw the same data. Its off-mode
# >   samples come from the continuous decoder meeting a gap-free prior, and from the KL trade-off.
# > - *"Diffusion models have no likelihood, like GANs."* Like the VAE, they have a variational
# >   lower bound on $\log p(x)$; chapter 03 derives it and chapter 06 evaluates it.
# > - *"Diffusion is better in every way."* Sampling costs one network call per step, 1000 here.
#
# ## Summary
#
# - Five families: GANs (a game), VAEs (a bound, one network pair), autoregressive models and flows
#   (exact likelihoods with sequential sampling or invertible architectures), and diffusion (a
#   fixed noising process undone by a regression-trained network).
# - Rulers before adjectives: `metrics.mode_coverage` (modes hit, share near a mode) catches
#   collapse and blur; `metrics.toy_report` adds $\mathrm{MMD}^2$ and sliced Wasserstein, each
#   beside its data-vs-data floor.
# - Measured at the cpu budget: a GAN that collapsed onto one hopping mode, and the same GAN with
#   one learning rate changed covering all modes with narrow blobs; a VAE covering all modes with a
#   third of its samples between them, and no KL weight tried doing much better; a diffusion model
#   at the floor.
# - Diffusion's costs: many network calls per sample. The chapters ahead build it piece by piece:
#   the forward process (01, 02), the reverse chain and its loss (03), the network (04), training
#   (05), evaluation and faster sampling (06).
#
# ## Exercises
#
# Each exercise is a function to write in the cell tagged `solution`; the cell after it checks
# your function on fixed inputs against the package and, when it is wrong, says which common
# mistake your output matches.
#
# **Exercise 1: count the covered modes.** Write the ruler of section 2. Given samples (n, d),
# mode centres (K, d), a radius and a minimum count, return `(modes_hit, share_near,
# per_mode_counts)`: `per_mode_counts[k]` counts the samples whose *nearest* centre is `centers[k]`
# and that lie within `radius` of it; `share_near` is the share of all samples counted there;
# `modes_hit` is the number of modes with at least `min_count` samples. (`torch.cdist`,
# `.min(dim=1)` and `torch.bincount(..., minlength=K)` do most of the work.)

# %% tags=["solution"]
import torch


def count_modes(samples, centers, radius, min_count):
    """(modes_hit, share_near, per_mode_counts (K,)) of samples (n, d) around centers (K, d)."""
    distance, nearest = torch.cdist(samples, centers).min(dim=1)  # (n,), (n,)
    near = distance <= radius
    counts = torch.bincount(nearest[near], minlength=centers.shape[0])
    return (counts >= min_count).sum(), near.double().mean(), counts


# %%
from ddpm_teach.exercises import check

check("mode-coverage", count_modes)

# %% [markdown]
# **Exercise 2: the GAN's two losses.** Given the discriminator's logits $u$ on a batch of data
# and on a batch of generated points, with $D = \mathrm{sigmoid}(u)$, return
# `(d_loss, g_loss)`: $-\mathrm{mean}\log D(x) - \mathrm{mean}\log(1 - D(G(z)))$ and the
# non-saturating $-\mathrm{mean}\log D(G(z))$. Use $-\log \mathrm{sigmoid}(u) =
# \mathrm{softplus}(-u)$ and $-\log(1 - \mathrm{sigmoid}(u)) = \mathrm{softplus}(u)$, which stay
# finite for any logit.

# %% tags=["solution"]
import torch.nn.functional as F


def gan_losses(real_logits, fake_logits):
    """(d_loss, g_loss) from the discriminator's logits on data (B,) and on fakes (B',)."""
    d_loss = F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    g_loss = F.softplus(-fake_logits).mean()
    return d_loss, g_loss


# %%
from ddpm_teach.exercises import check

check("gan-loss", gan_losses)

# %% [markdown]
# **Exercise 3: the reparameterisation trick.** The encoder gives `mu` and `logvar` (the log of
# the variance) of $q(z \mid x)$, shape (B, L). Return a draw $z = \mu + \sigma\,\epsilon$ from
# it, with the standard normal noise `eps` passed in.

# %% tags=["solution"]
import torch


def reparameterise(mu, logvar, eps):
    """z = mu + exp(logvar / 2) * eps, shape (B, L)."""
    return mu + torch.exp(0.5 * logvar) * eps


# %%
from ddpm_teach.exercises import check

check("reparameterise", reparameterise)

# %% [markdown]
# **Exercise 4: the ELBO of a Gaussian VAE.** Given data `x` (B, D), the decoder's mean `x_mean`
# (B, D) at a code drawn from $q(z \mid x)$, the decoder's standard deviation `sigma` (a 0-d
# tensor, the $s$ of section 4) and the encoder's `mu`, `logvar` (B, L), return the ELBO of each
# example, shape (B,): $\log \mathcal{N}(x; m, s^2 \mathbf{I}) - \mathrm{KL}(q(z \mid x)\,\|\,
# \mathcal{N}(0, \mathbf{I}))$, with both formulas of section 4.

# %% tags=["solution"]
import math

import torch


def gaussian_elbo(x, x_mean, sigma, mu, logvar):
    """log N(x; x_mean, sigma^2 I) - KL(N(mu, diag exp(logvar)) || N(0, I)), shape (B,)."""
    d = x.shape[-1]
    log_lik = -((x - x_mean) ** 2).sum(-1) / (2 * sigma**2) - 0.5 * d * torch.log(
        2 * math.pi * sigma**2
    )
    kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(-1)
    return log_lik - kl


# %%
from ddpm_teach.exercises import check

check("elbo-gaussian", gaussian_elbo)
