"""Fitting calibration and operating points on labelled rows that did not train the weights (the validation
split in `train`, a site's sample in `covidxr calibrate`); never on test rows. Applying them is
`covidxr.runs.calibration`.

Three calibrations are compared by patient-grouped cross-validation on the fitting rows and the one with the
lowest out-of-fold log loss is kept: a temperature alone (which cannot move a prior: a model trained on balanced
batches stays too confident in the positive class), a temperature plus Platt's slope and intercept on the positive
log-odds, and isotonic regression (only with enough rows of each class to estimate a step function).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_curve
from sklearn.model_selection import StratifiedGroupKFold

from covidxr.errors import CovidxrError
from covidxr.metrics import PatientBootstrap, expected_calibration_error, threshold_metrics
from covidxr.runs import Calibration, FittedOn, OperatingPoint, log_odds, softmax_with_temperature

MIN_ISOTONIC = 50  # positives and negatives each: fewer make a step function with a handful of steps
CALIBRATION_FOLDS = 5
TARGET = 0.95  # the sensitivity / specificity the high-sensitivity and high-specificity points keep


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The temperature T > 0 minimising the negative log-likelihood of softmax(logits / T)."""
    logits = np.asarray(logits, dtype=np.float64)
    rows = np.arange(len(targets))

    def loss(log_temperature: float) -> float:
        return float(-np.log(np.clip(softmax_with_temperature(logits, np.exp(log_temperature))[rows, targets],
                                     1e-12, None)).mean())

    found = minimize_scalar(loss, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(found.x))


def operating_threshold(scores: np.ndarray, positives: np.ndarray, rule: str, target: float = TARGET) -> float:
    """Threshold on P(positive): Youden's J maximum (`youden`), the highest threshold whose sensitivity reaches
    `target` (`sensitivity`), or the lowest whose specificity reaches it (`specificity`)."""
    positives = np.asarray(positives, dtype=bool)
    if positives.all() or not positives.any():
        raise CovidxrError("the fitting rows hold a single class: no threshold can be fitted")
    false_positive_rate, sensitivity, thresholds = roc_curve(positives, scores)
    thresholds = np.minimum(thresholds, 1.0)
    if rule == "youden":
        return float(thresholds[int(np.argmax(sensitivity - false_positive_rate))])
    if rule == "sensitivity":
        return float(thresholds[int(np.argmax(sensitivity >= target))])
    if rule == "specificity":
        return float(thresholds[int(np.flatnonzero(1 - false_positive_rate >= target)[-1])])
    raise CovidxrError(f"unknown threshold rule {rule!r}; accepted: youden, sensitivity, specificity")


def _fit(method: str, logits: np.ndarray, targets: np.ndarray, positive: int) -> Calibration:
    temperature = fit_temperature(logits, targets)
    if method == "temperature":
        return Calibration(method=method, temperature=temperature)
    tempered = softmax_with_temperature(logits, temperature)[:, positive]
    truth = targets == positive
    if method == "platt":
        platt = LogisticRegression(C=1e6).fit(log_odds(tempered)[:, None], truth)
        return Calibration(method=method, temperature=temperature, slope=float(platt.coef_[0, 0]),
                           intercept=float(platt.intercept_[0]))
    isotonic = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(tempered, truth)
    return Calibration(method=method, temperature=temperature, isotonic_x=isotonic.X_thresholds_.tolist(),
                       isotonic_y=isotonic.y_thresholds_.tolist())


def candidate_methods(truth: np.ndarray) -> list[str]:
    counts = min(int(truth.sum()), int((~truth).sum()))
    return ["temperature", "platt"] + (["isotonic"] if counts >= MIN_ISOTONIC else [])


def out_of_fold(method: str, logits: np.ndarray, targets: np.ndarray, patients: pd.Series, positive: int,
                folds: int = CALIBRATION_FOLDS, seed: int = 0) -> np.ndarray:
    """P(positive) of each row from `method` fitted on the other folds (patients never straddle folds)."""
    truth = targets == positive
    folds = max(2, min(folds, int(truth.sum()), int((~truth).sum())))
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    predicted = np.empty(len(targets))
    for fit_rows, held_rows in splitter.split(logits, truth, groups=pd.Series(patients).to_numpy()):
        calibration = _fit(method, logits[fit_rows], targets[fit_rows], positive)
        predicted[held_rows] = calibration.positive_probability(logits[held_rows], positive)
    return predicted


def fit_calibration(logits: np.ndarray, targets: np.ndarray, patients: pd.Series, positive: int,
                    data: str) -> Calibration:
    """The calibration with the lowest out-of-fold log loss among `candidate_methods`, refitted on every row; it
    records the prevalence of these rows and each method's out-of-fold log loss and ECE."""
    logits, targets = np.asarray(logits, dtype=np.float64), np.asarray(targets)
    truth = targets == positive
    if truth.all() or not truth.any():
        raise CovidxrError(f"{data}: holds a single class, so no calibration can be fitted")
    compared = {}
    for method in candidate_methods(truth):
        predicted = out_of_fold(method, logits, targets, patients, positive)
        compared[method] = {"log_loss": float(log_loss(truth, np.clip(predicted, 1e-7, 1 - 1e-7), labels=[0, 1])),
                            "ece": expected_calibration_error(truth, predicted)}
    chosen = min(compared, key=lambda name: compared[name]["log_loss"])
    fitted_on = FittedOn(data=data, images=len(truth), patients=int(pd.Series(patients).nunique()),
                         positives=int(truth.sum()), negatives=int((~truth).sum()))
    return _fit(chosen, logits, targets, positive).model_copy(
        update={"prevalence": float(truth.mean()), "fitted_on": fitted_on, "compared": compared})


THRESHOLD_RULES = {"balanced": "youden", "high-sensitivity": "sensitivity>={target}",
                   "high-specificity": "specificity>={target}"}
POINT_RULES = {"balanced": ("youden", "Youden's J maximum (sensitivity + specificity - 1)"),
               "high-sensitivity": ("sensitivity", f"the highest threshold keeping sensitivity >= {TARGET}"),
               "high-specificity": ("specificity", f"the lowest threshold keeping specificity >= {TARGET}")}


def fit_operating_points(scores: np.ndarray, truth: np.ndarray, patients: pd.Series, target: float = TARGET,
                         bootstrap: PatientBootstrap = PatientBootstrap()) -> dict[str, OperatingPoint]:
    """`balanced`, `high-sensitivity` and `high-specificity` thresholds on calibrated P(positive) (the last two
    keeping `target`), each with the sensitivity and specificity it has on these rows and their patient-bootstrap
    95% intervals."""
    truth, scores = np.asarray(truth, dtype=bool), np.asarray(scores, dtype=float)
    points = {}
    for name, (rule, described) in POINT_RULES.items():
        threshold = operating_threshold(scores, truth, rule, target)
        described = described.replace(str(TARGET), str(target))
        figures = threshold_metrics(truth, scores, threshold)
        intervals = bootstrap.intervals(lambda rows: threshold_metrics(truth[rows], scores[rows], threshold), patients)
        points[name] = OperatingPoint(threshold=threshold, rule=described, sensitivity=figures["sensitivity"],
                                      specificity=figures["specificity"],
                                      ci={key: intervals[key] for key in ("sensitivity", "specificity")})
    return points


def calibration_contract(logits: np.ndarray, targets: np.ndarray, patients: pd.Series, positive: int, data: str,
                         default_point: str = "balanced", target: float = TARGET) -> dict:
    """The keys of model.json that calibration sets: `calibration`, `operating_points`, `default_operating_point`,
    and, for readers of older runs, `temperature`, `threshold` and `threshold_rule` of the default point."""
    calibration = fit_calibration(logits, targets, patients, positive, data)
    scores = calibration.positive_probability(np.asarray(logits, dtype=np.float64), positive)
    points = fit_operating_points(scores, np.asarray(targets) == positive, patients, target)
    return {"calibration": calibration.model_dump(mode="json"),
            "operating_points": {name: point.model_dump(mode="json") for name, point in points.items()},
            "default_operating_point": default_point, "temperature": calibration.temperature,
            "threshold": points[default_point].threshold,
            "threshold_rule": THRESHOLD_RULES[default_point].format(target=target)}
