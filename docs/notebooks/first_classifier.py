# %% [markdown]
# # A first few-shot classifier on Omniglot
#
# This notebook meta-trains Prototypical Networks on Omniglot for about two CPU-minutes with
# `attnmeta.train.trainer.train`, tests the run on fixed 5-way 1-shot episodes of alphabets it never saw,
# and then uses the trained run as a few-shot classifier of new characters with
# `attnmeta.load(run).fit(...).predict(...)`.
#
# **The data.** Omniglot (Lake, Salakhutdinov & Tenenbaum, 2015; MIT licence) has 1,623 handwritten
# characters from 50 alphabets, 20 drawings each. attnmeta reads the two official archives
# `images_background.zip` (30 alphabets, for training) and `images_evaluation.zip` (20 alphabets, for
# testing) from a data folder, without extracting them, and caches the decoded images
# (`$ATTNMETA_CACHE`, default `~/.cache/attnmeta`). The archives come from the Omniglot repository of
# Brenden Lake (`github.com/brendenlake/omniglot`, folder `python/`); `attnmeta.data.Omniglot(root,
# download=True)` fetches and verifies them.
#
# The notebook was run from the repository root with the archives in `../shared/data/omniglot`. To point
# it elsewhere, set `ATTNMETA_DATA` to a folder that holds `omniglot/` (the same variable
# `attnmeta train omniglot` uses when `--root` is not given) before starting Jupyter, or edit `DATA` below.
#
# The runs of this notebook use one CPU thread. Setting `ATTNMETA_NOTEBOOK_QUICK=1` shrinks every budget to
# a few seconds (the test suite does that); the numbers below come from the full run.

# %%
import os
import shutil
import time
import zipfile
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from PIL import Image

import attnmeta
from attnmeta.train.config import RunConfig
from attnmeta.train.metrics_log import read_metrics
from attnmeta.train.trainer import train

QUICK = os.environ.get("ATTNMETA_NOTEBOOK_QUICK") == "1"
torch.set_num_threads(1)
DATA = Path(os.environ.get("ATTNMETA_DATA", "../shared/data")) / "omniglot"
RUN = Path("runs/notebooks/first-classifier")
print("data:", DATA, sorted(p.name for p in DATA.glob("*.zip")))

# %% [markdown]
# ## Meta-training
#
# One `RunConfig` describes the whole run. Prototypical Networks embed every image with a Conv-4 network
# and classify a query by its distance to the mean embedding (prototype) of each class's support images.
# As in their paper, they train on episodes with more classes than they are tested on: 60-way 1-shot
# training episodes (one per step), 5-way 1-shot validation and test episodes. The default split trains on
# the 30 background alphabets (each 90-degree rotation of a character is a class of its own) and tests on
# the 20 evaluation alphabets; the test is 600 fixed, seeded episodes, reported as mean ± 95% confidence
# interval.

# %%
if RUN.exists():
    shutil.rmtree(RUN)  # a fresh run each time the notebook runs
config = RunConfig(
    benchmark="omniglot",
    root=str(DATA),
    algo="protonet",
    ways=5,
    shots=1,
    queries=15,
    train_ways=60 if not QUICK else 10,
    meta_batch=1,
    steps=150 if not QUICK else 4,
    lr=3e-3,
    eval_every=50 if not QUICK else 2,
    eval_episodes=100 if not QUICK else 5,
    test_episodes=600 if not QUICK else 20,
    checkpoint_every=50 if not QUICK else 2,
    threads=1,
    plot=False,
    run_dir=str(RUN),
)
start = time.process_time()
result = train(config, quiet=True)
print(f"process CPU time: {(time.process_time() - start) / 60:.1f} min, "
      f"of which training steps: {result.summary['train_cpu_seconds'] / 60:.1f} min")
best = result.best
print(f"{result.steps} steps, best validation accuracy {best['value']:.2%} at step {best['step']}")
print(f"test, 5-way 1-shot, {result.test.summary.n} episodes: "
      f"{result.test.mean:.2%} +/- {result.test.ci95:.2%} (95% CI)")

# %% [markdown]
# In the run above, 150 steps (1.8 CPU-minutes of training) reached 95.18% ± 0.46% on the 600 test episodes
# (5-way 1-shot, alphabets never seen in training). Longer runs do better: see the measured presets
# (page "Presets (measured)" under Results).
#
# The run folder holds the resolved `config.yaml`, the checkpoints (the best one is what gets tested and
# loaded below), `metrics.csv` and `summary.json`. The validation accuracy over training, from
# `metrics.csv`:

# %%
rows = read_metrics(RUN / "metrics.csv")
train_rows = [r for r in rows if r["phase"] == "train"]
val_rows = [r for r in rows if r["phase"] == "val"]
fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.2))
ax_loss.plot([int(r["step"]) for r in train_rows], [float(r["loss"]) for r in train_rows], lw=0.8)
ax_loss.set(xlabel="step", ylabel="training loss (60-way episodes)", yscale="log")
steps = [int(r["step"]) for r in val_rows]
accuracy = [100 * float(r["accuracy"]) for r in val_rows]
ci = [100 * float(r["ci95"]) for r in val_rows]
ax_acc.errorbar(steps, accuracy, yerr=ci, marker="o", capsize=3)
ax_acc.set(xlabel="step", ylabel="validation accuracy % (5-way 1-shot)")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## A few-shot classifier of new characters
#
# `attnmeta.load` turns the run folder into a predictor: `fit` takes the support images and their labels
# (any labels), `predict` labels the queries. It preprocesses raw images as in training (resize to 28x28,
# ink on a dark background), so the drawings go in as the archive stores them: 105x105 black-on-white
# PNGs. Here they are five characters of the evaluation alphabets, one drawing each for the support set
# and three other drawings of each as queries: a 5-way 1-shot task the model has never seen.

# %%
archive = zipfile.ZipFile(DATA / "images_evaluation.zip")
drawings: dict[str, list[str]] = {}
for member in sorted(archive.namelist()):
    if member.endswith(".png"):
        alphabet, character = member.split("/")[1:3]
        drawings.setdefault(f"{alphabet.replace('_', ' ')} {character[-2:]}", []).append(member)


def drawing(member: str) -> Image.Image:
    with archive.open(member) as f:
        return Image.open(f).convert("L")


generator = torch.Generator().manual_seed(3)
names = sorted(drawings)
chosen = [names[i] for i in torch.randperm(len(names), generator=generator)[:5].tolist()]
support = [drawing(drawings[name][0]) for name in chosen]
queries = [drawing(drawings[name][k]) for k in (1, 2, 3) for name in chosen]
truth = [name for _ in (1, 2, 3) for name in chosen]

classifier = attnmeta.load(RUN).fit(support, chosen)
predicted = classifier.predict(queries)
probability = classifier.predict_proba(queries).max(axis=1)
correct = sum(p == t for p, t in zip(predicted, truth))
print(f"{correct} of {len(queries)} queries labelled correctly")

# %%
fig, axes = plt.subplots(4, 5, figsize=(9, 8.2))
for column, (image, name) in enumerate(zip(support, chosen)):
    axes[0, column].imshow(image, cmap="gray")
    axes[0, column].set_title(f"support:\n{name}", fontsize=8)
for index, (image, label, p) in enumerate(zip(queries, predicted, probability)):
    ax = axes[1 + index // 5, index % 5]
    ax.imshow(image, cmap="gray")
    ax.set_title(f"{label}\n(p = {p:.2f})", fontsize=8, color="green" if label == truth[index] else "red")
for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
fig.suptitle("Top row: the support set (one drawing per class). Below: queries, titled with the predicted\n"
             "label and its probability (green: right, red: wrong); each column holds one class.", fontsize=9)
fig.tight_layout()
plt.show()

# %% [markdown]
# Here 14 of the 15 queries got the right label; the one error (the first query of the first column) went
# to another class with probability 0.80.
#
# ## What next
#
# - The same with the command line: `attnmeta train omniglot --algo protonet --train-ways 60 --meta-batch 1
#   --steps 150 --lr 3e-3 --root ../shared/data/omniglot`, then `attnmeta predict RUN --support DIR
#   --query DIR` (the guide "The predictor" of this site).
# - Longer runs and other learners: the pages "Presets (measured)" and "Recipes" under Results.
