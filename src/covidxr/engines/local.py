"""The local engine: this machine, worker processes decoding while this process runs the model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from covidxr.engines.base import ModelRequest
from covidxr.predict import Prediction, Predictor


class LocalEngine:
    def predict(self, request: ModelRequest, predictor: Predictor, paths: Sequence[Path]) -> list[Prediction]:
        return predictor.predict_files(paths)
