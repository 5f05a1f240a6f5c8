# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Find the shortcut
#
# A model that scores well on a "Frankenstein" dataset may be reading *where an image comes from* (borders,
# text, resolution, the publisher's preprocessing) rather than the lungs. This notebook puts the model shipped
# in the package through the checks covidxr runs in `covidxr audit` and `covidxr explain`:
#
# 1. **the audit**: can the model's embeddings tell the source of an image, and what is left of its skill when
#    the lungs are hidden (or when only the lungs, or only the borders, are shown)?
# 2. **lungs hidden**: what the occluded images look like, with the shipped lung segmenter's masks;
# 3. **Grad-CAM with the lung outline**: where the heat falls, and how much of it inside the lungs.
#
# **What it shows:** how to look for a shortcut, and what the shipped model's answers are on a small sample.
# **What it does not prove:** that the model uses the disease. A model that relies on the lung field may still
# rely on something other than COVID-19 inside it; and the sample here (about 60 images) comes from the
# data the shipped model was built from (most of it from its training split), so its AUCs are optimistic.
# Research and teaching only: **not for clinical use**.

# %%
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from notebook_data import covidxr, data_dir, require_data, small_cohen, small_rsna

import covidxr as cx
from covidxr.data.regions import border_mask
from covidxr.evaluation.audit import audit
from covidxr.metrics.binary import PatientBootstrap
from covidxr.runs import shipped_run

DATA = data_dir()
require_data(DATA)
WORK = Path(tempfile.mkdtemp(prefix="covidxr-02-"))
os.chdir(WORK)  # the shipped model's audit is written to ./evaluation-shipped-model
print("data:", DATA, "\nwork:", WORK)

# %% [markdown]
# ## A small sample of both sources

# %%
cohen_dir = small_cohen(DATA, WORK / "cohen", covid=20, other=12, seed=1)
rsna_table = small_rsna(DATA, WORK / "rsna.csv", count=30)
covidxr(f"data import cohen {cohen_dir} -o cohen.csv")
covidxr(f"data import csv {rsna_table} --image-col filename --label-col finding "
        f"--root {DATA}/rsna-normal-224/normal_dataset --source rsna -o rsna.csv")
covidxr("data build cohen.csv rsna.csv --task binary --split 0,0,1 -o sample.csv")

# %% [markdown]
# ## The audit
# `covidxr audit --data sample.csv` (no `--run`: the shipped model) runs the model on every image as it is,
# with the lungs hidden, with only the lungs, and with only a band along the borders; it fits a classifier on
# the model's embeddings to predict the image's source (grouped by patient, out of fold). Called from Python
# here with 200 bootstrap resamples for speed.

# %%
result = audit(shipped_run(), "sample.csv", WORK / "cache", PatientBootstrap(200, 0))
origin, occlusion = result["source_predictability"], result["occlusion"]
print(f"{result['n_images']} images of {result['n_patients']} patients")
print("origin from embeddings:", origin["verdict"])
print("occlusion:", occlusion["verdict"])
print("not for clinical use")

# %%
variants = {"whole image": (occlusion["auc"], occlusion["auc_ci"])}
variants |= {name.replace("_", " "): (occlusion[name]["auc"], occlusion[name]["auc_ci"])
             for name in ("lungs_hidden", "lungs_only", "borders_only")}
variants["source from embeddings"] = (origin["source_auc"], origin["source_auc_ci"])
shown = {name: (point, ci) for name, (point, ci) in variants.items() if point is not None}
fig, ax = plt.subplots(figsize=(7, 2.8))
for i, (name, (point, ci)) in enumerate(shown.items()):
    error = [[point - ci[0]], [ci[1] - point]] if ci else None
    ax.errorbar(i, point, yerr=error, fmt="o", capsize=4, color="C3" if "source" in name else "C0")
ax.axhline(0.5, color="grey", lw=0.8, ls=":")
ax.set_xticks(range(len(shown)), list(shown), fontsize=8)
ax.set_ylim(0, 1.05)
ax.set_ylabel("AUC (95% CI)")
ax.set_title("Shipped model on a small sample of its own training data: not for clinical use", fontsize=9)
plt.show()

# %% [markdown]
# ## Grad-CAM with the lung outline
# `covidxr explain IMAGE -o overlay.png` draws the class activation map of COVID-19 over the pixels the model
# saw, with the segmenter's lung outline in white, and says how much of the heat lies inside it. The same
# from Python: `covidxr.load_model().explain(path, out)`, one image of each source.

# %%
sample = pd.read_csv("sample.csv", keep_default_na=False)
examples = [sample[sample["source"] == source].iloc[0] for source in ("cohen", "rsna")]
model = cx.load_model()
explained = {}
fig, axes = plt.subplots(1, len(examples), figsize=(10, 5))
for row, ax in zip(examples, axes):
    out = WORK / f"gradcam-{row['source']}.png"
    explained[row["source"]] = found = model.explain(row["path"], out)
    print(f"{row['source']} ({row['label']}): P(covid) {found['probability']:.2f} at prevalence "
          f"{model.info['prevalence']:.3g} (operating point {model.info['operating_point']}), "
          f"{found['lung_heat_share']:.0%} of the heat inside the lungs; not for clinical use")
    ax.imshow(plt.imread(out))
    ax.axis("off")
plt.show()

# %% [markdown]
# ## What "lungs hidden" means
# The audit's occlusions, drawn on the same prepared pixels: the lungs (the segmenter's mask), everything but
# the lungs, or all but the outer border band set to the image's mean grey. The shipped model was trained on
# the lungs only (black outside them), so with the lungs hidden it sees a grey silhouette on black: no lung
# texture at all, but still the **size and shape of the mask**, which differ between the two collections. If
# the audit above says the model keeps its skill with the lungs hidden, this silhouette is where it comes from.

# %%
fig, axes = plt.subplots(len(explained), 4, figsize=(9, 4.8))
for (source, found), axs in zip(explained.items(), axes):
    pixels = found["pixels"].astype(float)
    lungs = found["lungs"].mask.astype(bool)
    grey = pixels.mean()
    views = {"as the model sees it": pixels, "lungs hidden": np.where(lungs, grey, pixels),
             "lungs only": np.where(lungs, pixels, grey),
             "borders only": np.where(border_mask(pixels.shape[-1]), pixels, grey)}
    for ax, (title, image) in zip(axs, views.items()):
        ax.imshow(image, cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{source}: {title}", fontsize=8)
        ax.axis("off")
fig.suptitle("Occlusions as the audit makes them (illustration; not for clinical use)", fontsize=9)
plt.show()

# %% [markdown]
# ## Reading it
# - **Origin from embeddings**: the higher this AUC, the more the features the classifier uses carry the
#   source; on this data the source nearly gives the label, so a model can score well without seeing any
#   disease.
# - **Lungs hidden**: a model that keeps much of its skill with the lungs hidden uses something outside them
#   (here, possibly the mask's silhouette). A model that loses it passes a necessary test, not a sufficient
#   one: inside the lungs it may still read the source (exposure, contrast, the publisher's processing), which
#   the origin figure measures.
# - **Grad-CAM**: a heat map shows where the gradient of one output is large, not why the model decided; heat
#   on the mask's edge or the black background is itself a warning sign.
#
# What this notebook does not prove: whether the shipped model detects COVID-19. About 60 images give wide
# intervals, and most were in its training split; the audit of the shipped model on the whole shared data
# is on the *Train, evaluate, audit, explain* page. **Not for clinical use.**
