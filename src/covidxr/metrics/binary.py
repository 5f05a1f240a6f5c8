"""Binary metrics at an operating threshold and their patient-level bootstrap confidence intervals.

Undefined values (an AUC of a single-class set, a PPV with no positive call) are None, never NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score, confusion_matrix

from covidxr.errors import UsageError

POINT_METRICS = ("auc", "pr_auc", "accuracy", "sensitivity", "specificity", "ppv", "npv", "f1")


def _ratio(numerator: float, denominator: float) -> float | None:
    return float(numerator / denominator) if denominator else None


def auc_or_none(truth: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC as the Mann-Whitney U statistic over average ranks (ties count one half): the value of
    scikit-learn's roc_auc_score (equal on ties too), which bootstrap CIs call thousands of times:
    16.2x faster over 1,000 resamples of 823 rows (`benchmarks/bench_auc.py`)."""
    truth = np.asarray(truth, dtype=bool)
    positives = int(truth.sum())
    negatives = len(truth) - positives
    if not positives or not negatives:
        return None
    ranks = rankdata(np.asarray(scores, dtype=float))
    return float((ranks[truth].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def threshold_metrics(truth: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float | None]:
    """The metrics of calling `scores >= threshold` positive (counts only: cheap enough for the thousands of
    bootstrap resamples behind each operating point's intervals)."""
    truth = np.asarray(truth, dtype=bool)
    called = np.asarray(scores) >= threshold
    tp = float(np.sum(called & truth))
    fp = float(np.sum(called & ~truth))
    fn = float(np.sum(~called & truth))
    tn = float(np.sum(~called & ~truth))
    return {
        "accuracy": _ratio(tp + tn, len(truth)),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def binary_metrics(truth: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float | None]:
    """AUC, PR AUC and the metrics of calling `scores >= threshold` positive."""
    truth = np.asarray(truth, dtype=bool)
    both = 0 < truth.sum() < len(truth)
    return {
        "auc": auc_or_none(truth, scores),
        "pr_auc": float(average_precision_score(truth, scores)) if both else None,
        **threshold_metrics(truth, scores, threshold),
    }


def confusion(truth: np.ndarray, scores: np.ndarray, threshold: float) -> list[list[int]]:
    """[[tn, fp], [fn, tp]]."""
    matrix = confusion_matrix(np.asarray(truth, bool), np.asarray(scores) >= threshold, labels=[False, True])
    return matrix.astype(int).tolist()


def at_prevalence(sensitivity: float | None, specificity: float | None, prevalence: float) -> dict:
    """PPV and NPV that the sensitivity and specificity imply at another prevalence (Bayes)."""
    if sensitivity is None or specificity is None:
        return {"ppv_at_prevalence": None, "npv_at_prevalence": None}
    true_pos, false_pos = sensitivity * prevalence, (1 - specificity) * (1 - prevalence)
    true_neg, false_neg = specificity * (1 - prevalence), (1 - sensitivity) * prevalence
    return {"ppv_at_prevalence": _ratio(true_pos, true_pos + false_pos),
            "npv_at_prevalence": _ratio(true_neg, true_neg + false_neg)}


@dataclass(frozen=True)
class PatientBootstrap:
    """Patients drawn with replacement, their images together, `resamples` times from `seed`: the one bootstrap
    behind every 95% interval and curve band of an evaluation, and the `method` text that describes it."""

    resamples: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.resamples < 1:
            raise UsageError("must be at least 1", "resamples", self.resamples)

    @property
    def method(self) -> str:
        """The `ci_method` of results made with this bootstrap."""
        return (f"percentile bootstrap over patients, {self.resamples} resamples (seed {self.seed}), 95%; "
                "none where a figure is undefined in more than half the resamples")

    def rows(self, patients: pd.Series) -> Iterator[np.ndarray]:
        """Row positions of each resample (`patients` holds one patient id per row)."""
        codes, _ = pd.factorize(pd.Series(patients).reset_index(drop=True))
        rows_of = [np.flatnonzero(codes == code) for code in range(codes.max() + 1)] if len(codes) else []
        rng = np.random.default_rng(self.seed)
        for _ in range(self.resamples):
            chosen = rng.integers(0, len(rows_of), len(rows_of))
            yield np.concatenate([rows_of[i] for i in chosen])

    def intervals(self, statistic: Callable[[np.ndarray], dict[str, float | None]],
                  patients: pd.Series) -> dict[str, list[float] | None]:
        """95% percentile interval of each value `statistic(rows)` returns; None for a value undefined in more than
        half the resamples."""
        draws: dict[str, list[float]] = {}
        for rows in self.rows(patients):
            for key, value in statistic(rows).items():
                draws.setdefault(key, []).append(math.nan if value is None else value)
        intervals = {}
        for key, values in draws.items():
            values_array = np.asarray(values, dtype=float)
            defined = values_array[~np.isnan(values_array)]
            intervals[key] = None if len(defined) < len(values_array) / 2 else \
                [float(np.percentile(defined, 2.5)), float(np.percentile(defined, 97.5))]
        return intervals


def metrics_with_intervals(truth: np.ndarray, scores: np.ndarray, patients: pd.Series, threshold: float,
                           bootstrap: PatientBootstrap = PatientBootstrap()) -> dict:
    """Each binary metric and `<metric>_ci`."""
    truth, scores = np.asarray(truth, bool), np.asarray(scores, float)
    point = binary_metrics(truth, scores, threshold)
    intervals = bootstrap.intervals(lambda rows: binary_metrics(truth[rows], scores[rows], threshold), patients)
    return {**point, **{f"{key}_ci": intervals.get(key) for key in POINT_METRICS}}


def brier_score(truth: np.ndarray, scores: np.ndarray) -> float:
    return float(np.mean((np.asarray(scores, float) - np.asarray(truth, float)) ** 2))
