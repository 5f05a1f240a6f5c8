"""Evaluation figures: ROC and PR curves with patient-bootstrap bands, reliability diagram, confusion."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402

from covidxr.evaluation.metrics import patient_resamples  # noqa: E402

GRID = np.linspace(0, 1, 101)


def _band(truth, scores, patients, curve, resamples: int = 200):
    """Pointwise 2.5/97.5 percentiles of a curve over patient-bootstrap resamples."""
    curves = []
    for rows in patient_resamples(patients.reset_index(drop=True), resamples, seed=1):
        if 0 < truth[rows].sum() < len(rows):
            curves.append(curve(truth[rows], scores[rows]))
    return (np.percentile(curves, 2.5, axis=0), np.percentile(curves, 97.5, axis=0)) if curves else None


def _roc(truth, scores):
    fpr, tpr, _ = roc_curve(truth, scores)
    return np.interp(GRID, fpr, tpr)


def _pr(truth, scores):
    precision, recall, _ = precision_recall_curve(truth, scores)
    return np.interp(GRID, recall[::-1], precision[::-1])


def _reliability(scores: np.ndarray, truth: np.ndarray) -> tuple[list[float], list[float]]:
    edges = np.linspace(0, 1, 11)
    centres, observed = [], []
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (scores >= low) & (scores < high if high < 1 else scores <= high)
        if inside.any():
            centres.append(float(scores[inside].mean()))
            observed.append(float(truth[inside].mean()))
    return centres, observed


def evaluation_plots(truth: np.ndarray, scores: tuple[np.ndarray, np.ndarray], patients: pd.Series, result: dict,
                     stem: Path) -> None:
    """Writes STEM-curves.png (ROC, PR, reliability before/after the temperature, confusion)."""
    scores, uncalibrated = scores
    figure, axes = plt.subplots(1, 4, figsize=(16, 4))
    title = f"{result['data']} / {result['split']}: {result['n_images']} images, {result['n_patients']} patients"
    both = 0 < truth.sum() < len(truth)
    if both:
        for axis, curve, label in ((axes[0], _roc, "ROC"), (axes[1], _pr, "PR")):
            axis.plot(GRID, curve(truth, scores), label="model")
            band = _band(truth, scores, patients, curve)
            if band is not None:
                axis.fill_between(GRID, *band, alpha=0.25, label="95% band (patient bootstrap)")
            axis.set_title(label)
            axis.legend(fontsize=7)
        axes[0].plot([0, 1], [0, 1], "k:", linewidth=0.8)
        axes[0].set_xlabel("1 - specificity")
        axes[0].set_ylabel("sensitivity")
        axes[1].set_xlabel("recall (sensitivity)")
        axes[1].set_ylabel("precision")
    axes[2].plot([0, 1], [0, 1], "k:", linewidth=0.8)
    axes[2].plot(*_reliability(uncalibrated, truth), marker="x", linestyle="--",
                 label=f"before temperature (ECE {result['ece_before_temperature']:.3f})")
    axes[2].plot(*_reliability(scores, truth), marker="o", label=f"after (ECE {result['ece']:.3f})")
    axes[2].legend(fontsize=7)
    axes[2].set_title("reliability")
    axes[2].set_xlabel("predicted P(covid)")
    axes[2].set_ylabel("observed share covid")
    matrix = np.array(result["confusion_matrix"])
    axes[3].imshow(matrix, cmap="Blues")
    for (row, column), value in np.ndenumerate(matrix):
        axes[3].text(column, row, str(value), ha="center", va="center")
    axes[3].set_xticks([0, 1], ["called non-covid", "called covid"])
    axes[3].set_yticks([0, 1], ["non-covid", "covid"])
    axes[3].set_title(f"confusion at threshold {result['threshold']:.3f}")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(f"{stem}-curves.png", dpi=90)
    plt.close(figure)
