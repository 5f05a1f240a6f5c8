"""Grad-CAM for a severity score: the classifier's backbone with the severity head's linear maps as its output
layer, so pytorch-grad-cam follows the gradient of the predicted extent (or opacity) instead of a class."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from covidxr.errors import UsageError
from covidxr.explain.cam import heatmaps
from covidxr.models.classifier import Classifier
from covidxr.runs.severity import SCORES, SeverityHead


def severity_classifier(model: Classifier, head: SeverityHead) -> Classifier:
    """`model`'s backbone and normalisation with a head pooled embedding -> (extent, opacity), unclipped."""
    coefficients, intercepts, _ = head.weights()
    linear = nn.Linear(head.embedding_size, len(SCORES))
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(coefficients.T, dtype=torch.float32))
        linear.bias.copy_(torch.as_tensor(intercepts, dtype=torch.float32))
    normalisation = (tuple(model.mean.flatten().tolist()), tuple(model.std.flatten().tolist()))
    output = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), linear)
    return Classifier(model.backbone, output, model.in_chans, normalisation).eval()


def severity_heatmaps(model: Classifier, head: SeverityHead, pixels: np.ndarray, score: str = "extent",
                      method: str = "gradcam") -> np.ndarray:
    """(N, H, W) maps in [0, 1] of what raises the predicted `score` (extent or opacity) of (N, size, size)
    prepared pixels."""
    if score not in SCORES:
        raise UsageError(f"unknown severity score {score!r}; accepted: {', '.join(SCORES)}")
    batch = torch.from_numpy(np.ascontiguousarray(pixels))[:, None].float()
    return heatmaps(severity_classifier(model, head), batch, SCORES.index(score), method)
