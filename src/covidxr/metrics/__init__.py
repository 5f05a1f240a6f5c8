"""The figures every stage reports about a model, below training so that training, evaluation, calibration and the
input check share them: binary metrics at a threshold, their patient-level bootstrap intervals, and calibration
error. Undefined values are None, never NaN. How figures are printed is `covidxr.evaluation.metrics`."""

from covidxr.metrics.binary import (
    POINT_METRICS,
    PatientBootstrap,
    at_prevalence,
    auc_or_none,
    binary_metrics,
    brier_score,
    confusion,
    metrics_with_intervals,
    threshold_metrics,
)
from covidxr.metrics.calibration import CALIBRATION_BINS, Reliability, expected_calibration_error, reliability

__all__ = ["CALIBRATION_BINS", "POINT_METRICS", "PatientBootstrap", "Reliability", "at_prevalence", "auc_or_none",
           "binary_metrics", "brier_score", "confusion", "expected_calibration_error", "metrics_with_intervals",
           "reliability", "threshold_metrics"]
