"""Batched forward passes over a dataset."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


@torch.no_grad()
def predict_logits(model: nn.Module, dataset: Dataset, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(logits, targets) of every item of `dataset`, in order, with the model in eval mode."""
    model.eval()
    logits, targets = [], []
    for inputs, target in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        logits.append(model(inputs.float()).float().numpy())
        targets.append(np.asarray(target))
    return np.concatenate(logits), np.concatenate(targets)
