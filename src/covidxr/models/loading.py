"""A trained model from a run directory: `model.json` (the inference contract) + `model.safetensors`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from covidxr.config import ModelSpec
from covidxr.data.preprocess import Preprocessing
from covidxr.models.classifier import Classifier, create_model
from covidxr.runs import InferenceContract, RunDir


@dataclass
class RunModel:
    """A classifier with everything needed to use it as trained."""

    rundir: RunDir
    model: Classifier
    contract: InferenceContract

    @property
    def run(self) -> Path:
        return self.rundir.root

    @property
    def classes(self) -> list[str]:
        return self.contract.classes

    @property
    def positive_class(self) -> str:
        return self.contract.positive_class

    @property
    def positive_index(self) -> int:
        return self.contract.positive_index

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing.from_recorded(self.contract.preprocessing)

    @property
    def temperature(self) -> float:
        return self.contract.temperature

    @property
    def threshold(self) -> float:
        return self.contract.threshold

    @property
    def output_folder(self) -> Path:
        """Where evaluations are written (see RunDir.evaluation)."""
        return self.rundir.evaluation

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """Logits of float32 pixels (N, 1, size, size), as NumPy: the forward pass a `ModelRuntime` runs without a
        matching model.onnx."""
        with torch.no_grad():
            return self.model(torch.from_numpy(pixels)).numpy()


def load_run(run: str | Path) -> RunModel:
    """Load a run's model, checking that its weights are the ones `model.json` describes."""
    rundir = RunDir(run)
    contract = rundir.read_contract()
    rundir.check_weights(contract)
    architecture = contract.architecture
    kwargs = architecture["kwargs"]
    spec = ModelSpec(name=architecture["name"], head=kwargs["head"], in_chans=kwargs["in_chans"],
                     dropout=kwargs["dropout"])
    model, _ = create_model(spec, kwargs["num_classes"], contract.image_size, load_initial_weights=False)
    model.load_state_dict(load_file(str(rundir.weights)), strict=True)
    return RunModel(rundir, model.eval(), contract)
