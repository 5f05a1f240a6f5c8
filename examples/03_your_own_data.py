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
# # Your own data
#
# From a folder of images to a trained, evaluated model calibrated to a second site:
#
# 1. `covidxr data import folders`: a folder whose sub-folders name the classes (`COVID-19/`, `NORMAL/`, ...);
# 2. `covidxr data build`: labels, duplicates, a split that no duplicate crosses;
# 3. `covidxr train --config transfer-lite0`: EfficientNet-Lite0 from ImageNet weights that ship offline;
# 4. evaluation with confidence intervals;
# 5. `covidxr calibrate`: refit the probabilities and operating points (never the weights) on a labelled
#    sample from the site where the model will be used.
#
# Your images go in `$MY_XRAYS` (and a site's sample in `$SITE_XRAYS`); without them this notebook makes both
# folders from links to the shared data, so that it runs anywhere the data is.
#
# **What it shows:** the commands and what each prints. **What it does not prove:** that such a model works:
# the training here is cut to one epoch per stage on about 50 images at 64 px to run in seconds, and the
# stand-in folders take every COVID-19 image from one collection and every normal from another (the source
# shortcut of notebook 01). Recalibration fixes probabilities, not skill. Research and teaching only:
# **not for clinical use**.

# %%
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from notebook_data import cohen_rows, covidxr, data_dir, link_images, require_data, rsna_paths

import covidxr as cx
from covidxr.evaluation.evaluate import evaluate
from covidxr.evaluation.metrics import format_estimate
from covidxr.evaluation.recalibrate import calibrate

WORK = Path(tempfile.mkdtemp(prefix="covidxr-03-"))
os.chdir(WORK)
print("work:", WORK)

# %% [markdown]
# ## Two folders of images
# The stand-ins: 24 COVID-19 images of Cohen's collection and 24 RSNA normals for "your" data; for the site,
# other patients of Cohen's collection, COVID-19 and other pneumonias (a very different prevalence).

# %%
MY_XRAYS = Path(os.environ.get("MY_XRAYS", WORK / "my_xrays"))
SITE_XRAYS = Path(os.environ.get("SITE_XRAYS", WORK / "site_xrays"))
if "MY_XRAYS" not in os.environ:
    DATA = data_dir()
    require_data(DATA)
    mine = cohen_rows(DATA, covid=24, other=0, seed=2)
    site = cohen_rows(DATA, covid=20, other=20, seed=3, exclude=frozenset(mine["patientid"]))
    link_images(mine["path"].tolist(), MY_XRAYS / "COVID-19")
    link_images(rsna_paths(DATA, 24, skip=1000), MY_XRAYS / "NORMAL")
    is_covid = site["finding"].str.contains("COVID-19")
    link_images(site.loc[is_covid, "path"].tolist(), SITE_XRAYS / "COVID-19")
    link_images(site.loc[~is_covid, "path"].tolist(), SITE_XRAYS / "PNEUMONIA")
for folder in (MY_XRAYS, SITE_XRAYS):
    print(folder, {sub.name: len(list(sub.iterdir())) for sub in sorted(folder.iterdir())})

# %% [markdown]
# ## Import and build
# A folder has no patient ids, so each image is its own patient: if your patients have several images, import
# a table with `covidxr data import csv ... --patient-col` instead, or the split cannot keep them together.

# %%
covidxr(f"data import folders {MY_XRAYS} --source mine -o mine.csv")
covidxr("data build mine.csv --task binary --split 0.6,0.2,0.2 -o dataset.csv")
covidxr("data summary dataset.csv")

# %% [markdown]
# ## Train `transfer-lite0`, cut short
# `--set` overrides any recipe key; here 64 px and one epoch per stage (head, then the whole network).

# %%
covidxr("train --config transfer-lite0 --data dataset.csv --cache cache -o run "
        "--set preprocessing.size=64 --set transfer.head_epochs=1 --set trainer.max_epochs=1")
metrics = pd.read_csv("run/metrics.csv")
print(metrics.to_string(index=False, float_format="{:.3f}".format))
print("not for clinical use")

# %% [markdown]
# ## Evaluate
# `covidxr evaluate --run run` on the test split; from Python here, with 200 bootstrap resamples.

# %%
result = evaluate("run", cache_root="cache", resamples=200)
for key in ("auc", "accuracy", "sensitivity", "specificity", "ece"):
    print(f"{key:12s} {format_estimate(result, key)}")
print(f"on {result['n_images']} test images; 95% CIs: {result['ci_method']}; not for clinical use")

# %% [markdown]
# ## Calibrate to a site
# The site's labelled sample is imported and built as a test-only set, then `covidxr calibrate --run run --data
# site.csv -o run-site` refits the calibration and operating points on it, cross-fitting by patient so the
# figures it gives are measured on rows each fit did not see. It warns when the sample is small (below 30 of a
# class): here it is. Called from Python (the function the command runs) with 200 bootstrap resamples.

# %%
covidxr(f"data import folders {SITE_XRAYS} --source site -o site-import.csv")
covidxr("data build site-import.csv --task binary --split 0,0,1 -o site.csv")
recalibration = calibrate("run", "site.csv", "run-site", cache_root="cache", resamples=200)
before, after = recalibration["figures_out_of_fold"]["before"], recalibration["figures_out_of_fold"]["after"]
print(f"{recalibration['images']} site images, {recalibration['positives']} positives, "
      f"{recalibration['negatives']} negatives; {recalibration['folds']}-fold cross-fitting by patient")
print(f"ECE out of fold: before {format_estimate(before, 'ece')}, after {format_estimate(after, 'ece')}")
for name, point in after["operating_points"].items():
    was = before["operating_points"][name]
    print(f"{name}: sensitivity / specificity before {format_estimate(was, 'sensitivity')} / "
          f"{format_estimate(was, 'specificity')}, after {format_estimate(point, 'sensitivity')} / "
          f"{format_estimate(point, 'specificity')}")
print(f"wrote run-site (weights unchanged); 95% CIs: {recalibration['ci_method']}; not for clinical use")

# %% [markdown]
# ## The same images, before and after
# P(COVID-19) for the site's images from the trained run and from its recalibrated copy (same weights), with
# the site's share of COVID-19 images: calibration moves the probabilities toward what the site sees; it cannot
# separate the classes better. (The recalibrated run was fitted on these very rows: the cross-fitted figures
# `calibrate` printed above are the honest ones.)

# %%
site_rows = pd.read_csv("site.csv", keep_default_na=False)
runs = {"trained run": "run", "recalibrated": "run-site"}
models = {name: cx.load_model(run, input_check=False) for name, run in runs.items()}
probabilities = {name: [p.probability for p in model.predict_files(site_rows["path"], workers=1)]
                 for name, model in models.items()}
fig, ax = plt.subplots(figsize=(6, 3))
for name, values in probabilities.items():
    assumed = models[name].info["prevalence"]
    ax.hist(values, bins=20, range=(0, 1), alpha=0.5,
            label=f"{name} (mean {sum(values) / len(values):.2f}; prevalence "
                  f"{'unknown' if assumed is None else f'{assumed:.3g}'}, {models[name].info['operating_point']})")
ax.axvline((site_rows["label"] == "covid").mean(), color="k", ls="--", lw=1, label="share of COVID-19 at the site")
ax.set_xlabel("P(covid)")
ax.set_ylabel("site images")
ax.legend(fontsize=8)
ax.set_title("Probabilities before and after recalibration: not for clinical use", fontsize=9)
plt.show()

# %% [markdown]
# What this notebook does not prove: that the model, or any model trained like it, would be useful at your
# site. Before relying on figures from your own data, check that patients do not cross splits (`covidxr data
# check`), that the test set is large enough for the intervals to mean something, and that the audit
# (notebook 02) does not find a shortcut. **Not for clinical use.**
