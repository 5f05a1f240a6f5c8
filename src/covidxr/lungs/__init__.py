"""Lungs: the published outlines, the lung segmenter, and the masks that prepare, audit and explain use.

    >>> import covidxr
    >>> mask = covidxr.segment_lungs(gray)                      # 255 on both lungs, 0 elsewhere, gray's size
    >>> steps = covidxr.lungs.preprocessor(settings)            # Preprocessor: settings + the lung masker they need

This package imports neither torch nor segmentation-models-pytorch unless a segmenter has no matching
ONNX file (`model.py` and `train.py` are the PyTorch side).
"""

from __future__ import annotations

from covidxr.data.preprocess import LungModelRef, Preprocessing, Preprocessor
from covidxr.errors import CovidxrError
from covidxr.lungs.geometry import LungMask
from covidxr.lungs.segment import (
    LungSegmenter,
    lungs_of_prepared,
    segment_lungs,
    shipped_lung_model,
    shipped_segmenter,
    shows_only_lungs,
)

__all__ = ["LungMask", "LungSegmenter", "lungs_of_prepared", "preprocessor", "segment_lungs", "shipped_lung_model",
           "shipped_segmenter", "shows_only_lungs"]


def preprocessor(settings: Preprocessing) -> Preprocessor:
    """The settings with their lung model named, and the lung masker they need (None for lungs=none). The pool
    that runs it in worker processes takes its single-threaded copy (`Preprocessor.on_threads`).

    Settings that name no lung model get the shipped segmenter's (training does this once and records it in
    model.json); settings that name another segmenter than the shipped one are an error."""
    if settings.lungs == "none":
        return Preprocessor(settings)
    segmenter = shipped_segmenter()
    if settings.lung_model is None:
        settings = settings.model_copy(update={"lung_model": LungModelRef(**segmenter.identity())})
    elif settings.lung_model.weights_sha256 != segmenter.weights_sha256:
        raise CovidxrError(
            f"this model's preprocessing used the lung segmenter {settings.lung_model.name} (weights sha256 "
            f"{settings.lung_model.weights_sha256[:12]}...), but the installed one is {segmenter.name} "
            f"({segmenter.weights_sha256[:12]}...): install the covidxr version the model was trained with")
    return Preprocessor(settings, segmenter)
