"""Fitting the operating point on validation data (never on test): the temperature and the threshold that
`train` writes into model.json. Applying them is `covidxr.runs.inference`."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import roc_curve

from covidxr.errors import CovidxrError


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The temperature T > 0 minimising the negative log-likelihood of softmax(logits / T)."""
    logits_t = torch.as_tensor(logits, dtype=torch.float64)
    targets_t = torch.as_tensor(targets, dtype=torch.long)
    log_temperature = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_temperature], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits_t / log_temperature.exp(), targets_t)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_temperature.detach().exp().clamp(0.05, 20.0))


def operating_threshold(scores: np.ndarray, positives: np.ndarray, rule: str, target: float = 0.95) -> float:
    """Threshold on the positive class's probability: Youden's J maximum, or the highest threshold whose
    sensitivity reaches `target`."""
    positives = np.asarray(positives, dtype=bool)
    if positives.all() or not positives.any():
        raise CovidxrError("the validation split holds a single class: no threshold can be fitted")
    false_positive_rate, sensitivity, thresholds = roc_curve(positives, scores)
    thresholds = np.minimum(thresholds, 1.0)
    if rule == "youden":
        return float(thresholds[int(np.argmax(sensitivity - false_positive_rate))])
    if rule == "sensitivity":
        return float(thresholds[int(np.argmax(sensitivity >= target))])
    raise CovidxrError(f"unknown threshold rule {rule!r}; accepted: youden, sensitivity")
