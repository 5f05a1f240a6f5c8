"""Evaluation figures: ROC and PR curves with bands from the evaluation's own patient bootstrap, the reliability
diagram on the bins its ECE uses, and the confusion matrix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve

from covidxr.metrics import CALIBRATION_BINS, PatientBootstrap, reliability
from covidxr.runs import EvaluationResult

GRID = np.linspace(0, 1, 101)


def _roc(truth, scores):
    fpr, tpr, _ = roc_curve(truth, scores)
    return np.interp(GRID, fpr, tpr)


def _pr(truth, scores):
    precision, recall, _ = precision_recall_curve(truth, scores)
    return np.interp(GRID, recall[::-1], precision[::-1])


CURVES = {"ROC": _roc, "PR": _pr}


def curve_bands(truth: np.ndarray, scores: np.ndarray, patients: pd.Series,
                bootstrap: PatientBootstrap) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Pointwise 2.5/97.5 percentiles of each curve on GRID over the bootstrap's resamples that hold both classes;
    none when fewer than half do (the rule of the intervals)."""
    drawn: dict[str, list[np.ndarray]] = {name: [] for name in CURVES}
    for rows in bootstrap.rows(patients):
        if 0 < truth[rows].sum() < len(rows):
            for name, curve in CURVES.items():
                drawn[name].append(curve(truth[rows], scores[rows]))
    if len(drawn["ROC"]) < bootstrap.resamples / 2:
        return {}
    return {name: (np.percentile(curves, 2.5, axis=0), np.percentile(curves, 97.5, axis=0))
            for name, curves in drawn.items()}


def curves_file(stem: Path) -> Path:
    """The figure `evaluation_plots` writes for an evaluation whose files are STEM.*."""
    return stem.with_name(f"{stem.name}-curves.png")


def evaluation_plots(truth: np.ndarray, scores: tuple[np.ndarray, np.ndarray], patients: pd.Series,
                     result: EvaluationResult, stem: Path, bootstrap: PatientBootstrap) -> None:
    """Writes `curves_file(stem)` (ROC, PR, reliability before/after the temperature, confusion)."""
    scores, uncalibrated = scores
    figure = Figure(figsize=(16, 4))
    axes = figure.subplots(1, 4)
    title = f"{result.data} / {result.split}: {result.n_images} images, {result.n_patients} patients"
    both = 0 < truth.sum() < len(truth)
    if both:
        bands = curve_bands(truth, scores, patients, bootstrap)
        for axis, (label, curve) in zip(axes, CURVES.items()):
            axis.plot(GRID, curve(truth, scores), label="model")
            if label in bands:
                axis.fill_between(GRID, *bands[label], alpha=0.25,
                                  label=f"95% band ({bootstrap.resamples} patient resamples)")
            axis.set_title(label)
            axis.legend(fontsize=7)
        axes[0].plot([0, 1], [0, 1], "k:", linewidth=0.8)
        axes[0].set_xlabel("1 - specificity")
        axes[0].set_ylabel("sensitivity")
        axes[1].set_xlabel("recall (sensitivity)")
        axes[1].set_ylabel("precision")
    axes[2].plot([0, 1], [0, 1], "k:", linewidth=0.8)
    before, after = reliability(truth, uncalibrated), reliability(truth, scores)
    axes[2].plot(before.predicted, before.observed, marker="x", linestyle="--",
                 label=f"before calibration (ECE {result.ece_before_calibration:.3f})")
    axes[2].plot(after.predicted, after.observed, marker="o", label=f"after (ECE {result.ece:.3f})")
    axes[2].legend(fontsize=7)
    axes[2].set_title(f"reliability ({CALIBRATION_BINS} equal-width bins, those of the ECE)")
    axes[2].set_xlabel("predicted P(covid)")
    axes[2].set_ylabel("observed share covid")
    matrix = np.array(result.confusion_matrix)
    axes[3].imshow(matrix, cmap="Blues")
    for (row, column), value in np.ndenumerate(matrix):
        axes[3].text(column, row, str(value), ha="center", va="center")
    axes[3].set_xticks([0, 1], ["called non-covid", "called covid"])
    axes[3].set_yticks([0, 1], ["non-covid", "covid"])
    axes[3].set_title(f"confusion at threshold {result.threshold:.3f}")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(curves_file(stem), dpi=90)
