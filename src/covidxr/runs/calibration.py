"""Calibrated probabilities at any prevalence and named operating points, in NumPy only: the inference side of
`model.json`'s `calibration`, `operating_points` and `default_operating_point` (docs/reference.md,
"model.json"). Training and `covidxr calibrate` fit them on labelled rows (`covidxr.training.calibration`);
everything that predicts applies them through `Scorer`.

A calibration maps the model's logits to P(positive) as observed on the data it was fitted on, whose share of
positives it records (`prevalence`). A deployment prevalence P moves that probability by Bayes' rule on the odds:
odds' = odds * [P / (1 - P)] / [prevalence / (1 - prevalence)]. An operating point's threshold is stored on the
probability at the fitted prevalence and moved the same way, so a point keeps its sensitivity and specificity at
any prevalence while the probability (and so PPV and NPV) follows P.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from covidxr.errors import UsageError
from covidxr.runs.inference import predicted_classes, softmax_with_temperature

EPSILON = 1e-7
CalibrationMethod = Literal["temperature", "platt", "isotonic"]
OPERATING_POINT_NAMES = ("balanced", "high-sensitivity", "high-specificity")


class FittedOn(BaseModel):
    """The labelled rows a calibration or its operating points were fitted on."""

    model_config = ConfigDict(defer_build=True, extra="allow")

    data: str = Field(description="which data: 'validation split' or the manifest's name")
    images: int
    patients: int
    positives: int
    negatives: int


class Calibration(BaseModel):
    """logits -> P(positive): softmax(logits / temperature), then, by `method`, nothing (`temperature`), a slope and
    an intercept on the positive class's log-odds (`platt`), or a monotone step function (`isotonic`, knots
    `isotonic_x` -> `isotonic_y`)."""

    model_config = ConfigDict(defer_build=True, extra="forbid")

    method: CalibrationMethod
    temperature: float = Field(1.0, gt=0)
    slope: float = 1.0
    intercept: float = 0.0
    isotonic_x: list[float] | None = None
    isotonic_y: list[float] | None = None
    prevalence: float | None = Field(None, gt=0, lt=1, description="share of positives where it was fitted")
    deployment_prevalence: float | None = Field(
        None, gt=0, lt=1, description="the share of positives probabilities are reported at unless one is asked for "
                                      "(set by `covidxr calibrate --prevalence`); none: `prevalence`")
    fitted_on: FittedOn | None = None
    compared: dict[str, dict[str, float | None]] = Field(
        default_factory=dict, description="out-of-fold log loss and ECE of each method tried, on the fitting rows")

    @model_validator(mode="after")
    def _knots(self) -> Calibration:
        if self.method == "isotonic" and (not self.isotonic_x or len(self.isotonic_x) != len(self.isotonic_y or [])):
            raise ValueError("isotonic calibration needs isotonic_x and isotonic_y of one length")
        return self

    def positive_probability(self, logits: np.ndarray, positive: int) -> np.ndarray:
        """P(positive) at the fitted prevalence for (N, classes) logits."""
        tempered = softmax_with_temperature(logits, self.temperature)[:, positive]
        if self.method == "platt":
            return sigmoid(self.slope * log_odds(tempered) + self.intercept)
        if self.method == "isotonic":
            return np.interp(tempered, self.isotonic_x, self.isotonic_y)
        return tempered


class OperatingPoint(BaseModel):
    """A threshold on P(positive) at the calibration's prevalence, with the sensitivity and specificity it had where
    it was chosen and their 95% intervals."""

    model_config = ConfigDict(defer_build=True, extra="forbid")

    threshold: float = Field(ge=0, le=1)
    rule: str
    sensitivity: float | None = None
    specificity: float | None = None
    ci: dict[str, list[float] | None] = Field(default_factory=dict)


def sigmoid(values: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-np.asarray(values, dtype=np.float64)))


def log_odds(probabilities: np.ndarray) -> np.ndarray:
    clipped = np.clip(np.asarray(probabilities, dtype=np.float64), EPSILON, 1 - EPSILON)
    return np.log(clipped / (1 - clipped))


def check_prevalence(prevalence: float | None) -> float | None:
    if prevalence is not None and not 0 < prevalence < 1:
        raise UsageError("must be a share of positives strictly between 0 and 1", "prevalence", prevalence)
    return prevalence


def shift_prevalence(probabilities: np.ndarray, fitted: float, deployed: float | np.ndarray) -> np.ndarray:
    """P(positive) moved from the prevalence it was calibrated at to `deployed` (Bayes' rule on the odds)."""
    return sigmoid(log_odds(probabilities) + log_odds(deployed) - log_odds(fitted))


@dataclass(frozen=True)
class Scorer:
    """A model's calibration at one operating point and deployment prevalence: logits -> class probabilities, the
    threshold on P(positive) in the same scale, and the class called."""

    calibration: Calibration
    classes: tuple[str, ...]
    positive_class: str
    operating_point: str
    point: OperatingPoint
    prevalence: float | None = None

    @property
    def positive(self) -> int:
        return self.classes.index(self.positive_class)

    @property
    def threshold(self) -> float:
        """The operating point's threshold on the probability this scorer reports."""
        if self.prevalence is None:
            return self.point.threshold
        moved = shift_prevalence(np.array([self.point.threshold]), self.calibration.prevalence, self.prevalence)
        return float(moved[0])

    @property
    def reported_prevalence(self) -> float | None:
        """The prevalence the reported probabilities assume: the one asked for, else the fitted one."""
        return self.prevalence if self.prevalence is not None else self.calibration.prevalence

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """(N, classes) probabilities: P(positive) calibrated (and moved to the deployment prevalence), the other
        classes sharing the rest in the proportions of the tempered softmax."""
        positive = self.positive
        tempered = softmax_with_temperature(logits, self.calibration.temperature)
        calibrated = self.calibration.positive_probability(logits, positive)
        if self.prevalence is not None:
            calibrated = shift_prevalence(calibrated, self.calibration.prevalence, self.prevalence)
        others = 1 - tempered[:, positive]
        share = np.divide(tempered, others[:, None], out=np.full_like(tempered, 1 / max(1, len(self.classes) - 1)),
                          where=others[:, None] > 0)
        result = share * (1 - calibrated)[:, None]
        result[:, positive] = calibrated
        return result

    def labels(self, probabilities: np.ndarray) -> np.ndarray:
        """The class called for each row: the positive class at or above the threshold, else the likeliest other."""
        return predicted_classes(probabilities, list(self.classes), self.positive_class, self.threshold)

