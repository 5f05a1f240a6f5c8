"""A run's model as an ONNX Runtime session: what `predict` and `serve` use when `RUN/model.onnx` records
the weights hash that `model.json` does (written by `covidxr export`).

This module imports ONNX Runtime and NumPy only, never PyTorch: with a matching `model.onnx`, predicting
starts in a fraction of the time and memory that loading PyTorch takes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime

from covidxr.runs import InferenceContract, RunDir

log = logging.getLogger("covidxr.onnx")


class OnnxModel:
    """ONNX Runtime session over an exported model: input `pixels` (batch, 1, size, size) float32 grey
    0..255, output `logits` (batch, classes)."""

    def __init__(self, path: str | Path):
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.metadata: dict[str, str] = self.session.get_modelmeta().custom_metadata_map

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"pixels": np.ascontiguousarray(pixels, dtype=np.float32)})[0]


def matching_onnx(rundir: RunDir, contract: InferenceContract) -> OnnxModel | None:
    """RUN/model.onnx when it exists and records the weights hash of `contract` (model.json); else None
    (with a warning when the file is there but was exported from other weights)."""
    if not rundir.onnx.is_file():
        return None
    model = OnnxModel(rundir.onnx)
    if model.metadata.get("weights_sha256") != contract.weights_sha256:
        log.warning("%s was exported from other weights; using PyTorch", rundir.onnx)
        return None
    return model
