# %% [markdown]
# # 03 The reverse Markov chain
#
# Chapters 01 and 02 built the forward process $q$: a fixed chain that turns data into noise. A
# generative model must run the other way, from noise to data. This chapter works out what "the
# other way" means exactly, why a chain of small Gaussian steps can do it, and what a network has to
# learn for it. Then we run that chain, first with a perfect denoiser computed in closed form, then
# with a small network trained in under a minute on a CPU, and compare the two.
#
# **Learning objectives.** After this chapter you can:
#
# - derive the posterior $q(x_{t-1} \mid x_t, x_0)$;
# - reduce the ELBO to $L_\text{simple}$ and say what is dropped;
# - run the reverse chain with an exact denoiser and with a trained one.
#
# **Notation.** Equations follow the paper (Ho, Jain & Abbeel 2020) and count steps
# $t = 1, \dots, T$, with $\alpha_t = 1 - \beta_t$ and $\bar\alpha_t = \prod_{s \le t} \alpha_s$
# ($\bar\alpha_0 = 1$). The code counts from 0: index `t` stands for the paper's $t + 1$, so
# `alpha_bars[t]` is $\bar\alpha_{t+1}$ and `alpha_bars_prev[t]` is $\bar\alpha_t$ (1 at index 0).
# Printed values of `t` are code indices. Data has shape (B, ...); every formula acts on each
# coordinate alone, so one-dimensional pictures tell the whole story.

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
from ddpm_teach.data import EIGHT_GAUSSIANS_CENTERS, EIGHT_GAUSSIANS_STD
from ddpm_teach.likelihood import gaussian_kl
from ddpm_teach.metrics import toy_report
from ddpm_teach.sampling import ddpm_sample, ddpm_step
from ddpm_teach.schedule import NoiseSchedule
from ddpm_teach.training import TrainConfig, Trainer, make_schedule

paper = NoiseSchedule.linear()  # the paper's schedule (T = 1000), for the derivations
print(paper)

# %% [markdown]
# ## 1. Turning the chain around
#
# The forward process is a Markov chain of small Gaussian steps (eq. 2):
#
# $$q(x_{1:T} \mid x_0) = \prod_{t=1}^{T} q(x_t \mid x_{t-1}), \qquad
#   q(x_t \mid x_{t-1}) = \mathcal N\big(x_t;\ \sqrt{\alpha_t}\, x_{t-1},\ \beta_t I\big).$$
#
# After $T$ steps $x_T$ is, to an excellent approximation, $\mathcal N(0, I)$, which we can sample.
# If we could also sample each step backwards, $q(x_{t-1} \mid x_t)$, we could start from fresh
# noise and walk back to data. Bayes' rule says what that backward step is:
#
# $$q(x_{t-1} \mid x_t) = \frac{q(x_t \mid x_{t-1})\; q_{t-1}(x_{t-1})}{q_t(x_t)},$$
#
# where $q_{t-1}$ is the distribution of $x_{t-1}$: the data distribution after $t-1$ steps of
# noise. The first factor is a known Gaussian. The second is the problem: it contains the data
# distribution, which is exactly what we do not know. Two facts get us out:
#
# 1. **Given one data point $x_0$, the backward step is an exact Gaussian** with a formula
#    (section 2). It will serve as the training target.
# 2. **For small $\beta_t$ the true backward step is itself nearly Gaussian** (section 3), so a
#    Gaussian with a learned mean can imitate it (section 4).

# %% [markdown]
# ## 2. The posterior $q(x_{t-1} \mid x_t, x_0)$ (eqs. 6-7)
#
# Condition everything on $x_0$. Because the forward chain is Markov, knowing $x_0$ as well as
# $x_{t-1}$ tells us nothing more about $x_t$: $q(x_t \mid x_{t-1}, x_0) = q(x_t \mid x_{t-1})$.
# Bayes' rule with $x_0$ kept in every condition gives
#
# $$q(x_{t-1} \mid x_t, x_0) = \frac{q(x_t \mid x_{t-1})\; q(x_{t-1} \mid x_0)}{q(x_t \mid x_0)}.$$
#
# Now every factor is known. Both factors on top are Gaussian **as functions of $x_{t-1}$**:
#
# $$q(x_t \mid x_{t-1}) \propto \exp\Big(-\frac{(x_t - \sqrt{\alpha_t}\, x_{t-1})^2}{2\beta_t}\Big),
#   \qquad
#   q(x_{t-1} \mid x_0) \propto \exp\Big(-\frac{(x_{t-1} - \sqrt{\bar\alpha_{t-1}}\, x_0)^2}
#   {2(1-\bar\alpha_{t-1})}\Big),$$
#
# the second being eq. 4 one step earlier. The denominator does not depend on $x_{t-1}$, so it only
# normalises. Multiply, take the log and collect the powers of $x_{t-1}$ (per coordinate; all
# constants go into $C$):
#
# $$\log q(x_{t-1} \mid x_t, x_0) = -\frac12\Big[\underbrace{\Big(\frac{\alpha_t}{\beta_t}
#   + \frac{1}{1-\bar\alpha_{t-1}}\Big)}_{a}\, x_{t-1}^2
#   - 2\underbrace{\Big(\frac{\sqrt{\alpha_t}}{\beta_t}\, x_t
#   + \frac{\sqrt{\bar\alpha_{t-1}}}{1-\bar\alpha_{t-1}}\, x_0\Big)}_{b}\, x_{t-1}\Big] + C.$$
#
# **Complete the square**: $a x^2 - 2 b x = a\,(x - b/a)^2 - b^2/a$. A log-density that is
# $-\frac{a}{2}(x - b/a)^2$ plus a constant is the Gaussian $\mathcal N(b/a,\ 1/a)$. So the posterior
# is Gaussian (eq. 6), and it remains to simplify $1/a$ and $b/a$. With
# $\alpha_t \bar\alpha_{t-1} = \bar\alpha_t$ and $\alpha_t + \beta_t = 1$,
#
# $$a = \frac{\alpha_t (1 - \bar\alpha_{t-1}) + \beta_t}{\beta_t (1 - \bar\alpha_{t-1})}
#     = \frac{1 - \bar\alpha_t}{\beta_t (1 - \bar\alpha_{t-1})},$$
#
# which gives eq. 7 ($\tilde\mu_t = b/a$ is $b$ times this $\tilde\beta_t$, multiplied out):
#
# $$\boxed{\;\tilde\beta_t = \frac{1}{a} = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\,\beta_t,
#   \qquad
#   \tilde\mu_t(x_t, x_0) = \frac{b}{a}
#   = \frac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1-\bar\alpha_t}\, x_0
#   + \frac{\sqrt{\alpha_t}\,(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}\, x_t\;}$$
#
# In the package: `NoiseSchedule.q_posterior(x0, x_t, t)` returns $(\tilde\mu_t, \tilde\beta_t)$;
# the two coefficients are the tables `posterior_coef_x0` and `posterior_coef_xt`, and
# $\tilde\beta_t$ is `posterior_variance`. Two things to notice:
#
# - $\tilde\beta_t < \beta_t$: knowing where the chain started makes the step back more certain than
#   the step forward was random.
# - At the paper's $t = 1$ (code index 0), $\bar\alpha_0 = 1$ gives $\tilde\beta_1 = 0$ and
#   $\tilde\mu_1 = x_0$: if you know $x_0$, the step back to $x_0$ has no uncertainty left.
#
# **Check it by simulation.** Fix $x_0 = 1.5$ and draw a million pairs $(x_{t-1}, x_t)$ from the
# forward chain: $x_{t-1}$ from `q_sample`, then one more step with `q_step`. The pair is jointly
# Gaussian, so the average of $x_{t-1}$ given $x_t$ is a straight line in $x_t$; a least-squares fit
# of $x_{t-1}$ on $x_t$ must recover the coefficients of eq. 7, and the scatter around the line its
# variance $\tilde\beta_t$.

# %%
x0_value, t = 1.5, 10  # code index 10: x_t is the paper's x_11, early in the chain
g = torch.Generator().manual_seed(0)
x0 = torch.full((1_000_000, 1), x0_value, dtype=torch.float64)
x_prev = paper.q_sample(x0, t - 1, generator=g)  # x_{t-1} ~ q(x_{t-1} | x_0)   (eq. 4)
x_t = paper.q_step(x_prev, t, generator=g)  # x_t ~ q(x_t | x_{t-1})          (eq. 2)

design = torch.cat([x_t, torch.ones_like(x_t)], dim=1)  # fit x_prev = slope * x_t + intercept
slope, intercept = torch.linalg.lstsq(design, x_prev).solution[:, 0].tolist()
residual_var = (x_prev - design @ torch.tensor([[slope], [intercept]], dtype=torch.float64)).var()

print(f"{'':24}{'simulation':>12}{'eq. 7':>12}")
print(f"{'coefficient of x_t':24}{slope:12.3f}{paper.posterior_coef_xt[t]:12.3f}")
print(f"{'coefficient of x_0':24}{intercept / x0_value:12.3f}{paper.posterior_coef_x0[t]:12.3f}")
print(f"{'variance beta_tilde_t':24}{residual_var:12.3e}{paper.posterior_variance[t]:12.3e}")
print(f"(the forward step's variance: beta_t = {paper.betas[t]:.3e})")

# %% [markdown]
# The left picture shows the pairs and eq. 7's line through them: the step back is mostly $x_t$
# (coefficient 0.86), pulled towards $x_0$ (0.14), with a spread $\tilde\beta_t$ a little below the
# forward step's $\beta_t$. The right picture shows the coefficients over the whole schedule. The
# weight of $x_0$ is 1 at the first step and fades fast; in the middle of the chain the posterior
# mean is almost $x_t$ itself. And $\tilde\beta_t / \beta_t$ climbs from 0 to nearly 1 within the
# first few dozen steps, which is why the two variance choices of section 4 differ only there.

# %%
fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4), dpi=80)
show = slice(0, 1000)
ax.scatter(x_t[show, 0], x_prev[show, 0], s=3, alpha=0.3, label="forward-chain pairs")
line_x = torch.linspace(float(x_t[show].min()), float(x_t[show].max()), 100, dtype=torch.float64)[:, None]
mean, var = paper.q_posterior(torch.full_like(line_x, x0_value), line_x, t)
ax.plot(line_x[:, 0], mean[:, 0], "k", label=r"$\tilde\mu_t(x_t, x_0)$ (eq. 7)")
for sign in (-2, 2):
    ax.plot(line_x[:, 0], mean[:, 0] + sign * var.sqrt()[:, 0], "k--", lw=0.8)
ax.plot([], [], "k--", lw=0.8, label=r"$\pm 2\sqrt{\tilde\beta_t}$")
ax.set(xlabel="$x_t$", ylabel="$x_{t-1}$", title=f"pairs from the forward chain, t = {t}, $x_0$ = {x0_value}")
ax.legend(loc="upper left")

steps = torch.arange(1, len(paper) + 1)  # the paper's t
ax2.semilogx(steps, paper.posterior_coef_x0, label=r"coefficient of $x_0$")
ax2.semilogx(steps, paper.posterior_coef_xt, label=r"coefficient of $x_t$")
ratio_label = r"$\tilde\beta_t / \beta_t$ (the $x_t$ coefficient over $\sqrt{\alpha_t}$)"
ax2.semilogx(steps, paper.posterior_variance / paper.betas, "k:", label=ratio_label)
ax2.set(xlabel="paper's t (log scale)", title="eq. 7 over the linear schedule, T = 1000")
ax2.grid(alpha=0.3)
ax2.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 3. Why the true reverse step is nearly Gaussian when $\beta_t$ is small
#
# Without $x_0$ the reverse step is $q(x_{t-1} \mid x_t) \propto q(x_t \mid x_{t-1})\,
# q_{t-1}(x_{t-1})$. As a function of $x_{t-1}$ the first factor is a narrow bump: a Gaussian
# centred at $x_t / \sqrt{\alpha_t}$ with standard deviation $\sqrt{\beta_t / \alpha_t}$. If
# $q_{t-1}$ changes little across that bump, its logarithm is nearly a straight line there:
#
# $$\log q_{t-1}(x_{t-1}) \approx \log q_{t-1}(m) + (x_{t-1} - m)\, \nabla \log q_{t-1}(m),
#   \qquad m = x_t / \sqrt{\alpha_t}.$$
#
# A Gaussian times the exponential of a straight line is again a Gaussian, with the same variance and
# a shifted mean:
#
# $$q(x_{t-1} \mid x_t) \approx \mathcal N\Big(x_{t-1};\ \frac{x_t}{\sqrt{\alpha_t}}
#   + \frac{\beta_t}{\alpha_t} \nabla \log q_{t-1}\Big(\frac{x_t}{\sqrt{\alpha_t}}\Big),\
#   \frac{\beta_t}{\alpha_t}\Big).$$
#
# (The gradient of the log-density, the *score*, is where chapter 07 picks up.) When $\beta_t$ is
# large the bump is wide, the straight-line approximation fails, and the reverse step takes on the
# shape of $q_{t-1}$ itself, two modes and all. That the reverse of a diffusion with small steps has
# the same Gaussian form goes back to Feller (1949) and underlies Sohl-Dickstein et al. (2015),
# whom the DDPM paper follows (section 2).
#
# **See it.** Take a bimodal one-dimensional $q_{t-1}$ (modes at $\pm 1$, standard deviation 0.3,
# a `GaussianMixture`), one forward step of variance $\beta$, and compute the exact reverse density
# on a grid: Bayes' rule numerator, normalised numerically. Then compare it with the Gaussian of the
# same mean and variance (the best Gaussian fit in the sense of $\mathrm{KL}(q \,\|\, \mathcal N)$).

# %%
def reverse_step_density(prior, x_t, beta, grid):
    """The exact reverse step q(x_{t-1} | x_t) of one forward step of variance beta, on a grid.

    prior: a 1-D GaussianMixture, the distribution q_{t-1} of x_{t-1}; x_t: a float;
    grid: (G,) float64, evenly spaced and wide enough to hold the density.
    Bayes: q(x_{t-1} | x_t) ∝ N(x_t; sqrt(1 - beta) x_{t-1}, beta) q_{t-1}(x_{t-1}).
    Returns the density on the grid, (G,), normalised so that sum * spacing = 1.
    """
    step = torch.distributions.Normal(math.sqrt(1 - beta) * grid, math.sqrt(beta))
    log_p = step.log_prob(torch.tensor(x_t, dtype=grid.dtype)) + prior.log_prob(grid[:, None])
    p = (log_p - log_p.max()).exp()  # subtract the max so that nothing underflows to 0
    return p / (p.sum() * (grid[1] - grid[0]))


def gaussian_fit(p, grid):
    """The Gaussian with the mean and variance of the density p on the grid: (its density, mean, var)."""
    dx = grid[1] - grid[0]
    mean = (p * grid).sum() * dx
    var = (p * (grid - mean) ** 2).sum() * dx
    return torch.distributions.Normal(mean, var.sqrt()).log_prob(grid).exp(), mean, var


def total_variation(p, q, grid):
    """Half the L1 distance between two densities on the grid: 0 = identical, 1 = disjoint."""
    return 0.5 * (p - q).abs().sum().item() * (grid[1] - grid[0]).item()


bimodal = GaussianMixture([0.5, 0.5], [[-1.0], [1.0]], 0.3)
grid = torch.linspace(-4, 4, 4001, dtype=torch.float64)

# %% [markdown]
# The three panels use the same $q_{t-1}$ (grey) and the same $x_t = 0.2$, just between the modes,
# and a growing $\beta$. At $\beta = 0.001$ the reverse step is a narrow Gaussian near $x_t$; at
# $\beta = 0.05$ it is already skewed towards the nearer mode; at $\beta = 0.5$ it is bimodal, and no
# Gaussian can fit it.

# %%
x_t_value = 0.2
fig, axes = plt.subplots(1, 3, figsize=(12, 3.3), dpi=80)
for ax, beta in zip(axes, [0.001, 0.05, 0.5], strict=True):
    exact = reverse_step_density(bimodal, x_t_value, beta, grid)
    fit, mean, var = gaussian_fit(exact, grid)
    width = max(4 * var.sqrt().item(), 0.3)
    ax.fill_between(grid, bimodal.log_prob(grid[:, None]).exp(), color="0.85", label="$q_{t-1}$")
    ax.plot(grid, exact, "C0", lw=2, label="exact $q(x_{t-1} \\mid x_t)$")
    ax.plot(grid, fit, "C1--", lw=1.5, label="Gaussian fit")
    ax.axvline(x_t_value, color="k", lw=0.8, ls=":")
    ax.set(xlim=(mean.item() - width, mean.item() + width), xlabel="$x_{t-1}$")
    ax.set_title(f"beta = {beta}: TV = {total_variation(exact, fit, grid):.3f}")
axes[0].legend(fontsize=8, loc="upper left")
plt.tight_layout()
plt.show()

# %% [markdown]
# The same comparison over a range of $\beta$, measured by the total-variation distance between the
# exact reverse step and its Gaussian fit, for three positions of $x_t$ (between the modes, on the
# slope, on a mode). The shaded band is the range of $\beta_t$ in the paper's linear schedule,
# $10^{-4}$ to $0.02$. The distance falls steeply as $\beta$ shrinks, faster than $\beta$ itself:
# small steps make Gaussian reverse steps. How small is small depends on how rough $q_{t-1}$ is at the scale
# $\sqrt{\beta_t}$; at $t = 1$, where $q_0$ is the data itself, $\sqrt{\beta_1} = 0.01$ is about one
# grey level of an 8-bit image scaled to $[-1, 1]$ (the levels are $2/255 \approx 0.008$ apart).

# %%
betas_to_try = torch.logspace(-4, 0, 41).clamp(max=0.99).tolist()
fig, ax = plt.subplots(figsize=(6, 3.6))
table = {}
for x_t_value in (0.0, 0.5, 1.0):
    tv = []
    for beta in betas_to_try:
        exact = reverse_step_density(bimodal, x_t_value, beta, grid)
        tv.append(total_variation(exact, gaussian_fit(exact, grid)[0], grid))
    table[x_t_value] = tv
    ax.loglog(betas_to_try, tv, label=f"$x_t$ = {x_t_value}")
ax.axvspan(1e-4, 0.02, color="0.9", label="linear schedule's betas")
ax.set(xlabel="beta", ylabel="TV(exact, Gaussian fit)", ylim=(1e-6, 1))
ax.grid(alpha=0.3)
ax.legend()
plt.tight_layout()
plt.show()
for beta in (1e-4, 1e-2, 1e-1, 0.99):
    i = min(range(len(betas_to_try)), key=lambda k: abs(betas_to_try[k] - beta))
    cells = "   ".join(f"x_t = {x}: {table[x][i]:.1e}" for x in table)
    print(f"beta = {betas_to_try[i]:<7.4g} TV  {cells}")

# %% [markdown]
# ## 4. The model $p_\theta$, the Markov property, and the joint
#
# Section 3 licenses the model: a chain of Gaussian steps that runs backwards (eq. 1),
#
# $$p_\theta(x_{t-1} \mid x_t) = \mathcal N\big(x_{t-1};\ \mu_\theta(x_t, t),\ \sigma_t^2 I\big),
#   \qquad
#   p_\theta(x_{0:T}) = p(x_T) \prod_{t=1}^{T} p_\theta(x_{t-1} \mid x_t), \qquad
#   p(x_T) = \mathcal N(0, I).$$
#
# - **The Markov property.** Each step depends on the past only through the current state $x_t$
#   (and the step number $t$). The reverse chain keeps no memory of $x_T, \dots, x_{t+1}$; every
#   intermediate state is a complete, noisy version of the whole sample.
# - **The joint** is a product of simple factors, so sampling it is *ancestral sampling*: draw
#   $x_T$, then $x_{T-1}$ given $x_T$, and so on down to $x_0$ (Algorithm 2, `ddpm_sample`).
#   Its marginal $p_\theta(x_0) = \int p_\theta(x_{0:T})\, dx_{1:T}$ is the model's distribution of
#   data; we never need to compute it to sample.
# - **The variance** $\sigma_t^2$ is not learned in DDPM. Section 3.2 of the paper tries
#   $\sigma_t^2 = \beta_t$ and $\sigma_t^2 = \tilde\beta_t$; they are optimal when $x_0$ is
#   $\mathcal N(0, I)$ and when $x_0$ is a single point, respectively, and gave similar samples.
#   `ddpm_sample(..., variance="large" | "small")` picks one; the default is $\tilde\beta_t$.
# - **The mean** is where the network comes in. Section 2 gives a natural choice: the posterior mean
#   with a *prediction* of $x_0$ plugged in, $\mu_\theta(x_t, t) = \tilde\mu_t(x_t, \hat x_0)$. The
#   network predicts the noise $\epsilon_\theta(x_t, t)$, and eq. 4 turns it into
#   $\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\epsilon_\theta) / \sqrt{\bar\alpha_t}$
#   (`NoiseSchedule.predict_x0_from_eps`). Substituting into eq. 7 and simplifying with the same
#   identity as before gives eq. 11:
#
# $$\mu_\theta(x_t, t) = \frac{1}{\sqrt{\alpha_t}}\Big(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\,
#   \epsilon_\theta(x_t, t)\Big), \qquad
#   x_{t-1} = \mu_\theta(x_t, t) + \sigma_t z, \quad z \sim \mathcal N(0, I),$$
#
# with no noise on the last step. That is one step of Algorithm 2, `sampling.ddpm_step`, which
# computes the mean the first way (posterior mean of $\hat x_0$). The two ways agree:

# %%
g = torch.Generator().manual_seed(1)
x_t = torch.randn(6, 2, generator=g, dtype=torch.float64)
eps = torch.randn(6, 2, generator=g, dtype=torch.float64)  # stands in for eps_theta(x_t, t)
t = torch.tensor([1, 10, 100, 400, 700, 999])
a, ab, b = (paper.at(v, t, x_t) for v in (paper.alphas, paper.alpha_bars, paper.betas))
eq_11 = (x_t - b / (1 - ab).sqrt() * eps) / a.sqrt()
via_posterior = ddpm_step(paper, eps, x_t, t, noise=torch.zeros_like(x_t))  # z = 0: the mean
print("eq. 11 equals the posterior mean of x0_hat:", torch.allclose(eq_11, via_posterior, atol=1e-12))

# %% [markdown]
# ## 5. Noise becomes data: the exact denoiser
#
# Which $\epsilon_\theta$ is best? Section 6 shows that training minimises
# $\mathbb E\,\|\epsilon - \epsilon_\theta(x_t, t)\|^2$, whose minimiser is the conditional mean
# $\mathbb E[\epsilon \mid x_t]$. For data drawn from a mixture of Gaussians that conditional mean has
# a closed form (`GaussianMixture.eps`), so `GaussianMixture(...).denoiser(schedule)` is the network
# a perfect training run would produce. With it we can run the reverse chain and see what the chain
# itself does, free of any training error.
#
# From here on the schedule is the run budget's: the paper's linear schedule with $T = 1000$ under
# the `cpu` and `gpu` budgets, and a 100-step version of it under `smoke`.
#
# **One dimension.** Data: a mixture with 30 % of its mass near $-1.5$ and 70 % near $+1$. We run
# `ddpm_sample` with `return_trajectory=True`, which keeps every state $x_T, \dots, x_0$.

# %% tags=["nbval-ignore-output"]
schedule = make_schedule(BUDGET.schedule, BUDGET.num_steps)
T = len(schedule)
mixture_1d = GaussianMixture([0.3, 0.7], [[-1.5], [1.0]], [0.25, 0.4])
n_1d = 1000 if BUDGET.name == "smoke" else 4000
traj_1d = ddpm_sample(
    mixture_1d.denoiser(schedule),
    schedule,
    (n_1d, 1),
    torch.Generator().manual_seed(2),
    return_trajectory=True,
)
print(f"T = {T}; states kept: {tuple(traj_1d.xs.shape)} (T + 1 states, {n_1d} chains, 1 dimension)")

# %% [markdown]
# Below, left: thirty of the chains, drawn over the exact density $q_t(x)$ of the forward process
# (`GaussianMixture.log_prob_t`), with generation running left to right, from $t = T$ to the data.
# The chains wander as noise until late in the process, then commit to a mode. Right: histograms of
# all chains at five moments against the exact marginals $q_t$. The reverse chain, run with the
# exact denoiser, has the forward process's marginal at every step; that is what "reversing the
# process" means.

# %%
xs_grid = torch.linspace(-3.5, 3.5, 281, dtype=torch.float64)
steps_all = torch.arange(T)
density = mixture_1d.log_prob_t(
    xs_grid.repeat(T)[:, None], schedule, steps_all.repeat_interleave(len(xs_grid))
).exp().reshape(T, len(xs_grid))

fig = plt.figure(figsize=(12, 4.2), dpi=80)
ax = fig.add_subplot(1, 2, 1)
ax.contourf(steps_all, xs_grid, density.T, levels=12, cmap="Greys")
path_t = torch.tensor(traj_1d.timesteps).clamp(min=0)  # the final x_0 drawn at t = 0
every = max(1, T // 250)  # every 4th state when T = 1000: the same picture, a smaller file
path_t, paths = path_t[::every], traj_1d.xs[::every, :30, 0]
for k in range(paths.shape[1]):  # coloured by the mode each chain ends in
    ax.plot(path_t, paths[:, k], lw=0.7, color="C1" if traj_1d.sample[k, 0] < 0 else "C0")
ax.invert_xaxis()
ax.set(xlabel="t (generation runs from left to right)", ylabel="x",
       title="30 reverse chains over the exact density $q_t(x)$")
picks = [0, T // 2, (3 * T) // 4, (9 * T) // 10, T]  # positions in the trajectory
for k, pos in enumerate(picks):
    ax_h = fig.add_subplot(len(picks), 2, 2 * k + 2)
    step = traj_1d.timesteps[pos]
    ax_h.hist(traj_1d.xs[pos, :, 0], bins=60, range=(-3.5, 3.5), density=True, color="C0", alpha=0.6)
    exact = mixture_1d.log_prob(xs_grid[:, None]) if step < 0 else mixture_1d.log_prob_t(
        xs_grid[:, None], schedule, step
    )
    ax_h.plot(xs_grid, exact.exp(), "k", lw=1)
    ax_h.set_yticks([])
    ax_h.text(0.01, 0.6, "data" if step < 0 else f"t = {step}", transform=ax_h.transAxes)
    if k < len(picks) - 1:
        ax_h.set_xticks([])
fig.tight_layout()
plt.show()

# %% [markdown]
# In numbers: split the samples at 0 and compare the share and the spread of each side with the
# same statistics of a fresh draw of the same size from the mixture itself. (The split at 0 puts a
# few points of the wide right mode on the left, so the left side's spread is a little above the
# component's 0.25 even for real data; comparing like with like takes care of that.) Under the
# `smoke` budget's 100 large steps, expect the chain's numbers to drift, by section 3.

# %% tags=["nbval-ignore-output"]
def split_at_zero(x):
    """Share right of 0, then mean and std of each side, for 1-D samples (n, 1)."""
    left, right = x[x[:, 0] < 0, 0], x[x[:, 0] >= 0, 0]
    return [len(right) / len(x), left.mean().item(), left.std().item(), right.mean().item(), right.std().item()]


names = ["share right of 0", "left mean", "left std", "right mean", "right std"]
chain_stats = split_at_zero(traj_1d.sample.double())
data_stats = split_at_zero(mixture_1d.sample(n_1d, torch.Generator().manual_seed(7)))
print(f"{'':18}{'reverse chain':>14}{'fresh data':>12}")
for name, c, d in zip(names, chain_stats, data_stats, strict=True):
    print(f"{name:18}{c:14.3f}{d:12.3f}")
assert abs(chain_stats[0] - 0.7) < 0.06, "the exact reverse chain lost the mode weights"

# %% [markdown]
# **Two dimensions.** The eight Gaussians of `ddpm_teach.data` (`toy_2d("eight-gaussians")`) are a
# mixture too: eight equal weights, centres on a circle of radius 2, standard deviation 0.1. The
# slider below plays the reverse chain. The left panel is the state $x_t$; the right panel is what
# the denoiser believes the final sample will be, its prediction
# $\hat x_0 = \mathbb E[x_0 \mid x_t]$ computed from $\epsilon$ by `predict_x0_from_eps`. Early on
# every prediction is the average of all the data, the centre of the circle; the predictions split
# towards the modes long before the states get there.

# %%
eight = GaussianMixture(torch.ones(8), EIGHT_GAUSSIANS_CENTERS, EIGHT_GAUSSIANS_STD)
exact_model = eight.denoiser(schedule)
n_2d = BUDGET.toy_num_samples
stride = max(1, T // 25)  # 26 frames whatever T
traj_exact = ddpm_sample(
    exact_model, schedule, (n_2d, 2), torch.Generator().manual_seed(3),
    return_trajectory=True, trajectory_stride=stride,
)


@torch.no_grad()
def x0_predictions(model, schedule, traj):
    """x0_hat for every state of a trajectory, (F, B, ...): the model's eps turned into x_0 (eq. 4)."""
    out = []
    for x, step in zip(traj.xs, traj.timesteps, strict=True):
        if step < 0:  # the final sample is x_0 itself
            out.append(x)
            continue
        t_batch = torch.full((len(x),), step)
        out.append(schedule.predict_x0_from_eps(x, t_batch, model(x, t_batch)))
    return torch.stack(out)


frame_ts = traj_exact.timesteps  # T-1, ..., 0, then -1: the sample x_0 the chain ends on
shown = slice(0, 600)  # the sliders draw the first 600 chains, to keep the notebook small
viz.frames_slider(
    {
        "state x_t": traj_exact.xs[:, shown],
        "prediction x0_hat": x0_predictions(exact_model, schedule, traj_exact)[:, shown],
    },
    frame_ts, schedule, lim=3.5, title="The reverse chain with the exact denoiser: press Play",
)

# %% [markdown]
# How close are the samples to the data? `metrics.toy_report` counts the modes reached and the share
# of samples within three standard deviations of a centre, and computes two distances to a fresh
# reference set of data (MMD$^2$ and the sliced Wasserstein distance SW2). Each number is printed
# beside its *floor*: the same number for a second, independent draw of real data of the same size.
# A sampler that sits at the floor is as good as these measures can tell.

# %% tags=["nbval-ignore-output"]
report_exact = toy_report(traj_exact.sample)
print(report_exact)
assert report_exact.modes_hit == 8, "the exact denoiser should reach every mode"

# %% [markdown]
# ## 6. From the ELBO to $L_\text{simple}$
#
# To train $\epsilon_\theta$ we would like to maximise the likelihood $p_\theta(x_0)$. It is an
# integral over all paths $x_{1:T}$, so instead we minimise an upper bound on its negative log, the
# variational bound (eq. 3), which uses the forward process as the distribution of paths:
#
# $$\mathbb E\big[-\log p_\theta(x_0)\big] \le
#   \mathbb E_q\Big[-\log \frac{p_\theta(x_{0:T})}{q(x_{1:T} \mid x_0)}\Big] =: L .$$
#
# Expand both joints into their factors (eqs. 1 and 2): $L$ is the expectation of
# $-\log p(x_T) - \sum_{t \ge 1} \log \big(p_\theta(x_{t-1} \mid x_t) / q(x_t \mid x_{t-1})\big)$.
# Write each forward factor with $t > 1$ by Bayes' rule and the Markov property,
# $q(x_t \mid x_{t-1}) = q(x_{t-1} \mid x_t, x_0)\, q(x_t \mid x_0) / q(x_{t-1} \mid x_0)$; the ratios
# $q(x_t \mid x_0)/q(x_{t-1} \mid x_0)$ telescope to $q(x_T \mid x_0)/q(x_1 \mid x_0)$, and that
# $q(x_1 \mid x_0)$ cancels the $t = 1$ factor. Pair each remaining model factor with the $q$ of the
# same variable; the expectation of each log ratio $\log(q/p)$ is a KL divergence, and what remains
# is eq. 5:
#
# $$L = \mathbb E_q\Big[\underbrace{D_\mathrm{KL}\big(q(x_T \mid x_0)\,\|\,p(x_T)\big)}_{L_T}
#   + \sum_{t>1} \underbrace{D_\mathrm{KL}\big(q(x_{t-1} \mid x_t, x_0)\,\|\,
#     p_\theta(x_{t-1} \mid x_t)\big)}_{L_{t-1}}
#   \underbrace{- \log p_\theta(x_0 \mid x_1)}_{L_0}\Big].$$
#
# Each $L_{t-1}$ compares the model's reverse step with the posterior of section 2: the exact
# answer for this $x_0$ is the training target. Both are Gaussians, so every term is closed form
# (`likelihood.gaussian_kl`; `likelihood.vlb` adds them all up). Now simplify, term by term.
#
# - **$L_T$ has no parameters**: $q(x_T \mid x_0)$ is fixed by the schedule and $p(x_T)$ is
#   $\mathcal N(0, I)$. It is a constant, and a small one (printed below).
# - **$L_{t-1}$.** Two Gaussians, variances $\tilde\beta_t$ and $\sigma_t^2$. Their KL is the squared
#   distance between the means over twice the second variance, plus terms of the variances alone:
#   $D_\mathrm{KL} = \frac{1}{2\sigma_t^2}\|\tilde\mu_t(x_t, x_0) - \mu_\theta(x_t, t)\|^2 + C$
#   (eq. 8), with $C$ free of $\theta$ ($C = 0$ when $\sigma_t^2 = \tilde\beta_t$). Write
#   $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$ and substitute
#   $x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\epsilon)/\sqrt{\bar\alpha_t}$ into eq. 7: the target mean
#   becomes $\tilde\mu_t = \frac{1}{\sqrt{\alpha_t}}\big(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\,
#   \epsilon\big)$ (eq. 10), the same form as $\mu_\theta$ (eq. 11) with the true noise in place of
#   the predicted one. Their difference is a multiple of $\epsilon - \epsilon_\theta$,
#   $\tilde\mu_t - \mu_\theta = \frac{\beta_t}{\sqrt{\alpha_t}\sqrt{1-\bar\alpha_t}}\,
#   (\epsilon_\theta - \epsilon)$; square it and divide by $2\sigma_t^2$:
#
# $$L_{t-1} - C = \mathbb E_{x_0, \epsilon}\Big[\underbrace{\frac{\beta_t^2}
#   {2\sigma_t^2\,\alpha_t\,(1-\bar\alpha_t)}}_{\lambda_t}\,
#   \big\|\epsilon - \epsilon_\theta(\sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon,\ t)
#   \big\|^2\Big] \qquad \text{(eq. 12)}.$$
#
# - **$L_0$**, the decoder, is in the paper a Gaussian integrated over each 8-bit bin (eq. 13).
#   Approximating that integral by the density times the bin width turns it, up to constants, into
#   the $t = 1$ case of the same squared error.
#
# Check eq. 12 before going on: the KL of the two Gaussians, computed directly from eq. 7 and
# `gaussian_kl`, against $\lambda_t \|\epsilon - \epsilon_\theta\|^2$, with $\sigma_t^2 = \tilde\beta_t$
# and an arbitrary stand-in for $\epsilon_\theta$:

# %%
g = torch.Generator().manual_seed(4)
t = torch.tensor([1, 5, 50, 250, 500, 999])  # code indices >= 1: the paper's t > 1
x0 = torch.randn(6, 2, generator=g, dtype=torch.float64)
eps = torch.randn(6, 2, generator=g, dtype=torch.float64)
eps_theta = eps + 0.3 * torch.randn(6, 2, generator=g, dtype=torch.float64)  # an imperfect network
x_t = paper.q_sample(x0, t, eps)

true_mean, true_var = paper.q_posterior(x0, x_t, t)  # q(x_{t-1} | x_t, x_0)
x0_hat = paper.predict_x0_from_eps(x_t, t, eps_theta)
model_mean, _ = paper.q_posterior(x0_hat, x_t, t)  # mu_theta, eq. 11
kl = gaussian_kl(true_mean, true_var, model_mean, true_var).sum(dim=1)  # sigma_t^2 = beta_tilde_t

a, ab, b = (paper.at(v, t, x_t) for v in (paper.alphas, paper.alpha_bars, paper.betas))
lam = b**2 / (2 * true_var * a * (1 - ab))
eq_12 = (lam * (eps - eps_theta) ** 2).sum(dim=1)
print("KL equals lambda_t * |eps - eps_theta|^2 at every t:", torch.allclose(kl, eq_12, rtol=1e-9))

mean_T, var_T = paper.q_mean_variance(torch.tensor([[1.0]], dtype=torch.float64), len(paper) - 1)
L_T = gaussian_kl(mean_T, var_T, torch.zeros(1, 1), torch.ones(1, 1)).item()
print(f"L_T for a data value x_0 = 1, in nats: {L_T:.1e}")

# %% [markdown]
# **$L_\text{simple}$ (eq. 14)** keeps the heart of eq. 12 and drops the rest:
#
# $$L_\text{simple} = \mathbb E_{t \sim \mathcal U\{1..T\},\, x_0,\, \epsilon}
#   \Big[\big\|\epsilon - \epsilon_\theta(\sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,
#   \epsilon,\ t)\big\|^2\Big].$$
#
# What is dropped, and why:
#
# 1. **$L_T$** and the constants $C$: they do not depend on $\theta$, so the gradient is unchanged.
# 2. **The weights $\lambda_t$.** Every $t$ counts the same in $L_\text{simple}$. The plot shows how
#    uneven the bound's weights are: relative to $L_\text{simple}$, the bound puts tens of times more
#    weight on the first steps, where the noise is tiny and denoising is easy, and about half as much
#    on the middle of the chain. Dropping $\lambda_t$
#    moves the network's effort towards larger $t$, the harder denoising tasks that decide what the
#    samples look like (paper, section 3.4). The price: $L_\text{simple}$ is no longer a bound on
#    $-\log p_\theta(x_0)$, and the likelihood comes out slightly worse (Table 1, CIFAR-10: a much
#    better FID, 3.17, for a slightly worse bound, 3.75 against 3.70 bits/dim).
# 3. **The discrete decoder $L_0$** becomes the $t = 1$ term of the same squared error.
#
# Sampling $t$ uniformly is also what makes one training step cheap: one random $t$ per example,
# one call of `q_sample`, one forward pass (Algorithm 1), instead of a sum over all $T$ terms.

# %%
steps = torch.arange(1, len(paper))  # code indices 1..T-1: the paper's t = 2..T
a, ab, b = paper.alphas[steps], paper.alpha_bars[steps], paper.betas[steps]
fig, ax = plt.subplots(figsize=(7, 3.6))
for name, sigma2 in [("sigma_t^2 = beta_t", b), ("sigma_t^2 = beta_tilde_t", paper.posterior_variance[steps])]:
    weight = b**2 / (2 * sigma2 * a * (1 - ab))
    ax.loglog(steps + 1, weight / weight.mean(), label=f"ELBO weight lambda_t, {name}")
ax.axhline(1.0, color="k", lw=1.5, label="L_simple: every t weighs the same")
ax.set(xlabel="paper's t (log scale)", ylabel="weight / its average over t",
       title="What L_simple drops: the weights of eq. 12")
ax.grid(alpha=0.3)
ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 7. Three ways to say the same thing: $\epsilon$, $x_0$ and $v$
#
# Given $x_t$, eq. 4 is one linear equation linking $x_0$ and $\epsilon$. So a network may predict
# any one of
#
# - the noise $\epsilon$ (the paper's choice, eq. 11);
# - the clean data $x_0$;
# - the *velocity* $v = \sqrt{\bar\alpha_t}\,\epsilon - \sqrt{1-\bar\alpha_t}\,x_0$ (Salimans & Ho
#   2022), `NoiseSchedule.v_target`,
#
# and the other two follow: `predict_x0_from_eps`, `predict_eps_from_x0`, `predict_x0_from_v`,
# `predict_eps_from_v`. `NoiseSchedule.to_eps(output, x_t, t, prediction)` converts any output to
# $\epsilon$, which is how the samplers accept all three (`ddpm_sample(..., prediction="v")`), and
# `NoiseSchedule.target(x0, eps, t, prediction)` is the training target. The exact denoiser can
# speak all three; converted to $\epsilon$ they agree:

# %%
g = torch.Generator().manual_seed(5)
t = torch.randint(0, len(schedule), (8,), generator=g)
x_t = schedule.q_sample(eight.sample(8, generator=g), t, generator=g)
eps_direct = eight.denoiser(schedule, "eps")(x_t, t)
for prediction in ("x0", "v"):
    output = eight.denoiser(schedule, prediction)(x_t, t)
    same = torch.allclose(schedule.to_eps(output, x_t, t, prediction), eps_direct, atol=1e-9)
    print(f"{prediction!r}-network converted by to_eps equals the eps-network: {same}")

# %% [markdown]
# The three are the same model, but **not the same loss**. An error in one prediction is a fixed
# multiple of the error in another: from eq. 4,
# $\hat x_0 - x_0 = -\sqrt{(1-\bar\alpha_t)/\bar\alpha_t}\,(\hat\epsilon - \epsilon)$, and from
# $\epsilon = \sqrt{1-\bar\alpha_t}\,x_t + \sqrt{\bar\alpha_t}\,v$,
# $\hat\epsilon - \epsilon = \sqrt{\bar\alpha_t}\,(\hat v - v)$. So
#
# $$\|\hat x_0 - x_0\|^2 = \frac{1}{\mathrm{SNR}_t}\,\|\hat\epsilon - \epsilon\|^2, \qquad
#   \|\hat v - v\|^2 = \Big(1 + \frac{1}{\mathrm{SNR}_t}\Big)\|\hat\epsilon - \epsilon\|^2, \qquad
#   \mathrm{SNR}_t = \frac{\bar\alpha_t}{1-\bar\alpha_t}.$$
#
# A plain mean squared error on $x_0$ or on $v$ is therefore $L_\text{simple}$ with yet another
# weighting over $t$. Relative to the $\epsilon$ loss, the $x_0$ loss weighs step $t$ by
# $1/\mathrm{SNR}_t$: it stresses the noisy steps and all but ignores the nearly clean ones. The $v$
# loss weighs by $1 + 1/\mathrm{SNR}_t$, never less than the $\epsilon$ loss. Check the two ratios on
# an arbitrary wrong prediction:

# %%
eps = torch.randn(x_t.shape, generator=g, dtype=torch.float64)
x0 = schedule.predict_x0_from_eps(x_t, t, eps)  # the x_0 that this eps explains
eps_wrong = eps + 0.1 * torch.randn(x_t.shape, generator=g, dtype=torch.float64)
x0_wrong = schedule.predict_x0_from_eps(x_t, t, eps_wrong)
v, v_wrong = schedule.v_target(x0, eps, t), schedule.v_target(x0_wrong, eps_wrong, t)
err = {name: ((p - q) ** 2).sum(dim=1) for name, p, q in
       [("eps", eps_wrong, eps), ("x0", x0_wrong, x0), ("v", v_wrong, v)]}
snr = schedule.snr(t)
print("x0 error / eps error == 1 / SNR_t:      ", torch.allclose(err["x0"] / err["eps"], 1 / snr))
print("v error  / eps error == 1 + 1 / SNR_t:  ", torch.allclose(err["v"] / err["eps"], 1 + 1 / snr))

# %% [markdown]
# ## 8. A trained denoiser
#
# Now replace the exact $\mathbb E[\epsilon \mid x_t]$ by a network trained with $L_\text{simple}$:
# Algorithm 1 of the paper. The package's trainer (`training.Trainer`) runs it with the small
# time-conditioned MLP of `ddpm_teach.mlp` (`MLPDenoiser`). The heart of one training step is these
# lines of `Trainer._train_step` (slightly simplified):
#
# ```python
# x_t = self.schedule.q_sample(x0, t, noise)                   # eq. 4, t uniform, noise ~ N(0, I)
# target = self.schedule.target(x0, noise, t, cfg.prediction)  # eps for the paper's choice
# loss = F.mse_loss(out, target)                               # eq. 14, out = net(x_t, t)
# ```
#
# around which the trainer adds AdamW with a learning-rate warm-up, gradient clipping and an
# exponential moving average (EMA) of the weights, the network we sample. Chapter 05 looks at those;
# here the run budget picks every number (`TrainConfig.from_budget`), and the data are 100,000 points
# of the eight Gaussians, drawn by `toy_2d`.

# %% tags=["nbval-ignore-output"]
config = TrainConfig.from_budget("eight-gaussians", BUDGET, num_samples=0)
trainer = Trainer(config, progress=False)
trainer.train()
summary = trainer.summary()
print(f"{trainer.model.num_parameters():,} parameters, {summary['steps']} steps of batch "
      f"{config.batch_size} in {summary['train_time_s']:.1f} s; last loss {summary['final_loss']:.3f}")
assert trainer.schedule.betas.equal(schedule.betas)  # the exact denoiser's schedule

# %% [markdown]
# How low can the loss go? Not to zero: from a noisy $x_t$ the noise cannot be recovered exactly,
# and the best any network can do is $\mathbb E[\epsilon \mid x_t]$. The exact denoiser's
# $L_\text{simple}$ is therefore the floor of the training curve (estimated here on 50,000 draws of
# $(x_0, t, \epsilon)$).

# %% tags=["nbval-ignore-output"]
g = torch.Generator().manual_seed(6)
x0 = eight.sample(50_000, generator=g).float()
t = torch.randint(0, T, (len(x0),), generator=g)
eps = torch.randn(x0.shape, generator=g)
x_t = schedule.q_sample(x0, t, eps)
floor = ((exact_model(x_t, t) - eps) ** 2).mean().item()

steps_done, losses = zip(*trainer.history, strict=True)
losses = torch.tensor(losses)
window = max(1, len(losses) // 50)
smooth = losses.unfold(0, window, 1).mean(dim=1)
fig, ax = plt.subplots(figsize=(7, 3.4))
ax.plot(steps_done, losses, color="C0", alpha=0.25, lw=0.8, label="L_simple per batch")
ax.plot(steps_done[window - 1:], smooth, color="C0", label=f"running mean of {window}")
ax.axhline(floor, color="k", ls="--", label=f"exact denoiser: {floor:.3f}")
ax.set(xlabel="training step", ylabel="L_simple", ylim=(0, max(1.0, floor * 2)))
ax.grid(alpha=0.3)
ax.legend()
plt.tight_layout()
plt.show()
print(f"L_simple floor (exact denoiser): {floor:.3f}; trained, last 10% of steps: "
      f"{losses[-len(losses) // 10:].mean():.3f}")

# %% [markdown]
# Sample from the trained network (its EMA weights) with the same reverse chain, starting from the
# same $x_T$ and using the same noise $z$ at every step as the exact run above. The only difference
# between the two runs is the network. Move the slider and watch where they part.

# %%
mlp = trainer.ema_model()
traj_mlp = ddpm_sample(
    mlp, schedule, (n_2d, 2), torch.Generator().manual_seed(3),
    return_trajectory=True, trajectory_stride=stride,
)
assert torch.equal(traj_mlp.xs[0], traj_exact.xs[0])  # the same x_T
viz.frames_slider(
    {"exact denoiser": traj_exact.xs[:, shown], "trained MLP": traj_mlp.xs[:, shown]},
    frame_ts, schedule, lim=3.5, title="Same noise, two networks: press Play",
)

# %% [markdown]
# The same comparison in numbers, each beside the data's own floor:

# %% tags=["nbval-ignore-output"]
report_mlp = toy_report(traj_mlp.sample)
print("exact denoiser:", report_exact)
print("trained MLP:   ", report_mlp)
if BUDGET.name != "smoke":  # smoke trains for seconds; its numbers mean nothing
    assert report_mlp.modes_hit == 8 and report_mlp.share_near > 0.8, report_mlp

# %% [markdown]
# Where does the network fall short of the ideal? Below, its squared error against the exact
# $\mathbb E[\epsilon \mid x_t]$ at each $t$ (blue), and what that error means for the prediction of
# $x_0$ (orange; the factor $1/\mathrm{SNR}_t$ of section 7). The noise is hardest to predict at small
# $t$, where $x_t$ is almost a data point and the noise a tiny residue, hard to tell apart from the
# data's own spread; but there an error in $\epsilon$ barely moves $\hat x_0$. At large $t$ it is
# the other way round: the noise prediction is nearly perfect, yet even a small error in it is a
# large error in $\hat x_0$. That matters little, because a reverse step at large $t$ takes only a
# tiny share of $\hat x_0$ (the coefficient of $x_0$ in eq. 7, section 2). Which errors matter is
# exactly the question of how to weigh the steps in the loss (section 6).

# %% tags=["nbval-ignore-output"]
check_steps = torch.linspace(0, T - 1, 25).round().long()
eps_err, x0_err = [], []
with torch.no_grad():
    for step in check_steps.tolist():
        t_batch = torch.full((4000,), step)
        x_t = schedule.q_sample(x0[:4000], t_batch, eps[:4000])
        sq = ((mlp(x_t, t_batch) - exact_model(x_t, t_batch)) ** 2).sum(dim=1).mean().item()
        eps_err.append(sq)
        x0_err.append(sq / schedule.snr(step).item())
fig, ax = plt.subplots(figsize=(7, 3.4))
ax.semilogy(check_steps, eps_err, "o-", ms=3, label="|eps_MLP - E[eps | x_t]|^2")
ax.semilogy(check_steps, x0_err, "o-", ms=3, label="the same error in x0_hat: / SNR_t")
ax.set(xlabel="t", ylabel="mean squared error", title="The trained MLP against the exact denoiser")
ax.grid(alpha=0.3)
ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# <div style="border: 1px solid #d0a000; background: #fff8e0; padding: 0.6em 1em; border-radius: 4px">
#
# **Common misconceptions**
#
# - *"Generation runs the forward process backwards by inverting it."* The forward process $q$
#   only destroys information, and it needs $x_0$. Generation runs a different chain, the learned
#   reverse process $p_\theta$, from $t = T$ down to 1, starting from fresh noise. The forward
#   process is used only in training, to make the noisy inputs and their targets.
# - *"A diffusion model is an autoregressive model over time steps."* Not in the usual sense. An
#   autoregressive model writes one coordinate at a time and conditions on all earlier ones; the
#   reverse chain rewrites *every* coordinate at *every* step and conditions only on the current
#   state $x_t$ (the Markov property), with a number of steps unrelated to the data's dimension.
#   Section 4.3 of the paper makes the link precise: a diffusion whose forward steps mask one
#   coordinate at a time, with $T$ equal to the dimension, *is* an autoregressive model, so Gaussian
#   diffusion can be read as autoregression with a generalised "bit ordering" that no reordering of
#   coordinates can express.
# - *"The reverse step $q(x_{t-1} \mid x_t)$ is Gaussian."* Only the posterior given $x_0$,
#   $q(x_{t-1} \mid x_t, x_0)$, is exactly Gaussian. The true reverse step is nearly Gaussian when
#   $\beta_t$ is small (section 3), which is why many small steps are used.
# - *"The network outputs the clean sample in one go."* It predicts the noise at one step. Its
#   implied $\hat x_0$ from pure noise is the average of the data (the slider's right panel at the
#   start); the sample emerges over many steps.
# - *"$L_\text{simple}$ is the ELBO."* It is the ELBO's denoising terms with their weights
#   $\lambda_t$ replaced by 1 and the constants dropped; it is not a bound on the likelihood.
#
# </div>

# %% [markdown]
# ## Summary
#
# - Bayes' rule reverses one forward step, but needs the unknown $q_{t-1}$. Conditioned on $x_0$ it
#   is exact: $q(x_{t-1} \mid x_t, x_0) = \mathcal N(\tilde\mu_t, \tilde\beta_t I)$, found by
#   completing the square (eqs. 6-7, `NoiseSchedule.q_posterior`).
# - Without $x_0$ the reverse step is nearly Gaussian when $\beta_t$ is small, and visibly not when
#   it is large. So the model is a chain of Gaussian steps $p_\theta(x_{t-1} \mid x_t)$ (eq. 1),
#   Markov, sampled ancestrally from $x_T \sim \mathcal N(0, I)$ (Algorithm 2, `ddpm_sample`).
# - Its mean is the posterior mean at a predicted $\hat x_0$; with a noise prediction that is
#   eq. 11 (`ddpm_step`). Predicting $x_0$ or $v$ instead is the same model (`to_eps`) with a
#   different loss weighting.
# - The ELBO (eq. 5) is a sum of KLs between Gaussians; each is a weighted squared error in
#   $\epsilon$ (eq. 12). $L_\text{simple}$ (eq. 14) drops the weights and the constants.
# - The exact denoiser $\mathbb E[\epsilon \mid x_t]$ (`GaussianMixture.denoiser`) turns noise
#   into the data distribution; a small MLP trained with $L_\text{simple}$ for a minute comes close,
#   and its loss approaches the exact denoiser's, which is the floor.

# %% [markdown]
# ## Exercises
#
# Each exercise asks for one function. Write it in the cell marked as the solution, run the next
# cell, and `check` tells you whether it is right or what exactly is wrong. Conventions: `t` is a
# LongTensor of shape (B,) of code indices (0..T-1), `betas` is the float64 schedule of shape (T,),
# and data tensors have shape (B, ...). A coefficient read with `table[t]` has shape (B,); reshape
# it to (B, 1, ..., 1) to multiply a batch.
#
# **Exercise 1: the posterior (eqs. 6-7).** Return the mean and the variance of
# $q(x_{t-1} \mid x_t, x_0)$. Remember that $\bar\alpha_{t-1}$ at code index 0 is 1.

# %% tags=["solution"]
def q_posterior(x0, x_t, t, betas):
    """(mean (B, ...), variance broadcastable to it) of q(x_{t-1} | x_t, x_0), eqs. 6-7."""
    alphas = 1 - betas
    alpha_bars = torch.cumprod(alphas, dim=0)
    alpha_bars_prev = torch.cat([torch.ones(1, dtype=betas.dtype), alpha_bars[:-1]])
    shape = (-1,) + (1,) * (x_t.ndim - 1)
    a, ab, ab_prev, b = (v[t].view(shape) for v in (alphas, alpha_bars, alpha_bars_prev, betas))
    mean = ab_prev.sqrt() * b / (1 - ab) * x0 + a.sqrt() * (1 - ab_prev) / (1 - ab) * x_t
    variance = (1 - ab_prev) / (1 - ab) * b
    return mean, variance


# %%
from ddpm_teach.exercises import check

check("posterior-mean-var", q_posterior)

# %% [markdown]
# **Exercise 2: $x_0$ from the predicted noise.** Invert eq. 4:
# $\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\epsilon) / \sqrt{\bar\alpha_t}$.

# %% tags=["solution"]
def predict_x0(x_t, t, eps, betas):
    """x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t), shape (B, ...)."""
    alpha_bar = torch.cumprod(1 - betas, dim=0)[t].view((-1,) + (1,) * (x_t.ndim - 1))
    return (x_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()


# %%
from ddpm_teach.exercises import check

check("predict-x0", predict_x0)

# %% [markdown]
# **Exercise 3: one step of the reverse chain.** Given the current state $x_t$, the predicted noise
# `eps` and a standard normal draw `z`, return $x_{t-1}$ by eq. 11 plus noise, with
# $\sigma_t^2 = \tilde\beta_t$:
#
# $$x_{t-1} = \frac{1}{\sqrt{\alpha_t}}\Big(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\,
#   \epsilon\Big) + \sqrt{\tilde\beta_t}\, z .$$
#
# Since $\tilde\beta = 0$ at code index 0, the last step adds no noise by itself. (The name is
# `reverse_step`, so as not to shadow the package's `ddpm_step`.)

# %% tags=["solution"]
def reverse_step(x_t, t, eps, z, betas):
    """One ancestral step of Algorithm 2, x_t -> x_{t-1}, shape (B, ...)."""
    alphas = 1 - betas
    alpha_bars = torch.cumprod(alphas, dim=0)
    alpha_bars_prev = torch.cat([torch.ones(1, dtype=betas.dtype), alpha_bars[:-1]])
    shape = (-1,) + (1,) * (x_t.ndim - 1)
    a, ab, ab_prev, b = (v[t].view(shape) for v in (alphas, alpha_bars, alpha_bars_prev, betas))
    mean = (x_t - b / (1 - ab).sqrt() * eps) / a.sqrt()
    sigma = ((1 - ab_prev) / (1 - ab) * b).sqrt()
    return mean + sigma * z


# %%
from ddpm_teach.exercises import check

check("ddpm-step", reverse_step)

# %% [markdown]
# **Exercise 4: the loss of a batch.** Return $L_\text{simple}$ (eq. 14) for one batch as a single
# number: noise `x0` to $x_t$ with the given `eps` (eq. 4), ask `model(x_t, t)` for its prediction,
# and average the squared error over every value (as `torch.nn.functional.mse_loss` does). This is
# the loss the trainer of section 8 minimises.

# %% tags=["solution"]
def l_simple(model, x0, t, eps, betas):
    """L_simple of a batch: mean over all values of (eps - model(x_t, t))^2, a 0-d tensor."""
    alpha_bar = torch.cumprod(1 - betas, dim=0)[t].view((-1,) + (1,) * (x0.ndim - 1))
    x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps
    return ((eps - model(x_t, t)) ** 2).mean()


# %%
from ddpm_teach.exercises import check

check("l-simple", l_simple)

# %% [markdown]
# **To explore further** (no checks):
#
# - Run the exact reverse chain of section 5 with `variance="large"`. The 1-D numbers hardly move;
#   why, given the right-hand plot of section 2?
# - Train with `TrainConfig.from_budget("eight-gaussians", BUDGET, num_samples=0, prediction="v")`
#   and sample with `ddpm_sample(..., prediction="v")`. To compare it in section 8, convert its
#   output to a noise prediction first: `schedule.to_eps(mlp(x_t, t_batch), x_t, t_batch, "v")` in
#   place of `mlp(x_t, t_batch)`. Does the error plot change?
# - In section 3, replace the bimodal $q_{t-1}$ by a single Gaussian. The reverse step is then
#   exactly Gaussian for every $\beta$: check that the total-variation distance stays at zero.
