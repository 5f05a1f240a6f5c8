"""`covidxr calibrate`: refit a model's calibration and operating points on a site's labelled sample, never its
weights, and measure what that changes on rows the refit did not see.

The site's rows are split into folds by patient; each fold is scored by a calibration and operating points fitted
on the other folds (cross-fitting), so every figure is out of fold: ECE and each point's sensitivity and
specificity, beside the same figures of the model as it was (and with only its prior moved to the sample's share
of positives). The new run's calibration is then fitted on every row. Below MIN_PER_CLASS positives or negatives it
warns: a sensitivity measured on 30 positives has a 95% interval about +-0.1 wide, as wide as the gap between the
operating points it is meant to choose among, and Platt's intercept rests on those few rows.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from covidxr.errors import UsageError
from covidxr.evaluation.evaluate import evaluation_rows, model_probabilities
from covidxr.metrics import PatientBootstrap, expected_calibration_error, metrics_with_intervals
from covidxr.models.loading import load_run
from covidxr.runs import InferenceContract, Recalibration, RunDir, default_cache_root, shift_prevalence
from covidxr.runs.calibration import check_prevalence
from covidxr.training.calibration import POINT_RULES, calibration_contract, fit_calibration, operating_threshold

log = logging.getLogger("covidxr.calibrate")
MIN_PER_CLASS = 30
FOLDS = 5
RUN_FILES = ("config.yaml", "manifest.csv", "model.safetensors", "model.onnx", "model_card.json", "env.json",
             "metrics.csv", "curves.png")


def manifest_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def cross_fitted(logits: np.ndarray, targets: np.ndarray, patients: pd.Series, positive: int, folds: int,
                 seed: int) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Out-of-fold calibrated P(positive), each operating point's out-of-fold calls (thresholds chosen on the fit
    folds by the rules `train` uses), and each row's fit folds' share of positives (for the prior-shift-only
    figure)."""
    truth = targets == positive
    folds = max(2, min(folds, int(truth.sum()), int((~truth).sum())))
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    calibrated, fold_prevalence = np.empty(len(truth)), np.empty(len(truth))
    calls = {name: np.zeros(len(truth), dtype=bool) for name in POINT_RULES}
    for fit_rows, held_rows in splitter.split(logits, truth, groups=patients.to_numpy()):
        calibration = fit_calibration(logits[fit_rows], targets[fit_rows], patients.iloc[fit_rows], positive,
                                      "fit folds")
        fitted = calibration.positive_probability(logits[fit_rows], positive)
        calibrated[held_rows] = calibration.positive_probability(logits[held_rows], positive)
        for name, (rule, _) in POINT_RULES.items():
            calls[name][held_rows] = calibrated[held_rows] >= operating_threshold(fitted, truth[fit_rows], rule)
        fold_prevalence[held_rows] = truth[fit_rows].mean()
    return calibrated, calls, fold_prevalence


def _point_figures(truth: np.ndarray, called: np.ndarray, patients: pd.Series, bootstrap: PatientBootstrap) -> dict:
    figures = metrics_with_intervals(truth, called.astype(float), patients, 0.5, bootstrap)
    return {key: figures[key] for key in ("sensitivity", "sensitivity_ci", "specificity", "specificity_ci")}


def _ece(truth: np.ndarray, scores: np.ndarray, patients: pd.Series, bootstrap: PatientBootstrap) -> dict:
    interval = bootstrap.intervals(lambda rows: {"ece": expected_calibration_error(truth[rows], scores[rows])},
                                   patients)["ece"]
    return {"ece": expected_calibration_error(truth, scores), "ece_ci": interval}


def calibrate(run_dir: str | Path | None, data: str | Path, out: str | Path, prevalence: float | None = None,
              cache_root: str | Path | None = None, split: str | None = None, folds: int = FOLDS,
              resamples: int = 1000, seed: int = 0) -> dict:
    """Write run `out`: the run's files with calibration and operating points refitted on `data` (every labelled
    row, or those of `split`), and `model.json`'s `recalibration` (the sample, its size per class, out-of-fold
    figures before and after). Returns that `recalibration` object."""
    check_prevalence(prevalence)
    out = Path(out)
    if out.exists():
        raise UsageError("already exists; write the recalibrated run to a new folder", "out", out)
    run = load_run(run_dir)
    bootstrap = PatientBootstrap(resamples, seed)
    rows, name, split = evaluation_rows(run, Path(data), split)
    rows, logits, before = model_probabilities(run, rows, Path(cache_root or default_cache_root()))
    positive = run.positive_index
    targets = np.array([run.classes.index(label) for label in rows["label"]])
    truth, patients = targets == positive, rows["patient_id"].reset_index(drop=True)
    counts = {"positives": int(truth.sum()), "negatives": int((~truth).sum())}
    if min(counts.values()) < 2:
        raise UsageError(f"holds {counts['positives']} positive and {counts['negatives']} negative row(s): "
                         "calibration needs both classes", "data", Path(data))
    if min(counts.values()) < MIN_PER_CLASS:
        log.warning("%s holds %d positives and %d negatives; below %d of either, the refitted operating points' "
                    "sensitivity and specificity have 95%% intervals wider than about +-0.1", name,
                    counts["positives"], counts["negatives"], MIN_PER_CLASS)
    default_point = run.contract.default_operating_point
    if default_point not in ("balanced", "high-sensitivity", "high-specificity"):
        default_point = "balanced"
    calibrated, calls, fold_prevalence = cross_fitted(logits, targets, patients, positive, folds, seed)
    original = run.contract.scorer()
    prior_only = shift_prevalence(before[:, positive], original.calibration.prevalence, fold_prevalence) \
        if original.calibration.prevalence is not None else None
    figures = {
        "before": {**_ece(truth, before[:, positive], patients, bootstrap), "operating_points": {
            point_name: _point_figures(truth, before[:, positive] >= point.threshold, patients, bootstrap)
            for point_name, point in run.contract.operating_points.items()}},
        "prior_shift_only": _ece(truth, prior_only, patients, bootstrap) if prior_only is not None else None,
        "after": {**_ece(truth, calibrated, patients, bootstrap), "operating_points": {
            point_name: _point_figures(truth, called, patients, bootstrap) for point_name, called in calls.items()}},
    }
    refitted = calibration_contract(logits, targets, patients, positive, f"{name} ({split})", default_point)
    refitted["calibration"]["deployment_prevalence"] = prevalence
    recalibration = {"data": name, "split": split, "manifest_sha256": manifest_sha256(Path(data)),
                     "images": int(len(rows)), "patients": int(patients.nunique()), **counts, "folds": folds,
                     "figures_out_of_fold": figures,
                     "ci_method": bootstrap.method, "minimum_per_class": MIN_PER_CLASS,
                     "from_run": str(run.run), "weights_changed": False}
    _write_run(run.rundir, out, run.contract.updated(**refitted, recalibration=recalibration), recalibration)
    return recalibration


def _write_run(source: RunDir, out: Path, contract: InferenceContract, recalibration: dict) -> None:
    out.mkdir(parents=True)
    for name in RUN_FILES:
        if (source.root / name).is_file():
            shutil.copy2(source.root / name, out / name)
    target = RunDir(out)
    target.write_contract(contract)
    if target.model_card.is_file():
        target.write_card(target.read_card().updated(recalibration=Recalibration.model_validate(recalibration),
                                                     evaluations=None))
