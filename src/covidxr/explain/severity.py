"""Grad-CAM for a severity score: the severity feature network with the head's linear maps as its output
layer, so pytorch-grad-cam follows the gradient of the predicted extent (or opacity) instead of a class."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from covidxr.errors import UsageError
from covidxr.explain.cam import heatmaps
from covidxr.models.classifier import PooledStages
from covidxr.runs.severity import SCORES, SeverityHead


def severity_network(features: PooledStages, head: SeverityHead) -> nn.Sequential:
    """Pixels -> (extent, opacity), unclipped: the feature network, then the head's linear maps."""
    coefficients, intercepts, _ = head.weights()
    linear = nn.Linear(head.embedding_size, len(SCORES))
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(coefficients.T, dtype=torch.float32))
        linear.bias.copy_(torch.as_tensor(intercepts, dtype=torch.float32))
    return nn.Sequential(features, linear).eval()


def severity_heatmaps(features: PooledStages, head: SeverityHead, pixels: np.ndarray, score: str = "extent",
                      method: str = "gradcam") -> np.ndarray:
    """(N, H, W) maps in [0, 1] of what raises the predicted `score` (extent or opacity) of (N, size, size)
    prepared pixels, at the first pooled stage (the finest map the head reads)."""
    if score not in SCORES:
        raise UsageError(f"unknown severity score {score!r}; accepted: {', '.join(SCORES)}")
    batch = torch.from_numpy(np.ascontiguousarray(pixels))[:, None].float()
    layer = features.classifier.backbone.blocks[features.stages[0]]
    return heatmaps(severity_network(features, head), batch, SCORES.index(score), method, layer)
