# %% [markdown]
# # 05 Training for real
#
# Chapter 03 ran the reverse chain with a denoiser, and chapter 04 built the network that will
# play that part: the U-Net $\epsilon_\theta(x_t, t)$. Now we train it on images. The loop itself
# is five lines (Algorithm 1 of Ho, Jain & Abbeel 2020); what makes a run work is the recipe
# around it: warm-up, gradient clipping, an average of the weights, checkpoints that survive a
# crash, and a size of run that fits the machine at hand.
#
# **Learning objectives.** After this chapter you can:
#
# - train a DDPM on digits under a run budget, from CPU to GPU without edits;
# - use EMA weights, mixed precision, checkpoints and resume.
#
# **One notebook, three machines.** Nothing below changes between runs except the *run budget*,
# picked by the setup cell from `$DDPM_TEACH_BUDGET` (or a GPU's presence):
#
# | budget | where | how long | what you get |
# |---|---|---|---|
# | `smoke` | tests and CI | seconds | a tiny model that learns nothing; only checks that every cell runs |
# | `cpu` | a laptop, 2 cores | 8-13 minutes of training | digits the probe of section 7 recognises (90 %) |
# | `gpu` | one GPU | a few minutes | sharp digits, a 24x larger network |
#
# The outputs stored in this notebook come from the `cpu` budget on a 2-core machine (section 6
# has its timings).

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
import dataclasses
import inspect
import math
import os
import shutil
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from IPython.display import display
from matplotlib.figure import Figure

from ddpm_teach import fused, training, viz
from ddpm_teach.budgets import BUDGETS, budget
from ddpm_teach.data import glyph_digits, load_dataset
from ddpm_teach.metrics import digit_floors, digit_report
from ddpm_teach.sampling import ddim_sample
from ddpm_teach.training import TrainConfig, Trainer, ema_decay_at, load_checkpoint
from ddpm_teach.unet import UNet

# Where this notebook's run writes its checkpoint and previews (relative to the notebook); one
# folder per budget, so that a quick smoke run never clobbers a long cpu run.
RUN_DIR = Path("runs") / f"05_training_{BUDGET.name}"

# %% [markdown]
# ## 1. The run budget
#
# A *run budget* (`ddpm_teach.budgets.budget`) is a named set of sizes: the network's width, the
# number of training steps, the batch, the learning rate and so on. The notebook reads every size
# from it and never hard-codes one, which is what lets the same cells run in seconds in CI, in
# about ten minutes on a laptop and in minutes on a GPU. The three budgets, side by side:

# %%
rows = [
    ("U-Net width (base_channels)", "base_channels"),
    ("levels (channel_mults)", "channel_mults"),
    ("ResBlocks per level", "num_res_blocks"),
    ("self-attention at levels", "attention_levels"),
    ("T (diffusion steps)", "num_steps"),
    ("training steps", "train_steps"),
    ("training steps, CIFAR-10", "cifar_train_steps"),
    ("batch size", "batch_size"),
    ("peak learning rate", "lr"),
    ("warm-up steps", "warmup_steps"),
    ("EMA decay", "ema_decay"),
    ("Min-SNR gamma (section 3)", "min_snr_gamma"),
    ("bf16 autocast (where native)", "bf16"),
    ("channels_last (section 5)", "channels_last"),
    ("glyph digits rendered", "data_size"),
]
print(f"{'':30}" + "".join(f"{name:>14}" for name in BUDGETS))
for label, key in rows:
    print(f"{label:30}" + "".join(f"{BUDGETS[name][key]!s:>14}" for name in BUDGETS))
n_params = [sum(p.numel() for p in UNet(1, **budget(name).model_kwargs()).parameters()) for name in BUDGETS]
print(f"{'U-Net parameters (grey images)':30}" + "".join(f"{n:>14,}" for n in n_params))

# %% [markdown]
# The `cpu` column is small on purpose. Measured on 2-core machines (the notes are in
# `ddpm_teach/budgets.py`): in the same nine minutes of training, a 267k-parameter U-Net drew
# recognisable digits where a 1.06M-parameter one, four times slower per step, was still far
# behind (it needed 16 minutes to catch up). Self-attention at 14 x 14 cost a fifth of every step,
# so the `cpu` U-Net keeps only the bottleneck's. On a GPU the arithmetic is cheap and the budget can afford the
# paper's shape: more channels, two ResBlocks per level, attention at 14 x 14.

# %% [markdown]
# ## 2. The data
#
# By default the course trains on **glyph digits** (`ddpm_teach.data.glyph_digits`): 28 x 28 grey
# digits rendered from the fonts that ship with matplotlib, randomly placed, scaled, slanted and
# stroked, so they need no download. Like every image set here they live in $[-1, 1]$ with the
# background at $-1$.
#
# **Real data sets.** If you have MNIST, Fashion-MNIST or CIFAR-10 (or are happy to download
# them), set `DATASET` below to `"mnist"`, `"fashion-mnist"` or `"cifar10"`. The first run then
# downloads the set (11 MB for MNIST, 163 MB for CIFAR-10) into `ddpm_teach.data.data_root()`,
# checks its SHA-256 and reads it from there afterwards. The `smoke` budget never downloads.
# CIFAR-10 is colour and much harder: the `gpu` budget gives it several times more steps
# (`cifar_train_steps` in the table above), and the trainer flips its images left-right at random,
# as DDPM did.

# %%
DATASET = "glyph-digits"  # or "mnist", "fashion-mnist", "cifar10" (downloads once, see above)

if DATASET == "glyph-digits":
    data, labels = glyph_digits(BUDGET.data_size, seed=0)
else:
    data, labels = load_dataset(DATASET, download=BUDGET.name != "smoke")
print(f"{DATASET}: images of shape (C, H, W) = {tuple(data.shape[1:])}, values in [{data.min():.0f}, {data.max():.0f}]")
fig, ax = plt.subplots(figsize=(10, 3.7))
viz.show_images(data[:48], nrow=12, ax=ax, title=f"{DATASET}: 48 training images")
plt.show()

# %% [markdown]
# ## 3. Algorithm 1, line by line
#
# Training repeats one step (Algorithm 1 of the paper) until the budget's step count is reached:
#
# 1. draw a batch of images $x_0 \sim q(x_0)$ (each epoch is one fixed random permutation of the
#    data, drawn from the seed: `Trainer._indices`);
# 2. draw a step for each image, $t \sim \mathrm{Uniform}\{1, \dots, T\}$ (code indices
#    $0, \dots, T-1$), and noise $\epsilon \sim \mathcal N(0, I)$;
# 3. jump to step $t$ in one go with the closed form of chapter 02 (eq. 4, `NoiseSchedule.q_sample`):
#
#    $$x_t = \sqrt{\bar\alpha_t}\, x_0 + \sqrt{1-\bar\alpha_t}\, \epsilon ;$$
#
# 4. take a gradient step on the simplified loss (eq. 14), a plain mean squared error:
#
#    $$L_\text{simple}(\theta) = \mathbb E_{t, x_0, \epsilon}\,
#      \big\| \epsilon - \epsilon_\theta(x_t, t) \big\|^2 .$$
#
# In the trainer (`Trainer._train_step`) the loss is
# `F.mse_loss(out, schedule.target(x0, noise, t, prediction))` (weighted per example when
# `min_snr_gamma` is set: the end of this section): `NoiseSchedule.target` is $\epsilon$
# for the paper's $\epsilon$-prediction, and $x_0$ or $v$ for the other two parameterisations
# (exercise 1 writes it out). Here is one such step done by hand, with an untrained U-Net:

# %%
schedule = training.make_schedule(BUDGET.schedule, BUDGET.num_steps)  # the trainer's schedule
untrained = UNet(data.shape[1], **BUDGET.model_kwargs())

g = torch.Generator().manual_seed(1)
x0 = data[torch.randperm(len(data), generator=g)[:64]]  # 1. a batch
t = torch.randint(0, schedule.num_steps, (64,), generator=g)  # 2. a step per image ...
eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2))  # ... and noise
x_t = schedule.q_sample(x0, t, eps)  # 3. eq. 4
out = untrained(x_t, t)
loss = F.mse_loss(out, schedule.target(x0, eps, t, "eps"))  # 4. eq. 14
print(f"the untrained U-Net outputs exactly zero: {bool((out == 0).all())}")
print(f"so its loss is the mean of eps^2: L_simple = {loss.item():.3f}, mean(eps^2) = {eps.pow(2).mean().item():.3f}")

# %% [markdown]
# The U-Net's last convolution starts at zero (chapter 04), so before training it predicts
# $\epsilon_\theta = 0$ and the loss is $\mathbb E[\epsilon^2] = 1$. Every loss curve of this chapter
# therefore starts at 1; a run that starts far above 1 has a bug in its data range or its target.
#
# What the network sees: an image $x_t$ at a random noise level, and the noise $\epsilon$ it must
# find in it. At small $t$ the noise is a faint speckle on a clear digit; at large $t$ the digit is
# a faint trace in the noise.

# %%
order = torch.argsort(t[:8])  # left to right: little noise to much noise
fig, axes = plt.subplots(3, 8, figsize=(10, 4.2), layout="constrained")
for col, i in enumerate(order.tolist()):
    for row, (img, name) in enumerate(((x0, "$x_0$"), (x_t, "$x_t$ (input)"), (eps, r"$\epsilon$ (target)"))):
        viz.show_images(img[i : i + 1], ax=axes[row, col])
        if col == 0:
            axes[row, col].text(-0.15, 0.5, name, transform=axes[row, col].transAxes, ha="right", va="center")
    axes[0, col].set_title(f"t = {t[i].item()}", fontsize=9)
plt.show()

# %% [markdown]
# ### Which noise levels the loss pays for
#
# $L_\text{simple}$ weighs every step $t$ alike in the currency of $\epsilon$. In the currency of the
# image it does not. Solve eq. 4 for $x_0$: the network's noise estimate implies
# $\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\hat\epsilon)/\sqrt{\bar\alpha_t}$, so
#
# $$\big\|\epsilon - \hat\epsilon\big\|^2 = \mathrm{SNR}_t\, \big\|x_0 - \hat x_0\big\|^2,
#   \qquad \mathrm{SNR}_t = \frac{\bar\alpha_t}{1 - \bar\alpha_t} .$$
#
# The signal-to-noise ratio runs from about $10^4$ at the first step to $4 \cdot 10^{-5}$ at the
# last. So $L_\text{simple}$ charges an error in the digit ten thousand times more at $t = 0$, where
# only a faint speckle is left to remove, than in the middle of the chain, where the digit's shape
# is decided. The nearly clean steps pull the small network's few weights their way.
#
# **Min-SNR-$\gamma$** (Hang et al. 2023) caps the price of an image error at $\gamma$: the loss of
# step $t$ is multiplied by $\min(\mathrm{SNR}_t, \gamma) / \mathrm{SNR}_t$
# (`training.min_snr_weight`; `TrainConfig.min_snr_gamma`). That weight is exactly 1 wherever
# $\mathrm{SNR}_t \le \gamma$, so it leaves most of the chain as the paper has it and only quietens
# the steps nearest the data. The plot shows it for this schedule:

# %% tags=["nbval-ignore-output"]
snr = schedule.snr(torch.arange(schedule.num_steps))
gamma = BUDGET.min_snr_gamma or 5.0
weight = training.min_snr_weight(schedule, torch.arange(schedule.num_steps), "eps", gamma)
fig, (ax_snr, ax_w) = plt.subplots(1, 2, figsize=(10, 3.2), layout="constrained")
ax_snr.semilogy(snr.numpy(), label=r"$\mathrm{SNR}_t$: weight of the $x_0$ error in $L_\mathrm{simple}$")
ax_snr.semilogy(snr.clamp(max=gamma).numpy(), "--", label=rf"Min-SNR: capped at $\gamma$ = {gamma:g}")
ax_snr.set(xlabel="step t", title="what an error in the image costs")
ax_w.plot(weight.numpy())
ax_w.set(xlabel="step t", ylabel="weight", title=rf"loss weight on $\|\epsilon - \hat\epsilon\|^2$, $\gamma$ = {gamma:g}")
ax_snr.legend(fontsize=8)
for ax in (ax_snr, ax_w):
    ax.grid(alpha=0.3)
plt.show()
first = int((snr <= gamma).nonzero()[0])
print(f"weight 1 from t = {first} on ({100 * (1 - first / len(snr)):.0f} % of the steps); at t = 0 it is {weight[0]:.1e}")

# %% [markdown]
# On these digits the cap matters a great deal (`docs/benchmarks.md`, "Glyph digits", runs on one
# core of a 2-core EPYC): halfway through a run, after 2,250 steps, 79 % of the samples were
# confident digits with the cap ($\gamma$ = 5 and $\gamma$ = 1 alike) against 49 % after 2,000
# steps without it. From the train command, 7,000 steps with the cap gave 91.2 % confident digits
# where $L_\text{simple}$ gave 88.8 % (and needed 10,000 steps for 92.9 %). The `cpu` budget trains
# with $\gamma = 1$, which scored a little better than the paper's 5 over 4,500 steps (90.2 % against
# 89.0 %, within the noise of 500 samples). The `gpu` budget keeps the paper's $L_\text{simple}$
# until the same comparison has been run on a GPU.

# %% [markdown]
# ### Which noise levels the batch visits
#
# Algorithm 1 draws $t$ uniformly, but the steps are far from equally informative. With
# $\gamma = 1$ the cleanest tenth of the chain weighs almost nothing (down to $10^{-4}$), and at the
# noisiest steps $x_t$ is nearly pure noise, so $\epsilon$ is easy to predict and the loss is small.
# Uniform $t$ spends a good part of every batch on steps whose gradients barely count.
# **Importance sampling** moves the batch to where the loss is: draw
# $t$ with probability $p_t$ instead of $1/T$, and divide that example's loss by $T p_t$. The
# expected loss is unchanged,
#
# $$\mathbb{E}_{t \sim p}\Big[\frac{L_t}{T\,p_t}\Big] = \sum_t p_t \frac{L_t}{T\,p_t}
#   = \frac{1}{T}\sum_t L_t ,$$
#
# so the network learns the same thing, with a gradient of smaller variance when $p_t$ follows the
# size of $L_t$. Nichol & Dhariwal (2021, section 3.3) estimate that size from the training itself:
# each step $t$ remembers its last 10 losses, and $p_t \propto \sqrt{\text{mean of their
# squares}}$, mixed with a little of the uniform distribution so that no step is starved; until
# every step has its 10 losses, $t$ stays uniform (`training.LossAwareSampler`;
# `TrainConfig.t_sampling = "loss-aware"`). The sampler learns $p$ as the network learns, so it
# shifts during training; section 6 shows where it ended up.
#
# On these digits it pays as much as Min-SNR did (`docs/benchmarks.md`, "Glyph digits"; 500
# samples per score, the same seed): after 5,000 steps 92.2 % confident digits with it against
# 89.0 % without, and 87.6 % against 83.2 % halfway; so the `cpu` budget trains 4,000 steps where
# it needed 7,000 before. The `gpu` budget keeps the paper's uniform $t$.

# %% [markdown]
# ## 4. The recipe around the loop
#
# `TrainConfig.from_budget` turns the budget into a full configuration, and `Trainer` runs it.
# Besides the loop, the configuration holds the paper's recipe:
#
# - **AdamW** (Adam with decoupled weight decay; DDPM used none, and neither do we), learning rate
#   `lr`.
# - **Linear warm-up** of the learning rate over `warmup_steps` (`Trainer.lr_at`):
#   $\eta_s = \eta \min\!\big(1, \tfrac{s+1}{S_\text{warm-up}}\big)$ for step $s$ counted from 0.
#   Adam's first updates are large relative to the weights (its moment estimates have seen only a
#   few gradients), and a small learning rate while they settle keeps those steps from wrecking
#   the initialisation. DDPM warmed up over 5000 steps.
# - **Then flat, or a cosine decay** (`lr_decay`). DDPM kept the learning rate flat for its
#   800,000 steps. A short run gains from ending with small steps: with `lr_decay="cosine"` the
#   rate follows half a cosine from $\eta$ down to 0 at the last step,
#   $\eta_s = \tfrac{\eta}{2}\big(1 + \cos(\pi\, \tfrac{s - S_\text{warm-up}}{S - S_\text{warm-up}})\big)$
#   for a run of $S$ steps. Measured on these digits (`docs/benchmarks.md`; section 7 explains
#   the score): over 3,600 steps, 81 % confident digits with the decay from a peak of 0.002, 71 %
#   with the decay from 0.001 (the rate is then too small for too long), 79 % with a flat 0.001;
#   over 6,000 steps, 90.8 % from a peak of 0.003 and 88.2 % from 0.002. The `cpu` budget decays
#   from 0.003 over 4,000 steps.
# - **Gradient clipping** at global norm 1 (`grad_clip`): when the gradient of all weights together
#   is longer than 1, it is scaled down to length 1, so that one unlucky batch cannot throw the
#   weights far away.
# - **An exponential moving average (EMA) of the weights** (`training.ema_update`), updated after
#   every step and used for sampling:
#
#   $$\bar\theta \leftarrow \mu\, \bar\theta + (1-\mu)\, \theta .$$
#
#   Unrolled, $\bar\theta$ is a weighted average of the recent weights with weights $\propto \mu^k$
#   for the weights of $k$ steps ago, so it averages over roughly the last $1/(1-\mu)$ steps (200 for
#   the `cpu` budget's $\mu = 0.995$, 2000 for the `gpu` budget's 0.9995). The optimiser's weights jitter around a good solution, because every step follows
#   the gradient of one noisy batch; the average sits nearer its middle. Early on the decay is
#   warmed up too, $\mu_n = \min\!\big(\mu, \tfrac{1+n}{10+n}\big)$ (`training.ema_decay_at`), so that
#   a short run's average is not mostly the random initial weights.

# %% tags=["nbval-ignore-output"]
shutil.rmtree(RUN_DIR, ignore_errors=True)  # a fresh run each time the notebook runs
config = TrainConfig.from_budget(DATASET, BUDGET, out_dir=str(RUN_DIR))
trainer = Trainer(config, data, progress=False)
print(
    f"{config.data}: {len(trainer.data):,} images; U-Net with "
    f"{sum(p.numel() for p in trainer.model.parameters()):,} parameters on {trainer.device}\n"
    f"{config.train_steps:,} steps of {config.batch_size} images, lr {config.lr:g} after "
    f"{config.warmup_steps} warm-up steps, grad_clip {config.grad_clip}, EMA decay {config.ema_decay}\n"
    f"previews every {config.sample_every} steps ({config.num_samples} EMA samples, "
    f"{config.sample_steps} sampling steps), checkpoint every {config.checkpoint_every} steps "
    f"into {RUN_DIR}"
)

# %%
steps = np.arange(config.train_steps)
fig, (ax_lr, ax_ema) = plt.subplots(1, 2, figsize=(10, 3.2), layout="constrained")
ax_lr.plot(steps, [trainer.lr_at(s) for s in steps])
ax_lr.set(xlabel="step", ylabel="learning rate", title=f"warm-up, then lr_decay={config.lr_decay!r} (Trainer.lr_at)")
decays = np.array([ema_decay_at(s, config.ema_decay, config.ema_warmup) for s in steps])
ax_ema.plot(steps, 1 / (1 - decays), label="with the warm-up (ema_decay_at)")
ax_ema.axhline(1 / (1 - config.ema_decay), color="gray", ls="--", label=f"decay {config.ema_decay} itself")
ax_ema.legend()
ax_ema.set(xlabel="step", ylabel="about 1 / (1 - decay)", yscale="log", title="how many steps the EMA averages over")
for ax in (ax_lr, ax_ema):
    ax.grid(alpha=0.3)
plt.show()

# %% [markdown]
# The EMA's warm-up lasts longer than it seems: $\tfrac{1+n}{10+n}$ reaches $\mu = 0.995$ only after
# about 1,800 updates, a quarter of the `cpu` run, and the `gpu` budget's 0.9995 after 18,000, longer
# than its whole run; the plot shows how far back the average reaches at each step. A short run
# needs exactly that: an average over the last thousands of steps of a run that is still
# improving quickly would lag behind it. For the same reason the `cpu` budget's decay is 0.995, not
# the 0.9999 of DDPM's 800,000 steps.

# %% [markdown]
# ## 5. Mixed precision and memory layout
#
# Most of a step's time goes into convolutions and matrix products. A GPU's tensor cores do those
# several times faster in 16-bit floats than in 32-bit ones, moving half the bytes, and so do
# recent CPUs with bf16 instructions (AVX512-BF16 or AMX: AMD Zen 4, Intel Xeons since Cooper
# Lake). With `bf16=True` (the `cpu` budget) the trainer wraps the forward pass in
# `torch.autocast(device, torch.bfloat16)`: inside it, convolutions and matrix products run in
# **bfloat16**, while reductions and normalisations stay in float32. The weights, their gradients
# and Adam's state stay float32 (the *master weights*), and the loss is computed in float32
# (`F.mse_loss(out.float(), target.float())`).
#
# bfloat16 keeps float32's 8 exponent bits, so it spans the same range (no overflow to infinity,
# hence no loss scaling, which float16 needs), but it keeps only 8 significant bits, between two
# and three decimal digits: it cannot tell $1 + 2^{-8}$ from 1. That is plenty for a forward pass
# whose outputs are averaged into a loss, and too little for accumulating small weight updates,
# which is why the weights stay float32.

# %%
x = torch.tensor([1.0, 1 + 2**-8, 1 + 2**-7, 3.14159265, 70000.0, 1e38])
print("float32 :", [f"{v:.8g}" for v in x.tolist()])
print("bfloat16:", [f"{v:.8g}" for v in x.to(torch.bfloat16).float().tolist()])
print("float16 :", [f"{v:.8g}" for v in x.to(torch.float16).float().tolist()])
conv = torch.nn.Conv2d(1, 4, 3)
with torch.autocast("cpu", dtype=torch.bfloat16):  # the same mechanism on the CPU and on a GPU
    y = conv(torch.randn(2, 1, 8, 8))
print(f"inside autocast: the conv's weights are {conv.weight.dtype}, its output is {y.dtype}")

# %% [markdown]
# Where the hardware has no bf16 arithmetic, the library emulates it, which cannot beat float32.
# So the trainer turns autocast on only where `training.has_native_bf16(device)` says the device
# computes bf16 itself, whatever the config says. Even then it is not a sure win for small
# networks: on one 2-core Xeon autocast made 32- and 64-channel U-Nets *slower*, while on the
# 2-core EPYC (with AVX512-BF16) that ran this notebook it made the `cpu` U-Net's step 1.3-1.5x
# faster (in different runs of the cell below). A GPU can lose too: on an H200 the `gpu` budget's U-Net stepped in 51 ms with autocast
# and 38.5 ms without, because for a network this small the GPU finishes each kernel faster than
# Python can launch the next, and autocast adds a cast kernel per operand; so the `gpu` budget
# trains in float32 (its convolutions use the tensor cores' TF32 mode anyway). Rather than trust
# any of these, time it: a few training steps of this budget's U-Net at its batch size, with
# autocast and without, on this machine.

# %% tags=["nbval-ignore-output"]
def seconds_per_step(bf16, steps=6, channels_last=False):
    """Median wall time of a training step (forward, fp32 loss, backward, AdamW) on this device."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    net = UNet(data.shape[1], **BUDGET.model_kwargs()).to(trainer.device, memory_format=layout)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x = data[: config.batch_size].to(trainer.device).contiguous(memory_format=layout)
    t = torch.randint(0, config.num_steps, (len(x),), device=trainer.device)
    times = []
    for _ in range(steps + 2):  # the first two warm up the kernels
        start = time.perf_counter()
        with torch.autocast(trainer.device.type, torch.bfloat16, enabled=bf16):
            out = net(x, t)
        F.mse_loss(out.float(), x).backward()
        opt.step()
        opt.zero_grad()
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times[2:]))


fp32_s, bf16_s = seconds_per_step(False), seconds_per_step(True)
print(f"native bf16 on {trainer.device}: {training.has_native_bf16(trainer.device)}; bf16 in the config: {config.bf16}; "
      f"autocast in this run: {trainer.bf16}")
print(f"a step at batch {config.batch_size}: float32 {fp32_s * 1000:.0f} ms, bf16 autocast {bf16_s * 1000:.0f} ms "
      f"({fp32_s / bf16_s:.2f}x)")

# %% [markdown]
# **Sampling too.** A network trained under autocast can be sampled under it as well:
# `training.BF16Sampling(model)` is the same network with every call wrapped in autocast and its
# output handed back in float32, so the samplers of chapter 03 see an ordinary model. `Trainer.sample`
# does this wherever the run trains under bf16 on the CPU. For the `cpu` budget's U-Net it drew
# 1,000 digits 1.6x faster than float32, with the same scores (docs/benchmarks.md, "Sampling in
# bf16"); `Trainer.sample(bf16=False)` and the sample command's `--fp32` turn it off. One more
# CPU detail: a thousand digits in one network call need activations of tens of MiB, which the
# memory allocator hands back to the operating system after every call, and faulting them in
# again cost more than the arithmetic. So on a CPU `Trainer.sample` passes a large batch through
# the network a hundred or more images at a time (`training.sampling_net`): 1.4-2x faster, with
# the same samples, since the sampler draws its noise for the whole batch and so no random number
# changes ("Sampling in chunks").

# %% [markdown]
# **Memory layout.** A (B, C, H, W) tensor can sit in memory in two orders. PyTorch's default,
# NCHW, stores each channel's H x W pixels together; *channels_last* stores each pixel's C channels
# together. The tensor is the same either way, only its strides (how far to step in memory along
# each axis) differ.

# %%
h = torch.arange(2 * 3 * 2 * 2.0).reshape(2, 3, 2, 2)
h_cl = h.contiguous(memory_format=torch.channels_last)
print("strides (B, C, H, W), NCHW:         ", h.stride(), "  a channel's pixels side by side")
print("strides (B, C, H, W), channels_last:", h_cl.stride(), "  a pixel's channels side by side")
print("the same tensor:", torch.equal(h, h_cl))

# %% [markdown]
# A CPU convolution (oneDNN, inside PyTorch) works on a pixel's channels in adjacent vector lanes,
# so on NCHW input it first copies every activation into its own channels-together layout and its
# result back: at these sizes about a third of a convolution's time. Given channels_last it reads
# the activations as they are. The catch was GroupNorm, which sits before every convolution of a
# ResBlock: torch's GroupNorm is 18-75x slower on channels_last tensors than on NCHW ones, which
# wiped out the gain. So the package brings its own, `fused.group_norm_silu(norm, x)`: the same
# `F.silu(norm(x))`, computed for a channels_last tensor on the CPU by one small C++ kernel
# (`ddpm_teach/csrc/group_norm_silu.cpp`, compiled the first time it is needed, 15-25 seconds once),
# and by torch's two ops everywhere else. Every ResBlock of the U-Net calls it. On the 2-core EPYC
# that ran this notebook, the bare network step below gains more than a whole training run does
# (the trainer's own work, the batch, the EMA and the optimiser, does not change): the `cpu`
# budget's runs trained 1.03-1.17x faster, and sampling ran 1.4x faster. So the `cpu` budget sets
# `channels_last=True`. On a machine without a C++ compiler the trainer says so and stays in NCHW.

# %%
norm = torch.nn.GroupNorm(8, 32)
a = torch.randn(4, 32, 14, 14)
by_torch = F.silu(norm(a))
by_fused = fused.group_norm_silu(norm, a.contiguous(memory_format=torch.channels_last))
print("fused GroupNorm+SiLU equals torch's GroupNorm then SiLU:",
      torch.allclose(by_fused, by_torch, atol=1e-5))

# %% tags=["nbval-ignore-output"]
cl_s = seconds_per_step(trainer.bf16, channels_last=True)
nchw_s = bf16_s if trainer.bf16 else fp32_s
print(f"fused kernel in use on {trainer.device}: {fused.uses_kernel(a.contiguous(memory_format=torch.channels_last).to(trainer.device))}")
print(f"a step as this run trains it ({'bf16 autocast' if trainer.bf16 else 'float32'}): NCHW {nchw_s * 1000:.0f} ms, "
      f"channels_last {cl_s * 1000:.0f} ms ({nchw_s / cl_s:.2f}x)")

# %% [markdown]
# ## 6. Training, live
#
# The trainer reports through two callbacks: `on_log(step, loss)` every `log_every` steps, and
# `on_samples(step, samples)` with every preview, a batch drawn from the EMA weights from the same
# starting noise each time, so each preview shows the same samples improving. Below they redraw one
# figure in place: the loss of every step (faint) and its running mean, and the latest preview.
# (The curve is the loss the trainer minimises: with `min_snr_gamma` set, as under the `cpu`
# budget, that is the weighted loss of section 3, smaller than $L_\text{simple}$ itself; with
# loss-aware $t$, each example's share divided by $T p_t$.)
# The previews and the checkpoint land in `RUN_DIR`.

# %% tags=["nbval-ignore-output"]
fig = Figure(figsize=(10, 3.8), layout="constrained")
ax_loss, ax_img = fig.subplots(1, 2, width_ratios=[1.5, 1])
handle = display(fig, display_id=True)
previews = {}  # step -> EMA samples (n, C, H, W), filled by on_samples
clock = {"last": -math.inf, "drawing": 0.0, "load": []}


def draw():
    start = time.perf_counter()
    ax_loss.clear()
    ax_loss.plot(*np.array(trainer.history).T, color="C0", alpha=0.25, lw=0.6, label="loss of each step")
    log = trainer.log
    ax_loss.plot([e["step"] for e in log], [e["loss"] for e in log], color="C0", label=f"mean over {config.log_every} steps")
    ax_loss.set(xlim=(0, config.train_steps), yscale="log", xlabel="step", ylabel="$L_{simple}$", title=f"step {trainer.step} of {config.train_steps}")
    ax_loss.grid(alpha=0.3, which="both")
    ax_loss.legend(loc="upper right")
    if previews:
        step = max(previews)
        ax_img.clear()
        viz.show_images(previews[step][:36], ax=ax_img, title=f"EMA samples at step {step}")
    handle.update(fig)
    clock["drawing"] += time.perf_counter() - start


def on_log(step, loss):
    if hasattr(os, "getloadavg"):  # how busy the machine is (Unix): to read the timings below
        clock["load"].append(os.getloadavg()[0])
    if time.perf_counter() - clock["last"] > 20:  # redraw at most every 20 s: drawing costs time
        draw()
        clock["last"] = time.perf_counter()


def on_samples(step, samples):
    previews[step] = samples
    draw()


trainer.on_log, trainer.on_samples = on_log, on_samples
start = time.perf_counter()
trainer.train()
wall = time.perf_counter() - start
draw()  # the final state: this picture stays in the notebook

# %% [markdown]
# The same starting noise at every preview, so each column of this picture is one sample
# improving as training goes on:

# %%
shown = sorted(previews)
fig, axes = plt.subplots(len(shown), 1, figsize=(10, 1.45 * len(shown)), layout="constrained")
for ax, step in zip(np.atleast_1d(axes), shown, strict=True):
    viz.show_images(previews[step][:12], nrow=12, ax=ax)
    ax.set_title(f"step {step}", fontsize=9, loc="left")
plt.show()

# %% [markdown]
# The loss and the samples tell different stories. Here is the digit probe of section 7 (the share of
# samples it calls a digit with confidence) on each preview, beside the loss around that step:

# %% tags=["nbval-ignore-output"]
preview_scores = {}  # step -> (loss around that step, share of confident digits or None)
for step in sorted(previews):
    recent = np.mean([v for s, v in trainer.history if step - config.log_every < s <= step])
    line = f"step {step:>5}: loss (mean of the last {config.log_every} steps) {recent:.4f}"
    share = None
    if DATASET in ("glyph-digits", "mnist"):
        report = digit_report(previews[step].clamp(-1, 1))
        share = report.confident_share
        line += f", confident digits {share:4.0%} of {report.n}, {report.coverage}/10 classes"
    preview_scores[step] = (recent, share)
    print(line)

# %% [markdown]
# Where the trainer drew $t$ (section 3): the loss-aware sampler's $p_t$ at the end of the run,
# against the uniform $1/T$ of Algorithm 1.

# %% tags=["nbval-ignore-output"]
if trainer.t_sampler is None:
    print(f"this budget ({BUDGET.name}) draws t uniformly, as Algorithm 1 does")
else:
    p_t = trainer.t_sampler.probs()
    T = len(p_t)
    fig, ax = plt.subplots(figsize=(10, 3), layout="constrained")
    ax.plot(p_t.numpy(), label="loss-aware $p_t$ at the end of the run")
    ax.axhline(1 / T, color="gray", ls="--", label="uniform, $1/T$")
    ax.set(xlabel="step t", ylabel="$p_t$", title="where the batch goes")
    ax.grid(alpha=0.3)
    ax.legend()
    plt.show()
    parts = [p_t[i * T // 4 : (i + 1) * T // 4].sum().item() for i in range(4)]
    print(f"warm (every step has its 10 losses): {trainer.t_sampler.warm}")
    print("share of the draws in each quarter of the chain (uniform: 25 % each):")
    for i, share in enumerate(parts):
        print(f"  t = {i * T // 4:>4} .. {(i + 1) * T // 4 - 1:>4}: {share:6.1%}")

# %% [markdown]
# In the stored run the loss at the first preview was only about 35 % above its final value,
# while the share of confident digits went on climbing, from 53 % to about 90 %: the loss is a
# poor guide to sample quality once it has flattened out.
#
# How long it took, and how fast it went. The trainer times its training steps (`Trainer.summary`,
# `Trainer.log`): previews and checkpoints are left out of its images per second, but not out of
# the wall time (the loss redraws of `on_log` count as training time).

# %% tags=["nbval-ignore-output"]
summary = trainer.summary()
rates = [e["images_per_s"] for e in trainer.log]
print(
    f"{summary['steps']:,} steps x {config.batch_size} images on {summary['device']}, "
    f"{torch.get_num_threads()} CPU threads\n"
    f"wall time {wall / 60:.1f} min, of which training {summary['train_time_s'] / 60:.1f} min "
    f"and drawing the live figure {clock['drawing']:.0f} s\n"
    f"throughput {summary['images_per_s']:.0f} images/s over the run "
    f"(read-outs: median {np.median(rates):.0f}, min {min(rates):.0f}, max {max(rates):.0f})\n"
    f"final loss {summary['final_loss']:.4f}, mean of the last 10% of steps "
    f"{np.mean([v for _, v in trainer.history[-max(1, len(trainer.history) // 10):]]):.4f}"
)
if clock["load"]:
    print(f"load average during training: {np.mean(clock['load']):.1f} on {os.cpu_count()} cores (1 = one busy core)")

# %% [markdown]
# The stored run had the two cores of a 2-core machine mostly to itself (two threads; the load
# average above counts the processes wanting a core) and trained for about 9 minutes, with bf16
# autocast and channels_last (section 5); without native bf16 expect about half as long again.
# (The same run from the train command, bit for bit the same weights, trained for 8.4 minutes
# half an hour earlier; the budget's 7,000 steps before loss-aware sampling, section 3, took 17-18
# minutes.) A laptop
# of your own should take about as long; fewer free cores take longer, and a GPU (the `gpu`
# budget) trains a 24x larger network in minutes.

# %% [markdown]
# ## 7. EMA weights against raw weights
#
# The trainer keeps two networks: `trainer.model`, the weights the optimiser moves, and
# `trainer.ema`, their moving average. Same architecture, same run, so we can sample from both
# with the same starting noise (`Trainer.sample(use_ema=...)`, DDIM over the budget's
# `ddim_steps` with $\eta = 1$, i.e. ancestral sampling on a subsequence of the steps).
#
# To judge the samples with numbers rather than adjectives we use the digit probe of
# `ddpm_teach.metrics` (`digit_report`): a small classifier with an eleventh class "not a digit".
# A sample counts as a **confident digit** when the probe calls it a digit with probability at least
# 0.9; **class coverage** counts the digits 0-9 that make up at least 1 % of the confident samples.
# `digit_floors` shows both ends of the scale at the same sample count: fresh glyph digits (the
# best a sampler can score) and clamped Gaussian noise (what an untrained one produces).
# The probe was trained on glyph digits; for other data sets it is skipped.

# %% tags=["nbval-ignore-output"]
N_EVAL = {"smoke": 32, "cpu": 256, "gpu": 1000}[BUDGET.name]
samples = {
    name: trainer.sample(N_EVAL, seed=123, use_ema=name == "EMA").clamp(-1, 1)
    for name in ("raw", "EMA")
}
fig, axes = plt.subplots(1, 2, figsize=(10, 5.2), layout="constrained")
for ax, (name, x) in zip(axes, samples.items(), strict=True):
    viz.show_images(x[:64], nrow=8, ax=ax, title=f"{name} weights")
plt.show()

if DATASET in ("glyph-digits", "mnist"):
    reports = {name: digit_report(x) for name, x in samples.items()}
    floors = digit_floors(N_EVAL)
    for name, report in [*reports.items(), ("data", floors.data), ("noise", floors.noise)]:
        print(f"{name:>5}: {report}")
else:
    reports = {}
    print(f"the digit probe judges digits only; no scores for {DATASET}")

# %% [markdown]
# Now the training loss of the same two networks, measured per noise level on digits neither has
# seen. Each point averages $L_\text{simple}$ over a batch at one $t$, with the same images and the
# same noise for both networks.

# %% tags=["nbval-ignore-output"]
held_out = glyph_digits(128, seed=7)[0] if DATASET == "glyph-digits" else data[:128]
held_out = held_out.to(trainer.device)
g = torch.Generator(trainer.device).manual_seed(8)
noise = torch.randn(held_out.shape, generator=g, device=trainer.device)
ts = np.unique(np.geomspace(1, config.num_steps, 24).astype(int) - 1)
per_t = {"raw": [], "EMA": []}
with torch.no_grad():
    for t_value in ts:
        t_batch = torch.full((len(held_out),), int(t_value), device=trainer.device)
        x_t = trainer.schedule.q_sample(held_out, t_batch, noise)
        target = trainer.schedule.target(held_out, noise, t_batch, config.prediction)
        for name, net in (("raw", trainer.model), ("EMA", trainer.ema)):
            net.eval()
            per_t[name].append(F.mse_loss(net(x_t, t_batch), target).item())
trainer.model.train()

fig, ax = plt.subplots(figsize=(7, 3.4), layout="constrained")
for name, values in per_t.items():
    ax.plot(ts + 1, values, ".-", label=f"{name} weights")  # + 1: the paper's t, so t = 1 fits a log axis
ax.set(xscale="log", yscale="log", xlabel="the paper's t (code index + 1)", ylabel="$L_{simple}$ at this t", title="where the loss lives")
ax.grid(alpha=0.3, which="both")
ax.legend()
plt.show()
# The training loss is the average over t drawn uniformly: weight each point by the steps it covers.
widths = np.diff(np.append(ts, config.num_steps))
for name, values in per_t.items():
    line = f"{name:>3}: loss averaged over t {np.average(values, weights=widths):.4f}"
    if name in reports:
        line += f", confident digits {reports[name].confident_share:.0%}, {reports[name].coverage}/10 classes"
    print(line)

# %% [markdown]
# Three things to read off (the numbers are in the cells above):
#
# - The loss depends on $t$ by orders of magnitude (in the stored run, from about 0.85 at the
#   paper's $t = 1$ to about 0.0001 at $t = T$). Near $t = 0$ the noise is a faint speckle on a
#   clean digit, hard to tell from the digit's own edges; near $t = T$ the input *is* almost the
#   noise, and predicting it is easy. The Min-SNR weighting of section 3 adds to the gap at the
#   left end: at the paper's $t = 1$ it weighs the loss by $10^{-4}$, so the network hardly tries
#   there (the previous edition of this notebook, trained with plain $L_\text{simple}$, reached
#   about 0.2 at $t = 1$). The samples do not suffer, because the last sampling step jumps to
#   $\hat x_0$ and a speckle is all that is left to remove. The bound of chapter 06, whose bits
#   sit mostly at the nearly clean steps, is another matter: that chapter trains with plain
#   $L_\text{simple}$. A batch's loss depends on which $t$ it drew, which is
#   why the per-step curve in section 6 is so ragged.
# - In the stored run the two networks are nearly the same: the same loss at every $t$, the same
#   share of confident digits (87-88 %; with 256 samples one standard error is about 2 points: the
#   train command's run of this budget, the same weights bit for bit, scored 91.1 % on 1,000
#   samples), all ten classes, and digit-FIDs within the noise of each other (17.6 raw, 17.5 EMA).
# - That is the learning-rate decay at work. In the last few hundred steps of the `cpu` run the
#   cosine has taken the learning rate close to 0, the raw weights hardly move any more, and an
#   average of nearly equal weights is those weights. The decay and the average are two ways to
#   end a run at the middle of the jitter rather than at its last random step. Under a flat
#   learning rate (the `gpu` budget, and DDPM's 800,000 steps) the raw weights jitter to the end
#   and only the EMA smooths them; set `lr_decay="none"` in the config cell and rerun to see the
#   two drift apart. DDPM codebases sample from the EMA weights, and so does `Trainer.sample` by
#   default.

# %% [markdown]
# ## 8. Watching digits emerge
#
# The slider runs the trained (EMA) sampler on 16 starting noises and shows $x_t$ at every few
# steps on the way down, from $x_T \sim \mathcal N(0, I)$ at the left end to the final samples at the
# right end (`ddim_sample(..., return_trajectory=True)` and `viz.frames_slider`). Press Play, or drag.

# %% tags=["nbval-ignore-output"]
traj = ddim_sample(
    trainer.ema_model(),
    trainer.schedule,
    (16, *data.shape[1:]),
    num_steps=config.sample_steps,
    eta=config.sample_eta,
    generator=torch.Generator(trainer.device).manual_seed(5),
    prediction=config.prediction,
    clip_x0=True,
    return_trajectory=True,
    device=trainer.device,
)
keep = np.unique(np.linspace(0, len(traj.xs) - 1, 26).round().astype(int)).tolist()
frame_ts = [None if t_prev < 0 else t_prev for t_prev in traj.timesteps]
viz.frames_slider(
    traj.xs[keep],
    [frame_ts[i] for i in keep],
    trainer.schedule,
    title="the reverse chain of the trained model: x_t from noise (left) to digits (right)",
)

# %% [markdown]
# At every step the sampler also makes a guess of the final image,
# $\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\epsilon_\theta(x_t, t)) / \sqrt{\bar\alpha_t}$
# (`NoiseSchedule.predict_x0_from_eps`, clipped to $[-1, 1]$), and steps towards it. Early guesses are
# blurry averages of many possible digits; the identity of each digit is settled long before its
# details:

# %%
viz.filmstrip(traj.x0_preds, traj.timesteps[:-1], n=8, schedule=trainer.schedule)

# %% [markdown]
# ## 9. Checkpoints and resume
#
# Every `checkpoint_every` steps, and at the end, the trainer writes `RUN_DIR/last.pt`: the network,
# the EMA network, the optimiser's state, the step, the loss history, the config, and the seeds that
# fix every later random number.
#
# **Atomic writes.** A crash, a full disk or a killed kernel in the middle of `torch.save` would
# leave half a file, and the only copy of hours of training would be gone. So the trainer never
# writes `last.pt` directly: it writes a temporary file in the same folder, flushes it to disk
# (`fsync`), and then renames it over `last.pt` with `os.replace`, which the operating system
# performs atomically within one file system. A reader sees the old checkpoint or the new one,
# never a mixture. The code that does it:

# %%
print(inspect.getsource(training._atomic_save))

# %% tags=["nbval-ignore-output"]
print(sorted(p.name for p in RUN_DIR.iterdir()))

# %% [markdown]
# `load_checkpoint` rebuilds both networks, the schedule and the config from the file alone, on
# any machine: a checkpoint written on a GPU loads on a laptop. That is how you would sample from
# this run tomorrow, or in chapter 06.

# %%
model, ema, loaded_schedule, loaded_config = load_checkpoint(RUN_DIR / "last.pt")
same = all(
    torch.equal(a, b.cpu())
    for a, b in zip(ema.state_dict().values(), trainer.ema.state_dict().values(), strict=True)
)
print(f"rebuilt: a {type(ema).__name__} in eval mode: {not ema.training}")
print(f"its EMA weights equal the trainer's: {same}; same config: {loaded_config.to_dict() == config.to_dict()}")

# %% [markdown]
# **Exact resume.** Every random number of step $k$ (which images, which $t$, which $\epsilon$,
# dropout) is drawn from generators seeded by the pair (seed, $k$) alone, and the data order of
# each epoch from (seed, epoch). So a run stopped after step $k$ and resumed from its checkpoint
# replays exactly the steps a run that never stopped would have taken. We check that with a short
# run: one copy trains straight through; another is "killed" halfway (we delete the trainer, as a
# crash would) and a fresh `Trainer(..., resume=True)` picks it up from `last.pt`.

# %% tags=["nbval-ignore-output"]
DEMO_STEPS = {"smoke": 6, "cpu": 20, "gpu": 200}[BUDGET.name]
demo = dataclasses.replace(
    config,
    train_steps=DEMO_STEPS,
    out_dir=str(RUN_DIR / "resume-demo"),
    log_every=1,
    sample_every=0,
    num_samples=0,
    checkpoint_every=0,
)
straight = Trainer(dataclasses.replace(demo, out_dir=None), data, progress=False)
straight.train()

first_half = Trainer(demo, data, progress=False)
first_half.train(DEMO_STEPS // 2)  # each train() call ends with a checkpoint
del first_half  # the crash: everything in memory is gone, last.pt is not
resumed = Trainer(demo, data, resume=True, progress=False)
print(f"resumed at step {resumed.step} of {DEMO_STEPS}")
_ = resumed.train()

# %%


def same_tensors(a, b):
    """Two state dicts (or parameter lists) hold bit-for-bit the same tensors."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_tensors(a[k], b[k]) for k in a)
    return torch.equal(a, b)


identical = {
    "loss of every step": resumed.history == straight.history,
    "weights": same_tensors(resumed.model.state_dict(), straight.model.state_dict()),
    "EMA weights": same_tensors(resumed.ema.state_dict(), straight.ema.state_dict()),
    "optimiser state": same_tensors(
        resumed.optimizer.state_dict()["state"], straight.optimizer.state_dict()["state"]
    ),
}
for what, same in identical.items():
    print(f"interrupted and resumed vs straight through, bit for bit, {what}: {same}")

fig, ax = plt.subplots(figsize=(7, 3), layout="constrained")
ax.plot(*np.array(straight.history).T, "o-", color="C0", label="straight through", ms=7, mfc="none")
ax.plot(*np.array(resumed.history[: DEMO_STEPS // 2]).T, "x", color="C1", ms=6, label="first half, then killed")
ax.plot(*np.array(resumed.history[DEMO_STEPS // 2 :]).T, "+", color="C2", ms=9, label="resumed from last.pt")
ax.axvline(DEMO_STEPS // 2 + 0.5, color="gray", ls=":")  # the crash, after step DEMO_STEPS // 2
ax.set(xlabel="step", ylabel="$L_{simple}$", title="a resumed run takes the very same steps")
ax.legend()
plt.show()

# %% [markdown]
# Resuming checks that the run is the same run: a checkpoint refuses a config that changes what
# the steps would be (data, model, schedule, batch, learning rate, seed, ...). Changing only
# `train_steps` is allowed, which is how a finished run is extended.

# %% tags=["nbval-ignore-output"]
try:
    Trainer(dataclasses.replace(demo, lr=demo.lr / 2), data, resume=True, progress=False)
except ValueError as err:
    print(err)

# %% [markdown]
# In a notebook, *Kernel > Interrupt* stops `trainer.train()` with a `KeyboardInterrupt`. Whenever
# it strikes, `last.pt` on disk is whole, and `Trainer(config, data, resume=True)` continues from it
# exactly, as after a crash or a restart; it loses at most the steps since the last checkpoint.
# From the command line, the same run is
#
# ```
# python -m ddpm_teach.train --data glyph-digits --out runs/glyph --budget cpu
# python -m ddpm_teach.train --data glyph-digits --out runs/glyph --budget cpu --resume  # after a crash
# ```

# %% [markdown]
# ## 10. Several GPUs: distributed data parallel
#
# With several GPUs in one machine, launch the same command under `torchrun`, one process per GPU:
#
# ```
# torchrun --nproc_per_node=4 -m ddpm_teach.train --data glyph-digits --out runs/glyph-ddp --budget gpu
# ```
#
# (`--nnodes` and `--rdzv-endpoint` extend it to several machines.) `torchrun` starts the processes
# and gives each its `RANK` and `WORLD_SIZE`; the trainer then joins the process group (NCCL on
# GPUs) and wraps the U-Net in `DistributedDataParallel`. Every process (*rank*) holds a full copy
# of the network. Each step, each of the $W$ ranks takes its own contiguous slice of the global
# batch (`--batch-size` stays the *global* batch, so $B/W$ images per GPU), computes the gradient on
# its shard, and DDP **all-reduces** the gradients: every rank receives their average, while the
# backward pass is still running. All ranks then take the identical optimiser step, so their
# weights never diverge. Only rank 0 writes checkpoints and previews.
#
# Why averaging shard gradients is right: the loss is a mean over the batch, so with $W$ equal
# shards its gradient is the mean of the shards' gradients. A check on one CPU, with 4 shards:

# %%
net = copy.deepcopy(trainer.model).eval()  # eval: no dropout, so every call sees the same network
g = torch.Generator().manual_seed(9)
x0 = data[:16].to(trainer.device)
t = torch.randint(0, config.num_steps, (16,), generator=g).to(trainer.device)
eps = torch.randn(x0.shape, generator=g).to(trainer.device)
x_t = trainer.schedule.q_sample(x0, t, eps)


def gradient(rows):
    net.zero_grad()
    F.mse_loss(net(x_t[rows], t[rows]), eps[rows]).backward()
    return torch.cat([p.grad.flatten() for p in net.parameters()])


whole = gradient(slice(0, 16))
averaged = torch.stack([gradient(slice(4 * r, 4 * r + 4)) for r in range(4)]).mean(dim=0)
gap = ((whole - averaged).norm() / whole.norm()).item()
print(f"full-batch gradient vs the average of 4 shard gradients: relative difference below 1e-5: {gap < 1e-5}")

# %% [markdown]
# One consequence: a run on $W$ GPUs with global batch $B$ is the same optimisation as a run on one
# GPU with batch $B$ (up to the rounding of the reduction). Keep $B$ and the learning rate, and it
# simply goes $W$ times faster per step, minus the time the all-reduce takes. The trainer also
# draws the same global batch of images, $t$ and $\epsilon$ at every step whatever $W$ is, which is
# what makes a checkpoint resumable on a different number of GPUs.

# %% [markdown]
# ## Summary
#
# - Training is Algorithm 1: a batch $x_0$, a random $t$ and $\epsilon$ per image, $x_t$ from
#   eq. 4 (`q_sample`), and a gradient step on $L_\text{simple}$ (eq. 14), the mean squared error
#   between $\epsilon$ and $\epsilon_\theta(x_t, t)$. With a zero-initialised output it starts at 1.
# - The recipe around it: AdamW with a linear warm-up and, for short runs, a cosine decay
#   (`Trainer.lr_at`), clipping at norm 1, and an EMA of the weights (`ema_update`,
#   `ema_decay_at`) that is sampled instead of the raw weights.
# - A run budget sizes everything, so one notebook runs in seconds (`smoke`), in about ten minutes
#   on a laptop CPU (`cpu`) or in minutes on a GPU (`gpu`). bf16 autocast speeds up the
#   convolutions where the arithmetic is the bottleneck (CPUs with native bf16, large networks on
#   a GPU), while weights, optimiser and loss stay float32; measure before trusting it.
# - On the CPU, convolutions run fastest on channels_last tensors; with the package's fused
#   GroupNorm+SiLU kernel (`fused.group_norm_silu`) the whole step gains from it, so the `cpu`
#   budget trains in that layout.
# - Checkpoints are written atomically (temporary file, `fsync`, `os.replace`) and hold every seed,
#   so a resumed run takes exactly the steps an uninterrupted one would; `load_checkpoint` rebuilds
#   the networks anywhere.
# - Under `torchrun`, DDP gives each GPU a slice of the global batch and averages the gradients, the
#   same optimisation as one GPU with the whole batch.
#
# The claims of the box below, in this run's numbers:

# %% tags=["nbval-ignore-output"]
print(f"this run: {summary['steps']:,} steps on {summary['device']} ({torch.get_num_threads()} threads) in {wall / 60:.1f} min")
trained = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
print(f"the optimiser updates exactly the U-Net's parameters: {trained == {id(p) for p in trainer.model.parameters()}}; "
      f"the schedule is a {type(trainer.schedule).__name__}, not a network: {not isinstance(trainer.schedule, torch.nn.Module)}")
for name in ("raw", "EMA"):
    score = f"; {reports[name].confident_share:.0%} confident digits" if name in reports else ""
    print(f"{name:>3} weights: loss averaged over t {np.average(per_t[name], weights=widths):.4f}{score}")
(first_loss, first_share), (last_loss, last_share) = preview_scores[min(previews)], preview_scores[max(previews)]
if first_share is not None:
    print(f"from the first preview (step {min(previews)}) to the last (step {max(previews)}): loss {first_loss:.4f} -> {last_loss:.4f} "
          f"({last_loss / first_loss - 1:+.0%}), confident digits {first_share:.0%} -> {last_share:.0%}")

# %% [markdown]
# > **Common misconceptions**
# >
# > - *"Lower training loss always means better samples."* The loss averages over all $t$, its
# >   largest terms come from the smallest $t$, and a batch's loss depends on which $t$ it drew. In
# >   this run the loss fell by only about a quarter from the first preview to the last, while the share of
# >   confident digits went from 53 % to 91 % (section 6). Judge samples with a sample metric.
# > - *"The model learns the forward process."* The forward process $q$ is fixed: the betas come
# >   from the schedule, and the optimiser updates the U-Net's weights and nothing else. The network
# >   learns only to undo $q$, one noise prediction at a time.
# > - *"You need a GPU to train a diffusion model."* The stored run of this notebook trained on two
# >   CPU cores and draws recognisable digits (its time and score are printed just above). A GPU
# >   buys a bigger network, sharper samples and harder data sets, not the possibility.
# > - *"EMA is a kind of learning-rate decay."* The optimiser never sees the average: it keeps
# >   stepping the raw weights at whatever rate `Trainer.lr_at` gives. The EMA is a second copy,
# >   read only for sampling.
# > - *"bf16 training means bf16 weights."* Under autocast only the arithmetic of the forward pass
# >   is bf16; weights, gradients, optimiser state and the loss stay float32.

# %% [markdown]
# ## Exercises
#
# Each exercise is a function to write in the cell tagged `solution`; the cell after it checks
# your function on fixed inputs and, when it is wrong, says what the mistake looks like.
# Conventions as before: `betas` is the float64 schedule, shape (T,); `t` is a LongTensor of shape
# (B,) of code indices (index t is the paper's t + 1); data tensors have shape (B, ...).
#
# **Exercise 1: the loss.** Write $L_\text{simple}$ (eq. 14) for one batch, for all three things a
# network can be trained to output (`prediction`): the noise $\epsilon$ (`"eps"`, the paper's
# choice), the clean image $x_0$ (`"x0"`), or the velocity
# $v = \sqrt{\bar\alpha_t}\,\epsilon - \sqrt{1-\bar\alpha_t}\,x_0$ (`"v"`, Salimans & Ho 2022).
# Return the mean over every element of `(model_out - target) ** 2`, as a 0-d tensor.

# %% tags=["solution"]
import torch


def l_simple(model_out, x0, eps, t, betas, prediction):
    """L_simple (eq. 14): mean over every element of (model_out - target)^2, a 0-d tensor."""
    alpha_bar = torch.cumprod(1 - betas, dim=0)[t].view(-1, *[1] * (x0.ndim - 1))
    if prediction == "eps":
        wanted = eps
    elif prediction == "x0":
        wanted = x0
    else:  # the velocity v
        wanted = alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * x0
    return ((model_out - wanted) ** 2).mean()


# %%
from ddpm_teach.exercises import check

check("l-simple-loss", l_simple)

# %% [markdown]
# **Exercise 2: one EMA step.** `ema` and `params` are dicts of tensors with the same keys, like a
# network's `state_dict()`. Return a new dict with
# $\bar\theta_k \leftarrow \mu\,\bar\theta_k + (1-\mu)\,\theta_k$ for every entry $k$ ($\mu$ is
# `decay`).

# %% tags=["solution"]
def ema_step(ema, params, decay):
    """One EMA step: decay * ema[k] + (1 - decay) * params[k] for every key, as a new dict."""
    return {k: decay * ema[k] + (1 - decay) * params[k] for k in ema}


# %%
from ddpm_teach.exercises import check

check("ema-update", ema_step)

# %% [markdown]
# **Exercise 3: the warm-up.** Return the learning rate of optimiser step `step` (counted from 0)
# under a linear warm-up over `warmup_steps` steps to `base_lr`: step 0 gets
# `base_lr / warmup_steps`, step `warmup_steps - 1` reaches `base_lr`, and it stays there. With
# `warmup_steps = 0` there is no warm-up. The check compares your function with the trainer's own
# `Trainer.lr_at`.

# %% tags=["solution"]
def warmup_lr(step, base_lr, warmup_steps):
    """Linear warm-up: base_lr * min(1, (step + 1) / warmup_steps); base_lr without warm-up."""
    if warmup_steps == 0:
        return base_lr
    return base_lr * min(1.0, (step + 1) / warmup_steps)


# %%
from ddpm_teach.exercises import check

check("warmup-lr", warmup_lr)

# %% [markdown]
# ## Next
#
# We have a trained model and a first verdict on its samples. Chapter 06 evaluates it properly: the
# variational bound in bits per dimension (and which $t$ the bits go to), digit-FID beside its
# data-vs-data floor, and how far DDIM can cut the number of sampling steps before quality drops.
