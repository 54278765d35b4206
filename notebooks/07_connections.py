# %% [markdown]
# # 07 Connections
#
# DDPM did not come out of nowhere, and it did not stay alone. This last chapter looks at the model
# of chapters 01-06 from three other directions, each of which explains something the DDPM
# derivation leaves implicit: **score matching** (the noise predictor is the gradient of a
# log-density in disguise, and Langevin dynamics can sample with it), **compression** (the
# variational bound is a code length, and the reverse chain sends an image coarse details first),
# and the families of **autoregressive, variational and flow models**. It ends with pointers to
# the methods built on top of DDPM since.
#
# **Learning objectives.** After this chapter you can:
#
# - see the epsilon-predictor as a scaled score and sample with Langevin dynamics;
# - read diffusion as progressive lossy compression;
# - place DDPM among autoregressive, variational and flow models.
#
# **Notation.** As in the paper (Ho, Jain & Abbeel 2020) and chapter 03: steps $t = 1..T$,
# $\alpha_t = 1 - \beta_t$, $\bar\alpha_t = \prod_{s \le t} \alpha_s$, and $q_t$ is the
# distribution of $x_t$ (the data distribution after $t$ steps of noise). We write
# $\sigma_t = \sqrt{1 - \bar\alpha_t}$ for the standard deviation of the noise in $x_t$. The code
# counts from 0: index `t` stands for the paper's $t + 1$, and printed values of `t` are code
# indices.

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
import torch

from ddpm_teach import viz
from ddpm_teach.analytic import GaussianMixture
from ddpm_teach.data import EIGHT_GAUSSIANS_CENTERS, EIGHT_GAUSSIANS_STD, glyph_digits
from ddpm_teach.likelihood import vlb
from ddpm_teach.metrics import toy_report
from ddpm_teach.sampling import ddim_sample, ddim_step, ddpm_sample
from ddpm_teach.schedule import NoiseSchedule
from ddpm_teach.training import TrainConfig, Trainer, make_schedule

paper = NoiseSchedule.linear()  # the paper's schedule (T = 1000), for everything computed exactly
eight = GaussianMixture(torch.ones(8), EIGHT_GAUSSIANS_CENTERS, EIGHT_GAUSSIANS_STD)
print(paper)
print(eight, "- the eight Gaussians of ddpm_teach.data, as an exact mixture")

# %% [markdown]
# ## 1. The noise predictor is a scaled score
#
# The **score** of a density $p$ is the gradient of its logarithm, $\nabla_x \log p(x)$: a vector
# field that points uphill, towards where the data is denser. It does not care about the
# normalising constant ($\nabla \log (c\,p) = \nabla \log p$), which is why score-based models
# (Song & Ermon 2019) learn it instead of the density itself. Two short calculations connect it to
# DDPM.
#
# **One training pair.** Given $x_0$, eq. 4 makes $x_t$ Gaussian:
# $q(x_t \mid x_0) = \mathcal N(\sqrt{\bar\alpha_t}\,x_0,\ \sigma_t^2 I)$. With
# $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sigma_t\,\epsilon$ its score is
#
# $$\nabla_{x_t} \log q(x_t \mid x_0) = -\frac{x_t - \sqrt{\bar\alpha_t}\,x_0}{\sigma_t^2}
#   = -\frac{\epsilon}{\sigma_t}.$$
#
# The noise points from the data out to $x_t$; the score points back, one over $\sigma_t$ as long.
#
# **The marginal.** $q_t(x_t) = \int q(x_t \mid x_0)\, q(x_0)\, dx_0$. Differentiate under the
# integral, write $\nabla q(x_t \mid x_0) = q(x_t \mid x_0)\,\nabla \log q(x_t \mid x_0)$ and divide
# by $q_t(x_t)$; what is left is an average over the posterior $q(x_0 \mid x_t)$:
#
# $$\nabla \log q_t(x_t) = \mathbb E\big[\nabla_{x_t} \log q(x_t \mid x_0) \,\big|\, x_t\big]
#   = -\frac{\mathbb E[\epsilon \mid x_t]}{\sigma_t}.$$
#
# Chapter 03 showed that $L_\text{simple}$ is minimised by $\epsilon_\theta(x_t, t) =
# \mathbb E[\epsilon \mid x_t]$. So a trained noise predictor **is** the score of the noised data,
# up to a known factor:
#
# $$\boxed{\;s_\theta(x_t, t) := -\frac{\epsilon_\theta(x_t, t)}{\sqrt{1 - \bar\alpha_t}}
#   \approx \nabla_{x_t} \log q_t(x_t)\;}$$
#
# `GaussianMixture.score` computes the right-hand side from the exact $\mathbb E[\epsilon \mid x_t]$
# (`GaussianMixture.eps`, which comes from the posterior mean of $x_0$). Check it against a
# completely different route: autograd through the exact log-density `GaussianMixture.log_prob_t`,
# which knows nothing about noise or posteriors.

# %%
g = torch.Generator().manual_seed(0)
check_ts = [0, 10, 100, 250, 500, 999]
t = torch.tensor(check_ts).repeat_interleave(200)
x_t = paper.q_sample(eight.sample(len(t), generator=g), t, generator=g).requires_grad_(True)
eight.log_prob_t(x_t, paper, t).sum().backward()  # d/dx_t log q_t(x_t), by autograd
score_autograd, x_t = x_t.grad, x_t.detach()

sigma = paper.at((1 - paper.alpha_bars).sqrt(), t, x_t)
score_from_eps = -eight.eps(x_t, paper, t) / sigma  # -E[eps | x_t] / sigma_t
same = torch.allclose(score_from_eps, score_autograd, rtol=1e-8, atol=1e-8)
print(f"-E[eps | x_t] / sigma_t equals grad log q_t(x_t) at every t: {same}")
print(f"{'t':>5}{'sigma_t':>10}{'mean |score|':>15}{'mean |E[eps|x_t]|':>20}")
for step in check_ts:
    k = t == step
    print(f"{step:>5}{sigma[k][0, 0]:>10.3f}{score_autograd[k].norm(dim=1).mean():>15.2f}"
          f"{score_from_eps[k].mul(sigma[k]).norm(dim=1).mean():>20.2f}")

# %% [markdown]
# Read the table down. The typical size of the score grows as the noise shrinks: here it levels
# off at about 12 near $t = 0$, set by the width 0.1 of the modes themselves, and for sharper data
# it keeps growing like $1/\sigma_t$. The noise prediction $\mathbb E[\epsilon \mid x_t]$ stays of
# order 1 or below at every $t$. A network that predicts $\epsilon$ predicts the score with its
# scale divided out, which keeps its output in a range it can learn at every noise level.
#
# Below, the score field of the eight Gaussians at four noise levels, over the log-density of
# $q_t$. Every arrow has the same length and shows only the score's direction; its colour shows
# the size $|\nabla \log q_t|$ on a log scale. At small $t$ each mode has its own basin and the
# field points to the nearest one, steeply (yellow) once outside a mode; as $t$ grows the basins
# widen and merge, the slopes flatten, and at large $t$ every arrow points to the centre, where
# $q_t \approx \mathcal N(0, I)$ has its mode.

# %%
grid_1d = torch.linspace(-2.8, 2.8, 17, dtype=torch.float64)
gx, gy = torch.meshgrid(grid_1d, grid_1d, indexing="xy")
points = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)
fine_1d = torch.linspace(-3, 3, 121, dtype=torch.float64)
fx, fy = torch.meshgrid(fine_1d, fine_1d, indexing="xy")
fine = torch.stack([fx.reshape(-1), fy.reshape(-1)], dim=1)

fig, axes = plt.subplots(1, 4, figsize=(14, 3.6), layout="constrained", dpi=80)
for ax, step in zip(axes, [10, 60, 200, 600], strict=True):
    log_q = eight.log_prob_t(fine, paper, step).reshape(fx.shape)
    ax.contourf(fx, fy, log_q.clamp(min=log_q.max() - 12), levels=8, cmap="Greys")
    score = eight.score(points, paper, step)
    size = score.norm(dim=1)
    direction = score / size[:, None]
    arrows = ax.quiver(points[:, 0], points[:, 1], direction[:, 0], direction[:, 1], size.log10(),
                       cmap="viridis", clim=(-1, 2.5), angles="xy", scale_units="xy", scale=3.3,
                       width=0.006)
    ax.set(xlim=(-3, 3), ylim=(-3, 3), xticks=[-2, 0, 2], yticks=[-2, 0, 2])
    ax.set_title(f"t = {step}, sigma_t = {(1 - paper.alpha_bars[step]).sqrt():.2f}")
fig.colorbar(arrows, ax=axes, label="log10 |score|", shrink=0.9)
fig.suptitle(r"the score $\nabla \log q_t(x)$ of the eight Gaussians (arrows) over $\log q_t(x)$ (dark = dense)")
plt.show()

# %% [markdown]
# ### Tweedie's formula
#
# Run the argument backwards and the score gives the best guess of the clean data. Since
# $\mathbb E[\epsilon \mid x_t] = -\sigma_t \nabla \log q_t(x_t)$ and
# $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sigma_t \epsilon$,
#
# $$\mathbb E[x_0 \mid x_t] = \frac{x_t + \sigma_t^2\, \nabla \log q_t(x_t)}{\sqrt{\bar\alpha_t}}:$$
#
# step from $x_t$ along the score by the noise variance, then undo the shrinking of $x_0$. This is
# Tweedie's formula (Robbins 1956, Efron 2011), and it is what `predict_x0_from_eps` computes when it
# is handed a noise prediction. Checked against the mixture's exact posterior mean,
# `GaussianMixture.posterior_x0_mean`, with the score from autograd:

# %%
ab = paper.at(paper.alpha_bars, t, x_t)
tweedie = (x_t + (1 - ab) * score_autograd) / ab.sqrt()
print("Tweedie's formula equals E[x_0 | x_t]:",
      torch.allclose(tweedie, eight.posterior_x0_mean(x_t, paper, t), rtol=1e-8, atol=1e-8))

# %% [markdown]
# ### Denoising score matching
#
# How could a network learn $\nabla \log q_t$ when $q_t$ is unknown? By regressing on the score of
# a single pair, $-\epsilon/\sigma_t$, which *is* known. Each such target is a wild guess (it
# depends on the one $\epsilon$ drawn), but a least-squares fit averages the targets that share an
# $x_t$, and that average is $\mathbb E[-\epsilon/\sigma_t \mid x_t] = \nabla \log q_t(x_t)$ by the
# marginal formula above. This is **denoising score matching** (Vincent 2011). See it in one
# dimension: draw many pairs, sort the $x_t$ into bins, average the targets in each bin.

# %%
mixture_1d = GaussianMixture([0.3, 0.7], [[-1.5], [1.0]], [0.25, 0.4])
step_1d = 150
g = torch.Generator().manual_seed(1)
x0_1d = mixture_1d.sample(400_000, generator=g)
eps_1d = torch.randn(x0_1d.shape, generator=g, dtype=torch.float64)
xt_1d = paper.q_sample(x0_1d, step_1d, eps_1d)
sigma_1d = (1 - paper.alpha_bars[step_1d]).sqrt()
targets = -eps_1d / sigma_1d  # the score of q(x_t | x_0) for each pair

edges = torch.linspace(-3, 3, 61, dtype=torch.float64)
which = torch.bucketize(xt_1d[:, 0], edges) - 1
inside = (which >= 0) & (which < 60)
counts = torch.bincount(which[inside], minlength=60)
bin_x = torch.bincount(which[inside], weights=xt_1d[inside, 0], minlength=60) / counts
bin_target = torch.bincount(which[inside], weights=targets[inside, 0], minlength=60) / counts
exact_at_bins = mixture_1d.score(bin_x[:, None], paper, step_1d)[:, 0]

curve_x = torch.linspace(-3, 3, 301, dtype=torch.float64)[:, None]
fig, ax = plt.subplots(figsize=(7.5, 3.8))
ax.scatter(xt_1d[:3000, 0], targets[:3000, 0], s=2, color="0.7", label=r"targets $-\epsilon/\sigma_t$, one per pair")
ax.plot(curve_x[:, 0], mixture_1d.score(curve_x, paper, step_1d)[:, 0], "k", label=r"exact $\nabla \log q_t$")
ax.plot(bin_x, bin_target, "o", color="C1", ms=4, label="average target in each bin")
ax.set(xlim=(-3, 3), ylim=(-8, 8), xlabel="$x_t$", ylabel="score",
       title=f"denoising score matching in 1-D, t = {step_1d}")
ax.grid(alpha=0.3)
ax.legend(loc="upper right", fontsize=8)
plt.tight_layout()
plt.show()
well_filled = counts > 1000
gap = (bin_target - exact_at_bins)[well_filled].abs().max()
print(f"largest gap between bin average and exact score (bins with > 1000 pairs): {gap:.2f}")

# %% [markdown]
# **Same objective, another weighting.** The denoising score matching loss of a score network
# $s_\theta$, with a weight $\lambda(t)$ per noise level, is
#
# $$J(\theta) = \mathbb E_{t, x_0, \epsilon}\Big[\lambda(t)\,\Big\|s_\theta(x_t, t)
#   + \frac{\epsilon}{\sigma_t}\Big\|^2\Big].$$
#
# Write the score network as a noise predictor, $s_\theta = -\epsilon_\theta/\sigma_t$, and the
# bracket becomes $\frac{\lambda(t)}{\sigma_t^2}\|\epsilon_\theta(x_t, t) - \epsilon\|^2$. With the
# weighting that Song & Ermon (2019) chose for their noise-conditional score network,
# $\lambda(t) = \sigma_t^2$, that is exactly $L_\text{simple}$. The variational bound is yet another
# weighting (eq. 12, chapter 03), and so is predicting $x_0$ or $v$. Score models and DDPMs train
# the same function with the same kind of loss; they differ in the weights over $t$ and in the
# noise schedule. Checked on a batch with an arbitrary stand-in network:

# %%
g = torch.Generator().manual_seed(2)
t_b = torch.randint(0, len(paper), (256,), generator=g)
x0_b = eight.sample(256, generator=g)
eps_b = torch.randn(x0_b.shape, generator=g, dtype=torch.float64)
x_b = paper.q_sample(x0_b, t_b, eps_b)
eps_theta = torch.tanh(x_b) - 0.2 * x_b  # any network at all
sigma_b = paper.at((1 - paper.alpha_bars).sqrt(), t_b, x_b)
dsm = (sigma_b**2 * (-eps_theta / sigma_b + eps_b / sigma_b) ** 2).mean()  # lambda(t) = sigma_t^2
l_simple = ((eps_theta - eps_b) ** 2).mean()
print(f"DSM with lambda = sigma_t^2 equals L_simple: {torch.allclose(dsm, l_simple)}")

# %% [markdown]
# ## 2. Sampling with the score: Langevin dynamics
#
# If all we have is a score, how do we sample? **Langevin dynamics** (Roberts & Tweedie 1996, and
# for learning Welling & Teh 2011) takes small steps uphill on $\log p$ and adds noise:
#
# $$x_{k+1} = x_k + \frac{\delta}{2}\,\nabla \log p(x_k) + \sqrt{\delta}\; z_k,
#   \qquad z_k \sim \mathcal N(0, I).$$
#
# The gradient alone would climb to a mode and stop; the noise keeps the chain moving, and the two
# balance so that, for a small step size $\delta$ and many steps, the $x_k$ are distributed as $p$.
# No normalising constant, no density: the score is enough.
#
# **Why a single noise level is not enough.** Take two modes with weights 20 % and 80 % and run
# Langevin dynamics with the exact score of the data ($t = 0$) from $\mathcal N(0, I)$ starting
# points. Each chain quickly rolls into the mode nearest to where it started, and then it stays:
# crossing the empty region between the modes would mean climbing down a steep slope of
# $\log p$, which the small noise almost never does. The chains keep the split of their starting
# points, about half and half, whatever the true weights. (With a learned score it is worse: where
# there is no data, the network has never been trained and its score is a guess.)
#
# **Annealing** fixes both problems (Song & Ermon 2019). Start at a high noise level, where $q_t$
# is almost $\mathcal N(0, I)$ and the modes have merged into one; run a few Langevin steps with the
# score of $q_t$; then lower the noise a little and repeat, down to the data. The forward process
# supplies the levels: the marginals $q_t$, whose scores are exactly what the noise predictor gives.
# Two choices remain:
#
# - the levels: step indices whose $\sigma_t$ are spaced geometrically, from about 1 down to
#   $\sigma_1$, so that every scale of detail gets its share of levels (`noise_levels` below asks
#   for 60 and gets 50 distinct steps of the paper's schedule);
# - the step size: $\delta_t = r\,\sigma_t^2$ with a fixed $r$, so that a step moves a sample by
#   about the same fraction of the noise present at that level (Song & Ermon's rule, with
#   $r = 0.5$ and 10 steps per level here).

# %%
def noise_levels(schedule, n):
    """About n step indices, from T-1 down to 0, whose sigma_t = sqrt(1 - alpha_bar_t) are spaced
    geometrically: the index nearest (in log sigma) to each of n geometric targets, repeats dropped
    (so fewer than n when T is small)."""
    log_sigma = (1 - schedule.alpha_bars).sqrt().log()  # increasing in t
    wanted = torch.linspace(log_sigma[-1], log_sigma[0], n, dtype=torch.float64)
    return (log_sigma[None] - wanted[:, None]).abs().argmin(dim=1).unique_consecutive().tolist()


@torch.no_grad()
def annealed_langevin(score, schedule, shape, levels, steps_per_level=10, r=0.5, generator=None,
                      keep_frames=False):
    """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1) on the marginals q_t.

    score(x, t) returns grad log q_t(x) for x (B, ...) and t (B,); levels are step indices from
    high noise to low; each level runs `steps_per_level` Langevin steps of size r * sigma_t^2.
    Starts from N(0, I), which is q_{T-1} for a schedule that ends in noise. Returns x (B, ...),
    float64, or with keep_frames (x, the start and the state after each level (L+1, B, ...)).
    """
    x = torch.randn(shape, generator=generator, dtype=torch.float64)
    frames = [x]
    for step in levels:
        t_batch = torch.full((shape[0],), step)
        delta = r * (1 - schedule.alpha_bars[step].item())
        for _ in range(steps_per_level):
            z = torch.randn(shape, generator=generator, dtype=torch.float64)
            x = x + delta / 2 * score(x, t_batch) + math.sqrt(delta) * z
        if keep_frames:
            frames.append(x)
    return (x, torch.stack(frames)) if keep_frames else x


levels = noise_levels(paper, 60)
print(f"{len(levels)} levels: t = {levels[:4]} ... {levels[-4:]}")

# %% [markdown]
# The two-mode example, with the exact score (`GaussianMixture.score`): plain Langevin dynamics at
# the data level, 1,000 steps of size $\delta = 0.01$, against annealed Langevin dynamics with
# fewer score evaluations (75 levels of 10 steps), and against the data itself.

# %%
two = GaussianMixture([0.2, 0.8], [[-1.5, -1.5], [1.5, 1.5]], 0.3)
n_two = 2000
g = torch.Generator().manual_seed(3)
x_plain = torch.randn(n_two, 2, generator=g, dtype=torch.float64)
t_zero = torch.zeros(n_two, dtype=torch.long)
with torch.no_grad():
    for _ in range(1000):
        z = torch.randn(x_plain.shape, generator=g, dtype=torch.float64)
        x_plain = x_plain + 0.01 / 2 * two.score(x_plain, paper, t_zero) + math.sqrt(0.01) * z
x_annealed = annealed_langevin(lambda x, t: two.score(x, paper, t), paper, (n_two, 2),
                               noise_levels(paper, 100), generator=torch.Generator().manual_seed(4))
x_data = two.sample(n_two, generator=torch.Generator().manual_seed(5))

fig, axes = plt.subplots(1, 3, figsize=(11, 3.8))
for ax, (name, x) in zip(axes, [("plain Langevin, t = 0", x_plain), ("annealed Langevin", x_annealed),
                                ("data", x_data)], strict=True):
    share = (x.sum(dim=1) > 0).double().mean().item()
    viz.show_points(x, lim=3.5, ax=ax, size=3)
    ax.set_title(f"{name}\n{100 * share:.1f} % in the heavier mode (true: 80 %)", fontsize=10)
plt.tight_layout()
plt.show()

# %% [markdown]
# ### Langevin dynamics with a trained network
#
# Now the eight Gaussians, with the score from the exact denoiser and from a small network trained
# with $L_\text{simple}$, the same MLP and trainer as in chapter 03 (`TrainConfig.from_budget`,
# `Trainer`; seconds under the `smoke` budget). Its score is
# $s_\theta = -\epsilon_\theta / \sigma_t$ (exercise 1). From here on the schedule is the run
# budget's, as in chapter 03: the paper's under `cpu` and `gpu`, a 100-step version under `smoke`.

# %% tags=["nbval-ignore-output"]
schedule = make_schedule(BUDGET.schedule, BUDGET.num_steps)
T = len(schedule)
toy_trainer = Trainer(TrainConfig.from_budget("eight-gaussians", BUDGET, num_samples=0), progress=False)
toy_trainer.train()
mlp = toy_trainer.ema_model().cpu()  # tiny: run it on the CPU, beside the exact denoiser
summary = toy_trainer.summary()
print(f"MLP: {mlp.num_parameters():,} parameters, {summary['steps']} steps in "
      f"{summary['train_time_s']:.0f} s, last loss {summary['final_loss']:.3f}")
sigma_table = (1 - schedule.alpha_bars).sqrt()


def mlp_score(x, t):
    """s_theta(x, t) = -eps_theta(x, t) / sigma_t: the trained noise predictor as a score."""
    with torch.no_grad():
        eps = mlp(x.float(), t).double()
    return -eps / sigma_table[t][:, None]


def exact_score(x, t):
    return eight.score(x, schedule, t)

# %% [markdown]
# The animation below plays annealed Langevin dynamics with the trained network's score, one frame
# per noise level: the cloud starts as $\mathcal N(0, I)$, is pulled out onto the circle as the
# noise shrinks, and splits into the eight modes only at the last levels.

# %% tags=["nbval-ignore-output"]
budget_levels = noise_levels(schedule, 60)
_, frames = annealed_langevin(mlp_score, schedule, (600, 2), budget_levels, keep_frames=True,
                              generator=torch.Generator().manual_seed(6))
keep = [*range(0, len(budget_levels), 3), len(budget_levels)]  # every third level, and the end
frame_levels = [budget_levels[0], *budget_levels]  # the start, then the level each frame ends
viz.frames_slider(frames[keep].float(), [frame_levels[k] for k in keep], schedule, lim=3.0,
                  title="Annealed Langevin dynamics with the trained network's score: press Play")

# %% [markdown]
# ### Samplers compared
#
# How good are the samples, and what do they cost? The table compares, for the exact denoiser and
# the trained MLP, the ancestral sampler of Algorithm 2 (`ddpm_sample`, $T$ network evaluations),
# annealed Langevin dynamics (levels $\times$ 10 evaluations), and DDIM (`ddim_sample` with
# $\eta = 0$, chapter 06) with 50 and with 10 steps. The columns are those of `metrics.toy_report`:
# modes reached, the share of samples within 3 standard deviations of a mode (the data's own share
# is 98.7 %), and MMD$^2$ to the data, whose floor for this sample size is printed below the table.

# %% tags=["nbval-ignore-output"]
n_toy = BUDGET.toy_num_samples
rows = []
for name, model, score in [("exact", eight.denoiser(schedule), exact_score), ("MLP", mlp, mlp_score)]:
    with torch.no_grad():
        runs = {
            f"ancestral, {T} steps": (ddpm_sample(model, schedule, (n_toy, 2), torch.Generator().manual_seed(7)), T),
            f"annealed Langevin, {len(budget_levels)} levels": (
                annealed_langevin(score, schedule, (n_toy, 2), budget_levels, generator=torch.Generator().manual_seed(7)).float(),
                10 * len(budget_levels)),
        }
        for k in (50, 10):
            runs[f"DDIM eta = 0, {k} steps"] = (
                ddim_sample(model, schedule, (n_toy, 2), num_steps=min(k, T), eta=0.0,
                            generator=torch.Generator().manual_seed(7)), min(k, T))
    for sampler, (x, cost) in runs.items():
        rows.append((name, sampler, cost, toy_report(x)))
print(f"{'score from':12}{'sampler':32}{'evals':>7}{'modes':>7}{'near':>8}{'MMD^2':>11}{'SW2':>8}")
for name, sampler, cost, rep in rows:
    print(f"{name:12}{sampler:32}{cost:>7}{rep.modes_hit:>5}/8{100 * rep.share_near:>7.1f}%"
          f"{rep.mmd:>11.2e}{rep.swd:>8.3f}")
floor = rows[0][3]
print(f"{'data':12}{'(fresh draw: the floor)':32}{'':>7}{floor.data_modes_hit:>5}/8"
      f"{100 * floor.data_share_near:>7.1f}%{floor.mmd_floor:>11.2e}{floor.swd_floor:>8.3f}")

# %% [markdown]
# What to read from it (under the `smoke` budget the MLP has trained for seconds and its rows mean
# little):
#
# - With the exact score, annealed Langevin dynamics reaches every mode and puts its samples on the
#   modes about as well as the ancestral sampler, which sits at the data's floor.
# - With the trained network, Langevin dynamics is only as good as the network's score, and it is
#   less forgiving than the ancestral sampler. Ten steps at each level let the chain settle into
#   the distribution that the *learned* score describes there, errors included, and at the lowest
#   levels an error in $\epsilon_\theta$ is divided by a small $\sigma_t$. The ancestral sampler
#   uses the network once per level. Compare the MMD$^2$ of the two MLP rows with the floor.
# - The number of steps is a property of the *sampler*, not of the model: 50 deterministic DDIM
#   steps keep every mode and most of the quality of $T$ ancestral ones, with a twentieth of the
#   network evaluations. With 10 steps the discretisation error shows: fewer samples land on the
#   modes.
#
# **The reverse step is a score step.** Put $\epsilon_\theta = -\sigma_t s_\theta$ into the mean of
# the reverse step (eq. 11):
#
# $$\mu_\theta(x_t, t) = \frac{1}{\sqrt{\alpha_t}}\Big(x_t - \frac{\beta_t}{\sigma_t}\,
#   \epsilon_\theta\Big) = \frac{1}{\sqrt{\alpha_t}}\big(x_t + \beta_t\, s_\theta(x_t, t)\big).$$
#
# Ancestral sampling is a gradient step on $\log q_t$ of size $\beta_t$, a rescaling, and noise of
# variance $\tilde\beta_t \approx \beta_t$: Langevin-like, but with twice Langevin's drift
# ($\beta_t$ instead of $\beta_t/2$). The extra half-step is what moves the distribution from $q_t$
# to $q_{t-1}$, where a Langevin step would leave it at $q_t$. Song et al. (2021) make this precise:
# the reverse chain discretises the reverse-time SDE of the forward process (the *predictor*), and
# Langevin steps at a fixed level can be interleaved to correct its errors (the *corrector*). In
# code, one ancestral step without noise against the score form:

# %%
g = torch.Generator().manual_seed(8)
t_c = torch.tensor([1, 50, 300, 900])
x_c = paper.q_sample(eight.sample(4, generator=g), t_c, generator=g)
a_c, b_c = paper.at(paper.alphas, t_c, x_c), paper.at(paper.betas, t_c, x_c)
eps_c = eight.eps(x_c, paper, t_c)
eq_11 = (x_c - b_c / (1 - paper.at(paper.alpha_bars, t_c, x_c)).sqrt() * eps_c) / a_c.sqrt()
score_form = (x_c + b_c * eight.score(x_c, paper, t_c)) / a_c.sqrt()
print("eq. 11 equals (x_t + beta_t * score) / sqrt(alpha_t):", torch.allclose(eq_11, score_form))

# %% [markdown]
# ## 3. Diffusion as progressive lossy compression (section 4.3 of the paper)
#
# The variational bound $L$ of eq. 5 is a sum of KL divergences, and a KL divergence is a code
# length: with a suitable coder, sending a sample of $q$ to a receiver who knows $p$ costs about
# $D_\mathrm{KL}(q \,\|\, p)$ nats. The paper reads the bound as a communication protocol
# (Algorithms 3 and 4). The sender holds an image $x_0$ and sends
#
# 1. $x_T \sim q(x_T \mid x_0)$, coded with the prior $p(x_T)$: it costs $L_T$;
# 2. then, for $t = T, \dots, 2$, $x_{t-1} \sim q(x_{t-1} \mid x_t, x_0)$, coded with the model's
#    $p_\theta(x_{t-1} \mid x_t)$, which the receiver can compute: it costs $L_{t-1}$;
# 3. finally $x_0$, coded with $p_\theta(x_0 \mid x_1)$: it costs $L_0$.
#
# The total is the bound. But the receiver need not wait for the end: holding $x_t$ it can already
# estimate the image, by the denoiser's $\hat x_0 = \mathbb E[x_0 \mid x_t]$ (Tweedie, section 1).
# The **rate** after receiving $x_t$ is the bits sent so far, $L_T + \sum_{s > t} L_{s-1}$; the
# **distortion** is the error of $\hat x_0$. Plotting one against the other for all $t$ gives a
# rate-distortion curve, Figure 5 of the paper. (A coder that reaches the KL exactly for every
# step, such as relative entropy coding, is not practical at this dimension; the paper says as
# much. The curve is about what the model *knows*, not a codec.)
#
# For that we need a digit model. The package's trainer trains the small U-Net of the run budget
# on glyph digits (chapter 05): seconds under `smoke` (where the samples are noise and the numbers
# mean nothing), a few minutes under `cpu` (1,000 steps; blurry but mostly recognisable
# digits), and the budget's full run under `gpu`.

# %% tags=["nbval-ignore-output"]
digit_steps = {"smoke": BUDGET.train_steps, "cpu": 1000}.get(BUDGET.name, BUDGET.train_steps)
digit_trainer = Trainer(
    TrainConfig.from_budget(
        "glyph-digits", BUDGET, num_samples=0, train_steps=digit_steps,
        min_snr_gamma=None,  # the paper's L_simple, whose bound section 3 compares with Table 2
    ),
    progress=False,
)
digit_trainer.train()
device = BUDGET.device  # the U-Net stays where it trained; its inputs go there and back
unet = digit_trainer.ema_model()
summary = digit_trainer.summary()
print(f"U-Net: {unet.num_parameters():,} parameters, {summary['steps']} steps of batch "
      f"{digit_trainer.config.batch_size} in {summary['train_time_s'] / 60:.1f} min, "
      f"last loss {summary['final_loss']:.3f}")

# %% [markdown]
# **What the receiver sees.** Take eight test digits, never seen in training, noise each to $x_t$
# with one fixed noise draw, and ask the network for its $\hat x_0$ (clipped to $[-1, 1]$). Move the
# slider from high noise to low. At the very first steps the prediction is speckled: there
# $\hat x_0 = (x_t - \sigma_t \epsilon_\theta)/\sqrt{\bar\alpha_t}$ multiplies the network's small
# errors in $\epsilon$ by $\sigma_t/\sqrt{\bar\alpha_t}$, about 150 at $t = T$ (the $1/\mathrm{SNR}$
# weighting of chapter 03; an exact denoiser would show the average digit). Soon it becomes a grey
# blob, the average digit; the class and the rough shape appear while $x_t$ still looks like pure
# noise to the eye; stroke width and details come last.

# %%
x0_test, _ = glyph_digits(8, seed=2024)
frame_ts = torch.linspace(T - 1, 0, 31).round().long().tolist()
noise = torch.randn(x0_test.shape, generator=torch.Generator().manual_seed(9))


@torch.no_grad()
def x0_prediction(model, schedule, x_t, t):
    """The network's x0_hat from x_t at step t (an int), clipped to the data range, on the CPU."""
    x_t = x_t.to(device)
    t_batch = torch.full((len(x_t),), t, device=device)
    return schedule.predict_x0_from_eps(x_t, t_batch, model(x_t, t_batch)).clamp(-1, 1).cpu()


noisy = torch.stack([schedule.q_sample(x0_test, t, noise) for t in frame_ts])
predicted = torch.stack([x0_prediction(unet, schedule, x, t) for x, t in zip(noisy, frame_ts, strict=True)])
viz.frames_slider({"x_t": noisy, "prediction x0_hat": predicted}, frame_ts, schedule,
                  title="What a receiver holding x_t knows: press Play (t runs down)")

# %% [markdown]
# **The rate-distortion curve.** `likelihood.vlb(..., terms=True)` returns the prior term $L_T$
# (`prior`, one number per image) and the other terms (`terms[:, t]`: index 0 is the decoder $L_0$,
# index $t \ge 1$ the KL of the reverse step out of $x_t$), in nats. The rate on receiving $x_t$ is
# `prior + terms[:, t+1:].sum()` (exercise 4), in bits per dimension (divide by $784 \ln 2$). The
# data must be on the 8-bit grid for the discretised decoder (eq. 13), so the test digits are
# rounded to 256 grey levels first. Distortion is the root mean squared error of $\hat x_0$ on the
# $[0, 255]$ scale, as in the paper.

# %% tags=["nbval-ignore-output"]
n_rd = {"smoke": 8, "cpu": 16}.get(BUDGET.name, 64)
x0_rd = glyph_digits(n_rd, seed=2025)[0]
x0_rd = ((x0_rd + 1) * 127.5).round() / 127.5 - 1  # 8-bit grid
bound = vlb(unet, schedule, x0_rd.to(device), generator=torch.Generator(device).manual_seed(10),
            terms=True)
prior, terms = bound.prior.cpu(), bound.terms.cpu()  # nats, (B,) and (B, T)
bits = 784 * math.log(2)
later = terms.sum(dim=1, keepdim=True) - terms.cumsum(dim=1)  # sum over s > t: all minus s <= t
rate = ((prior[:, None] + later) / bits).mean(dim=0)  # (T,), bits/dim on receiving x_t

rd_ts = torch.linspace(T - 1, 0, 101).round().long().unique_consecutive().tolist()
noise_rd = torch.randn(x0_rd.shape, generator=torch.Generator().manual_seed(11))  # one draw for all t
distortion = []
for t in rd_ts:
    x_t = schedule.q_sample(x0_rd, t, noise_rd)
    err = (x0_prediction(unet, schedule, x_t, t) - x0_rd) * 127.5  # on the [0, 255] scale
    distortion.append(err.pow(2).mean(dim=(1, 2, 3)).sqrt().mean().item())
total = ((prior + terms.sum(dim=1)) / bits).mean().item()
print(f"bound: {total:.2f} bits/dim; prior term L_T: {(prior / bits).mean():.1e} bits/dim; "
      f"decoder term L_0: {(terms[:, 0] / bits).mean():.3f} bits/dim")

# %%
steps_taken = [T - 1 - t for t in rd_ts]  # reverse steps received so far
rate_at = [rate[t].item() for t in rd_ts]
fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
axes[0].plot(steps_taken, distortion)
axes[0].set(xlabel="reverse steps received (T - 1 - t)", ylabel="distortion: RMSE on [0, 255]")
axes[1].plot(steps_taken, rate_at)
axes[1].set(xlabel="reverse steps received (T - 1 - t)", ylabel="rate: bits/dim")
axes[2].plot(rate_at, distortion, label="holding x_t")
axes[2].plot([total], [0.0], "o", color="C1", label="x_0 itself (+ decoder L_0): the bound")
axes[2].set(xlabel="rate: bits/dim", ylabel="distortion: RMSE on [0, 255]")
axes[2].legend(fontsize=8)
for ax in axes:
    ax.grid(alpha=0.3)
fig.suptitle(f"Progressive coding of {n_rd} test digits (the paper's Figure 5, for glyph digits)")
plt.tight_layout()
plt.show()

# %% tags=["nbval-ignore-output"]
print(f"{'t':>6}{'rate (bits/dim)':>18}{'share of the bound':>20}{'RMSE (0-255)':>14}")
for t, d in zip(rd_ts, distortion, strict=True):
    if t in rd_ts[:: max(1, len(rd_ts) // 10)] or t == 0:
        print(f"{t:>6}{rate[t].item():>18.3f}{100 * rate[t].item() / total:>19.1f}%{d:>14.1f}")

# %% [markdown]
# Read the curves from the left, as the receiver does. Over most of the chain the rate grows
# slowly while the distortion falls steeply: a small share of the bits buys the coarse content of
# the digit (in the run stored with this notebook, after 90 % of the steps the receiver holds a
# reconstruction within about ten grey levels for about 6 % of the bits). The rest come in the
# last steps, where the distortion is already down to a few grey levels, and the decoder's final
# step $L_0$ (the dot) alone takes close to half of the bound: they pay for details that are hard to
# see but cost a lot to describe exactly. The paper splits its CIFAR-10 bound the same way
# (Table 2): rate $L_1 + \dots + L_T$ = 1.78 bits/dim, distortion term $L_0$ = 1.97 bits/dim for an
# RMSE of 0.95 on the 0-255 scale, so "more than half of the lossless codelength describes
# imperceptible distortions". That is its explanation for why DDPMs have excellent samples but only
# competitive log-likelihoods: the bound spends most of its effort where the eye cannot tell.
#
# **Progressive generation.** The same predictions, made along a *sampled* chain instead of a noised
# test image, show how a sample is built (the paper's Figure 6). Rows are samples, columns run from
# early to late in the reverse chain (`ddim_sample` with $\eta = 1$ on the budget's subsequence of
# steps, which is ancestral sampling there, keeping `x0_preds`). After the speckled first columns
# the coarse form comes first, a blob and then a digit, and the details are settled last.

# %% tags=["nbval-ignore-output"]
with torch.no_grad():
    traj = ddim_sample(unet, schedule, (6, 1, 28, 28), num_steps=BUDGET.ddim_steps, eta=1.0,
                       generator=torch.Generator(device).manual_seed(12), clip_x0=True,
                       return_trajectory=True, device=device)
columns = torch.linspace(0, len(traj.x0_preds) - 1, 8).round().long()
shown = traj.x0_preds[columns].cpu().clamp(-1, 1).transpose(0, 1).reshape(-1, 1, 28, 28)  # rows: samples
fig, ax = plt.subplots(figsize=(8, 6.4))
viz.show_images(shown, nrow=8, ax=ax)
ax.set_title("x0_hat along the reverse chain, columns at t = "
             + ", ".join(str(traj.timesteps[c]) for c in columns.tolist()), fontsize=9)
plt.show()

# %% [markdown]
# **Which features are decided when?** Stop the chain at $x_t$ of one test digit and finish it six
# times with fresh noise (the paper's Figure 7). What the six endings share is what $x_t$ already
# fixed. Started late in the chain (small $t$), they are the same digit with small differences of
# stroke; started earlier, they differ more and more, in class too; started early, they share
# little more than where the ink is.

# %% tags=["nbval-ignore-output"]
@torch.no_grad()
def finish_chain(model, schedule, x_t, t, num_steps, generator):
    """Run the reverse chain from x_t at step t down to x_0: ancestral steps (DDIM with eta = 1)
    along about num_steps indices from t to 0, x0_hat clipped to [-1, 1]. Returns (B, ...)."""
    ts = torch.linspace(t, 0, max(2, num_steps)).round().long().unique_consecutive().tolist()
    x = x_t.to(device)
    for now, nxt in zip(ts, [*ts[1:], -1], strict=True):
        t_batch = torch.full((len(x),), now, device=device)
        x = ddim_step(schedule, model(x, t_batch), x, t_batch, nxt, eta=1.0, clip_x0=True,
                      generator=generator)
    return x.cpu()


start_ts = [int(T * f) for f in (0.75, 0.5, 0.3, 0.15)]
g, g_chain = torch.Generator().manual_seed(13), torch.Generator(device).manual_seed(13)
grid_rows = []
for t in start_ts:
    x_t = schedule.q_sample(x0_test[:1], t, generator=g).repeat(6, 1, 1, 1)
    endings = finish_chain(unet, schedule, x_t, t, BUDGET.ddim_steps * t // T, g_chain)
    grid_rows.append(torch.cat([x0_test[:1], x_t[:1].clamp(-1, 1), endings]))
fig, ax = plt.subplots(figsize=(8, 4.6))
viz.show_images(torch.cat(grid_rows), nrow=8, ax=ax)
ax.set_title("per row: the test digit, its x_t, six endings of the chain from x_t; rows t = "
             + ", ".join(map(str, start_ts)), fontsize=9)
plt.show()

# %% [markdown]
# ## 4. The autoregressive view
#
# An autoregressive model (PixelCNN, a language model) generates one coordinate at a time, each
# conditioned on all the earlier ones, in a fixed order. Section 4.3 of the paper shows that this is
# a diffusion model too, with an unusual forward process:
#
# - let $T$ be the dimension $D$ (784 pixels), and let step $t$ **mask** coordinate $t$: $x_t$ is
#   $x_0$ with its first $t$ coordinates blanked out, and $x_T$ is a blank image, so
#   $p(x_T) = q(x_T)$ and $L_T = 0$;
# - take $p_\theta(x_{t-1} \mid x_t)$ fully expressive. Minimising
#   $D_\mathrm{KL}(q(x_{t-1} \mid x_t) \,\|\, p_\theta(x_{t-1} \mid x_t))$ teaches it to copy
#   coordinates $t+1, \dots, D$ unchanged and to predict coordinate $t$ from them.
#
# That is exactly training an autoregressive model (in reverse raster order). So the Gaussian
# diffusion can be read as an autoregressive model with a **generalised ordering**: instead of
# revealing one pixel at a time, each reverse step reveals a little of *every* pixel, at a
# resolution set by the noise. No reordering of pixels can express that. And $T$ is free: the paper
# uses $T = 1000$, fewer steps than CIFAR-10 has coordinates (3,072).

# %%
digit = glyph_digits(1, seed=7)[0]
fractions = [0.0, 0.25, 0.5, 0.75, 1.0]
masked = []
for f in fractions:  # masking noise in raster order: blanked pixels shown as grey (0)
    x = digit.clone().reshape(-1)
    x[: round(f * 784)] = 0.0
    masked.append(x.reshape(1, 1, 28, 28))
gaussian = [digit if f == 0 else paper.q_sample(digit, round(f * 999), torch.randn(digit.shape, generator=torch.Generator().manual_seed(14)))
            for f in fractions]
fig, axes = plt.subplots(2, 5, figsize=(9, 4))
for k, f in enumerate(fractions):
    viz.show_images(masked[k], ax=axes[0, k], title=f"masked, t = {round(f * 784)}")
    viz.show_images(gaussian[k].clamp(-1, 1), ax=axes[1, k], title=f"Gaussian, t = {round(f * 999)}")
fig.suptitle("Two forward processes: masking (autoregressive) and Gaussian (DDPM)")
plt.tight_layout()
plt.show()

# %% [markdown]
# **What is the Gaussian ordering?** Images have most of their power at low spatial frequencies,
# while white noise has the same power at every frequency. Adding noise therefore drowns the fine
# detail (high frequencies) first and the coarse shape last, and the reverse chain decides the
# coarse shape first and the fine detail last, as the slider above showed. Measure it: the radially
# averaged power spectrum $P(f)$ of glyph digits (`torch.fft.fft2` with orthonormal scaling, where
# white noise of variance $\sigma^2$ has power $\sigma^2$ at every frequency). At step $t$ a
# frequency is below the noise once $\bar\alpha_t P(f) < 1 - \bar\alpha_t$, that is once
# $P(f) < 1/\mathrm{SNR}_t$. The right panel shows the first step at which each frequency drowns:
# high frequencies go early in the forward process, so they are restored late in the reverse one.
# The reverse chain is an autoregression over scales, soft rather than one pixel at a time
# (Dieleman 2024 develops this view; Rissanen et al. 2023 build a model on it).

# %%
spectrum_digits = glyph_digits(512, seed=3)[0][:, 0].double()
power = torch.fft.fft2(spectrum_digits - spectrum_digits.mean(), norm="ortho").abs().pow(2).mean(dim=0)
fy, fx = torch.meshgrid(torch.fft.fftfreq(28) * 28, torch.fft.fftfreq(28) * 28, indexing="ij")
radius = (fx**2 + fy**2).sqrt().round().long()
freqs = torch.arange(1, 15)
radial = torch.stack([power[radius == f].mean() for f in freqs])
inverse_snr = 1 / paper.snr(torch.arange(len(paper)))  # increasing in t
drowned_at = torch.searchsorted(inverse_snr, radial).clamp(max=len(paper) - 1)

fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 3.6))
ax.semilogy(freqs, radial, "o-", label="P(f) of glyph digits")
for step, style in [(50, ":"), (150, "--"), (400, "-.")]:
    ax.axhline(inverse_snr[step], color="k", ls=style, lw=1, label=f"1 / SNR at t = {step}")
ax.set(xlabel="spatial frequency (cycles per image)", ylabel="power", title="signal against noise")
ax.grid(alpha=0.3)
ax.legend(fontsize=8)
ax2.plot(freqs, drowned_at, "o-")
ax2.set(xlabel="spatial frequency (cycles per image)", ylabel="first t with SNR_t P(f) < 1",
        title="when each frequency drowns (paper's schedule)")
ax2.grid(alpha=0.3)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 5. The variational view: a hierarchical VAE with a fixed encoder
#
# A variational autoencoder has an encoder $q_\phi(z \mid x)$, a decoder $p_\theta(x \mid z)$ and a
# prior $p(z)$, and maximises the ELBO. A *hierarchical* VAE stacks latents,
# $x \to z_1 \to \dots \to z_T$, with a decoder chain back down. DDPM is one of these, with
#
# | VAE | DDPM |
# | --- | --- |
# | latents $z_1, \dots, z_T$ | $x_1, \dots, x_T$, each of the data's dimension |
# | learned encoder $q_\phi(z_{1:T} \mid x)$ | the fixed forward process $q(x_{1:T} \mid x_0)$, no parameters |
# | prior $p(z_T)$ | $\mathcal N(0, I)$ |
# | decoder chain $p_\theta(z_{t-1} \mid z_t)$ | the reverse process $p_\theta(x_{t-1} \mid x_t)$ |
# | ELBO | the bound $L$ of eqs. 3 and 5 |
#
# The fixed encoder changes a lot. There is nothing to learn on the encoder side, so none of a
# VAE's balancing act between encoder and decoder (no posterior collapse, no encoder that learns a
# bad code). The top latent carries almost no information about the data ($L_T$ was a few times
# $10^{-5}$ bits/dim in section 3): all the information is in the chain. And because
# $q(x_t \mid x_0)$ has a closed form, each layer's term of the ELBO can be trained on its own by
# sampling $t$ (Algorithm 1), without running the encoder through the layers above it; a learned
# hierarchical VAE cannot do that. Kingma et al. (2021) take this view to continuous time, where the
# bound depends on the schedule only through its end points.
#
# The flow view is the third neighbour. DDIM with $\eta = 0$ (section 2's table) is a deterministic,
# invertible map from noise to data: it integrates the *probability-flow ODE* of the forward process
# (Song et al. 2021), which turns the same trained network into a continuous normalising flow, with
# exact likelihoods. Flow matching (next section) starts from that end.

# %% [markdown]
# ## 6. Where to go next
#
# **Score SDEs** (Song, Sohl-Dickstein, Kingma, Kumar, Ermon & Poole 2021, "Score-based generative
# modeling through stochastic differential equations"). Let $T \to \infty$: the forward process
# becomes a stochastic differential equation, DDPM's the "variance preserving" one and the score
# models' (section 2) the "variance exploding" one. Its time reversal needs only the score, which is
# sections 1 and 2 in continuous time; predictor-corrector samplers combine reverse steps with
# Langevin steps; and the probability-flow ODE gives deterministic sampling and exact likelihoods.
#
# **Classifier-free guidance** (Ho & Salimans 2022; classifier guidance: Dhariwal & Nichol 2021).
# Train one network both with a condition $c$ (a class, a caption) and without it, by dropping $c$
# at random. At sampling time use $(1 + w)\,\epsilon_\theta(x_t, c) - w\,\epsilon_\theta(x_t)$: in
# the score view of section 1 that is the score of $p(x \mid c)\, p(c \mid x)^{w}$, which favours
# samples the condition explains well. It trades diversity for fidelity and is behind nearly every
# text-to-image model.
#
# **Latent diffusion** (Rombach, Blattmann, Lorenz, Esser & Ommer 2022, the basis of Stable
# Diffusion). Section 3 showed that the bound spends most of its bits on imperceptible detail. So
# first train an autoencoder that compresses images into a smaller latent space, discarding exactly
# that detail, and run the diffusion there: the same DDPM, far cheaper per step, with the
# autoencoder's decoder restoring the fine texture.
#
# **Flow matching and rectified flow** (Lipman, Chen, Ben-Hamu, Nickel & Le 2023; Liu, Gong & Liu
# 2023; Albergo & Vanden-Eijnden 2023). Choose a path from noise to data, most simply the straight
# line $x_t = (1 - t)\,x_0 + t\,\epsilon$, and regress a velocity field on it, much as chapter 03's
# $v$-prediction does; sample by integrating the ODE. Gaussian diffusion is one choice of path;
# straight paths need fewer integration steps, and "rectifying" them (re-pairing noise with the
# samples it produced) makes them straighter still.
#
# **Consistency models** (Song, Dhariwal, Chen & Sutskever 2023). Train a network to map any point
# of a probability-flow ODE trajectory straight to the trajectory's end, its $x_0$, either by
# distilling a trained diffusion model or from scratch. Sampling then takes one network evaluation,
# or a few for better quality. With progressive distillation (Salimans & Ho 2022) and better ODE
# solvers (DPM-Solver, Lu et al. 2022; EDM, Karras, Aittala, Aila & Laine 2022) they answer the
# claim that diffusion "needs" a thousand steps.

# %% [markdown]
# > **Common misconceptions**
# >
# > - *"Score-based models and DDPMs are different things."* They learn the same function: a noise
# >   predictor is a score scaled by $-\sigma_t$ (section 1). Their losses are the same denoising
# >   regression with different weights over noise levels ($\lambda(t) = \sigma_t^2$ gives
# >   $L_\text{simple}$ exactly), and their samplers are discretisations of the same reverse-time
# >   dynamics. What differs is the forward process (variance preserving or exploding) and the
# >   weighting; Song et al. (2021) unify them.
# > - *"Diffusion needs many steps by nature."* The number of steps is a property of the sampler,
# >   not of the trained network. In section 2 the same networks, sampled with 50 DDIM steps, kept
# >   every mode and most of the quality of $T$ ancestral steps with a twentieth of the evaluations;
# >   better solvers, distillation and consistency models go down to a handful or one. Many steps
# >   reduce the discretisation error of an SDE or ODE; they are not what makes the model work.
# > - *"Diffusion models are autoregressive models in the usual sense."* Only with a masking forward
# >   process and $T = D$ (section 4). Gaussian diffusion rewrites every coordinate at every step,
# >   conditions on the current state alone, and has a number of steps unrelated to the dimension;
# >   its "ordering" is over scales of detail, not over pixels.
# > - *"Langevin dynamics with the data's score is enough to sample."* With one noise level it
# >   cannot move between separated modes, so it gets their weights wrong (section 2, 50 % instead
# >   of 80 %). Annealing through the noise levels, which is what diffusion does, fixes that.
# > - *"The rate-distortion curve is a working codec."* It assumes a coder that sends a sample at
# >   the cost of a KL divergence; none is practical at image dimensions. The curve measures where
# >   the model's bits go.
# > - *"A DDPM is a VAE, so its latents are a compressed code of the image."* Its latents have the
# >   image's dimension and the encoder is fixed, not learned; $x_T$ says almost nothing about
# >   $x_0$. (The deterministic DDIM map does give each image a latent $x_T$, but it is not smaller.)

# %% [markdown]
# ## Summary
#
# - The score of the noised data is the noise prediction rescaled:
#   $\nabla \log q_t(x_t) = -\mathbb E[\epsilon \mid x_t]/\sqrt{1-\bar\alpha_t}$
#   (`GaussianMixture.score`; checked against autograd of the exact density). Tweedie's formula
#   turns it into $\mathbb E[x_0 \mid x_t]$, and denoising score matching with the weight
#   $\sigma_t^2$ is $L_\text{simple}$.
# - Langevin dynamics samples with a score alone. Annealed over the forward process's noise levels
#   it reaches all modes with the right weights, where a single level cannot; with a learned score
#   it is only as good as that score, and less forgiving of its errors than ancestral sampling. The
#   ancestral reverse step is itself a score step, $\mu_\theta = (x_t + \beta_t s_\theta)/\sqrt{\alpha_t}$.
# - The bound is a code length. Receiving $x_T, x_{T-1}, \dots$ in turn, a receiver's
#   $\hat x_0$ improves from the average digit to the image; the rate-distortion curve shows most
#   bits buying imperceptible detail at small $t$.
# - With a masking forward process diffusion is autoregression; Gaussian diffusion orders by scale,
#   coarse first. It is a hierarchical VAE with a fixed encoder, and with the probability-flow ODE a
#   continuous normalising flow.

# %% [markdown]
# ## Exercises
#
# Each exercise asks for one function. Write it in the cell marked as the solution, run the next
# cell, and `check` tells you whether it is right or what exactly is wrong. Conventions: `t` is a
# LongTensor of shape (B,) of code indices (0..T-1), `betas` is the float64 schedule of shape (T,),
# and data tensors have shape (B, ...); a coefficient read with `table[t]` has shape (B,), so
# reshape it to (B, 1, ..., 1) to multiply a batch.
#
# **Exercise 1: the score from the noise prediction.** Return
# $\nabla \log q_t(x_t) \approx -\epsilon / \sqrt{1 - \bar\alpha_t}$ for the predicted noise `eps`.

# %% tags=["solution"]
def score_from_eps(eps, t, betas):
    """grad log q_t(x_t) = -eps / sqrt(1 - alpha_bar_t), shape (B, ...)."""
    alpha_bar = torch.cumprod(1 - betas, dim=0)[t].view((-1,) + (1,) * (eps.ndim - 1))
    return -eps / (1 - alpha_bar).sqrt()


# %%
from ddpm_teach.exercises import check

check("score-from-eps", score_from_eps)

# %% [markdown]
# **Exercise 2: Tweedie's formula.** Given $x_t$ and the score at it, return
# $\mathbb E[x_0 \mid x_t] = (x_t + (1 - \bar\alpha_t)\,\text{score}) / \sqrt{\bar\alpha_t}$.

# %% tags=["solution"]
def x0_from_score(x_t, t, score, betas):
    """E[x_0 | x_t] by Tweedie's formula, shape (B, ...)."""
    alpha_bar = torch.cumprod(1 - betas, dim=0)[t].view((-1,) + (1,) * (x_t.ndim - 1))
    return (x_t + (1 - alpha_bar) * score) / alpha_bar.sqrt()


# %%
from ddpm_teach.exercises import check

check("tweedie-x0", x0_from_score)

# %% [markdown]
# **Exercise 3: one Langevin step.** Return $x + \frac{\delta}{2}\,\text{score} + \sqrt{\delta}\,z$
# with $\delta$ = `step_size` (a float) and `z` a given standard normal draw of $x$'s shape.

# %% tags=["solution"]
def langevin_step(x, score, step_size, z):
    """One step of Langevin dynamics, shape of x."""
    return x + step_size / 2 * score + math.sqrt(step_size) * z


# %%
from ddpm_teach.exercises import check

check("langevin-step", langevin_step)

# %% [markdown]
# **Exercise 4: the rate of progressive coding.** From the prior term `prior` (B,) and the other
# terms `terms` (B, T) of the bound, in nats, return the rate in bits per dimension on receiving each
# $x_t$: `rate[:, t]` $= (\text{prior} + \sum_{s > t} \text{terms}[:, s]) / (D \ln 2)$ with $D$ =
# `num_dims`, shape (B, T). This is what section 3 plotted.

# %% tags=["solution"]
def cumulative_rate(prior, terms, num_dims):
    """Bits per dimension sent once x_t is received, shape (B, T)."""
    later = terms.flip(1).cumsum(dim=1).flip(1) - terms  # sum over s > t
    return (prior[:, None] + later) / (num_dims * math.log(2))


# %%
from ddpm_teach.exercises import check

check("rate-from-terms", cumulative_rate)

# %% [markdown]
# **To explore further** (no checks):
#
# - In section 2, run annealed Langevin dynamics with the MLP's score and 3 steps per level instead
#   of 10, then with $r = 0.05$ and with $r = 2$. Which does best, and why can fewer steps be better
#   with a learned score than with the exact one?
# - Add a corrector: interleave one Langevin step at level $t$ (with the network's score) after each
#   ancestral step of `ddpm_sample`'s loop. Does the MLP's share near a mode improve?
# - Redo the rate-distortion curve with `variance="large"` in `vlb`. Which part of the curve moves?
