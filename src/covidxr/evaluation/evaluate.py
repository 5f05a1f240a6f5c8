"""`covidxr evaluate`: a run's model on its test split or on any other manifest, with patient-level
bootstrap CIs, calibration, within-source figures and the source-only baseline (docs/reference.md,
"Outputs")."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from covidxr.data.cache import prepare
from covidxr.data.dataset import CachedImages
from covidxr.data.labels import label_for
from covidxr.data.manifest import load_manifest
from covidxr.data.overlap import overlap_with_training, training_part
from covidxr.errors import CovidxrError, UsageError
from covidxr.evaluation.plots import evaluation_plots
from covidxr.lungs import preprocessor
from covidxr.metrics import (
    PatientBootstrap,
    at_prevalence,
    auc_or_none,
    binary_metrics,
    brier_score,
    confusion,
    expected_calibration_error,
    metrics_with_intervals,
)
from covidxr.models.inference import predict_logits
from covidxr.models.loading import RunModel, load_run
from covidxr.runs import (
    CardEvaluation,
    EvaluationResult,
    OperatingPointFigures,
    SubgroupFigures,
    default_cache_root,
    predicted_classes,
    read_json,
    softmax_with_temperature,
    write_json,
)
from covidxr.runs.calibration import check_prevalence

log = logging.getLogger("covidxr.evaluate")
INTERNAL = "internal"
"""The data name of an evaluation on the run's own manifest."""
OPERATING_POINT_KEYS = ("sensitivity", "sensitivity_ci", "specificity", "specificity_ci", "ppv", "ppv_ci", "npv",
                        "npv_ci")


def evaluation_stem(folder: Path, data: str, split: str) -> Path:
    """Where an evaluation of `data` / `split` is written in an evaluation folder, without suffix: STEM.json, and
    the plots of `covidxr.evaluation.plots` (`curves_file(STEM)`)."""
    return folder / f"evaluate-{data}-{split}"


def evaluation_file(folder: Path, data: str, split: str) -> Path:
    stem = evaluation_stem(folder, data, split)
    return stem.with_name(f"{stem.name}.json")


def read_evaluation(path: Path) -> EvaluationResult:
    return EvaluationResult.parse(read_json(path), path)


def saved_evaluations(folder: Path) -> list[EvaluationResult]:
    """Every evaluation written in an evaluation folder, by file name."""
    return [read_evaluation(path) for path in sorted(folder.glob(evaluation_file(folder, "*", "*").name))]


def _labelled(manifest: pd.DataFrame, classes: list[str], task: str) -> pd.DataFrame:
    """Rows labelled for the model's task (relabelled from `finding` when needed); unmapped rows dropped."""
    if set(manifest["label"]) <= set(classes) and (manifest["label"] != "").all():
        return manifest
    labels = manifest["finding"].map(lambda f: label_for(f, task) or "")
    dropped = int((labels == "").sum())
    if dropped:
        log.warning("%d row(s) have findings without a %s label and are not evaluated", dropped, task)
    return manifest.assign(label=labels)[labels != ""].reset_index(drop=True)


def evaluation_rows(run: RunModel, data: Path | None, split: str | None) -> tuple[pd.DataFrame, str, str]:
    """(rows, data name, split name): the run's own split, or another manifest (its split if it has one);
    `split=None` takes every row."""
    task = "binary" if len(run.classes) == 2 else "three-class"
    if data is None:
        manifest = load_manifest(run.run / "manifest.csv")
        name = INTERNAL
    else:
        manifest, name = load_manifest(data), Path(data).stem
    if split is not None and (manifest["split"] != "").any():
        if split not in set(manifest["split"]):
            raise UsageError(f"the manifest has splits {sorted(set(manifest['split']) - {''})}", "split", split)
        manifest = manifest[manifest["split"] == split]
    else:
        split = "all"
    rows = _labelled(manifest.reset_index(drop=True), run.classes, task)
    if rows.empty:
        raise CovidxrError(f"no labelled image to evaluate in {name} ({split})")
    return rows, name, split


def overlap_with_run(run: RunModel, rows: pd.DataFrame) -> dict | None:
    """How the evaluation rows overlap the run's own training and validation rows (same file, near-duplicate,
    same patient); None when the run keeps no training manifest (the shipped model)."""
    if not run.rundir.manifest.is_file():
        log.warning("%s keeps no training manifest: overlap with its training data is not checked", run.run)
        return None
    training, described = training_part(load_manifest(run.rundir.manifest))
    return overlap_with_training(rows, training, f"the run's {described}").as_dict()


def model_probabilities(
    run: RunModel, rows: pd.DataFrame, cache_root: Path
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Rows that could be prepared, their raw logits and their calibrated probabilities (at the prevalence the
    calibration was fitted at)."""
    report = prepare(rows, cache_root, preprocessor(run.preprocessing))
    if len(report.failures):
        log.warning("%d image(s) could not be read and are not evaluated", len(report.failures))
        rows = rows[~rows["sha256"].isin(report.failures["sha256"])].reset_index(drop=True)
    logits, _ = predict_logits(run.model, CachedImages(rows, report.cache, run.classes))
    return rows, logits, run.contract.scorer().probabilities(logits)


def _subgroups(rows: pd.DataFrame, truth: np.ndarray, scores: np.ndarray, threshold: float, by: str,
               bootstrap: PatientBootstrap) -> dict[str, SubgroupFigures]:
    groups = {}
    for name, part in rows.groupby(by):
        index = part.index.to_numpy()
        if 0 < truth[index].sum() < len(index):
            figures = metrics_with_intervals(truth[index], scores[index], part["patient_id"], threshold, bootstrap)
            groups[str(name)] = SubgroupFigures(
                n_images=int(len(index)), n_patients=int(part["patient_id"].nunique()),
                **{k: figures[k] for k in ("auc", "auc_ci", "sensitivity", "specificity")})
    return groups


def source_only(rows: pd.DataFrame, truth: np.ndarray, by: str, bootstrap: PatientBootstrap) -> tuple:
    """AUC of scoring each image by the share of positives in its source/site: what origin alone gives."""
    share = pd.Series(truth.astype(float)).groupby(rows[by].to_numpy()).transform("mean").to_numpy()
    auc = auc_or_none(truth, share)
    interval = bootstrap.intervals(lambda r: {"auc": auc_or_none(truth[r], share[r])}, rows["patient_id"])["auc"]
    return auc, interval


def operating_point_figures(run: RunModel, truth: np.ndarray, scores: np.ndarray, patients: pd.Series,
                            bootstrap: PatientBootstrap) -> dict[str, OperatingPointFigures]:
    """Each of the run's operating points (thresholds fitted on validation) applied here: sensitivity,
    specificity, PPV and NPV with their intervals, beside the validation figures it was chosen with."""
    figures = {}
    for name, point in run.contract.operating_points.items():
        measured = metrics_with_intervals(truth, scores, patients, point.threshold, bootstrap)
        figures[name] = OperatingPointFigures(
            threshold=point.threshold, rule=point.rule, **{key: measured[key] for key in OPERATING_POINT_KEYS},
            validation={"sensitivity": point.sensitivity, "specificity": point.specificity, "ci": point.ci})
    return figures


def calibration_figures(truth: np.ndarray, calibrated: np.ndarray, uncalibrated: np.ndarray, patients: pd.Series,
                        bootstrap: PatientBootstrap) -> dict:
    """ECE and Brier score after and before calibration (the plain softmax), ECEs with their intervals."""
    intervals = bootstrap.intervals(lambda rows: {
        "ece": expected_calibration_error(truth[rows], calibrated[rows]),
        "ece_before_calibration": expected_calibration_error(truth[rows], uncalibrated[rows])}, patients)
    return {"ece": expected_calibration_error(truth, calibrated), "ece_ci": intervals["ece"],
            "ece_before_calibration": expected_calibration_error(truth, uncalibrated),
            "ece_before_calibration_ci": intervals["ece_before_calibration"],
            "brier": brier_score(truth, calibrated), "brier_before_calibration": brier_score(truth, uncalibrated)}


def evaluate(run_dir: str | Path, data: str | Path | None = None, split: str = "test",
             prevalence: float | None = None, cache_root: str | Path | None = None,
             resamples: int = 1000, seed: int = 0) -> dict:
    """`evaluate_run`'s result as written to its JSON file."""
    return evaluate_run(run_dir, data, split, prevalence, cache_root, resamples, seed).to_json()


def evaluate_run(run_dir: str | Path, data: str | Path | None = None, split: str = "test",
                 prevalence: float | None = None, cache_root: str | Path | None = None,
                 resamples: int = 1000, seed: int = 0) -> EvaluationResult:
    """The contract's evaluation object; also written to RUN/evaluation/evaluate-<data>-<split>.json."""
    check_prevalence(prevalence)
    bootstrap = PatientBootstrap(resamples, seed)
    run = load_run(run_dir)
    cache_root = Path(cache_root or default_cache_root())
    rows, name, split = evaluation_rows(run, Path(data) if data else None, split)
    overlap = overlap_with_run(run, rows) if data is not None else None
    rows, logits, probabilities = model_probabilities(run, rows, cache_root)
    positive = run.positive_index
    truth = (rows["label"] == run.positive_class).to_numpy()
    scores = probabilities[:, positive]
    uncalibrated = softmax_with_temperature(logits, 1.0)[:, positive]
    scorer = run.contract.scorer()
    threshold = scorer.threshold
    result = {
        **({"overlap_with_training": overlap} if data is not None else {}),
        "run": str(run.run), "data": name, "split": split, "n_images": int(len(rows)),
        "n_patients": int(rows["patient_id"].nunique()), "prevalence": float(truth.mean()),
        **metrics_with_intervals(truth, scores, rows["patient_id"], threshold, bootstrap),
        "threshold": threshold, "threshold_rule": run.contract.threshold_rule,
        "operating_point": scorer.operating_point, "calibration": scorer.calibration.method,
        "calibration_prevalence": scorer.calibration.prevalence,
        "confusion_matrix": confusion(truth, scores, threshold),
        **calibration_figures(truth, scores, uncalibrated, rows["patient_id"], bootstrap),
        "within_source": _subgroups(rows, truth, scores, threshold, "source", bootstrap),
        "within_site": _subgroups(rows, truth, scores, threshold, "site", bootstrap),
        "ci_method": bootstrap.method,
    }
    result["source_only_auc"], result["source_only_auc_ci"] = source_only(rows, truth, "source", bootstrap)
    result["site_only_auc"], result["site_only_auc_ci"] = source_only(rows, truth, "site", bootstrap)
    if prevalence is not None:
        result |= at_prevalence(result["sensitivity"], result["specificity"], prevalence)
    result["operating_points"] = operating_point_figures(run, truth, scores, rows["patient_id"], bootstrap)
    if len(run.classes) > 2:
        result |= multiclass_figures(rows, probabilities, run.classes, threshold, run.positive_class, bootstrap)
    evaluation = EvaluationResult(**result)
    _save(run, evaluation, rows, truth, (scores, uncalibrated), bootstrap)
    return evaluation


def multiclass_figures(rows: pd.DataFrame, probabilities: np.ndarray, classes: list[str], threshold: float,
                       positive_class: str, bootstrap: PatientBootstrap) -> dict:
    predicted = predicted_classes(probabilities, classes, positive_class, threshold)
    per_class = {}
    for index, name in enumerate(classes):
        truth = (rows["label"] == name).to_numpy()
        called = predicted == name
        figures = binary_metrics(truth, called.astype(float), 0.5)
        auc = auc_or_none(truth, probabilities[:, index])
        interval = bootstrap.intervals(lambda r: {"auc": auc_or_none(truth[r], probabilities[r, index])},
                                       rows["patient_id"])["auc"]
        per_class[name] = {"auc": auc, "auc_ci": interval, "sensitivity": figures["sensitivity"],
                           "specificity": figures["specificity"], "f1": figures["f1"]}
    macro = {}
    for key in ("auc", "sensitivity", "specificity", "f1"):
        values = [v[key] for v in per_class.values() if v[key] is not None]
        macro[key] = float(np.mean(values)) if len(values) == len(per_class) else None
    return {"per_class": per_class, "macro": macro}


def _save(run: RunModel, result: EvaluationResult, rows: pd.DataFrame, truth: np.ndarray,
          scores: tuple[np.ndarray, np.ndarray], bootstrap: PatientBootstrap) -> None:
    """JSON, plots and the model card; `scores` = (after, before) calibration."""
    folder = run.output_folder
    folder.mkdir(parents=True, exist_ok=True)
    write_json(evaluation_file(folder, result.data, result.split), result.to_json())
    evaluation_plots(truth, scores, rows["patient_id"], result, evaluation_stem(folder, result.data, result.split),
                     bootstrap)
    run.rundir.update_card("evaluations", f"{result.data}-{result.split}", CardEvaluation.of(result))
