# %% [markdown]
# # 06 Evaluation
#
# Chapter 05 trained a DDPM on digits. Is it any good? "The samples look fine" is not an answer
# you can compare, track or trust, so this chapter puts numbers on three separate questions:
#
# 1. **How probable does the model find real data?** The variational bound of the paper (eq. 5),
#    in bits per dimension, on digits the model never saw; and where along $t$ those bits go.
# 2. **Do its samples look like the data?** Digit-FID, the share of confidently recognised digits,
#    class coverage and entropy (the mode-collapse check of chapter 00, now on images), and a
#    memorisation check against the training set. Every number is printed beside its *floor*,
#    what real data itself scores.
# 3. **How fast can we sample?** The same network driven by DDPM's $T$ steps and by DDIM's 10 to
#    100: quality against seconds.
#
# **Learning objectives.** After this chapter you can:
#
# - compute the variational bound in bits/dim and see where the bits go;
# - judge sample quality with digit-FID, confident share and class coverage;
# - trade quality for speed with DDIM.
#
# **Notation.** As in the earlier chapters: the paper counts steps $t = 1, \dots, T$, the code
# counts from 0 (index `t` is the paper's $t + 1$), $\bar\alpha_t = \prod_{s \le t} (1 - \beta_s)$.
# Images have shape (B, 1, 28, 28) with values in $[-1, 1]$, background $-1$.

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
import os
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from matplotlib.ticker import NullFormatter, ScalarFormatter

from ddpm_teach import viz
from ddpm_teach.analytic import GaussianMixture
from ddpm_teach.data import glyph_digits, load_dataset
from ddpm_teach.likelihood import vlb
from ddpm_teach.metrics import digit_floors, digit_report
from ddpm_teach.sampling import ddim_sample, ddpm_sample, ddpm_step
from ddpm_teach.training import TrainConfig, Trainer, load_checkpoint

device = BUDGET.device

# %% [markdown]
# ## 1. A model to evaluate
#
# We need a trained digits model. The cell below trains the run budget's U-Net on 60,000 glyph
# digits with the package's trainer, exactly as chapter 05 does (`TrainConfig.from_budget`,
# `Trainer`). Under the `cpu` budget it stops after 1,800 steps, about five minutes on an otherwise
# idle 2-core laptop (the printout shows this run's own time): a model that draws recognisable but
# imperfect digits, which makes for a more instructive evaluation than a perfect one. Under `gpu` it trains the budget's full 10,000 steps;
# under `smoke` 20 steps, and every number below is noise.
#
# The run is saved to `~/.cache/ddpm_teach/runs/` and resumed from there (the trainer resumes
# exactly, chapter 05), so running this notebook again does not train again. To evaluate a model
# trained elsewhere, point the environment variable `DDPM_TEACH_CH06_CHECKPOINT` at its checkpoint:
# chapter 05's `notebooks/runs/05_training_cpu/last.pt`, say, or the `last.pt` of
# `python -m ddpm_teach.train --data glyph-digits --out DIR`. We sample from the EMA weights, as
# always, and pass every sampler the network's `prediction` (eps for the budgets' runs).

# %% tags=["nbval-ignore-output"]
checkpoint = os.environ.get("DDPM_TEACH_CH06_CHECKPOINT")
if checkpoint:
    _, model, schedule, config = load_checkpoint(checkpoint, device)
    train_images = load_dataset(config.data, n=config.data_size, seed=config.data_seed)[0]
    print(f"loaded {checkpoint}: {config.data}, trained for {config.train_steps} steps")
else:
    train_steps = 1800 if BUDGET.name == "cpu" else BUDGET.train_steps
    cache = Path.home() / ".cache" / "ddpm_teach" / "runs" / f"06_evaluation_{BUDGET.name}"
    run_dir = None if BUDGET.name == "smoke" else cache  # smoke (CI) writes nothing
    config = TrainConfig.from_budget(
        "glyph-digits", BUDGET, train_steps=train_steps, num_samples=0,
        out_dir=str(run_dir) if run_dir else None,
        # The paper's L_simple: Min-SNR (chapter 05) neglects the steps near t = 0, and section 2
        # finds most of the bits there.
        min_snr_gamma=None,
    )
    resume = run_dir is not None and (run_dir / "last.pt").is_file()
    try:
        trainer = Trainer(config, resume=resume, progress=False)
    except ValueError as err:  # the cache holds a run with another config: train afresh
        print(f"not resuming the cached run: {err}")
        trainer = Trainer(config, progress=False)
    steps_cached = trainer.step
    trainer.train()
    model, schedule, train_images = trainer.ema_model(), trainer.schedule, trainer.data.cpu()
    summary = trainer.summary()
    print(
        f"{model.num_parameters():,} parameters; {summary['steps']} steps of batch {config.batch_size} "
        f"({steps_cached} of them found in the cache), {summary['train_time_s']:.0f} s of training "
        f"in all; last loss {summary['final_loss']:.4f}"
    )
model.eval()
T, prediction = schedule.num_steps, config.prediction
assert train_images.shape[1:] == (1, 28, 28), "this chapter evaluates 28 x 28 grey digits"
print(f"T = {T} steps, {len(train_images):,} training images")

# %% [markdown]
# ## 2. How probable is the data? The bound in bits per dimension
#
# ### 2.1 The bound, term by term
#
# The likelihood $p_\theta(x_0) = \int p_\theta(x_{0:T})\, dx_{1:T}$ is an integral over every
# path, which we cannot compute. Chapter 03 bounded its negative logarithm from above with the
# forward process as the distribution of paths (eq. 3), and split the bound into terms (eq. 5):
#
# $$-\log p_\theta(x_0) \;\le\; L = \underbrace{D_\mathrm{KL}\big(q(x_T \mid x_0)\,\|\,p(x_T)\big)}_{L_T}
#   + \sum_{t > 1} \underbrace{D_\mathrm{KL}\big(q(x_{t-1} \mid x_t, x_0)\,\|\,p_\theta(x_{t-1}
#   \mid x_t)\big)}_{L_{t-1}} \underbrace{-\log p_\theta(x_0 \mid x_1)}_{L_0}.$$
#
# - The **prior term** $L_T$ has nothing learned in it: it measures how close $x_T$ is to pure
#   noise, about 0 for the budgets' schedules.
# - Each **denoising term** $L_{t-1}$ is a KL divergence between two Gaussians, the posterior of
#   eqs. 6-7 and the model's step. That has a closed form (exercise 2),
#   $$D_\mathrm{KL}\big(\mathcal N(\mu_1, \sigma_1^2) \,\|\, \mathcal N(\mu_2, \sigma_2^2)\big)
#   = \tfrac12 \Big(\log \frac{\sigma_2^2}{\sigma_1^2} + \frac{\sigma_1^2 + (\mu_1 - \mu_2)^2}
#   {\sigma_2^2} - 1\Big),$$
#   per value, summed over the image: `likelihood.gaussian_kl`. Only $x_t$ is random, drawn once
#   per term from $q(x_t \mid x_0)$, so the bound is itself an estimate.
# - The **decoder term** $L_0$ turns the last Gaussian step into probabilities of the 256 grey
#   levels an 8-bit image can take: each level owns the bin $x \pm 1/255$, the two end levels
#   extend to $\pm\infty$, and the probability of a level is the Gaussian's mass over its bin
#   (eq. 13, `likelihood.discretized_gaussian_log_likelihood`). So $L$ bounds a real, discrete
#   $-\log P(x_0)$, which is what makes it comparable between models.
#
# `likelihood.vlb(model, schedule, x0, terms=True)` returns all of them in nats per image. Divided
# by $D \ln 2$, with $D = 784$ values per digit, they become **bits per dimension** (exercise 1;
# `likelihood.bits_per_dim` does both). For scale: a model that knows nothing and gives all 256
# levels the same probability needs exactly 8 bits/dim; the paper reports 3.70 to 3.75 on
# CIFAR-10.
#
# We evaluate held-out digits (a seed the training set did not use), moved onto the 8-bit grid as
# a PNG would store them, because the discrete likelihood is defined there. The price: **one
# network evaluation per term, $T$ for each image**, as many as sampling it. So we take only a few
# images.

# %% tags=["nbval-ignore-output"]
n_bpd = {"smoke": 4, "cpu": 16}.get(BUDGET.name, 100)
held_out, _ = glyph_digits(n_bpd, seed=606)  # training used seed 0, the metrics use 20,000 and up
held_out = ((held_out + 1) * 127.5).round() / 127.5 - 1  # onto the 8-bit grid, as a PNG stores it

start = time.perf_counter()
bound = vlb(
    model, schedule, held_out.to(device), generator=torch.Generator(device).manual_seed(0),
    prediction=prediction, terms=True,
)
vlb_seconds = time.perf_counter() - start

to_bits = 1 / (held_out[0].numel() * math.log(2))  # nats per image -> bits per dimension
per_image = bound.total.cpu() * to_bits
terms_bpd = bound.terms.cpu().mean(dim=0) * to_bits  # (T,): [0] is L_0, [t] is the KL out of x_t
prior_bpd = bound.prior.cpu().mean().item() * to_bits
bpd = per_image.mean().item()
print(f"bound on -log P(x_0): {bpd:.3f} bits/dim  (mean of {n_bpd} held-out digits; "
      f"per image {per_image.min():.3f} to {per_image.max():.3f}; standard error "
      f"{per_image.std().item() / math.sqrt(n_bpd):.3f})")
print(f"  prior      L_T          {prior_bpd:8.4f} bits/dim")
print(f"  denoising  L_1..L_T-1   {terms_bpd[1:].sum():8.4f} bits/dim")
print(f"  decoder    L_0          {terms_bpd[0]:8.4f} bits/dim")
print(f"cost: {n_bpd} images x {T} network evaluations = {n_bpd * T:,} image-evaluations, "
      f"{vlb_seconds:.0f} s")

# %% [markdown]
# ### 2.2 Where the bits go
#
# Left: each term of the bound, averaged over the images, against the paper's step number $t$ on a
# log scale. Right: the running total from $t = 1$ upwards as a share of the whole bound.
# Most of it is spent in the first few steps, where $x_t$ is almost clean and the question
# is which grey level each pixel has exactly; the hundreds of noisy steps where the digit's shape
# is decided cost almost nothing in bits. That is why the likelihood is a poor guide to what a
# sample looks like (section 4), and why the paper's $L_\text{simple}$, which weighs all steps
# alike, buys better samples at a worse bound.

# %%
steps_paper = torch.arange(1, T + 1)  # the paper's t of each term; t = 1 is the decoder L_0
share = torch.cat([terms_bpd, torch.tensor([prior_bpd])]).cumsum(0) / bpd

fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
ax.loglog(steps_paper[1:], terms_bpd[1:].clamp(min=1e-7), ".", ms=3, label="$L_{t-1}$, a KL term")
ax.loglog(steps_paper[:1], terms_bpd[:1], "o", color="C3", label="$L_0$, the decoder")
ax.set(xlabel="paper's step t (log scale)", ylabel="bits/dim",
       title="the terms of the bound (eq. 5)")
ax.grid(alpha=0.3)
ax.legend()
ax2.semilogx(steps_paper, share[:-1], color="C0")
for level in (0.5, 0.9, 0.99):
    ax2.axhline(level, color="0.7", lw=0.8, ls="--")
ax2.set(xlabel="paper's step t (log scale)", ylabel="share of the bound",
        title="running total of the bound from t = 1 up", ylim=(0, 1.02))
ax2.grid(alpha=0.3)
plt.tight_layout()
plt.show()

# %% tags=["nbval-ignore-output"]
print(f"decoder L_0 alone:               {terms_bpd[0] / bpd:6.1%} of the bound")
for k in sorted({10, T // 10}):
    print(f"first {k:>4} of {T} steps (L_0..L_{k - 1}): {terms_bpd[:k].sum() / bpd:6.1%}")
for level in (0.5, 0.9, 0.99):
    t_level = int((share >= level).nonzero()[0]) + 1
    print(f"{level:.0%} of the bound is spent by step t = {t_level}")

# %% [markdown]
# ### 2.3 The bound is not the likelihood
#
# $L$ is an *upper bound* on $-\log p_\theta(x_0)$, and the gap is known exactly:
# $L = -\log p_\theta(x_0) + D_\mathrm{KL}\big(q(x_{1:T} \mid x_0) \,\|\, p_\theta(x_{1:T} \mid
# x_0)\big)$, the mismatch between the forward paths and the model's own paths into $x_0$. For the
# U-Net we cannot compute $-\log p_\theta(x_0)$, so we cannot see the gap. For one case we can:
#
# one-dimensional data $x_0 \sim \mathcal N(0, 0.5^2)$, and the *exact* denoiser
# $\mathbb E[\epsilon \mid x_t]$ for it (`GaussianMixture.denoiser`, chapter 03), the network a
# perfect training run would give. That denoiser is linear in $x_t$, so each reverse step is
# $x_{t-1} = c_t x_t + \sigma_t z$ and the model's $p_\theta(x_0)$ is a Gaussian whose variance we
# can follow down the chain: $v_{t-1} = c_t^2 v_t + \sigma_t^2$ from $v_T = 1$. Its exact negative
# log-likelihood then sits beside `vlb` (with a Gaussian-density decoder, since this data is
# continuous) and beside the data's own entropy, the least any model can score.

# %% tags=["nbval-ignore-output"]
toy = GaussianMixture([1.0], [[0.0]], 0.5)  # x_0 ~ N(0, 0.25) in one dimension
exact = toy.denoiser(schedule)
# The reverse variances vlb uses: beta_tilde_t, and at t = 0 (where beta_tilde is 0) the next
# step's, for the decoder.
sigma2 = schedule.posterior_variance.clone()
sigma2[0] = schedule.posterior_variance[1]
v = 1.0  # Var(x_T) under p(x_T) = N(0, 1)
one = torch.ones(1, 1, dtype=torch.float64)
for t in reversed(range(T)):
    t_ = torch.tensor([t])
    c_t = ddpm_step(schedule, exact(one, t_), one, t_, noise=torch.zeros_like(one)).item()  # mean at x_t = 1
    v = c_t**2 * v + sigma2[t].item()

x0_toy = toy.sample(20_000, generator=torch.Generator().manual_seed(5))
exact_nll = 0.5 * (math.log(2 * math.pi * v) + x0_toy[:, 0] ** 2 / v)
toy_bound = vlb(exact, schedule, x0_toy, decoder="gaussian", generator=torch.Generator().manual_seed(6))
print(f"the model's samples: variance {v:.4f}   (the data's: 0.2500)")
print(f"data entropy, the least possible:      {0.5 * math.log(2 * math.pi * math.e * 0.25):.3f} nats")
print(f"exact -log p_theta(x_0), mean:         {exact_nll.mean():.3f} nats")
print(f"the bound L (vlb), mean:               {toy_bound.mean():.3f} nats")

# %% [markdown]
# The exact denoiser's samples have almost exactly the data's variance, and its exact negative
# log-likelihood is within a hair of the data's entropy: as good as a model can be. Yet the bound
# is far higher. Each reverse step has exactly the right mean, but its variance
# $\sigma_t^2 = \tilde\beta_t$ is the spread of $x_{t-1}$ when $x_0$ is *known*; the true reverse
# step, which does not know $x_0$, is a little wider. Each deficit hardly moves $p_\theta(x_0)$, but
# the bound compares whole paths step by step and charges every step's mismatch, and over $T$
# steps that adds up. A bound is only as tight as the model's paths are faithful, so **a better
# bound is evidence of a better likelihood, not a measurement of it**, and two models compared by
# their bounds are compared by upper limits.

# %% [markdown]
# ## 3. Do the samples look like the data?
#
# ### 3.1 Samples
#
# Draw `n_eval` samples with the model's own sampler, DDPM's ancestral chain (Algorithm 2,
# `ddpm_sample`) over all $T$ steps, with $\hat x_0$ clipped to $[-1, 1]$ at each step as is usual
# for images. We fix the starting noise $x_T$ so that section 4 can reuse it, and keep every
# $(T/50)$-th state for a slider there.

# %% tags=["nbval-ignore-output"]
n_eval = {"smoke": 16, "cpu": 128}.get(BUDGET.name, 1000)
stride = T // 50
x_T = torch.randn(n_eval, 1, 28, 28, generator=torch.Generator().manual_seed(1)).to(device)
start = time.perf_counter()
ddpm = ddpm_sample(
    model, schedule, x_T.shape, torch.Generator(device).manual_seed(2), x_T=x_T, clip_x0=True,
    prediction=prediction, return_trajectory=True, trajectory_stride=stride,
)
ddpm_seconds = time.perf_counter() - start
samples = ddpm.sample.clamp(-1, 1).cpu()
print(f"{n_eval} samples, {T} steps each: {ddpm_seconds:.0f} s")

# %%
fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 5))
viz.show_images(train_images[:64], nrow=8, title="training digits", ax=ax)
viz.show_images(samples[:64], nrow=8, title=f"DDPM samples, {T} steps", ax=ax2)
plt.tight_layout()
plt.show()

# %% [markdown]
# ### 3.2 The probe's numbers, each beside its floor
#
# Inception-v3 FID, the standard score of image models, needs 100 MB of weights and 299 × 299
# colour images. For glyph digits the package ships a small **digit probe** (`ddpm_teach.probe`): a
# CNN trained to tell the ten digits apart, with an eleventh class "not a digit" for noise and junk.
# `metrics.digit_report` uses it for four numbers:
#
# - **confident share**: the share of samples the probe calls a digit with probability at least 0.9;
# - **class coverage**: how many of the ten digits hold at least 1 % of the confident samples;
# - **entropy** of the confident samples' class histogram, in nats: $\ln 10 = 2.30$ when the ten
#   digits are equally common, 0 when every sample is the same digit;
# - **digit-FID**: the Fréchet distance between Gaussians fitted to the probe's 64-dimensional
#   features of the samples ($\mu_s, \Sigma_s$) and of fresh glyph digits ($\mu_r, \Sigma_r$),
#   $$d^2 = \|\mu_s - \mu_r\|^2 + \operatorname{tr}\big(\Sigma_s + \Sigma_r
#   - 2 (\Sigma_s \Sigma_r)^{1/2}\big)$$
#   (`metrics.frechet_distance`; exercise 3 works it out in one dimension). It is 0 only when
#   means and covariances agree, so it punishes both wrong-looking samples and too little variety.
#
# None of these means anything alone. `metrics.digit_floors(n)` scores **fresh real digits** (the
# best a sampler can do: the FID of real data against real data is not 0 with finitely many
# samples, it shrinks roughly as $1/n$) and **pure noise** (the worst), with the same $n$.

# %% tags=["nbval-ignore-output"]
floors = digit_floors(n_eval)
report = digit_report(samples)


def table(rows):
    """Print digit reports as a table: name -> DigitReport."""
    print(f"{'':26}{'confident':>10}{'classes':>9}{'entropy':>9}{'digit-FID':>11}")
    for name, r in rows.items():
        print(f"{name:26}{r.confident_share:10.1%}{r.coverage:6d}/10{r.entropy:9.2f}"
              f"{r.digit_fid:11.1f}")
    print(f"(n = {n_eval} each; entropy at most ln 10 = 2.30; FID floor: real vs real = "
          f"{floors.data.fid_floor:.1f})")


table({"fresh real digits (floor)": floors.data, f"DDPM, {T} steps": report,
       "pure noise": floors.noise})

# %% [markdown]
# The class histogram behind coverage and entropy: how often the probe confidently sees each digit
# among the samples and among fresh real digits.

# %%
fig, ax = plt.subplots(figsize=(7, 3))
digits = torch.arange(10)
ax.bar(digits - 0.2, floors.data.class_counts, width=0.4, label="fresh real digits")
ax.bar(digits + 0.2, report.class_counts, width=0.4, label="DDPM samples")
ax.set(xticks=digits.tolist(), xlabel="digit (as the probe reads it, p >= 0.9)", ylabel="samples")
ax.legend(ncols=2, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
plt.tight_layout()
plt.show()

# %% [markdown]
# Under the `cpu` budget's short run the verdict is mixed, and the numbers say exactly how. All ten
# digits appear, in roughly equal numbers (coverage and entropy close to the data's): no mode
# collapse. But only about a third of the samples are clean enough for the probe to be sure, and
# the digit-FID is many times the floor. The grid above agrees: blotchy strokes, grey backgrounds.
# A longer run (the `gpu` budget) moves every number towards its floor.
#
# ### 3.3 Two samplers that cheat
#
# Each number can be fooled on its own, which is why we read them together. Two samplers that need
# no model at all:
#
# - **Half the classes**: real glyph digits, but only 0 to 4. Every image is perfect, so the
#   confident share is as high as the data's; only coverage (5/10), entropy ($\ln 5 = 1.61$) and
#   the FID see the missing modes. This is mode collapse, the failure chapter 00 measured on the
#   eight Gaussians.
# - **The copier**: training images, returned as they are. It scores like fresh data on *every*
#   number above, because they compare samples with the data distribution, and the training set is
#   a fine sample of it. Only a comparison with the training set itself can catch a copier
#   (section 3.4).

# %% tags=["nbval-ignore-output"]
g = torch.Generator().manual_seed(7)
real, labels = glyph_digits(3 * n_eval, seed=607)
half_classes = real[labels < 5][:n_eval]  # labels are balanced: about 1.5 n_eval of them are 0-4
copier = train_images[torch.randperm(len(train_images), generator=g)[:n_eval]]
table({"fresh real digits (floor)": floors.data, f"DDPM, {T} steps": report,
       "half the classes": digit_report(half_classes), "the copier": digit_report(copier),
       "pure noise": floors.noise})

# %% [markdown]
# Half the classes has a perfect confident share and is caught by coverage, entropy and FID, as
# designed. The copier scores like real data on every count. Its digit-FID does sit above the
# floor: `glyph_digits` deals the ten digits out in exactly equal numbers, while 128 images drawn
# at random, from the training set or from any sampler, have random class counts, and the FID
# notices the different class frequencies. At this $n$, read the floor as a lower limit, not as
# the score of a perfect sampler.

# %% [markdown]
# ### 3.4 Memorisation: each sample's nearest training image
#
# A model that memorised its training set would be a copier. The check is blunt and effective:
# for each sample, find its **nearest training image** in pixel space (Euclidean distance over the
# 784 values, exercise 4) and look at the pairs. To know what "near" means, do the same for a
# second, fresh set of real digits: they were drawn from the same distribution as the training
# set but are not in it, so their nearest-neighbour distances are what "new, but typical" looks
# like. Samples much closer to the training set than that are copies.

# %%
def nearest_training_image(images, train, chunk=256):
    """For each image (N, ...) the Euclidean distance (N,) to its nearest `train` image and that
    image's index (N,); in chunks, so memory stays at chunk x len(train) distances."""
    flat = train.flatten(1)
    dist, idx = [], []
    for part in images.flatten(1).split(chunk):
        d, i = torch.cdist(part, flat).min(dim=1)
        dist.append(d)
        idx.append(i)
    return torch.cat(dist), torch.cat(idx)


fresh, _ = glyph_digits(n_eval, seed=608)  # "a second training set"
d_samples, i_samples = nearest_training_image(samples, train_images)
d_fresh, _ = nearest_training_image(fresh, train_images)
d_copier, _ = nearest_training_image(copier, train_images)

# %% tags=["nbval-ignore-output"]
print(f"median distance to the nearest training image: samples {d_samples.median():.2f}, "
      f"fresh real digits {d_fresh.median():.2f}, the copier {d_copier.median():.2f}")
print(f"closest sample: {d_samples.min():.2f}; closest fresh digit: {d_fresh.min():.2f}")
print(f"samples closer than the closest fresh digit: {(d_samples < d_fresh.min()).sum()} of {n_eval}")

# %% [markdown]
# Left, the two distributions of distances. Right, the twelve samples *closest* to the training
# set, the most suspicious ones, each above its nearest training image, with the distance. If
# these were copies the pairs would be identical and the distances near 0.

# %%
closest = d_samples.argsort()[:12]
fig = plt.figure(figsize=(12, 3.0))
ax = fig.add_axes((0.05, 0.17, 0.28, 0.73))
bins = torch.linspace(0, max(d_samples.max(), d_fresh.max()).item(), 30)
ax.hist(d_fresh, bins=bins, alpha=0.6, label="fresh real digits")
ax.hist(d_samples, bins=bins, alpha=0.6, label="DDPM samples")
ax.set(xlabel="distance to the nearest training image", ylabel="images")
ax.legend(fontsize=8)
for k, i in enumerate(closest.tolist()):
    for row, (img, text) in enumerate([(samples[i], f"{d_samples[i]:.1f}"),
                                       (train_images[i_samples[i]], None)]):
        pic = fig.add_axes((0.37 + k * 0.052, 0.52 - row * 0.21, 0.048, 0.192))  # square
        pic.imshow(img[0], cmap="gray", vmin=-1, vmax=1)
        pic.set_axis_off()
        if text:
            pic.set_title(text, fontsize=8)
fig.text(0.37, 0.86, "the 12 samples closest to the training set (top) and their nearest "
         "training images (bottom), with the distance", fontsize=9)
plt.show()

# %% [markdown]
# No sign of memorisation: the samples are, if anything, *farther* from the training set than
# fresh real digits (they are imperfect), and even the closest ones are no closer than fresh
# digits typically are: similar digits, not copies. Memorisation becomes a real risk with large
# models trained long on small data sets, and this check is cheap enough to run on every model.

# %% [markdown]
# ## 4. Quality against speed: DDIM
#
# ### 4.1 Same network, another sampler
#
# DDPM's chain takes $T$ steps, one network evaluation each. DDIM (Song, Meng & Ermon 2021) takes
# far fewer, with **the same trained network**: nothing is retrained. From $x_t$ it predicts
# $\hat x_0$ (eq. 4 inverted) and jumps to any earlier step $s < t$ of a subsequence
# (`sampling.ddim_timesteps`),
#
# $$x_s = \sqrt{\bar\alpha_s}\, \hat x_0 + \sqrt{1 - \bar\alpha_s - \sigma^2}\;
#   \epsilon_\theta(x_t, t) + \sigma z, \qquad
#   \sigma = \eta \sqrt{\frac{1 - \bar\alpha_s}{1 - \bar\alpha_t}}
#   \sqrt{1 - \frac{\bar\alpha_t}{\bar\alpha_s}}$$
#
# (their eq. 12, `sampling.ddim_step`). With $\eta = 0$ no noise is added: the map from $x_T$ to
# $x_0$ is deterministic. With $\eta = 1$ and every step kept, it *is* DDPM's ancestral step
# with $\sigma_t^2 = \tilde\beta_t$; with $\eta = 1$ on a subsequence it is ancestral sampling
# with bigger steps. Check the second claim: DDIM over all $T$ steps with $\eta = 1$, fed the same
# noise as DDPM, gives DDPM's samples.

# %% tags=["nbval-ignore-output"]
few = x_T[:4]
ddpm_few = ddpm_sample(model, schedule, few.shape, torch.Generator(device).manual_seed(3),
                       x_T=few, clip_x0=True, prediction=prediction)
ddim_few = ddim_sample(model, schedule, few.shape, num_steps=T, eta=1.0,
                       generator=torch.Generator(device).manual_seed(3), x_T=few, clip_x0=True,
                       prediction=prediction)
print(f"DDPM vs DDIM (T steps, eta = 1), same noise: largest difference "
      f"{(ddpm_few - ddim_few).abs().max():.1e} (values in [-1, 1])")

# %% [markdown]
# ### 4.2 Fewer steps
#
# Now run DDIM with 10 to 100 steps, with $\eta = 0$ and $\eta = 1$, from the same $x_T$ as the
# DDPM samples of section 3, and score every run with the probe. The timings are this machine's.

# %% tags=["nbval-ignore-output"]
ddim_steps = [s for s in (10, 20, 50, 100) if s < T]
runs = {("DDPM", T): (ddpm_seconds, report)}
for eta in (0.0, 1.0):
    for steps in ddim_steps:
        start = time.perf_counter()
        out = ddim_sample(
            model, schedule, x_T.shape, num_steps=steps, eta=eta,
            generator=torch.Generator(device).manual_seed(4), x_T=x_T, clip_x0=True,
            prediction=prediction, return_trajectory=(steps == 50 and eta == 0.0),
        )
        seconds = time.perf_counter() - start
        if steps == 50 and eta == 0.0:
            ddim50 = out  # kept for the slider
            out = out.sample
        runs[(f"DDIM eta={eta:g}", steps)] = (seconds, digit_report(out.clamp(-1, 1).cpu()))

print(f"{'sampler':14}{'steps':>6}{'seconds':>9}{'confident':>11}{'classes':>9}{'digit-FID':>11}")
for (name, steps), (seconds, r) in runs.items():
    print(f"{name:14}{steps:6d}{seconds:9.1f}{r.confident_share:11.1%}{r.coverage:6d}/10"
          f"{r.digit_fid:11.1f}")
print(f"floors: fresh real digits {floors.data.confident_share:.1%} confident, "
      f"digit-FID {floors.data.fid_floor:.1f}")

# %% [markdown]
# Quality against time, one point per run, labelled with its number of steps. Left the digit-FID
# (lower is better; the dashed line is the real-vs-real floor), right the confident share (higher
# is better; dashed: fresh real digits).

# %%
fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
for name, style in [("DDIM eta=0", "o-"), ("DDIM eta=1", "s-"), ("DDPM", "*")]:
    pts = [(steps, sec, r) for (n, steps), (sec, r) in runs.items() if n == name]
    secs = [p[1] for p in pts]
    label = {"DDIM eta=0": "DDIM, eta = 0", "DDIM eta=1": "DDIM, eta = 1 (ancestral)",
             "DDPM": f"DDPM, all {T} steps"}[name]
    for axis, value in ((ax, lambda r: r.digit_fid), (ax2, lambda r: 100 * r.confident_share)):
        axis.plot(secs, [value(p[2]) for p in pts], style, ms=9 if name == "DDPM" else 5,
                  label=label)
        for steps, sec, r in pts:
            axis.annotate(str(steps), (sec, value(r)), textcoords="offset points", xytext=(4, 4),
                          fontsize=7)
ax.axhline(floors.data.fid_floor, color="k", ls="--", lw=0.8, label="real vs real")
ax2.axhline(100 * floors.data.confident_share, color="k", ls="--", lw=0.8, label="real digits")
ax.set(xscale="log", yscale="log", xlabel="seconds to sample (log scale)", ylabel="digit-FID")
ax2.set(xscale="log", xlabel="seconds to sample (log scale)", ylabel="confident digits (%)",
        ylim=(0, 105))
for axis in (ax, ax2):
    axis.xaxis.set_major_formatter(ScalarFormatter())  # plain seconds, not powers of 10
    axis.xaxis.set_minor_formatter(NullFormatter())
    axis.grid(alpha=0.3)
ax.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# On this model three things stand out. Ancestral steps ($\eta = 1$) over 20 to 100 steps score
# about as well as DDPM's full chain, within the noise of 128 samples, in a small fraction of the
# time; at 10 steps the confident share holds but the digit-FID rises clearly. Deterministic DDIM ($\eta = 0$) is far worse at every
# step count. That is the opposite of what Song et al. (their Table 1) found for large,
# well-trained CIFAR-10 models, where $\eta = 0$ wins clearly at 10 to 50 steps. A plausible reading:
# fresh noise lets later steps correct an imprecise network's earlier errors, while a
# deterministic path carries every error to the end (the measurements behind the run budgets,
# in `ddpm_teach.budgets`, found the same). So measure on your own model. And the bound of
# section 2 did not change through any of this: it belongs to the network, not to the sampler.
#
# ### 4.3 Watching the two samplers
#
# The slider plays DDPM (every $(T/25)$-th of its $T$ steps) and DDIM with 50 steps and $\eta = 0$
# (every other step) side by side, from the same $x_T$: both panels of a frame show the same
# step $t$. DDPM swaps part of its noise for fresh noise at every step, so its states keep their
# grain until late; DDIM with $\eta = 0$ only rescales the noise it predicts, so the starting
# pattern fades smoothly. They often end on different digits: the samplers share the network, not
# the path. On this briefly trained network, look closely at DDIM's last frame: some digits keep a
# faint grain of the starting noise, a likely reason the probe rejects more of them.

# %%
assert ddpm.timesteps == ddim50.timesteps  # the same t in every frame
every, show = 2, 6  # 26 frames of 6 digits keep the stored notebook small
frame_ts = [None if s < 0 else s for s in ddpm.timesteps[::every]]  # None marks the final x_0
viz.frames_slider(
    {f"DDPM, {T} steps": ddpm.xs[::every, :show],
     "DDIM, 50 steps, eta = 0": ddim50.xs[::every, :show]},
    frame_ts, schedule, title="One x_T, two samplers: press Play",
)

# %% [markdown]
# <div style="border: 1px solid #d0a000; background: #fff8e0; padding: 0.6em 1em; border-radius: 4px">
#
# **Common misconceptions**
#
# - *"Lower FID means a better likelihood."* They measure different things and can disagree. The
#   bound of section 2 belongs to the model alone; the runs of section 4 all used that one model,
#   yet their digit-FIDs differ widely, because FID judges a sampler's output. The copier of
#   section 3.3 scores like real data, yet as a model it gives every held-out digit probability 0,
#   an infinitely bad likelihood. And section 2.2 showed where the bits go: into the exact grey
#   levels of nearly clean images, which FID hardly sees.
# - *"DDIM is a different model."* It is a different *sampler* for the same network, trained once
#   with $L_\text{simple}$. With $\eta = 1$ and all $T$ steps it reproduces DDPM's samples exactly
#   (section 4.1); with fewer steps or $\eta = 0$ it follows other paths to similar digits.
# - *"The bound is the likelihood."* It is an upper bound on $-\log p_\theta(x_0)$, and it can be
#   loose: for the exact denoiser of section 2.3 it was far above the exact value. It is also an
#   estimate, from one draw of $x_t$ per term.
# - *"A digit-FID of 0 is the goal."* At finite $n$ even real data scores above 0 (the floor); a
#   sampler is as good as the metric can tell when it reaches the floor.
# - *"If the samples are good, the model has not memorised."* A copier's samples are perfect. Only
#   the comparison with the training set (section 3.4) tells new digits from copies.
#
# </div>

# %% [markdown]
# ## Summary
#
# - The variational bound (eq. 5, `likelihood.vlb`) splits into a prior term, $T - 1$ Gaussian KLs
#   and a discrete decoder (eq. 13); in bits per dimension (`bits_per_dim`: nats / $(D \ln 2)$) it
#   is comparable across models and data sizes. It costs $T$ network evaluations per image, and
#   almost all of its bits are spent in the first few, nearly clean, steps.
# - It is an upper bound on $-\log p_\theta(x_0)$, not the value: the exact denoiser of a 1-D
#   Gaussian has a nearly perfect likelihood and a clearly looser bound.
# - Sample quality needs several numbers read together, each beside its floor: confident share,
#   class coverage and entropy, and digit-FID (`metrics.digit_report`, `digit_floors`). Half the
#   classes fools the confident share; a copier fools them all and is caught only by nearest
#   training neighbours.
# - DDIM (`ddim_sample`) samples the same network in far fewer steps; $\eta$ sets how much fresh
#   noise each step adds, and with $\eta = 1$ over all $T$ steps it is DDPM.

# %% [markdown]
# ## Exercises
#
# Each exercise asks for one function. Write it in the cell marked as the solution, run the next
# cell, and `check` tells you whether it is right or what exactly is wrong.
#
# **Exercise 1: bits per dimension.** `vlb` returns the bound in nats per image, shape (B,). Convert
# it to bits per dimension: divide by $\ln 2$ (a bit is $\ln 2 \approx 0.693$ nats) and by $D$, the
# number of values in one example of `x0` (shape (B, ...)).

# %% tags=["solution"]
def bits_per_dim(nats, x0):
    """Nats per example (B,) -> bits per dimension (B,), with D = x0[0].numel()."""
    return nats / (x0[0].numel() * math.log(2))


# %%
from ddpm_teach.exercises import check

check("bits-per-dim", bits_per_dim)

# %% [markdown]
# **Exercise 2: the KL between two Gaussians**, the building block of every denoising term of the
# bound. Return $D_\mathrm{KL}(\mathcal N(\mu_1, \sigma_1^2) \,\|\, \mathcal N(\mu_2, \sigma_2^2))$
# elementwise, given the means and the *variances*:
# $\tfrac12 \big(\log(\sigma_2^2 / \sigma_1^2) + (\sigma_1^2 + (\mu_1 - \mu_2)^2) / \sigma_2^2 - 1\big)$.

# %% tags=["solution"]
def gaussian_kl(mean1, var1, mean2, var2):
    """KL(N(mean1, var1) || N(mean2, var2)) per value, in nats (inputs broadcast)."""
    return 0.5 * (torch.log(var2 / var1) + (var1 + (mean1 - mean2) ** 2) / var2 - 1)


# %%
from ddpm_teach.exercises import check

check("gaussian-kl", gaussian_kl)

# %% [markdown]
# **Exercise 3: the Fréchet distance in one dimension.** The FID formula
# $\|\mu_1 - \mu_2\|^2 + \operatorname{tr}(\Sigma_1 + \Sigma_2 - 2(\Sigma_1 \Sigma_2)^{1/2})$ for
# two 1-D Gaussians $\mathcal N(\mu_1, v_1)$ and $\mathcal N(\mu_2, v_2)$, elementwise over a batch of
# pairs. (Simplify it: what does it become in terms of the standard deviations?)

# %% tags=["solution"]
def frechet_1d(mu1, var1, mu2, var2):
    """Squared Frechet distance of N(mu1, var1) and N(mu2, var2), shape (B,)."""
    return (mu1 - mu2) ** 2 + var1 + var2 - 2 * torch.sqrt(var1 * var2)


# %%
from ddpm_teach.exercises import check

check("frechet-1d", frechet_1d)

# %% [markdown]
# **Exercise 4: the memorisation check.** For each sample (shape (N, ...)) find its nearest image in
# `train` (shape (M, ...)) by the Euclidean distance over all values, and return `(distances,
# indices)`, both of shape (N,).

# %% tags=["solution"]
def nearest_neighbour(samples, train):
    """(distance to the nearest train image (N,), its index in train (N,)) for each sample."""
    distances = torch.cdist(samples.flatten(1), train.flatten(1))  # (N, M)
    return distances.min(dim=1)


# %%
from ddpm_teach.exercises import check

check("nearest-neighbour", nearest_neighbour)

# %% [markdown]
# **To explore further** (no checks):
#
# - Compute the bound with `vlb(..., variance="large")`. The network is the same, the reverse
#   variances are $\beta_t$: which terms change, and is this a different model or a different bound?
# - Score the DDPM samples with `digit_report(samples, threshold=0.5)` and `threshold=0.99`. Which
#   numbers move?
# - Try `ddim_sample(..., spacing="leading")`, the subsequence many libraries use by default, with
#   10 steps. Where does it start, and what does that do to the samples?
