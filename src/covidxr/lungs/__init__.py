"""Lungs: the published outlines, the lung segmenter, and the masks that prepare, audit and explain use.

    >>> import covidxr
    >>> mask = covidxr.segment_lungs(gray)                  # 255 on both lungs, 0 elsewhere, gray's size
    >>> config, lungs = covidxr.lungs.lung_step(config)     # preprocessing `lungs: crop | mask`

This package imports neither torch nor segmentation-models-pytorch unless a segmenter has no matching
ONNX file (`model.py` and `train.py` are the PyTorch side).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from covidxr.data.preprocess import LungMasker, LungModelRef, Preprocessing
from covidxr.errors import CovidxrError
from covidxr.lungs.geometry import LungMask
from covidxr.lungs.segment import LungSegmenter, segment_lungs, shipped_lung_model, shipped_segmenter
from covidxr.progress import worker_count

if TYPE_CHECKING:  # pandas and the pixel cache cost ~0.5 s to import: predict never needs them
    import pandas as pd

    from covidxr.data.cache import PrepareReport

__all__ = ["LungMask", "LungSegmenter", "lung_step", "prepare_with_lungs", "segment_lungs", "shipped_lung_model",
           "shipped_segmenter"]


def lung_step(config: Preprocessing) -> tuple[Preprocessing, LungMasker | None]:
    """The preprocessing with its lung model named, and the lung masker it needs (None for lungs=none).

    A preprocessing that names no lung model gets the shipped segmenter's (training does this once and
    records it in model.json); one that names another segmenter than the shipped one is an error."""
    if config.lungs == "none":
        return config, None
    segmenter = shipped_segmenter()
    if config.lung_model is None:
        return config.model_copy(update={"lung_model": LungModelRef(**segmenter.identity())}), segmenter
    if config.lung_model.weights_sha256 != segmenter.weights_sha256:
        raise CovidxrError(
            f"this model's preprocessing used the lung segmenter {config.lung_model.name} (weights sha256 "
            f"{config.lung_model.weights_sha256[:12]}...), but the installed one is {segmenter.name} "
            f"({segmenter.weights_sha256[:12]}...): install the covidxr version the model was trained with")
    return config, segmenter


def prepare_with_lungs(manifest: pd.DataFrame, root: str | Path, config: Preprocessing) -> PrepareReport:
    """`covidxr.data.cache.prepare` with the lung masker the preprocessing needs (see `lung_step`); with one
    worker process per core, each segmenter runs on one thread."""
    from covidxr.data.cache import prepare  # lazy: predict, which imports this package, never prepares a cache

    config, lungs = lung_step(config)
    if lungs is not None and worker_count() > 1:
        lungs = LungSegmenter(lungs.folder, threads=1)
    return prepare(manifest, root, config, lungs)
