"""`covidxr cv`: grouped stratified k-fold cross-validation of a recipe.

The folds are the manifest's own (`fold` on train and val rows, from `data build --folds K`), or made
here over train and val with the same grouping (patients and duplicate groups never straddle folds),
stratified by source and label. Test rows stay out (`covidxr compare` folds over them too). Each fold
trains a run in `DIR/fold-K/` with that fold as validation; the report gives each metric's mean and
standard deviation over folds, the pooled out-of-fold AUC beside the source-only baseline on the same rows and,
per source holding both classes, the pooled out-of-fold AUC within it, each with a patient-level bootstrap CI.
Threshold metrics use a threshold fitted on the same held-out fold, so they are optimistic; the AUCs are
threshold-free.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from covidxr.config import TrainConfig
from covidxr.data.manifest import load_manifest, save_manifest
from covidxr.data.split import grouped_folds, split_units
from covidxr.errors import UsageError
from covidxr.evaluation.evaluate import model_probabilities, source_only
from covidxr.metrics import PatientBootstrap, auc_or_none, binary_metrics
from covidxr.models.loading import load_run
from covidxr.runs import CrossValidationResult, default_cache_root, read_json, write_json
from covidxr.training.data import select_rows
from covidxr.training.run import train
from covidxr.training.tracking import log_result, tracked_run

log = logging.getLogger("covidxr.cv")
FOLD_METRICS = ("auc", "accuracy", "sensitivity", "specificity", "f1")


def development_folds(manifest: pd.DataFrame, folds: int | None, seed: int, include_test: bool = False) -> pd.DataFrame:
    """Train and val rows (and test rows with `include_test`) with a `fold` column: the manifest's own folds,
    or `folds` new grouped folds, stratified by source and label."""
    development = (manifest if include_test else manifest[manifest["split"] != "test"]).reset_index(drop=True)
    if folds is None:
        if development["fold"].notna().all():
            return development
        raise UsageError("the manifest has no folds: give a number of folds (or build it with `data build --folds K`)",
                         "folds")
    units = split_units(development)
    if not 2 <= folds <= units.nunique():
        raise UsageError(f"must be between 2 and the {units.nunique()} patient units available", "folds", folds)
    strata = development["source"] + "/" + development["label"]
    return development.assign(fold=grouped_folds(strata, units, folds, seed))


def pooled_within_source(pooled: pd.DataFrame, bootstrap: PatientBootstrap) -> dict:
    """Per source holding both classes: the pooled out-of-fold AUC on its rows alone, with a patient-bootstrap CI
    (inside one source, origin cannot separate the classes)."""
    figures = {}
    for source, part in pooled.groupby("source"):
        truth, scores = part["truth"].to_numpy(), part["score"].to_numpy()
        if 0 < truth.sum() < len(truth):
            figures[str(source)] = {
                "n_images": int(len(part)), "n_patients": int(part["patient_id"].nunique()),
                "auc": auc_or_none(truth, scores),
                "auc_ci": bootstrap.intervals(lambda r: {"auc": auc_or_none(truth[r], scores[r])},
                                              part["patient_id"])["auc"],
            }
    return figures


def pooled_figures(pooled: pd.DataFrame, bootstrap: PatientBootstrap) -> dict:
    """Of every fold's held-out rows together (`truth`, `score`, `source`, `patient_id`): the pooled out-of-fold AUC,
    the source-only baseline AUC on the same rows (each image scored by its source's share of positives: what origin
    alone gives) and the pooled AUC within each source holding both classes, with patient-bootstrap CIs."""
    truth, scores = pooled["truth"].to_numpy(), pooled["score"].to_numpy()
    source_auc, source_auc_ci = source_only(pooled, truth, "source", bootstrap)
    return {"pooled_out_of_fold_auc": auc_or_none(truth, scores),
            "pooled_out_of_fold_auc_ci": bootstrap.intervals(lambda r: {"auc": auc_or_none(truth[r], scores[r])},
                                                             pooled["patient_id"])["auc"],
            "source_only_auc": source_auc, "source_only_auc_ci": source_auc_ci,
            "pooled_out_of_fold_within_source": pooled_within_source(pooled, bootstrap),
            "n_images": int(len(pooled)), "n_patients": int(pooled["patient_id"].nunique())}


def cross_validate(config: TrainConfig, manifest_path: str | Path, out: str | Path, folds: int | None = None,
                   cache_root: str | Path | None = None, include_test: bool = False,
                   bootstrap: PatientBootstrap = PatientBootstrap()) -> CrossValidationResult | None:
    """Train one run per fold in `out/fold-K/`; `include_test` folds over every row, test rows included (the
    widest out-of-fold estimate, used by `covidxr compare`). None in DDP worker processes."""
    out = Path(out)
    rows = development_folds(select_rows(load_manifest(manifest_path), config), folds, config.seed, include_test)
    out.mkdir(parents=True, exist_ok=True)
    with tracked_run(f"cv {out.name}", register=False) as run_id:
        per_fold, pooled = [], []
        numbers = sorted(int(fold) for fold in rows["fold"].dropna().unique())
        for fold in numbers:
            log.info("cross-validation: fold %d of %d (%d held-out images)", fold + 1, len(numbers),
                     int((rows["fold"] == fold).sum()))
            manifest = rows.assign(split=np.where(rows["fold"] == fold, "val", "train"), fold=pd.NA)
            save_manifest(manifest, out / f"fold-{fold}.csv")
            run = train(config, out / f"fold-{fold}.csv", out / f"fold-{fold}", cache_root=cache_root)
            if run is None:
                return None
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
        result = CrossValidationResult.model_validate({
            "folds": per_fold,
            "splits": "train, val and test" if include_test else "train and val",
            "mean": {k: _mean([f[k] for f in per_fold]) for k in FOLD_METRICS},
            "sd": {k: _sd([f[k] for f in per_fold]) for k in FOLD_METRICS},
            **pooled_figures(pd.concat(pooled, ignore_index=True), bootstrap),
            "ci_method": bootstrap.method,
            "note": "threshold metrics use a threshold fitted on the same held-out fold (optimistic); AUCs do not",
        })
        write_json(out / "cv.json", result.to_json())
        log_result(run_id, result.to_json(), config.model_dump(mode="json"), out / "cv.json")
    return result


def read_cv(folder: str | Path) -> CrossValidationResult | None:
    """`folder/cv.json` (a run's evaluation folder holds it when cross-validation results were copied there, as
    `covidxr compare` does), or None."""
    path = Path(folder) / "cv.json"
    return CrossValidationResult.parse(read_json(path), path) if path.is_file() else None


def _mean(values: list) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined and len(defined) == len(values) else None


def _sd(values: list) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.std(defined, ddof=1)) if len(defined) > 1 and len(defined) == len(values) else None
