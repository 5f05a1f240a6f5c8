"""What an engine is given and answers: a model request any process can load, and the engine's interface."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from covidxr.predict import Prediction, Predictor, load_model


@dataclass(frozen=True)
class ModelRequest:
    """What `load_model` needs, so that any process (a Ray actor on another node too) builds the same model."""

    run: Path
    operating_point: str | None = None
    prevalence: float | None = None
    input_check: bool = True

    def load(self, threads: int | None = None) -> Predictor:
        return load_model(self.run, self.operating_point, self.prevalence, self.input_check, threads)


class Engine(Protocol):
    def predict(self, request: ModelRequest, predictor: Predictor, paths: Sequence[Path]) -> list[Prediction]:
        """Predictions of `paths` in their order (`predictor`: the model `request` loads, already loaded here)."""
        ...
