"""How well calibrated a model's probabilities are: one binning (scikit-learn's `calibration_curve`, equal-width
bins of P(positive)) behind both the reliability diagram and the expected calibration error. Calibration is
fitted by training (`covidxr.training.calibration`) and applied by `covidxr.runs.calibration`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.calibration import calibration_curve

CALIBRATION_BINS = 10


@dataclass(frozen=True)
class Reliability:
    """Per non-empty bin: the mean predicted probability, the observed share of positives and the image count."""

    predicted: np.ndarray
    observed: np.ndarray
    images: np.ndarray

    @property
    def expected_calibration_error(self) -> float:
        """Mean |observed - predicted| over the bins, weighted by their images."""
        return float(np.sum(self.images / self.images.sum() * np.abs(self.observed - self.predicted)))


def reliability(truth: np.ndarray, scores: np.ndarray, bins: int = CALIBRATION_BINS) -> Reliability:
    """`bins` equal-width bins of P(positive) = `scores`, as `calibration_curve` makes them (the counts use its
    assignment of a score to a bin: `searchsorted` on the inner edges)."""
    truth, scores = np.asarray(truth, dtype=float), np.asarray(scores, dtype=float)
    observed, predicted = calibration_curve(truth, scores, n_bins=bins, strategy="uniform")
    counts = np.bincount(np.searchsorted(np.linspace(0.0, 1.0, bins + 1)[1:-1], scores), minlength=bins)
    return Reliability(predicted=predicted, observed=observed, images=counts[counts > 0])


def expected_calibration_error(truth: np.ndarray, scores: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    return reliability(truth, scores, bins).expected_calibration_error
