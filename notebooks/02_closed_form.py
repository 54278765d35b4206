# %% [markdown]
# # 02 The closed form
#
# Chapter 01 added noise one step at a time. Training a diffusion model needs noisy images at a
# random step $t$, often $t$ in the hundreds, millions of times over; walking there one step at a
# time would be far too slow. This chapter shows that we never have to: the distribution of $x_t$
# given the clean image $x_0$ is a single Gaussian with a formula you can write down, so any $x_t$
# costs one line of arithmetic.
#
# **Learning objectives.** After this chapter you can:
#
# - derive $q(x_t \mid x_0)$ by composing Gaussians;
# - check the closed form against iterated steps with a statistical test;
# - compare linear and cosine schedules through $\bar\alpha_t$ and the log-SNR.
#
# **Notation.** The paper (Ho, Jain & Abbeel 2020) counts steps $t = 1, \dots, T$. The code counts
# from 0: index `t` stands for the paper's $t + 1$, so `alpha_bars[0]` is $\bar\alpha_1$ (one step
# of noise) and `alpha_bars[999]` is $\bar\alpha_{1000} = \bar\alpha_T$. Printed values of `t` are
# code indices.

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
import time

import matplotlib.pyplot as plt
import numpy as np
import torch

from ddpm_teach import viz
from ddpm_teach.data import glyph_digits
from ddpm_teach.schedule import NoiseSchedule

linear = NoiseSchedule.linear()  # the paper's: beta_t rises from 1e-4 to 0.02 over T = 1000 steps
cosine = NoiseSchedule.cosine()  # Nichol & Dhariwal (2021); we meet it in section 8
digits, labels = glyph_digits(4, seed=0)  # four digits, (4, 1, 28, 28) in [-1, 1]
print(linear)
print("digits:", labels.tolist())

# %% [markdown]
# ## 1. Where we are: one step at a time
#
# One forward step (eq. 2 of the paper) keeps a share of the previous image and adds fresh noise:
#
# $$q(x_t \mid x_{t-1}) = \mathcal N\big(x_t;\ \sqrt{1-\beta_t}\, x_{t-1},\ \beta_t I\big),$$
#
# or, written as a recipe for drawing a sample (the *reparameterisation*), with
# $\alpha_t = 1 - \beta_t$ and fresh noise $\epsilon_t \sim \mathcal N(0, I)$:
#
# $$x_t = \sqrt{\alpha_t}\, x_{t-1} + \sqrt{1 - \alpha_t}\, \epsilon_t .$$
#
# This is `NoiseSchedule.q_step`. To reach step 500 from the data this way takes 500 calls. We want
# $q(x_t \mid x_0)$ directly.
#
# One fact does all the work: **the sum of independent Gaussians is Gaussian, and their variances
# add** (not their standard deviations). If $a \sim \mathcal N(0, \sigma_a^2)$ and
# $b \sim \mathcal N(0, \sigma_b^2)$ are independent, then $a + b \sim \mathcal N(0, \sigma_a^2 +
# \sigma_b^2)$. Scaling by $c$ multiplies a variance by $c^2$.

# %% [markdown]
# ## 2. Two steps by hand
#
# Start from the data and take two steps:
#
# $$x_1 = \sqrt{\alpha_1}\, x_0 + \sqrt{1-\alpha_1}\, \epsilon_1, \qquad
#   x_2 = \sqrt{\alpha_2}\, x_1 + \sqrt{1-\alpha_2}\, \epsilon_2 .$$
#
# Substitute the first into the second:
#
# $$x_2 = \sqrt{\alpha_1\alpha_2}\, x_0
#   + \underbrace{\sqrt{\alpha_2(1-\alpha_1)}\, \epsilon_1 + \sqrt{1-\alpha_2}\, \epsilon_2}
#     _{\text{two independent Gaussians}} .$$
#
# The noise part is Gaussian with mean 0 and variance
# $\alpha_2(1-\alpha_1) + (1-\alpha_2) = 1 - \alpha_1\alpha_2$. So two steps are one step with
# $\alpha_1\alpha_2$ in place of $\alpha$:
#
# $$x_2 = \sqrt{\alpha_1\alpha_2}\, x_0 + \sqrt{1 - \alpha_1\alpha_2}\, \epsilon, \qquad
#   \epsilon \sim \mathcal N(0, I).$$
#
# Let us check it on a single pixel with value $x_0 = 0.5$, pushed through two real steps (code
# indices 0 and 1) a million times.

# %%
g = torch.Generator().manual_seed(1)
x0_pixel = torch.full((1_000_000, 1), 0.5, dtype=torch.float64)
x2 = linear.q_step(linear.q_step(x0_pixel, 0, generator=g), 1, generator=g)

a1, a2 = linear.alphas[:2].tolist()
print(
    f"mean      predicted sqrt(a1 a2) x_0 = {math.sqrt(a1 * a2) * 0.5:.5f}   measured {x2.mean():.5f}"
)
print(f"variance  predicted 1 - a1 a2       = {1 - a1 * a2:.3e}   measured {x2.var():.3e}")
wrong = (math.sqrt(a2 * (1 - a1)) + math.sqrt(1 - a2)) ** 2
print(f"(adding standard deviations instead would predict a variance of {wrong:.3e})")

# %% [markdown]
# ## 3. Any number of steps: induction
#
# Define the running product
#
# $$\bar\alpha_t = \prod_{s=1}^{t} \alpha_s \qquad (\text{product up to } t\text{, not up to } T).$$
#
# **Claim.** For every $t \ge 1$, $x_t = \sqrt{\bar\alpha_t}\, x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$
# with $\epsilon \sim \mathcal N(0, I)$.
#
# **Base case**, $t = 1$: $\bar\alpha_1 = \alpha_1$, and the claim is eq. 2 itself.
#
# **Inductive step.** Suppose the claim holds at $t-1$. Then
#
# $$x_t = \sqrt{\alpha_t}\Big(\sqrt{\bar\alpha_{t-1}}\, x_0 + \sqrt{1-\bar\alpha_{t-1}}\,
#   \epsilon'\Big) + \sqrt{1-\alpha_t}\, \epsilon_t
#   = \sqrt{\bar\alpha_t}\, x_0 + \sqrt{\alpha_t(1-\bar\alpha_{t-1})}\, \epsilon'
#   + \sqrt{1-\alpha_t}\, \epsilon_t ,$$
#
# where $\epsilon'$ (the noise so far) and $\epsilon_t$ (the new step's) are independent, because
# the new step's noise is drawn fresh. So the noise part is Gaussian with variance
# $\alpha_t(1-\bar\alpha_{t-1}) + (1 - \alpha_t) = 1 - \alpha_t\bar\alpha_{t-1} = 1 - \bar\alpha_t$,
# and the claim holds at $t$. $\square$
#
# That is eq. 4 of the paper:
#
# $$\boxed{\,q(x_t \mid x_0) = \mathcal N\big(x_t;\ \sqrt{\bar\alpha_t}\, x_0,\ (1-\bar\alpha_t) I\big)\,}$$
#
# In the package, $\bar\alpha_t$ is `NoiseSchedule.alpha_bars` (a `torch.cumprod`), the mean and
# variance are `NoiseSchedule.q_mean_variance`, and the sample is `NoiseSchedule.q_sample`. The
# closed form is **exact** for any $\beta_t \in (0, 1)$, not an approximation for small steps.
#
# The induction step is one identity, $\alpha_t(1-\bar\alpha_{t-1}) + \beta_t = 1 - \bar\alpha_t$.
# Here it is for every step of both schedules at once (`alpha_bars_prev` holds
# $\bar\alpha_{t-1}$, with $\bar\alpha_0 = 1$):

# %%
for name, s in {"linear": linear, "cosine": cosine}.items():
    composed = s.alphas * (1 - s.alpha_bars_prev) + s.betas
    gap = (composed - (1 - s.alpha_bars)).abs().max().item()
    print(f"{name}: largest gap over all {len(s)} steps below 1e-12: {gap < 1e-12}")

# %% [markdown]
# A consequence worth noticing: if every pixel of $x_0$ had variance 1, then
# $\operatorname{Var}(x_t) = \bar\alpha_t \cdot 1 + (1-\bar\alpha_t) = 1$ at every step. The process is
# *variance preserving*: the signal fades exactly as fast as the noise grows, and $x_T$ is close to
# $\mathcal N(0, I)$ because $\bar\alpha_T \approx 0$.

# %% [markdown]
# ## 4. The reparameterisation: one jump to any step
#
# $$x_t = \sqrt{\bar\alpha_t}\, x_0 + \sqrt{1-\bar\alpha_t}\, \epsilon, \qquad
#   \epsilon \sim \mathcal N(0, I)$$
#
# is the mean plus the standard deviation times standard normal noise. `q_sample` computes exactly
# that:

# %%
t = 250
noise = torch.randn(digits.shape, generator=torch.Generator().manual_seed(2))
mean, variance = linear.q_mean_variance(digits, t)
x_t = linear.q_sample(digits, t, noise)
print(
    "q_sample = mean + sqrt(variance) * noise:", torch.allclose(x_t, mean + variance.sqrt() * noise)
)
print(
    f"at t = {t}: sqrt(alpha_bar_t) = {linear.alpha_bars[t].sqrt():.4f}, "
    f"sqrt(1 - alpha_bar_t) = {(1 - linear.alpha_bars[t]).sqrt():.4f}"
)

# %% [markdown]
# With the *same* $\epsilon$ for every $t$, moving $t$ slides each image smoothly from $x_0$ towards
# $\epsilon$. Each frame below is an exact sample of $q(x_t \mid x_0)$ (the frames are not one run of
# the step-by-step chain, whose noise would change at every step).

# %%
frames, ts = viz.forward_frames(
    digits, linear, ts=[0, 50, 100, 200, 300, 500, 700, 999], include_data=False
)
viz.filmstrip(frames, ts, n=8, schedule=linear)

# %% [markdown]
# ## 5. Two errors that circulate in tutorials
#
# Eq. 4 is short, and two slips in it circulate in blog posts and tutorials. Both give code that
# runs without complaint.
#
# 1. **"The variance is $\sqrt{1-\bar\alpha_t}$."** The variance is $1-\bar\alpha_t$; its square
#    root is the standard deviation, the factor in front of $\epsilon$. Written as
#    $\mathcal N(\sqrt{\bar\alpha_t} x_0, \sqrt{1-\bar\alpha_t} I)$ and implemented as written,
#    the noise gets standard deviation $(1-\bar\alpha_t)^{1/4}$: far too much early on, and the
#    variance-preserving property is gone (for unit-variance data,
#    $\operatorname{Var}(x_t) = \bar\alpha_t + \sqrt{1-\bar\alpha_t}$ reaches 1.25).
#    The mirror-image slip, multiplying $\epsilon$ by the variance $1-\bar\alpha_t$, is just as wrong.
#    (A frequent source: `torch.distributions.Normal(loc, scale)` takes the standard deviation, while
#    the paper's $\mathcal N(\mu, \sigma^2)$ is written with the variance.)
# 2. **"$\bar\alpha_t = \prod_{s=1}^{T} \alpha_s$."** The product runs up to $t$, not up to $T$.
#    With the product up to $T$, $q(x_t \mid x_0)$ no longer depends on $t$: every $x_t$, even
#    $x_1$, is nearly pure noise.

# %%
steps = np.arange(len(linear))
ab = linear.alpha_bars.numpy()
fig, (ax_noise, ax_signal) = plt.subplots(1, 2, figsize=(10, 3.4), layout="constrained")
ax_noise.plot(steps, np.sqrt(1 - ab), label=r"eq. 4: $\sqrt{1-\bar\alpha_t}$")
ax_noise.plot(steps, (1 - ab) ** 0.25, "--", label=r"slip 1: $(1-\bar\alpha_t)^{1/4}$")
ax_noise.plot(steps, ab + np.sqrt(1 - ab), ":", label=r"slip 1: Var($x_t$) for unit-variance data")
ax_noise.set(xlabel="t", title="noise in $x_t$: eq. 4 and slip 1")
ax_signal.plot(steps, np.sqrt(ab), label=r"eq. 4: $\sqrt{\bar\alpha_t}$")
ax_signal.plot(
    steps,
    np.full_like(ab, math.sqrt(ab[-1])),
    "--",
    label=r"slip 2: $\sqrt{\bar\alpha_T}$ at every t",
)
ax_signal.set(xlabel="t", title="share of $x_0$ kept in $x_t$")
for ax in (ax_noise, ax_signal):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
plt.show()
print(
    f"slip 1: largest Var(x_t) for unit-variance data = {(ab + np.sqrt(1 - ab)).max():.3f} "
    f"(eq. 4 keeps it at 1)"
)
print(
    f"slip 2: x_0 is scaled by {math.sqrt(ab[-1]):.4f} at every t, also at t = 0 "
    f"(eq. 4: {math.sqrt(ab[0]):.4f})"
)

# %% [markdown]
# ## 6. Testing the closed form against the chain
#
# The derivation is a proof, but code has bugs that proofs do not. So we test the package's
# `q_sample` against the thing it claims to shortcut: `q_step` applied $t$ times.
#
# **The experiment.** Take one digit $x_0$. Run 1000 independent chains of `q_step` from it for
# 300 steps, keeping $x_t$ at $t$ = 0, 9, 99 and 299 (the paper's 1, 10, 100, 300). At each of
# those steps, also draw 2000 samples straight from the closed form with `q_sample`. If eq. 4 is
# right, the two sets are samples of the same distribution.
#
# **Moments.** Eq. 4 says $x_t = c\, x_0 + \text{noise}$ with $c = \sqrt{\bar\alpha_t}$ and noise
# variance $1-\bar\alpha_t$ in every pixel. From the chains we estimate $c$ by least squares and the
# noise variance from what is left, and report how many standard errors ($z$) each estimate is
# from the prediction. Values of $|z|$ up to about 2 are what chance gives.
#
# **Kolmogorov-Smirnov (KS) test.** KS compares two samples of a 1-D quantity, of sizes $n$ and
# $m$, through their empirical cumulative distribution functions $F_a, F_b$: its statistic is the largest vertical gap
# $D = \max_z |F_a(z) - F_b(z)|$. If both samples come from one distribution, $\sqrt{n_\text{eff}}\,
# D$ with $n_\text{eff} = nm/(n+m)$ follows Kolmogorov's distribution for large samples, so
#
# $$p \approx Q(\lambda) = 2 \sum_{k \ge 1} (-1)^{k-1} e^{-2 k^2 \lambda^2},
#   \qquad \lambda = \sqrt{n_\text{eff}}\, D .$$
#
# A small $p$ means that gaps as large as $D$ are rare when the two distributions agree. Since we
# will run eight tests (four steps, two projections), we count a test as a rejection only when
# $p < 0.001$: then the chance of a false alarm anywhere stays under 1 % (at most
# $8 \times 0.001$). Images are 784-dimensional, so we look at them through 1-D projections: (a) the pixel
# values themselves, pooled over pixels (each pixel is its own projection, and both sets pool the
# same pixels), and (b) the projection $u^\top x_t$ on a random unit vector $u$, which mixes all
# pixels and so would also notice correlated noise. Here is the test, in NumPy:


# %%
def ks_two_sample(a, b):
    """Two-sample Kolmogorov-Smirnov test of 1-D samples a (n,) and b (m,): returns (D, p).

    p is the asymptotic p-value from Kolmogorov's distribution (scipy.special.kolmogorov).
    """
    a = np.sort(np.asarray(a, dtype=np.float64).ravel())
    b = np.sort(np.asarray(b, dtype=np.float64).ravel())
    z = np.concatenate([a, b])  # the largest gap between the two step functions is at a data point
    gap = (
        np.searchsorted(a, z, side="right") / a.size - np.searchsorted(b, z, side="right") / b.size
    )
    d = float(np.abs(gap).max())
    lam = math.sqrt(a.size * b.size / (a.size + b.size)) * d
    if lam < 0.2:  # Q(0.2) = 1 - 5e-13; the series below converges slowly there
        return d, 1.0
    k = np.arange(1, 101)
    p = 2 * np.sum((-1.0) ** (k - 1) * np.exp(-2 * (k * lam) ** 2))
    return d, float(min(max(p, 0.0), 1.0))


def fmt_p(p):
    """p rounded for printing; tiny values are only bounded."""
    return "< 1e-10" if p < 1e-10 else f"{p:.2g}" if p < 0.01 else f"{p:.2f}"


# %% [markdown]
# Before trusting it on diffusion, check the test on answers we know: two samples from the same
# Gaussian (a large $p$ expected), and samples whose spread differs by 20 % or whose mean differs
# by 0.1 standard deviations (tiny $p$ expected).

# %%
rng = np.random.default_rng(0)
for label, scale, shift in [
    ("same distribution", 1.0, 0.0),
    ("std 20 % larger", 1.2, 0.0),
    ("mean shifted by 0.1", 1.0, 0.1),
]:
    d, p = ks_two_sample(rng.normal(size=5000), scale * rng.normal(size=5000) + shift)
    print(f"{label:20s} D = {d:.4f}   p = {fmt_p(p)}")

# %% [markdown]
# Now the chains: 1000 chains of 300 steps each, on 784 pixels, take a few seconds.

# %%
x0 = digits[:1]  # one digit, (1, 1, 28, 28)
checkpoints = [0, 9, 99, 299]
n_chain, n_jump = 1000, 2000
g = torch.Generator().manual_seed(3)
x = x0.expand(n_chain, -1, -1, -1).clone()
iterated = {}  # t -> (n_chain, 784) samples of x_t made by t + 1 calls of q_step
for t in range(checkpoints[-1] + 1):
    x = linear.q_step(x, t, generator=g)
    if t in checkpoints:
        iterated[t] = x.flatten(1).double()

g = torch.Generator().manual_seed(4)
jumped = {  # t -> (n_jump, 784) samples of x_t from one call of q_sample
    t: linear.q_sample(x0.expand(n_jump, -1, -1, -1), t, generator=g).flatten(1).double()
    for t in checkpoints
}
flat0 = x0.flatten().double()  # (784,)
u = torch.randn(784, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
u /= u.norm()  # a random direction in pixel space

for t in checkpoints:
    xt, ab_t = iterated[t], linear.alpha_bars[t].item()
    c_hat = (xt.mean(0) @ flat0 / (flat0 @ flat0)).item()  # least-squares fit of x_t ~ c x_0
    v_hat = ((xt - c_hat * flat0) ** 2).mean().item()  # noise variance per pixel
    z_c = (c_hat - math.sqrt(ab_t)) / math.sqrt((1 - ab_t) / (n_chain * (flat0 @ flat0).item()))
    z_v = (v_hat - (1 - ab_t)) / ((1 - ab_t) * math.sqrt(2 / xt.numel()))
    _, p_pixels = ks_two_sample(xt, jumped[t])
    _, p_direction = ks_two_sample(xt @ u, jumped[t] @ u)
    print(
        f"t = {t:3d}:  sqrt(alpha_bar) {math.sqrt(ab_t):.4f} vs chains {c_hat:.4f} (z = {z_c:+.1f})"
        f"   1 - alpha_bar {1 - ab_t:.5f} vs {v_hat:.5f} (z = {z_v:+.1f})"
        f"   KS pixels p = {fmt_p(p_pixels)}, along u p = {fmt_p(p_direction)}"
    )

# %% [markdown]
# Every moment is within chance of its prediction ($|z| < 2$), and no KS test gives $p < 0.001$.
# (When the two distributions agree, a $p$-value is equally likely to fall anywhere between 0 and 1,
# so among eight tests one near 0.01 is nothing unusual.) The picture says the same:
# at $t = 299$ the chains' values of $u^\top x_t$ and the closed form's have the same histogram and
# the same cumulative distribution, up to sampling noise, and both follow the Gaussian that eq. 4
# predicts, $\mathcal N(\sqrt{\bar\alpha_t}\, u^\top x_0,\ 1-\bar\alpha_t)$ (a unit vector $u$
# keeps the variance).

# %%
t = 299
ab_t = linear.alpha_bars[t].item()
proj_chain, proj_jump = (iterated[t] @ u).numpy(), (jumped[t] @ u).numpy()
mu, sd = math.sqrt(ab_t) * (u @ flat0).item(), math.sqrt(1 - ab_t)
grid = np.linspace(mu - 4 * sd, mu + 4 * sd, 200)
fig, (ax_hist, ax_cdf) = plt.subplots(1, 2, figsize=(10, 3.4), layout="constrained")
bins = np.linspace(grid[0], grid[-1], 40)
ax_hist.hist(proj_chain, bins, density=True, alpha=0.5, label=f"{n_chain} chains of q_step")
ax_hist.hist(proj_jump, bins, density=True, alpha=0.5, label=f"{n_jump} draws of q_sample")
ax_hist.plot(
    grid, np.exp(-0.5 * ((grid - mu) / sd) ** 2) / (sd * math.sqrt(2 * math.pi)), "k", label="eq. 4"
)
ax_hist.set(xlabel=r"$u^\top x_t$", title=f"t = {t}: histograms")
for sample, name in [(proj_chain, "chains"), (proj_jump, "q_sample")]:
    ax_cdf.step(
        np.sort(sample), np.arange(1, sample.size + 1) / sample.size, where="post", label=name
    )
d, p = ks_two_sample(proj_chain, proj_jump)
ax_cdf.set(xlabel=r"$u^\top x_t$", title=f"empirical CDFs: largest gap D = {d:.3f}, p = {fmt_p(p)}")
for ax in (ax_hist, ax_cdf):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# **Can this test fail?** A test that always passes proves nothing. Replace the closed form by the
# two tutorial slips of section 5, and by a subtler bug, $t$ off by one ($\bar\alpha_{t-1}$ in
# place of $\bar\alpha_t$), and run the same pooled-pixel KS test against the same chains:


# %%
def jump_with(signal, noise_std, seed):
    """n_jump draws of signal * x_0 + noise_std * eps, flattened to (n_jump, 784)."""
    eps = torch.randn(
        n_jump, 784, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    return signal * flat0 + noise_std * eps


formulas = {  # name -> t -> (coefficient of x_0, standard deviation of the noise)
    "eq. 4": lambda t: (linear.alpha_bars[t].sqrt(), (1 - linear.alpha_bars[t]).sqrt()),
    "slip 1: variance sqrt(1-ab)": lambda t: (
        linear.alpha_bars[t].sqrt(),
        (1 - linear.alpha_bars[t]) ** 0.25,
    ),
    "slip 2: product up to T": lambda t: (
        linear.alpha_bars[-1].sqrt(),
        (1 - linear.alpha_bars[-1]).sqrt(),
    ),
    "t off by one": lambda t: (
        linear.alpha_bars_prev[t].sqrt(),
        (1 - linear.alpha_bars_prev[t]).sqrt(),
    ),
}
print(f"{'KS p-value (pixels)':30s}" + "".join(f"{f't = {t}':>12s}" for t in checkpoints))
for k, (name, formula) in enumerate(formulas.items()):
    ps = [
        ks_two_sample(iterated[t], jump_with(*formula(t), seed=10 * k + i))[1]
        for i, t in enumerate(checkpoints)
    ]
    print(f"{name:30s}" + "".join(f"{fmt_p(p):>12s}" for p in ps))
off_by_one = [1 - (1 - linear.alpha_bars_prev[t]) / (1 - linear.alpha_bars[t]) for t in checkpoints]
print(
    f"{'(off by one: noise variance':30s}"
    + "".join(f"{f'-{c:.1%}':>12s}" for c in off_by_one)
    + ")"
)

# %% [markdown]
# Both tutorial slips are rejected at every step, with $p < 10^{-10}$. The off-by-one bug is
# rejected too, but look at the margins. Early on, one step changes the noise variance
# $1-\bar\alpha_t$ by a large fraction and the verdict is overwhelming; at $t = 299$ the change is
# under half a percent (last row), and the evidence against the bug is much weaker. With fewer
# chains, or at later steps, the test would miss it. A statistical test bounds how wrong code can
# be; it does not prove it right. That is why the exercises at the end compare your functions with
# a reference exactly, on fixed inputs.

# %% [markdown]
# ## 7. What the closed form buys: one jump against $t$ steps
#
# Both routes give samples of the same distribution; the closed form is one multiply-add, the chain
# is $t$ of them (and $t$ draws of noise). Timings depend on the machine, so this cell's output is
# not compared by the tests.

# %% tags=["nbval-ignore-output"]
batch = digits.repeat(16, 1, 1, 1)  # 64 digits
t = len(linear) - 1
start = time.perf_counter()
x = batch
for step in range(t + 1):
    x = linear.q_step(x, step)
chain_seconds = time.perf_counter() - start
start = time.perf_counter()
x = linear.q_sample(batch, t)
jump_seconds = time.perf_counter() - start
print(
    f"x_{t} for 64 digits: {t + 1} steps of q_step {1000 * chain_seconds:.1f} ms, "
    f"one q_sample {1000 * jump_seconds:.2f} ms ({chain_seconds / jump_seconds:.0f} times faster)"
)

# %% [markdown]
# Training (chapter 05) draws a fresh random $t$ for every image of every batch. With the closed form
# each draw costs the same, whatever $t$ is; with the chain, an average draw would cost 500 steps.

# %% [markdown]
# ## 8. Two schedules: linear and cosine
#
# Everything above holds for any schedule $\beta_1, \dots, \beta_T$. Which one to pick decides how
# fast the signal fades. Two are standard:
#
# - **linear** (Ho et al. 2020): $\beta_t$ rises linearly from $10^{-4}$ to $0.02$ over
#   $T = 1000$ steps (`NoiseSchedule.linear`);
# - **cosine** (Nichol & Dhariwal 2021, eq. 17): choose $\bar\alpha_t$ directly,
#   $\bar\alpha_t = f(t)/f(0)$ with $f(t) = \cos^2\!\big(\tfrac{t/T + s}{1+s}\cdot\tfrac{\pi}{2}\big)$
#   and $s = 0.008$, then $\beta_t = 1 - \bar\alpha_t/\bar\alpha_{t-1}$ (`NoiseSchedule.cosine`).
#
# The natural yardstick is the **signal-to-noise ratio** of $q(x_t \mid x_0)$, the variance of the
# signal part over that of the noise part (`NoiseSchedule.snr`, `log_snr`):
#
# $$\mathrm{SNR}(t) = \frac{\bar\alpha_t}{1 - \bar\alpha_t}.$$
#
# $\mathrm{SNR} = 1$ (log-SNR 0) is where signal and noise have equal variance.

# %%
viz.plot_schedules({"linear": linear, "cosine": cosine})

# %%
for name, s in {"linear": linear, "cosine": cosine}.items():
    snr_all = s.snr(torch.arange(len(s)))
    first_below_1 = int((snr_all < 1).nonzero()[0])
    nearly_noise = s.alpha_bars < 0.01  # the signal's std is under a tenth of the noise's
    print(
        f"{name}: SNR < 1 from t = {first_below_1};  alpha_bar_t < 0.01 from t = "
        f"{int(nearly_noise.nonzero()[0])}, i.e. {nearly_noise.double().mean():.0%} of the steps;  "
        f"alpha_bar_T = {s.alpha_bars[-1]:.1e}"
    )

# %% [markdown]
# The linear schedule crosses SNR = 1 a quarter of the way in, and spends its last third
# ($t \gtrsim 673$) at $\bar\alpha_t < 0.01$, where $x_t$ is almost pure noise: a model trained on it
# spends a third of its training steps on inputs with almost nothing left to denoise. The cosine
# schedule's log-SNR falls almost linearly through the middle, so its steps are spread more evenly
# over noise levels. Both end at nearly pure noise.
#
# Watch it happen: the same four digits and the same noise $\epsilon$ under both schedules, one
# slider for $t$ (press Play, or drag).

# %%
viz.compare_schedules_slider(
    digits,
    {"linear": linear, "cosine": cosine},
    ts=[*range(0, len(linear), 25), len(linear) - 1],
    title="q(x_t | x_0) under two schedules, same digits, same noise",
)

# %% [markdown]
# And side by side for print, at the same steps:

# %%
show_ts = [0, 150, 300, 450, 600, 750, 900, 999]
noise = torch.randn(digits.shape, generator=torch.Generator().manual_seed(0))
fig, axes = plt.subplots(2, len(show_ts), figsize=(1.5 * len(show_ts), 3.7), layout="constrained")
for row, (name, s) in zip(axes, {"linear": linear, "cosine": cosine}.items(), strict=True):
    for ax, t in zip(row, show_ts, strict=True):
        viz.show_images(s.q_sample(digits, t, noise), nrow=2, ax=ax)
        ax.set_title(f"{name}, t = {t}\nSNR = {s.snr(t).item():.2g}", fontsize=8)
plt.show()

# %% [markdown]
# ## 9. When are the digits gone? An ideal observer
#
# "Unrecognisable" depends on who is looking. To the eye, the linear schedule's digits are gone by
# about $t = 450$ and the cosine schedule's by about $t = 750$ (SNR around 0.1-0.2 in both). A sharper
# question is when the *information* is gone: when could no one at all tell which digit it was?
#
# Give that job to an **ideal observer**: it knows eq. 4 exactly, holds a reference set of clean
# digits $x_0^{(i)}$ with their labels, and picks the digit class with the highest likelihood:
#
# $$p(x_t \mid \text{class } c) \propto \sum_{i \in c} \mathcal N\big(x_t;\ \sqrt{\bar\alpha_t}\,
#   x_0^{(i)},\ (1-\bar\alpha_t) I\big), \qquad
#   \log \mathcal N(\cdot) = \frac{\sqrt{\bar\alpha_t}\, x_t^\top x_0^{(i)} - \bar\alpha_t
#   \|x_0^{(i)}\|^2/2}{1-\bar\alpha_t} + \text{const}.$$
#
# We score it on held-out digits (not in the reference set) noised with eq. 4. Since
# $x_t^\top x_0^{(i)} = \sqrt{\bar\alpha_t}\, x_0^\top x_0^{(i)} + \sqrt{1-\bar\alpha_t}\,
# \epsilon^\top x_0^{(i)}$, two matrix products serve every $t$ and both schedules.

# %% tags=["nbval-ignore-output"]
n_ref, n_test, every = (500, 200, 50) if BUDGET.name == "smoke" else (3000, 500, 20)
ref, ref_labels = glyph_digits(n_ref, seed=1)  # n_ref // 10 of each digit
test, test_labels = glyph_digits(n_test, seed=2)
order = torch.argsort(ref_labels, stable=True)  # group the reference digits by class
R = ref[order].flatten(1).double()  # (n_ref, 784)
Q = test.flatten(1).double()  # (n_test, 784)
eps = torch.randn(Q.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
data_dot, noise_dot, ref_sq = Q @ R.T, eps @ R.T, (R * R).sum(1)  # (n_test, n_ref), ..., (n_ref,)


def observer_accuracy(ab):
    """Share of the test digits whose class the ideal observer names from x_t, at alpha_bar_t = ab."""
    dot = ab.sqrt() * data_dot + (1 - ab).sqrt() * noise_dot  # x_t . x_0^(i)
    log_lik = (ab.sqrt() * dot - ab * ref_sq / 2) / (1 - ab)  # up to a constant per test digit
    log_class = log_lik.view(n_test, 10, -1).logsumexp(-1)  # sum over each class's references
    return (log_class.argmax(1) == test_labels).double().mean().item()


grid_ts = [*range(0, len(linear), every), len(linear) - 1]
accuracy = {
    name: [observer_accuracy(s.alpha_bars[t]) for t in grid_ts]
    for name, s in {"linear": linear, "cosine": cosine}.items()
}
last_third = [i for i, t in enumerate(grid_ts) if t >= 2 * len(linear) // 3]
for name, acc in accuracy.items():
    below_half = next(t for t, a in zip(grid_ts, acc, strict=True) if a < 0.5)
    below_20 = next(t for t, a in zip(grid_ts, acc, strict=True) if a < 0.2)
    print(
        f"{name}: accuracy {acc[0]:.0%} at t = 0, below 50 % from t = {below_half}, below 20 % "
        f"from t = {below_20}; at most {max(acc[i] for i in last_third):.0%} in the last third "
        f"(chance: 10 %)"
    )

# %%
fig, (ax_t, ax_snr) = plt.subplots(1, 2, figsize=(10, 3.4), layout="constrained")
for name, s in {"linear": linear, "cosine": cosine}.items():
    ax_t.plot(grid_ts, accuracy[name], ".-", label=name)
    ax_snr.plot(s.log_snr(torch.tensor(grid_ts)).numpy(), accuracy[name], ".-", label=name)
for ax in (ax_t, ax_snr):
    ax.axhline(0.1, color="gray", ls=":", label="chance")
    ax.set(ylabel="ideal observer's accuracy", ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
ax_t.set(xlabel="t", title="digit identity left in $x_t$")
ax_snr.set(xlabel="log SNR(t)", title="the same, against log-SNR", xlim=(-12, 11))
plt.show()

# %% [markdown]
# Three things to read off:
#
# - The ideal observer beats the eye by far: it still names half the digits at $t \approx 550$ under
#   the linear schedule, where the eye sees noise. Information fades gradually; it is not gone when
#   the picture looks like noise.
# - Under the linear schedule the accuracy stays below 30 % for the whole last third and below 20 %
#   for the last quarter (chance alone gives 10 %). The cosine schedule keeps half the digits
#   identifiable until $t \approx 880$ and destroys them in its last eighth.
# - Against log-SNR the two curves are **one curve** (the cosine schedule's very last step, at
#   log-SNR $-20$, is off the chart). That is no accident: dividing eq. 4 by
#   $\sqrt{\bar\alpha_t}$ gives $x_t/\sqrt{\bar\alpha_t} = x_0 + \epsilon/\sqrt{\mathrm{SNR}(t)}$, so
#   what can be known about $x_0$ from $x_t$ depends on $t$ only through the SNR. A schedule is a
#   choice of how many steps to spend at each noise level (Kingma et al. 2021 build on exactly this).

# %% [markdown]
# ## Summary
#
# - Composing Gaussian steps gives a Gaussian: variances add, so after $t$ steps
#   $q(x_t \mid x_0) = \mathcal N(\sqrt{\bar\alpha_t}\, x_0, (1-\bar\alpha_t) I)$ with
#   $\bar\alpha_t = \prod_{s \le t} \alpha_s$ (eq. 4; `alpha_bars`, `q_mean_variance`).
# - Reparameterised, $x_t = \sqrt{\bar\alpha_t}\, x_0 + \sqrt{1-\bar\alpha_t}\, \epsilon$
#   (`q_sample`): any step in one multiply-add instead of $t$ steps.
# - A KS test and a moment check on 1000 chains agree with the closed form; the same test rejects the
#   two common slips (variance $\sqrt{1-\bar\alpha_t}$; product up to $T$), though not every subtle bug.
# - Schedules differ in how they spend the steps across noise levels. The linear schedule crosses
#   SNR = 1 at $t \approx 260$ and spends its last third at almost pure noise; the cosine schedule
#   spreads log-SNR evenly and keeps digits identifiable far longer. What $x_t$ says about $x_0$
#   depends only on the SNR.

# %% [markdown]
# > **Common misconceptions**
# >
# > - *"The variance of $q(x_t \mid x_0)$ is $\sqrt{1-\bar\alpha_t}$."* That is the standard
# >   deviation, the factor in front of $\epsilon$. The variance is $1-\bar\alpha_t$.
# > - *"$\bar\alpha_t$ multiplies all the $\alpha$s."* Only those of steps $1, \dots, t$. The
# >   product up to $T$ is one number, $\bar\alpha_T \approx 0$, the same for every $t$.
# > - *"Standard deviations of independent noises add."* Variances add. Two steps of standard
# >   deviation 0.1 give 0.141, not 0.2.
# > - *"The closed form is an approximation that needs small $\beta_t$."* It is exact for any
# >   schedule. The approximate formula is $\bar\alpha_t \approx 1 - \sum_{s \le t} \beta_s$.
# > - *"`q_sample` at $t$ and at $t+1$ gives two consecutive states of one chain."* Two independent
# >   jumps share nothing. Even with the same $\epsilon$ they are not a run of the chain. How
# >   $x_{t-1}$ and $x_t$ relate given $x_0$ is the subject of chapter 03.
# > - *"The cosine schedule adds less noise in total."* Both end at nearly pure noise
# >   ($\bar\alpha_T$ is $4 \cdot 10^{-5}$ and $2 \cdot 10^{-9}$). They differ in *when* the
# >   signal goes.

# %% [markdown]
# ## Exercises
#
# Each exercise is a function to write in the cell tagged `solution`; the cell after it checks your
# function on fixed inputs and, when it is wrong, says what the mistake looks like. Conventions:
# `betas` is the float64 schedule, shape (T,); `t` is a LongTensor of shape (B,) with one code
# index per example (index t is the paper's t + 1); data tensors have shape (B, ...).
#
# **Exercise 1: the cumulative product.** Return $\bar\alpha$, shape (T,), with
# $\bar\alpha_t = \prod_{s \le t} (1 - \beta_s)$.

# %% tags=["solution"]
import torch


def compute_alpha_bars(betas):
    """alpha_bar[t] = prod_{s <= t} (1 - betas[s]), shape (T,)."""
    return torch.cumprod(1 - betas, dim=0)


# %%
from ddpm_teach.exercises import check

check("alpha-bar", compute_alpha_bars)

# %% [markdown]
# **Exercise 2: the variance, step by step.** Without using $\bar\alpha$, compose the steps the way
# the induction of section 3 did: the noise variance after step $t$ is
# $v_t = \alpha_t v_{t-1} + \beta_t$ (the old noise is scaled with $x_{t-1}$, the new step adds
# $\beta_t$), starting from $v = 0$ for the data. Return all $T$ values, shape (T,). The check
# compares them with $1 - \bar\alpha_t$.

# %% tags=["solution"]
import torch


def composed_variance(betas):
    """Var(x_t | x_0) per coordinate for every t, by composing the steps of eq. 2: shape (T,)."""
    v = torch.zeros((), dtype=betas.dtype)
    out = []
    for beta in betas:
        v = (1 - beta) * v + beta  # the old noise shrinks with x_{t-1}; the step adds beta_t
        out.append(v)
    return torch.stack(out)


# %%
from ddpm_teach.exercises import check

check("closed-form-variance", composed_variance)

# %% [markdown]
# **Exercise 3: one jump.** Implement eq. 4 in reparameterised form,
# $x_t = \sqrt{\bar\alpha_t}\, x_0 + \sqrt{1-\bar\alpha_t}\,\text{noise}$, for a batch: `t` has one
# entry per example, so reshape the coefficients to (B, 1, ..., 1) before multiplying.

# %% tags=["solution"]
import torch


def q_sample(x0, t, betas, noise):
    """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise (eq. 4); x0, noise (B, ...), t (B,)."""
    alpha_bar = torch.cumprod(1 - betas, dim=0)[t]
    alpha_bar = alpha_bar.view(-1, *[1] * (x0.ndim - 1))  # (B, 1, ..., 1): one per example
    return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise


# %%
from ddpm_teach.exercises import check

check("q-sample", q_sample)

# %% [markdown]
# **Exercise 4: the signal-to-noise ratio.** Return
# $\mathrm{SNR}(t) = \bar\alpha_t / (1 - \bar\alpha_t)$ for each entry of `t`, shape (B,).

# %% tags=["solution"]
import torch


def snr(t, betas):
    """SNR(t) = alpha_bar_t / (1 - alpha_bar_t), shape (B,) for t of shape (B,)."""
    alpha_bar = torch.cumprod(1 - betas, dim=0)[t]
    return alpha_bar / (1 - alpha_bar)


# %%
from ddpm_teach.exercises import check

check("snr", snr)

# %% [markdown]
# **Exercise 5: when does noise win?** Return the first code index $t$ at which
# $\mathrm{SNR}(t)$ is below `level` (a float), as an int, or $T$ if it never is. For the paper's
# linear schedule and `level = 1.0` the answer is the 259 printed in section 8.

# %% tags=["solution"]
import torch


def t_for_snr(betas, level):
    """The first code index t with alpha_bar_t / (1 - alpha_bar_t) < level, or T if none."""
    alpha_bar = torch.cumprod(1 - betas, dim=0)
    below = (alpha_bar / (1 - alpha_bar) < level).nonzero()
    return int(below[0]) if len(below) else len(betas)


# %%
from ddpm_teach.exercises import check

check("t-for-snr", t_for_snr)

# %% [markdown]
# ## Next
#
# We can now jump forwards to any $t$. Chapter 03 turns around: given $x_t$ and $x_0$, what was
# $x_{t-1}$? The answer, the posterior $q(x_{t-1} \mid x_t, x_0)$, is again a Gaussian found by the
# same rules, and it is what the reverse chain has to learn.
