"""`covidxr cv`: grouped stratified k-fold cross-validation of a recipe.

The folds are the manifest's own (`fold` on train and val rows, from `data build --folds K`), or made
here over train and val with the same grouping (patients and duplicate groups never straddle folds).
Test rows stay out. Each fold trains a run in `DIR/fold-K/` with that fold as validation; the report
gives each metric's mean and standard deviation over folds and the pooled out-of-fold AUC with a
patient-level bootstrap CI. Threshold metrics use a threshold fitted on the same held-out fold, so they
are optimistic; the AUCs are threshold-free.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from covidxr.config import TrainConfig
from covidxr.data.manifest import load_manifest, save_manifest
from covidxr.data.split import grouped_folds, split_units
from covidxr.errors import UsageError
from covidxr.evaluation.evaluate import model_probabilities
from covidxr.evaluation.metrics import PatientBootstrap, auc_or_none, binary_metrics
from covidxr.models.loading import load_run
from covidxr.runs import default_cache_root, write_json
from covidxr.training.data import select_rows
from covidxr.training.run import train

FOLD_METRICS = ("auc", "accuracy", "sensitivity", "specificity", "f1")


def development_folds(manifest: pd.DataFrame, folds: int | None, seed: int) -> pd.DataFrame:
    """Train and val rows with a `fold` column: the manifest's own folds, or `folds` new grouped ones."""
    development = manifest[manifest["split"] != "test"].reset_index(drop=True)
    if folds is None:
        if development["fold"].notna().all():
            return development
        raise UsageError("the manifest has no folds: give a number of folds (or build it with `data build --folds K`)",
                         "folds")
    units = split_units(development)
    if not 2 <= folds <= units.nunique():
        raise UsageError(f"must be between 2 and the {units.nunique()} patient units available", "folds", folds)
    return development.assign(fold=grouped_folds(development["label"], units, folds, seed))


def cross_validate(config: TrainConfig, manifest_path: str | Path, out: str | Path, folds: int | None = None,
                   cache_root: str | Path | None = None) -> dict:
    out = Path(out)
    rows = development_folds(select_rows(load_manifest(manifest_path), config), folds, config.seed)
    out.mkdir(parents=True, exist_ok=True)
    per_fold, pooled = [], []
    for fold in sorted(rows["fold"].dropna().unique()):
        fold = int(fold)
        manifest = rows.assign(split=np.where(rows["fold"] == fold, "val", "train"), fold=pd.NA)
        save_manifest(manifest, out / f"fold-{fold}.csv")
        run = train(config, out / f"fold-{fold}.csv", out / f"fold-{fold}", cache_root=cache_root)
        if run is None:
            return {}
        model = load_run(run)
        held_out, _, probabilities = model_probabilities(model, manifest[manifest["split"] == "val"].reset_index(
            drop=True), Path(cache_root or default_cache_root()))
        truth = (held_out["label"] == model.positive_class).to_numpy()
        scores = probabilities[:, model.positive_index]
        figures = binary_metrics(truth, scores, model.threshold)
        per_fold.append({"fold": fold, "n_images": int(len(held_out)),
                         "n_patients": int(held_out["patient_id"].nunique()),
                         **{k: figures[k] for k in FOLD_METRICS}})
        pooled.append(held_out.assign(score=scores, truth=truth))
    everything = pd.concat(pooled, ignore_index=True)
    truth, scores = everything["truth"].to_numpy(), everything["score"].to_numpy()
    bootstrap = PatientBootstrap()
    result = {
        "folds": per_fold,
        "mean": {k: _mean([f[k] for f in per_fold]) for k in FOLD_METRICS},
        "sd": {k: _sd([f[k] for f in per_fold]) for k in FOLD_METRICS},
        "pooled_out_of_fold_auc": auc_or_none(truth, scores),
        "pooled_out_of_fold_auc_ci": bootstrap.intervals(lambda r: {"auc": auc_or_none(truth[r], scores[r])},
                                                         everything["patient_id"])["auc"],
        "n_images": int(len(everything)), "n_patients": int(everything["patient_id"].nunique()),
        "ci_method": bootstrap.method,
        "note": "threshold metrics use a threshold fitted on the same held-out fold (optimistic); AUCs do not",
    }
    write_json(out / "cv.json", result)
    return result


def _mean(values: list) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined and len(defined) == len(values) else None


def _sd(values: list) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.std(defined, ddof=1)) if len(defined) > 1 and len(defined) == len(values) else None
