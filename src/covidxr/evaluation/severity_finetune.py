"""The fine-tuned severity variant, small enough for a CPU: the last stage of ImageNet EfficientNet-Lite0
(stage 6 and the 1x1 head convolution) trained with a two-output regression head on the outputs of the frozen
stages 0-5, which are computed once per image. Loss: mean absolute error of the scores scaled to 0..1;
AdamW, fixed epochs (no early stopping: with 80-odd images a validation split would hold a handful of
patients); no augmentation (the frozen stages' outputs are cached)."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from covidxr.evaluation.severity import MAXIMA, Fitter, Predict
from covidxr.models.classifier import Classifier, PooledStages

FROZEN_STAGES = 6
EPOCHS = 20
LEARNING_RATE = 1e-3
WEIGHT_DECAY = 1e-2
BATCH = 16


class SeverityTail(nn.Module):
    """Stages FROZEN_STAGES.. of an EfficientNet backbone, its head convolution, global pooling and a dense
    layer to (extent, opacity) scaled to 0..1."""

    def __init__(self, model: Classifier, outputs: int = 2):
        super().__init__()
        backbone = model.backbone
        self.blocks = copy.deepcopy(backbone.blocks[FROZEN_STAGES:])
        self.head = nn.Sequential(copy.deepcopy(backbone.conv_head), copy.deepcopy(backbone.bn2))
        self.out = nn.Linear(backbone.num_features, outputs)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.out(self.head(self.blocks(hidden)).mean(dim=(2, 3)))


@torch.no_grad()
def frozen_outputs(model: Classifier, pixels: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """(N, channels, h, w) float32: the output of stages 0..FROZEN_STAGES-1 for prepared pixels."""
    frozen = PooledStages(model, (FROZEN_STAGES - 1,)).eval()
    return np.concatenate([frozen.stage_outputs(torch.from_numpy(pixels[start:start + batch_size])[:, None])[0]
                           .numpy() for start in range(0, len(pixels), batch_size)])


def finetune_fitter(model: Classifier, seed: int = 0, epochs: int = EPOCHS) -> Fitter:
    """A fitter (see covidxr.evaluation.severity) over `frozen_outputs` rows: each call trains a fresh copy of
    `model`'s tail, seeded."""

    def fit(features: np.ndarray, targets: np.ndarray, units: np.ndarray) -> Predict:
        torch.manual_seed(seed)
        tail = SeverityTail(model, targets.shape[1])
        scale = torch.as_tensor(MAXIMA[: targets.shape[1]], dtype=torch.float32)
        scaled = torch.as_tensor(targets, dtype=torch.float32) / scale
        with torch.no_grad():
            tail.out.bias.copy_(scaled.mean(dim=0))
        inputs = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        optimiser = torch.optim.AdamW(tail.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
        generator = torch.Generator().manual_seed(seed)
        tail.train()
        for _ in range(epochs):
            for rows in torch.randperm(len(inputs), generator=generator).split(BATCH):
                if len(rows) < 2:  # batch normalisation needs two images
                    continue
                loss = (tail(inputs[rows]) - scaled[rows]).abs().mean()
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
        tail.eval()

        @torch.no_grad()
        def predict(rows: np.ndarray) -> np.ndarray:
            return (tail(torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))) * scale).double().numpy()
        return predict
    return fit
