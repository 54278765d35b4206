# %% [markdown]
# # 01 Gaussian noising
#
# A diffusion model learns to turn noise into data by first watching data being turned into noise.
# This chapter is about that second, easy half: the **forward process** of DDPM (Ho, Jain & Abbeel
# 2020), which destroys data a little at a time by adding Gaussian noise. It has no parameters and
# nothing in it is trained; it is the fixed target that later chapters learn to run backwards.
#
# **Learning objectives.** By the end of this chapter you can:
#
# - Apply one forward step $q(x_t \mid x_{t-1})$ to images and 2-D points
# - Explain why the $\sqrt{1 - \beta_t}$ scaling keeps the variance bounded
# - Show that $x_t$ becomes an isotropic Gaussian as $t$ grows
#
# You need: what a Gaussian, a mean and a variance are, and enough PyTorch to read a loop.
# Every equation below names the function of the `ddpm_teach` package that implements it, and every
# claim is checked with numbers or a picture.

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
import math

import matplotlib.pyplot as plt
import numpy as np
import torch

from ddpm_teach.data import glyph_digits, toy_2d
from ddpm_teach.schedule import NoiseSchedule
from ddpm_teach.viz import frames_slider, show_images, show_points

# Sizes: the 2-D clouds are cheap and the same under every budget; the digits cost more.
N_POINTS = 20_000
N_DIGITS = 128 if BUDGET.name == "smoke" else 512


def r(x, places=3):
    """A number rounded for printing (and -0.0 turned into 0.0), so stored outputs are stable."""
    return round(float(x), places) + 0.0


# %% [markdown]
# ## 1. The data
#
# Two kinds of data run through the whole chapter:
#
# - **Glyph digits**: $28 \times 28$ grey images of handwritten-looking digits, rendered offline
#   from fonts (`ddpm_teach.data.glyph_digits`). Pixels are scaled to $[-1, 1]$, the range the DDPM
#   paper uses: background is $-1$, ink is $+1$. Each image is a vector $x_0 \in \mathbb{R}^{784}$.
# - **2-D clouds** (`ddpm_teach.data.toy_2d`): *eight Gaussians* (eight tight blobs on a circle of
#   radius 2) and *two moons*. Each point is a vector $x_0 \in \mathbb{R}^2$, so we can see the
#   whole distribution at once, not only a few samples of it.

# %% tags=["nbval-ignore-output"]
digits, labels = glyph_digits(N_DIGITS, seed=0)
cloud = toy_2d("eight-gaussians", N_POINTS, seed=0)
moons = toy_2d("moons", N_POINTS, seed=1)
print(f"digits {tuple(digits.shape)}, pixel values in [{r(digits.min())}, {r(digits.max())}]")
print(f"eight Gaussians {tuple(cloud.shape)}, moons {tuple(moons.shape)}")

fig, axes = plt.subplots(1, 3, figsize=(11, 3.7))
show_images(digits[:16], nrow=4, ax=axes[0], title="16 glyph digits")
show_points(cloud[:2000], ax=axes[1], title="eight Gaussians (2,000 points)")
show_points(moons[:2000], ax=axes[2], title="two moons (2,000 points)")
plt.show()

# %% [markdown]
# ## 2. One forward step
#
# The forward process adds noise in $T$ small steps. Step $t$ takes the previous state $x_{t-1}$
# to a random $x_t$ drawn from (DDPM eq. 2)
#
# $$q(x_t \mid x_{t-1}) = \mathcal{N}\!\left(x_t;\ \sqrt{1-\beta_t}\, x_{t-1},\ \beta_t \mathbf{I}\right).$$
#
# In words: a Gaussian centred on the old point shrunk by $\sqrt{1-\beta_t}$, with variance
# $\beta_t$ in every coordinate and no correlation between coordinates ($\beta_t \mathbf{I}$).
# To *draw* from it, write the Gaussian as its mean plus scaled standard noise:
#
# $$x_t = \sqrt{1-\beta_t}\, x_{t-1} + \sqrt{\beta_t}\, \epsilon, \qquad \epsilon \sim \mathcal{N}(0, \mathbf{I}).$$
#
# This is `NoiseSchedule.q_step(x_prev, t, noise)`. Two things happen: the old point is pulled
# towards the origin by the factor $\sqrt{1-\beta_t}$, then fresh noise of variance $\beta_t$ is
# added. Note that $\beta_t$ is a **variance**; the noise is multiplied by its square root.
#
# The numbers $\beta_1, \dots, \beta_T$ are the **variance schedule**. The paper fixes them by hand:
# $T = 1000$ steps, $\beta_t$ rising linearly from $10^{-4}$ to $0.02$
# (`NoiseSchedule.linear()`). One convention to remember: the paper counts $t = 1, \dots, T$; the
# code, like Python, counts $t = 0, \dots, T-1$, so index `t` in code is the paper's $t + 1$.

# %%
schedule = NoiseSchedule.linear()  # the paper's: T = 1000, beta rising from 1e-4 to 0.02
T = schedule.num_steps
print(schedule)
print("beta at code index t = 0, 1, 499, 999:", [r(schedule.betas[t], 5) for t in (0, 1, 499, 999)])

fig, ax = plt.subplots(figsize=(5, 2.6))
ax.plot(schedule.betas.numpy())
ax.set(xlabel="step index t (code)", ylabel=r"$\beta_t$", title="the linear schedule of DDPM")
ax.grid(alpha=0.3)
plt.show()

# %% [markdown]
# A single step of the real schedule is tiny ($\beta_t \le 0.02$), too small to see. To see what
# one step *does*, apply it with much larger $\beta$s. `NoiseSchedule([beta])` is a one-step
# schedule, so `q_step(x, 0, noise)` applies that one step. The same noise $\epsilon$ is used in
# every column, so only $\beta$ changes from column to column.

# %%
one_step_betas = [0.01, 0.1, 0.3, 0.6, 0.95]
g = torch.Generator().manual_seed(0)
few_digits, few_points = digits[:4], cloud[:2000]
eps_digits = torch.randn(few_digits.shape, generator=g)
eps_points = torch.randn(few_points.shape, generator=g)

fig, axes = plt.subplots(2, 1 + len(one_step_betas), figsize=(13, 4.6), layout="constrained")
show_images(few_digits, nrow=2, ax=axes[0, 0], title=r"$x_{t-1}$")
show_points(few_points, lim=3.5, ax=axes[1, 0], size=2)
for col, beta in enumerate(one_step_betas, start=1):
    step = NoiseSchedule([beta])
    show_images(step.q_step(few_digits, 0, noise=eps_digits), nrow=2, ax=axes[0, col])
    show_points(step.q_step(few_points, 0, noise=eps_points), lim=3.5, ax=axes[1, col], size=2)
    axes[0, col].set_title(rf"$x_t$, $\beta$ = {beta}")
fig.suptitle("one forward step with exaggerated betas: shrink towards 0, then add noise")
plt.show()

# %% [markdown]
# With $\beta = 0.95$ the eight blobs have been pulled in to radius $2\sqrt{0.05} \approx 0.45$ and
# buried in noise of standard deviation $\sqrt{0.95} \approx 0.97$: one big step nearly erases
# the data. The real schedule gets there with a thousand small steps instead.
#
# **Check eq. 2.** Take one fixed point $x_{t-1} = (2, 0)$, apply the step 200,000 times with
# independent noise, and compare the sample mean and covariance of the results with eq. 2's
# $\sqrt{1-\beta}\,x_{t-1}$ and $\beta \mathbf{I}$.

# %%
beta = 0.3
x_prev = torch.tensor([2.0, 0.0], dtype=torch.float64).expand(200_000, 2)
x_next = NoiseSchedule([beta]).q_step(x_prev, 0, generator=torch.Generator().manual_seed(1))
mean, cov = x_next.mean(dim=0), torch.cov(x_next.T)
print(
    f"mean of x_t       measured [{r(mean[0], 2):.2f}, {r(mean[1], 2):.2f}]   "
    f"eq. 2: sqrt(1 - beta) x_prev = [{math.sqrt(1 - beta) * 2:.2f}, 0.00]"
)
print(
    f"covariance of x_t measured [[{r(cov[0, 0], 2):.2f}, {r(cov[0, 1], 2):.2f}], "
    f"[{r(cov[1, 0], 2):.2f}, {r(cov[1, 1], 2):.2f}]]   eq. 2: beta I = {beta} I"
)

# %% [markdown]
# ## 3. Iterating: the forward chain
#
# Apply the step again and again, $t = 1, \dots, T$, each time to the previous output:
#
# $$x_0 \to x_1 \to x_2 \to \dots \to x_T, \qquad q(x_{1:T} \mid x_0) = \prod_{t=1}^{T} q(x_t \mid x_{t-1}) \quad \text{(eq. 2)}.$$
#
# This is a **Markov chain**: each step looks only at the state it is given, never further back,
# and draws fresh noise independent of everything before. The loop below runs it with
# `q_step`, keeping a snapshot every 25 steps. One run of the loop is one *sample path*: run it
# again with other noise and you get another path from the same $x_0$.


# %%
def forward_chain(x0, schedule, keep, seed=0):
    """Run eq. 2 for t = 0..T-1 starting at x0 (one sample path); return {t: x_t for t in keep}."""
    g = torch.Generator().manual_seed(seed)
    x, kept = x0, {}
    for t in range(schedule.num_steps):
        x = schedule.q_step(x, t, generator=g)  # x_t ~ q(x_t | x_{t-1})
        if t in keep:
            kept[t] = x
    return kept


KEEP = [*range(0, T, 25), T - 1]  # 41 snapshots: t = 0, 25, ..., 975, 999
digit_path = forward_chain(digits, schedule, KEEP, seed=2)
cloud_path = forward_chain(cloud, schedule, KEEP, seed=3)
moons_path = forward_chain(moons, schedule, KEEP, seed=4)
print(f"kept {len(KEEP)} snapshots of each path, at t = {KEEP[0]}, {KEEP[1]}, ..., {KEEP[-1]}")

# %% [markdown]
# Drag the slider (or press Play) to watch one sample path of the chain, from the data
# ($t$ = "data") to $x_T$ at $t = 999$. The caption also shows $\bar\alpha_t$ and the SNR; section 4
# explains both. The noise level only ever **rises** along the chain: the images get noisier,
# never clearer.

# %%
# frames every 25 steps while the digits fade, then every 100 (each frame is stored)
SLIDER_TS = [*range(0, 500, 25), *range(500, T, 100), T - 1]
frames = torch.stack([digits[:16], *(digit_path[t][:16] for t in SLIDER_TS)])
frames_slider(frames, [None, *SLIDER_TS], schedule, title="The forward chain on 16 digits")

# %%
frames = torch.stack([cloud[:1500], *(cloud_path[t][:1500] for t in SLIDER_TS)])
frames_slider(
    frames, [None, *SLIDER_TS], schedule, lim=4.0, title="The forward chain on eight Gaussians"
)

# %% [markdown]
# Three things to notice. The digits are still readable at $t = 200$ and gone by about $t = 500$;
# the last few hundred steps change little that the eye can see. The eight blobs first blur into
# each other, then shrink and spread into one round blob. And that blob does not keep growing:
# from $t \approx 600$ on it looks the same. Why not, when every step adds noise?
#
# ## 4. Why $\sqrt{1-\beta_t}$: the variance stays bounded
#
# Follow the variance of one coordinate, $v_t = \mathrm{Var}[x_t]$. Two facts do all the work:
# scaling a random variable by $c$ multiplies its variance by $c^2$, and the variances of
# independent variables add. The noise $\epsilon$ of step $t$ is independent of $x_{t-1}$, so
#
# $$v_t = (1-\beta_t)\, v_{t-1} + \beta_t .$$
#
# Subtract 1 from both sides: $v_t - 1 = (1-\beta_t)(v_{t-1} - 1)$. Each step multiplies the
# distance from 1 by $1 - \beta_t < 1$. Unrolled over the first $t$ steps,
#
# $$v_t - 1 = \bar\alpha_t\, (v_0 - 1), \qquad \bar\alpha_t = \prod_{s=1}^{t} (1-\beta_s),$$
#
# that is, $v_t = \bar\alpha_t v_0 + (1-\bar\alpha_t)$: a weighted average of the data's variance and
# 1. `NoiseSchedule.alpha_bars` holds $\bar\alpha_t$ (with the code's indexing, `alpha_bars[t]` is
# the product over steps 0..t, the paper's $\bar\alpha_{t+1}$). The same argument without the noise term gives
# the mean: $\mathbb{E}[x_t] = \sqrt{\bar\alpha_t}\, \mathbb{E}[x_0]$. As the product of many
# factors below 1, $\bar\alpha_t$ goes to 0, so the mean goes to 0 and **the variance goes to 1,
# from above or from below, whatever the data**. The signal-to-noise ratio in the slider's caption
# is $\bar\alpha_t / (1 - \bar\alpha_t)$, the share of $x_t$'s variance that still comes from $x_0$
# over the share that comes from noise (for data of variance 1).

# %%
alpha_bars = schedule.alpha_bars
for t in (0, 99, 299, 499, 699, 999):
    print(f"t = {t:3d}   alpha_bar_t = {alpha_bars[t].item():.4g}")  # 4 digits: 0.9999 is not 1

# %% [markdown]
# What if we added the noise **without** shrinking first, $x_t = x_{t-1} + \sqrt{\beta_t}\,\epsilon$?
# Then $v_t = v_{t-1} + \beta_t$, so $v_t = v_0 + \sum_{s \le t} \beta_s$: every step adds its
# $\beta$ and nothing ever takes variance away. The variance grows without bound as steps are added,
# and $x_T = x_0 + (\text{noise})$ still contains all of $x_0$, only buried. And shrinking too hard,
# by $1 - \beta_t$ instead of its square root, gives $v_t = (1-\beta_t)^2 v_{t-1} + \beta_t$,
# whose fixed point $1/(2 - \beta)$ depends on $\beta$ and sits near $1/2$: bounded, but at a level
# set by the schedule. Only $\sqrt{1-\beta_t}$ makes 1 the fixed point for *every* $\beta$, so the
# schedule can change $\beta_t$ from step to step and the end point stays $\mathcal{N}(0, \mathbf{I})$.
#
# Below, the three rules run on the eight Gaussians (variance about 2 per coordinate): the paper's
# 1000 steps, then 4000 more at $\beta = 0.02$ to see what "keeps going" means. Lines are the
# recurrences, dots are variances measured on 5,000 simulated points.

# %%
RULES = {  # name: (legend, the factor that multiplies x_{t-1} before sqrt(beta_t) eps is added)
    "sqrt(1 - beta_t) (DDPM)": (r"$\sqrt{1-\beta_t}$ (DDPM)", lambda b: math.sqrt(1 - b)),
    "no scaling": ("no scaling", lambda b: 1.0),
    "1 - beta_t (no sqrt)": (r"$1-\beta_t$ (no square root)", lambda b: 1 - b),
}
long_betas = torch.cat([schedule.betas, torch.full((4000,), 0.02, dtype=torch.float64)]).tolist()
x_start = cloud[:5000].double()
v_start = x_start.var(dim=0).mean().item()

fig, ax = plt.subplots(figsize=(8, 4))
ends = {}
for k, (name, (legend, shrink)) in enumerate(RULES.items()):
    g = torch.Generator().manual_seed(5)
    x, v, measured, predicted = x_start, v_start, [], []
    for t, b in enumerate(long_betas):
        x = shrink(b) * x + math.sqrt(b) * torch.randn(x.shape, generator=g, dtype=x.dtype)
        v = shrink(b) ** 2 * v + b  # the variance recurrence for this rule
        predicted.append(v)
        if t % 100 == 99:
            measured.append((t, x.var(dim=0).mean().item()))
        if t == T - 1:
            ends[name] = (x.var(dim=0).mean().item(), v, x[:2000])
    ax.plot(predicted, color=f"C{k}", label=legend)
    ax.plot(*zip(*measured, strict=True), "o", color=f"C{k}", ms=3)
ax.axvline(T - 1, color="grey", ls="--", lw=1)
ax.text(T + 40, 3, "end of the paper's schedule", color="grey")
ax.set(
    yscale="log",
    xlabel="step index t",
    ylabel="variance per coordinate",
    title="variance of x_t under three scalings (lines: recurrence, dots: simulation)",
)
ax.grid(alpha=0.3, which="both")
ax.legend()
plt.show()

print(f"variance of the data: {r(v_start, 2)}")
for name, (measured_v, predicted_v, _) in ends.items():
    print(
        f"after T = 1000 steps, {name:24s} measured {r(measured_v, 2):6.2f}   "
        f"recurrence {r(predicted_v, 2):6.2f}"
    )

# %% [markdown]
# The DDPM rule settles at 1 and stays there. Without scaling the variance climbs by
# $\sum_s \beta_s \approx 10$ over the paper's schedule and then by $0.02$ a step for as long as
# the chain runs; it never levels off. (The score-based models of Song & Ermon (2019) add noise
# this way on purpose and stop at a large, known variance; Song et al. (2021) call that family
# "variance exploding" and DDPM's "variance preserving".) Shrinking by $1-\beta_t$ lands near $1/2$. Here are the three clouds at
# $t = 999$ (the first 2,000 of the simulated points) on the same axes:

# %%
fig, axes = plt.subplots(1, 4, figsize=(14, 3.8))
show_points(cloud[:2000], lim=9, ax=axes[0], title="data $x_0$", size=2)
for ax, (name, (_, _, x)) in zip(axes[1:], ends.items(), strict=True):
    show_points(x, lim=9, ax=ax, title=f"$x_T$, {RULES[name][0]}", size=2)
plt.show()

# %% [markdown]
# ## 5. Where the chain ends: an isotropic Gaussian, measured
#
# The variance argument says the mean goes to 0 and each coordinate's variance to 1. For "$x_T$ is
# $\mathcal{N}(0, \mathbf{I})$", an **isotropic** (same in every direction) standard Gaussian, we
# also need no correlations between coordinates, and the Gaussian *shape*. Both follow from the
# same bookkeeping: for two coordinates $i \ne j$ the noise adds nothing to the covariance, so
#
# $$\mathrm{Cov}[x_t] = \bar\alpha_t\, \mathrm{Cov}[x_0] + (1 - \bar\alpha_t)\, \mathbf{I},$$
#
# and unrolling the chain, $x_t = \sqrt{\bar\alpha_t}\, x_0 + (\text{a sum of independent Gaussian
# noises})$. A sum of independent Gaussians is Gaussian, so once the $x_0$ term has faded, $x_t$ is
# Gaussian whatever shape the data had. Let us measure all of it instead of believing it.
#
# **Mean and covariance of a 2-D cloud.** The two moons have a mean near 0 but a covariance far
# from isotropic: the first coordinate has three times the variance of the second, and the two are
# correlated. The table compares the measured moments of $x_t$ with the formulas above; the last
# column is the ratio of the covariance's largest to smallest eigenvalue (the variances along its
# principal axes; 4.4 for the data), 1 for an isotropic cloud.

# %%
c0 = torch.cov(moons.double().T)
print(f"{'':15} | {'mean':^13} | {'covariance, measured':^23} | {'covariance, formula':^23} |")
print(
    f"{'t':>4} {'alpha_bar':>10} | {'x':>6} {'y':>6} | {'xx':>7} {'xy':>7} {'yy':>7} | "
    f"{'xx':>7} {'xy':>7} {'yy':>7} | eig ratio"
)
for t in (None, 100, 200, 300, 400, 500, 700, 999):
    x = (moons if t is None else moons_path[t]).double()
    ab = 1.0 if t is None else alpha_bars[t].item()
    mean, cov = x.mean(dim=0), torch.cov(x.T)
    formula = ab * c0 + (1 - ab) * torch.eye(2, dtype=torch.float64)
    eig = torch.linalg.eigvalsh(cov)  # ascending
    cells = [
        " ".join(f"{r(v, 2):6.2f}" for v in mean),
        " ".join(f"{r(v, 2):7.2f}" for v in (cov[0, 0], cov[0, 1], cov[1, 1])),
        " ".join(f"{r(v, 2):7.2f}" for v in (formula[0, 0], formula[0, 1], formula[1, 1])),
        f"{r(eig[1] / eig[0], 2):6.2f}",
    ]
    print(f"{'data' if t is None else t:>4} {ab:10.3f} | " + " | ".join(cells))

# %% [markdown]
# **The shape: histograms against $\mathcal{N}(0, 1)$.** Moments are not the whole story: a
# distribution can have mean 0 and variance 1 without being Gaussian (the data here are far from
# Gaussian). Below, the histogram of the first coordinate of the eight Gaussians (top) and of all
# pixel values of the digits pooled together (bottom) at several $t$, against the standard normal
# density (black). Under each panel is the Kolmogorov-Smirnov distance, the largest gap between
# the sample's cumulative distribution and the normal one.


# %%
def ks_to_normal(x):
    """Largest gap between the empirical CDF of the values x and the standard normal CDF."""
    x = x.flatten().double().sort().values
    n = x.numel()
    cdf = torch.special.ndtr(x)
    above = torch.arange(1, n + 1, dtype=x.dtype) / n - cdf
    below = cdf - torch.arange(0, n, dtype=x.dtype) / n
    return max(above.max().item(), below.max().item())


HIST_TS = [None, 100, 300, 500, 999]
grid = np.linspace(-4, 4, 201)
density = np.exp(-(grid**2) / 2) / math.sqrt(2 * math.pi)
bins = np.linspace(-4, 4, 81)

fig, axes = plt.subplots(2, len(HIST_TS), figsize=(13, 5.2), sharey=True)
rows = [
    ("eight Gaussians\n1st coordinate", cloud, cloud_path, lambda x: x[:, 0]),
    ("digits\nall pixels", digits, digit_path, lambda x: x),
]
for row, (name, data, path, select) in enumerate(rows):
    for ax, t in zip(axes[row], HIST_TS, strict=True):
        x = select(data if t is None else path[t])
        ax.hist(x.flatten().numpy(), bins=bins, density=True, color=f"C{row}", alpha=0.7)
        ax.plot(grid, density, "k", lw=1.2)
        ax.set_ylim(0, 1.0)
        ax.set_title("data" if t is None else f"t = {t}", fontsize=10)
        ax.set_xlabel(f"KS distance {ks_to_normal(x):.3f}", fontsize=9)
    axes[row, 0].set_ylabel(name)
axes[1, 0].text(
    -0.9, 0.55, "bars at -1\n(background)\nand +1 (ink)\nrun off the\nscale", fontsize=8
)
fig.tight_layout()
plt.show()

reference = torch.randn(N_POINTS, generator=torch.Generator().manual_seed(7))
print(
    f"for comparison, the KS distance of {N_POINTS} genuine N(0, 1) draws: "
    f"{ks_to_normal(reference):.3f}"
)

# %% [markdown]
# By $t = 999$ both histograms lie on the normal curve, and their KS distances have dropped to the
# size that a genuine $\mathcal{N}(0, 1)$ sample of that size shows by chance (digit pixels pool
# more values, so their chance level is even smaller).
#
# **Per-pixel statistics of the digits.** Pooling pixels hides how each pixel behaves. Every pixel
# has its own mean and variance in the data: corners are always background (mean $-1$, variance 0),
# the centre varies. Below, the mean and variance of every pixel, taken over the digits, as images.

# %%
PIXEL_TS = [None, 100, 300, 500, 999]
fig, axes = plt.subplots(2, len(PIXEL_TS), figsize=(14, 5.4))
for col, t in enumerate(PIXEL_TS):
    x = digits if t is None else digit_path[t]
    label = "data" if t is None else f"t = {t}"
    im0 = axes[0, col].imshow(x.mean(dim=0)[0], cmap="RdBu_r", vmin=-1, vmax=1)
    im1 = axes[1, col].imshow(x.var(dim=0)[0], cmap="viridis", vmin=0, vmax=1.3)
    axes[0, col].set_title(f"mean, {label}", fontsize=10)
    axes[1, col].set_title(f"variance, {label}", fontsize=10)
for ax in axes.flat:
    ax.set_axis_off()
fig.colorbar(im0, ax=axes[0].tolist(), shrink=0.8)
fig.colorbar(im1, ax=axes[1].tolist(), shrink=0.8)
plt.show()

# %% tags=["nbval-ignore-output"]
mean0, var0 = digits.double().mean(dim=0), digits.double().var(dim=0)
print(
    f"per-pixel moments over {len(digits)} digits, smallest and largest pixel, measured (formula)"
)
print(f"{'t':>4} | {'mean: min':>15} {'max':>15} | {'variance: min':>15} {'max':>15}")
for t in PIXEL_TS[1:]:
    x, ab = digit_path[t].double(), alpha_bars[t].item()
    m, v = x.mean(dim=0), x.var(dim=0)
    m_formula, v_formula = math.sqrt(ab) * mean0, ab * var0 + 1 - ab
    cells = [
        f"{r(measured, 2):6.2f} ({r(formula, 2):5.2f})"
        for measured, formula in [
            (m.min(), m_formula.min()),
            (m.max(), m_formula.max()),
            (v.min(), v_formula.min()),
            (v.max(), v_formula.max()),
        ]
    ]
    print(f"{t:4d} | {cells[0]:>15} {cells[1]:>15} | {cells[2]:>15} {cells[3]:>15}")
print(
    f"sampling noise alone: over {len(digits)} draws of N(0, 1), the sample mean has standard "
    f"deviation {1 / math.sqrt(len(digits)):.2f} and the sample variance "
    f"{math.sqrt(2 / (len(digits) - 1)):.2f}"
)

# %% [markdown]
# At $t = 999$ the formula says every pixel has mean within $0.01$ of 0 and variance within
# $0.001$ of 1. The measured ranges are wider, by about three standard errors either side (the
# last line): the extremes of 784 estimates, each from a finite number of digits, are that far out
# by chance alone. No pixel remembers whether it was background or ink.
#
# **Correlations between pixels, and what $x_t$ remembers.** In the data, neighbouring pixels are
# strongly correlated: strokes are several pixels wide. Isotropy needs those correlations gone.
# The left plot tracks the correlation between horizontally adjacent pixels (averaged over the
# pixel pairs that are not always background), with the prediction of the covariance formula as
# a line. The right plot asks how much of the *identity* of $x_0$ survives: a nearest-class-mean
# classifier, fitted on clean digits, guesses the digit shown by $x_t$ (comparing $x_t$ with each
# class mean shrunk by $\sqrt{\bar\alpha_t}$). At 10 % it is guessing.


# %% tags=["nbval-ignore-output"]
def pair_moments(x):
    """Covariance of each pixel (i, j) with its right neighbour (i, j + 1), and the two variances.

    x: images (N, 1, 28, 28). Returns three tensors of shape (28 * 27,), moments over the N images.
    """
    a, b = x[:, 0, :, :-1].flatten(1).double(), x[:, 0, :, 1:].flatten(1).double()
    a, b = a - a.mean(dim=0), b - b.mean(dim=0)
    return (a * b).mean(dim=0), (a * a).mean(dim=0), (b * b).mean(dim=0)


cov0, var_a0, var_b0 = pair_moments(digits)
inked = (var_a0 > 1e-3) & (var_b0 > 1e-3)  # pairs that are not always background

half = len(digits) // 2  # class means from the first half of the digits, tested on the second
class_means = torch.stack([digits[:half][labels[:half] == c].mean(dim=0) for c in range(10)])


def nearest_mean_accuracy(x_t, ab):
    """Share of the second half's x_t whose nearest shrunk class mean is their own digit's."""
    dist = torch.cdist(x_t[half:].flatten(1), (math.sqrt(ab) * class_means).flatten(1))
    return (dist.argmin(dim=1) == labels[half:]).float().mean().item()


corr, corr_formula, acc = [], [], []
for t in [None, *KEEP]:
    x, ab = (digits, 1.0) if t is None else (digit_path[t], alpha_bars[t].item())
    c, var_a, var_b = pair_moments(x)
    corr.append((c / (var_a * var_b).sqrt())[inked].mean().item())
    # the covariance formula: covariances shrink by alpha_bar, variances move towards 1
    c, var_a, var_b = ab * cov0, ab * var_a0 + 1 - ab, ab * var_b0 + 1 - ab
    corr_formula.append((c / (var_a * var_b).sqrt())[inked].mean().item())
    acc.append(nearest_mean_accuracy(x, ab))

fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 3.8))
ax0.plot(KEEP, corr_formula[1:], "k-", lw=1, label="covariance formula")
ax0.plot(KEEP, corr[1:], "o", ms=4, label="measured")
ax0.set(xlabel="step index t", ylabel="correlation", title="correlation of neighbouring pixels")
ax1.plot(KEEP, acc[1:], "o-", ms=4, color="C2", label="nearest class mean")
ax1.axhline(0.1, color="grey", ls="--", label="chance (10 %)")
ax1.set(xlabel="step index t", ylabel="accuracy", ylim=(0, 1), title="which digit was x_0?")
for ax in (ax0, ax1):
    ax.grid(alpha=0.3)
    ax.legend()
plt.show()
print(
    f"neighbour correlation: data {corr[0]:.2f}, t = 999 {corr[-1]:.3f} "
    f"(formula {corr_formula[-1]:.4f})"
)
print(
    f"nearest-class-mean accuracy: data {acc[0]:.2f}, t = 500 {acc[KEEP.index(500) + 1]:.2f}, "
    f"t = 999 {acc[-1]:.2f}"
)

# %% [markdown]
# Both curves fall to their "no information" level: by the end of the chain pixels are
# uncorrelated, and $x_T$ says essentially nothing about which digit it came from. Put together,
# mean 0, variance 1, no correlations and a Gaussian shape: $x_T$ is (to within
# $\sqrt{\bar\alpha_T} \approx 0.006$ of the signal) a draw from $\mathcal{N}(0, \mathbf{I})$, the
# same distribution whichever data we started from. That is what makes generation possible: a
# sampler can start from $\mathcal{N}(0, \mathbf{I})$ without knowing anything about the data,
# and run a *learned* reverse chain back to it (chapter 03).
#
# > **Common misconceptions**
# >
# > - *"The forward process is learned."* No. $q$ has no parameters: the $\beta_t$ are a fixed
# >   table (`NoiseSchedule.betas`) chosen before training, and every step is a fixed recipe,
# >   shrink and add noise. Only the reverse process is learned.
# > - *"Each forward step is an invertible transformation, like a layer of a normalising flow."*
# >   No. A step adds fresh noise that is independent of everything before: the same $x_{t-1}$
# >   can lead to any $x_t$, and information about $x_0$ is destroyed, not reshuffled (the
# >   classifier above falls to chance). Nothing is learned and nothing is inverted exactly.
# > - *"Along the forward process the image gets clearer."* The opposite: the noise level rises
# >   with $t$, and $x_t$ gets noisier at every step. Generation runs the other way, the
# >   *reverse* process from noise to data, introduced in chapter 03.
# > - *"Adding noise at every step makes the variance blow up."* Only without the
# >   $\sqrt{1-\beta_t}$ shrink. With it the variance heads to 1 (section 4).
# > - *"$\beta_t$ is the noise's standard deviation."* It is its variance; the noise is
# >   $\sqrt{\beta_t}\,\epsilon$.
#
# ## Summary
#
# - One forward step (eq. 2): $x_t = \sqrt{1-\beta_t}\,x_{t-1} + \sqrt{\beta_t}\,\epsilon$, in code
#   `NoiseSchedule.q_step`. It shrinks towards 0, then adds independent noise of variance
#   $\beta_t$ to every coordinate.
# - Iterated $T$ times it is a fixed Markov chain. The variance follows
#   $v_t = (1-\beta_t)v_{t-1} + \beta_t$, so $v_t = \bar\alpha_t v_0 + 1 - \bar\alpha_t \to 1$; without
#   the shrink it would grow without bound.
# - Measured, not assumed: mean $\to 0$, covariance $\to \mathbf{I}$, histograms $\to$ the normal
#   density, per-pixel statistics all alike, and the digit's identity lost. $x_T$ is an isotropic
#   standard Gaussian, whatever the data.
# - Next, chapter 02: the steps compose into one Gaussian jump $q(x_t \mid x_0)$ (eq. 4), so $x_t$
#   can be drawn without running the chain.
#
# ## Exercises
#
# Each exercise is a function to write in the cell tagged `solution`; the cell after it checks
# your function on fixed inputs against the package and, when it is wrong, says which common
# mistake your output matches. Conventions: `betas` is the schedule, a float64 tensor of shape
# (T,); step index `t` runs over 0..T-1 (the paper's $t + 1$); data tensors have shape (B, ...).
#
# **Exercise 1: one forward step.** Implement eq. 2 for a batch in which every example has its own
# step index: `t` has shape (B,), and `betas[t]` has shape (B,), which must be reshaped to
# (B, 1, ..., 1) before it can multiply a tensor of shape (B, ...).

# %% tags=["solution"]
import torch


def q_step(x_prev, t, betas, noise):
    """x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) noise (eq. 2).

    x_prev, noise: (B, ...); t: (B,) step indices; betas: (T,). Returns x_t, shape (B, ...).
    """
    beta_t = betas[t].reshape(-1, *[1] * (x_prev.ndim - 1))  # (B, 1, ..., 1)
    return torch.sqrt(1 - beta_t) * x_prev + torch.sqrt(beta_t) * noise


# %%
from ddpm_teach.exercises import check

check("one-forward-step", q_step)

# %% [markdown]
# **Exercise 2: iterate the chain.** Run all $T$ steps from `x0`, with the noise of step $t$ given
# as `noises[t]` (shape (T, B, ...)), so that your path can be compared with the reference
# exactly. Return every $x_t$, stacked into shape (T, B, ...): entry `t` is the output of step
# `t`, so entry 0 already carries one step of noise.

# %% tags=["solution"]
import torch


def forward_trajectory(x0, betas, noises):
    """The path x_1..x_T of eq. 2 from x0 driven by noises (T, B, ...). Returns (T, B, ...)."""
    path, x = [], x0
    for t, beta in enumerate(betas):
        x = (1 - beta).sqrt() * x + beta.sqrt() * noises[t]  # the previous x, not x0
        path.append(x)
    return torch.stack(path)


# %%
from ddpm_teach.exercises import check

check("iterate-forward", forward_trajectory)

# %% [markdown]
# **Exercise 3: the variance after $t$ steps.** Given the variance of each coordinate of the data,
# `v0` of shape (D,), return the variance of each coordinate after every step, shape (T, D), using
# $v_t = (1-\beta_t)\,v_{t-1} + \beta_t$ (a loop) or its closed form. Once it passes, look at
# the last row of `variance_after_steps(torch.tensor([0.0, 4.0]), schedule.betas)`: section 4
# says it is close to 1 whether the data's variance starts below or above 1.

# %% tags=["solution"]
import torch


def variance_after_steps(v0, betas):
    """Var[x_t] per coordinate for t = 0..T-1, from Var[x_0] = v0 (D,). Returns (T, D)."""
    rows, v = [], v0
    for beta in betas:
        v = (1 - beta) * v + beta  # shrink the old variance, add the new noise's
        rows.append(v)
    return torch.stack(rows)


# %%
from ddpm_teach.exercises import check

check("variance-after-steps", variance_after_steps)
