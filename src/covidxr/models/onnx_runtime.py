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

from covidxr.errors import CovidxrError
from covidxr.runs import InferenceContract, RunDir

log = logging.getLogger("covidxr.onnx")


OUTPUTS = ["logits", "embedding"]
"""What `covidxr export` writes: logits (batch, classes) and the pooled embedding (batch, channels); files
exported before the embedding have `logits` only."""


class OnnxModel:
    """ONNX Runtime session over an exported model: input `pixels` (batch, 1, size, size) float32 grey
    0..255, outputs `logits` (batch, classes) and, in files exported since it exists, `embedding`."""

    def __init__(self, path: str | Path, threads: int | None = None):
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.metadata: dict[str, str] = self.session.get_modelmeta().custom_metadata_map

    @property
    def has_embedding(self) -> bool:
        return "embedding" in {output.name for output in self.session.get_outputs()}

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run(["logits"], self._feed(pixels))[0]

    def outputs(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits, pooled embedding) from one run; an error for a file exported without the embedding."""
        if not self.has_embedding:
            raise CovidxrError("this model.onnx was exported without the `embedding` output: export it again "
                               "(covidxr export --run RUN --format onnx)")
        logits, embedding = self.session.run(OUTPUTS, self._feed(pixels))
        return logits, embedding

    def embedding(self, pixels: np.ndarray) -> np.ndarray:
        """(batch, channels) output `embedding` (the classifier's pooled embedding, or a severity feature
        network's)."""
        if not self.has_embedding:
            raise CovidxrError("this ONNX file has no `embedding` output: export it again "
                               "(covidxr export --run RUN --format onnx)")
        return self.session.run(["embedding"], self._feed(pixels))[0]

    @staticmethod
    def _feed(pixels: np.ndarray) -> dict[str, np.ndarray]:
        return {"pixels": np.ascontiguousarray(pixels, dtype=np.float32)}


def matching_onnx(rundir: RunDir, contract: InferenceContract, threads: int | None = None) -> OnnxModel | None:
    """RUN/model.onnx when it exists and records the weights hash of `contract` (model.json); else None
    (with a warning when the file is there but was exported from other weights). `threads`: ONNX Runtime's
    intra-op threads (default: its own choice, one per core)."""
    if not rundir.onnx.is_file():
        return None
    model = OnnxModel(rundir.onnx, threads)
    if model.metadata.get("weights_sha256") != contract.weights_sha256:
        log.warning("%s was exported from other weights; using PyTorch", rundir.onnx)
        return None
    return model
