"""The inference side of the contract in model.json, in NumPy only: temperature-scaled probabilities and
the class called at the operating threshold. Training fits the temperature and the threshold; everything
that predicts applies them through these functions."""

from __future__ import annotations

import numpy as np

from covidxr.errors import UsageError


def softmax_with_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Class probabilities softmax(logits / temperature) of (N, classes) logits, in float64."""
    if not temperature > 0:
        raise UsageError(f"temperature {temperature}: must be above 0")
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    if scaled.ndim != 2:
        raise UsageError(f"logits of shape {scaled.shape}: expected (images, classes)")
    scaled -= scaled.max(axis=1, keepdims=True)
    exponentials = np.exp(scaled)
    return exponentials / exponentials.sum(axis=1, keepdims=True)


def predicted_classes(probabilities: np.ndarray, classes: list[str], positive_class: str,
                      threshold: float) -> np.ndarray:
    """The class called for each row of (N, classes) probabilities: `positive_class` when its probability
    reaches `threshold`, else the likeliest other class (with two classes: the other one)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape[1] != len(classes):
        raise UsageError(f"probabilities of shape {probabilities.shape}: expected (images, {len(classes)}) for "
                         f"classes {list(classes)}")
    if positive_class not in classes:
        raise UsageError(f"positive class {positive_class!r}: not one of the classes {list(classes)}")
    positive = list(classes).index(positive_class)
    others = probabilities.copy()
    others[:, positive] = -np.inf
    indices = np.where(probabilities[:, positive] >= threshold, positive, others.argmax(axis=1))
    return np.asarray(classes, dtype=object)[indices].astype(str)
