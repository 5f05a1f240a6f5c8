"""A trained model from a run directory: `model.json` (the inference contract) + `model.safetensors`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import load_file

from covidxr.config import ModelSpec
from covidxr.data.preprocess import Preprocessing
from covidxr.errors import CovidxrError, UsageError
from covidxr.models.classifier import Classifier, build_classifier
from covidxr.training.rundir import file_sha256


@dataclass
class RunModel:
    """A classifier with everything needed to use it as trained."""

    run: Path
    model: Classifier
    contract: dict

    @property
    def classes(self) -> list[str]:
        return list(self.contract["classes"])

    @property
    def preprocessing(self) -> Preprocessing:
        fields = Preprocessing.model_fields
        return Preprocessing(**{k: v for k, v in self.contract["preprocessing"].items() if k in fields})

    @property
    def temperature(self) -> float:
        return float(self.contract["temperature"])

    @property
    def output_folder(self) -> Path:
        """Where evaluations are written: RUN/evaluation, or ./evaluation-shipped-model for the shipped model."""
        from covidxr.models.shipped import is_shipped

        return Path.cwd() / "evaluation-shipped-model" if is_shipped(self.run) else self.run / "evaluation"

    @property
    def threshold(self) -> float:
        return float(self.contract["threshold"])


def load_run(run: str | Path) -> RunModel:
    """Load a run's model, checking that its weights are the ones `model.json` describes."""
    run = Path(run)
    contract_path, weights = run / "model.json", run / "model.safetensors"
    if not contract_path.is_file() or not weights.is_file():
        raise UsageError(f"{run}: not a finished run (needs model.json and model.safetensors)")
    contract = json.loads(contract_path.read_text())
    if file_sha256(weights) != contract["weights_sha256"]:
        raise CovidxrError(f"{weights}: its sha256 differs from model.json's weights_sha256; the run was altered")
    architecture = contract["architecture"]
    kwargs = architecture["kwargs"]
    spec = ModelSpec(name=architecture["name"], head=kwargs["head"], in_chans=kwargs["in_chans"],
                     dropout=kwargs["dropout"], pretrained="none")
    model, _ = build_classifier(spec, kwargs["num_classes"], int(contract["preprocessing"]["size"]))
    model.load_state_dict(load_file(str(weights)), strict=True)
    return RunModel(run, model.eval(), contract)
