"""Where a command's per-image work runs: `local` (this machine: worker processes decode, this process runs the
model) or `ray` (Ray Data, on a Ray cluster or a Ray started for the command). One seam under the commands: a
command builds its model request and hands its inputs to `engine(name, address)`; both engines answer the same
`Prediction` objects in input order, so what a command prints, writes and exits with does not depend on the engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from covidxr.errors import UsageError
from covidxr.predict import Prediction, Predictor, load_model

ENGINES = ("local", "ray")


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


def engine(name: str, address: str | None = None) -> Engine:
    """The engine called `name`; `address`: the Ray cluster's (default $RAY_ADDRESS, else a Ray started here)."""
    if name == "local":
        from covidxr.engines.local import LocalEngine

        return LocalEngine()
    if name == "ray":
        from covidxr.engines.ray import RayEngine

        return RayEngine(address)
    raise UsageError(f"unknown engine {name!r}: choose one of {', '.join(ENGINES)}")
