"""Severity regression, evaluated honestly: repeated patient-grouped cross-validation over every scored image,
mean absolute error and Pearson r with patient-bootstrap 95% intervals, and the baselines beside a model.

A *fitter* takes (features, targets (N, 2), units) of the training rows and returns a function from features
to (N, 2) predictions (extent, opacity); `out_of_fold` runs it over `repeats` draws of grouped folds, so every
image is predicted once per repeat by a model that never saw its patient (nor a duplicate of it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import GroupKFold

from covidxr.data.manifest import SEVERITY_MAXIMA
from covidxr.metrics import PatientBootstrap
from covidxr.runs.severity import SCORES, SeverityHead, SeverityScore

ALPHAS = tuple(float(a) for a in np.logspace(-1, 5, 13))
INNER_FOLDS = 5
MAXIMA = np.array(list(SEVERITY_MAXIMA.values()))
Predict = Callable[[np.ndarray], np.ndarray]
Fitter = Callable[[np.ndarray, np.ndarray, np.ndarray], Predict]


@dataclass(frozen=True)
class LinearMap:
    """`features @ coefficients + intercepts` on unscaled features: (p, k) coefficients, (k,) intercepts, and
    the ridge penalty chosen for each of the k targets."""

    coefficients: np.ndarray
    intercepts: np.ndarray
    alphas: np.ndarray

    def __call__(self, features: np.ndarray) -> np.ndarray:
        return features @ self.coefficients + self.intercepts


def ridge_path(features: np.ndarray, targets: np.ndarray, alphas: Sequence[float]) -> list[LinearMap]:
    """Ridge on standardised features (constant ones left as they are), one fit per alpha from a single SVD,
    each expressed on the unscaled features."""
    mean, scale = features.mean(axis=0), features.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    left, singular, right = np.linalg.svd((features - mean) / scale, full_matrices=False)
    target_mean = targets.mean(axis=0)
    projected = left.T @ (targets - target_mean)
    maps = []
    for alpha in alphas:
        coefficients = right.T @ ((singular / (singular ** 2 + alpha))[:, None] * projected) / scale[:, None]
        maps.append(LinearMap(coefficients, target_mean - mean @ coefficients, np.full(targets.shape[1], alpha)))
    return maps


def fit_ridge(features: np.ndarray, targets: np.ndarray, units: np.ndarray,
              alphas: Sequence[float] = ALPHAS) -> LinearMap:
    """Standardise + ridge per target (N, k), each target's alpha chosen from `alphas` by the lowest mean
    absolute error in patient-grouped inner cross-validation (groups: `units`), then refitted on every row."""
    inner = GroupKFold(n_splits=min(INNER_FOLDS, len(np.unique(units))))
    errors = np.zeros((len(alphas), targets.shape[1]))
    for train, held_out in inner.split(features, targets, units):
        for a, linear in enumerate(ridge_path(features[train], targets[train], alphas)):
            errors[a] += np.abs(linear(features[held_out]) - targets[held_out]).sum(axis=0)
    best = errors.argmin(axis=0)
    every = ridge_path(features, targets, alphas)
    columns = range(targets.shape[1])
    return LinearMap(np.stack([every[best[k]].coefficients[:, k] for k in columns], axis=1),
                     np.array([every[best[k]].intercepts[k] for k in columns]),
                     np.array([alphas[best[k]] for k in columns], dtype=float))


def ridge_fitter(features: np.ndarray, targets: np.ndarray, units: np.ndarray) -> Predict:
    """Ridge per score, each with its own alpha (see fit_ridge)."""
    return fit_ridge(features, targets, units)


def mean_fitter(features: np.ndarray, targets: np.ndarray, units: np.ndarray) -> Predict:
    """The baseline that knows no image: every prediction is the training rows' mean score."""
    mean = targets.mean(axis=0)
    return lambda rows: np.tile(mean, (len(rows), 1))


def linear_fitter(features: np.ndarray, targets: np.ndarray, units: np.ndarray) -> Predict:
    """Ordinary least squares (for one or a few features, such as the lung share)."""
    model = LinearRegression().fit(features, targets)
    return model.predict


def out_of_fold(features: np.ndarray, targets: np.ndarray, units: np.ndarray, folds: np.ndarray,
                fitter: Fitter) -> np.ndarray:
    """(repeats, N, 2) predictions, clipped to each score's range: row i of repeat r predicted by a model
    fitted on the rows outside fold `folds[r, i]`."""
    predictions = np.empty((len(folds), len(targets), targets.shape[1]))
    for repeat, assignment in enumerate(folds):
        for fold in np.unique(assignment):
            held_out = assignment == fold
            predict = fitter(features[~held_out], targets[~held_out], units[~held_out])
            predictions[repeat, held_out] = predict(features[held_out])
    return np.clip(predictions, 0, MAXIMA[: targets.shape[1]])


def _pearson(predicted: np.ndarray, rated: np.ndarray) -> float | None:
    if predicted.std() == 0 or rated.std() == 0:
        return None
    return float(np.corrcoef(predicted, rated)[0, 1])


def _statistics(predictions: np.ndarray, targets: np.ndarray) -> dict[str, float | None]:
    """MAE and Pearson r of each score, averaged over repeats."""
    values: dict[str, float | None] = {}
    for k, name in enumerate(SCORES[: targets.shape[1]]):
        errors = np.abs(predictions[:, :, k] - targets[None, :, k])
        values[f"{name}_mae"] = float(errors.mean())
        correlations = [_pearson(repeat[:, k], targets[:, k]) for repeat in predictions]
        defined = [r for r in correlations if r is not None]
        values[f"{name}_pearson_r"] = float(np.mean(defined)) if len(defined) > len(correlations) / 2 else None
    return values


def severity_figures(predictions: np.ndarray, targets: np.ndarray, patients: pd.Series,
                     bootstrap: PatientBootstrap = PatientBootstrap()) -> dict:
    """Per score: `mae`, `mae_ci`, `pearson_r`, `pearson_r_ci` of (repeats, N, 2) out-of-fold predictions
    (averaged over repeats; the intervals resample patients, all their images together)."""
    point = _statistics(predictions, targets)
    intervals = bootstrap.intervals(lambda rows: _statistics(predictions[:, rows], targets[rows]), patients)
    return {name: {"mae": point[f"{name}_mae"], "mae_ci": intervals[f"{name}_mae"],
                   "pearson_r": point[f"{name}_pearson_r"], "pearson_r_ci": intervals[f"{name}_pearson_r"]}
            for name in SCORES[: targets.shape[1]]}


def format_figure(figure: dict, key: str) -> str:
    """`1.23 [1.01, 1.45]`, or `n/a` for an undefined value."""
    value, interval = figure[key], figure.get(f"{key}_ci")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    shown = f"{value:.2f}"
    return shown + (f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else "")


def fit_head(features: np.ndarray, targets: np.ndarray, units: np.ndarray, figures: dict, **fields) -> SeverityHead:
    """The severity head fitted on every row (ridge per score, alpha by grouped inner cross-validation), its
    linear maps on the unscaled features, carrying the cross-validated `figures` of the same recipe; `fields`:
    the head's other fields (feature, weights_sha256, preprocessing, evaluation, provenance, ...)."""
    linear = fit_ridge(features, targets, units)
    scores = {}
    for k, name in enumerate(SCORES):
        figure = figures[name]
        scores[name] = SeverityScore(maximum=float(MAXIMA[k]), coefficients=linear.coefficients[:, k].tolist(),
                                     intercept=float(linear.intercepts[k]), alpha=float(linear.alphas[k]),
                                     mae=figure["mae"], mae_ci=figure["mae_ci"], pearson_r=figure["pearson_r"],
                                     pearson_r_ci=figure["pearson_r_ci"])
    return SeverityHead(embedding_size=features.shape[1], **fields, **scores)
