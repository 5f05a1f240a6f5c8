"""The run directory, in one place: its paths, `model.json` (the inference contract), `model_card.json`,
the positive class, the shipped model's location and where evaluations are written.

Training writes a run through `RunDir`; evaluation, explain, predict, export and serving only read it.
This module imports nothing heavier than the standard library, so the lean inference path can use it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from covidxr.errors import CovidxrError, UsageError
from covidxr.runs.calibration import Calibration, OperatingPoint, Scorer, check_prevalence, legacy_calibration

FORMAT_VERSION = 1
NOT_FOR_CLINICAL_USE = "Research and teaching only. Not for clinical use: not a medical device, not validated."
SHIPPED_EVALUATION_FOLDER = "evaluation-shipped-model"
CONTRACT_KEYS: dict[str, type | tuple[type, ...]] = {
    "architecture": dict, "classes": list, "positive_class": str, "preprocessing": dict,
    "threshold": (int, float), "threshold_rule": str, "temperature": (int, float), "weights_sha256": str,
}


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def write_json(path: str | Path, content: dict) -> None:
    Path(path).write_text(json.dumps(content, indent=2) + "\n")


def read_json(path: str | Path) -> dict:
    """A JSON object from `path`; a CovidxrError naming the file when it is not one."""
    try:
        content = json.loads(Path(path).read_text())
    except OSError as error:
        raise CovidxrError(f"{path}: cannot be read ({error.strerror or error})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CovidxrError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(content, dict):
        raise CovidxrError(f"{path}: expected a JSON object, found {type(content).__name__}")
    return content


def default_cache_root() -> Path:
    """Where prepared pixels are cached unless a command is given --cache: $XDG_CACHE_HOME/covidxr/pixels."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "covidxr" / "pixels"


def shipped_dir() -> Path:
    """The folder of the model shipped inside the package (it may be empty in a source checkout)."""
    return Path(str(resources.files("covidxr") / "shipped"))


def is_shipped(folder: str | Path) -> bool:
    return Path(folder).resolve() == shipped_dir().resolve()


def shipped_run() -> Path:
    """The shipped model's folder; a usage error when this installation has none."""
    folder = RunDir(shipped_dir())
    if not folder.is_finished():
        raise UsageError(f"no model is shipped in this installation ({folder.root}): give a run directory, or create "
                         "the shipped model with `make default-model`", "run")
    return folder.root


@dataclass(frozen=True)
class InferenceContract:
    """A run's `model.json`, checked: the values inference needs, and the whole object as `content`."""

    content: dict[str, Any]

    @classmethod
    def parse(cls, content: dict, source: str | Path) -> InferenceContract:
        """Check that `content` (read from `source`) holds the keys inference needs, with usable values."""
        missing = [key for key in CONTRACT_KEYS if key not in content]
        if missing:
            raise CovidxrError(f"{source}: lacks {', '.join(missing)} (a model.json needs {', '.join(CONTRACT_KEYS)})")
        wrong = [f"{key} ({type(content[key]).__name__})" for key, kind in CONTRACT_KEYS.items()
                 if not isinstance(content[key], kind) or isinstance(content[key], bool)]
        if wrong:
            raise CovidxrError(f"{source}: wrong type for {', '.join(wrong)}")
        contract = cls(content)
        if contract.positive_class not in contract.classes:
            raise CovidxrError(f"{source}: positive_class {contract.positive_class!r} is not one of the classes "
                               f"{contract.classes}")
        if not 0 <= contract.threshold <= 1:
            raise CovidxrError(f"{source}: threshold {content['threshold']} is not a probability (0..1)")
        if not contract.temperature > 0:
            raise CovidxrError(f"{source}: temperature {content['temperature']} must be above 0")
        try:
            contract.calibration, contract.operating_points
        except ValidationError as error:
            raise CovidxrError(f"{source}: invalid calibration or operating points ({error})") from None
        if contract.default_operating_point not in contract.operating_points:
            raise CovidxrError(f"{source}: default_operating_point {contract.default_operating_point!r} is not one of "
                               f"the operating points {list(contract.operating_points)}")
        return contract

    @property
    def classes(self) -> list[str]:
        return [str(name) for name in self.content["classes"]]

    @property
    def positive_class(self) -> str:
        """The class whose probability the threshold applies to (the one the model screens for)."""
        return str(self.content["positive_class"])

    @property
    def positive_index(self) -> int:
        return self.classes.index(self.positive_class)

    @property
    def threshold(self) -> float:
        return float(self.content["threshold"])

    @property
    def threshold_rule(self) -> str:
        return str(self.content["threshold_rule"])

    @property
    def temperature(self) -> float:
        return float(self.content["temperature"])

    @property
    def weights_sha256(self) -> str:
        return str(self.content["weights_sha256"])

    @property
    def architecture(self) -> dict:
        return dict(self.content["architecture"])

    @property
    def preprocessing(self) -> dict:
        """The preprocessing settings as recorded (prepare's settings plus decode and normalisation notes)."""
        return dict(self.content["preprocessing"])

    @property
    def image_size(self) -> int:
        return int(self.content["preprocessing"]["size"])

    @property
    def calibration(self) -> Calibration:
        """How logits become P(positive); a model.json from before calibrations were recorded: its temperature."""
        recorded = self.content.get("calibration")
        return Calibration.model_validate(recorded) if recorded else legacy_calibration(self.temperature)

    @property
    def operating_points(self) -> dict[str, OperatingPoint]:
        """The named operating points; a model.json from before they were recorded: its one threshold, named
        `recorded`."""
        recorded = self.content.get("operating_points")
        if recorded:
            return {str(name): OperatingPoint.model_validate(point) for name, point in recorded.items()}
        return {"recorded": OperatingPoint(threshold=self.threshold, rule=self.threshold_rule)}

    @property
    def default_operating_point(self) -> str:
        return str(self.content.get("default_operating_point") or next(iter(self.operating_points)))

    def scorer(self, operating_point: str | None = None, prevalence: float | None = None) -> Scorer:
        """Calibrated probabilities and labels at an operating point (default: the model's) and a deployment
        prevalence (default: the one the calibration was fitted at)."""
        points = self.operating_points
        name = operating_point or self.default_operating_point
        if name not in points:
            raise UsageError(f"not an operating point of this model; accepted: {', '.join(points)}",
                             "operating_point", name)
        calibration = self.calibration
        prevalence = check_prevalence(prevalence) if prevalence is not None else calibration.deployment_prevalence
        if prevalence is not None and calibration.prevalence is None:
            raise UsageError("this model records no calibration prevalence (its model.json predates them): refit "
                             "its calibration with `covidxr calibrate`", "prevalence", prevalence)
        return Scorer(calibration, tuple(self.classes), self.positive_class, name, points[name], prevalence)


@dataclass(frozen=True)
class RunDir:
    """A run directory (or the shipped model's folder): where each file lives, and reading and writing
    `model.json` and `model_card.json`."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.csv"

    @property
    def weights(self) -> Path:
        return self.root / "model.safetensors"

    @property
    def model_json(self) -> Path:
        return self.root / "model.json"

    @property
    def model_card(self) -> Path:
        return self.root / "model_card.json"

    @property
    def onnx(self) -> Path:
        return self.root / "model.onnx"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def env(self) -> Path:
        return self.root / "env.json"

    @property
    def curves(self) -> Path:
        return self.root / "curves.png"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def is_shipped(self) -> bool:
        return is_shipped(self.root)

    @property
    def evaluation(self) -> Path:
        """Where evaluate, audit and cv write: RUN/evaluation, or ./evaluation-shipped-model for the shipped
        model (the installed package is not written to)."""
        return Path.cwd() / SHIPPED_EVALUATION_FOLDER if self.is_shipped else self.root / "evaluation"

    def is_finished(self) -> bool:
        """Training has written the weights and model.json."""
        return self.model_json.is_file() and self.weights.is_file()

    def read_contract(self) -> InferenceContract:
        if not self.is_finished():
            raise UsageError(f"{self.root}: not a finished run (needs model.json and model.safetensors)")
        return InferenceContract.parse(read_json(self.model_json), self.model_json)

    def write_contract(self, content: dict) -> InferenceContract:
        contract = InferenceContract.parse(content, self.model_json)
        write_json(self.model_json, content)
        return contract

    def check_weights(self, contract: InferenceContract) -> None:
        """Fail when model.safetensors is not the file model.json describes."""
        if file_sha256(self.weights) != contract.weights_sha256:
            raise CovidxrError(f"{self.weights}: its sha256 differs from model.json's weights_sha256; the run was "
                               "altered")

    def read_card(self) -> dict:
        return read_json(self.model_card)

    def write_card(self, card: dict) -> None:
        write_json(self.model_card, card)

    def update_card(self, section: str, name: str, value: Any) -> bool:
        """Set `card[section][name] = value` in model_card.json (read, modify, write). Skipped, returning
        False, for the shipped model or a run without a card."""
        if self.is_shipped or not self.model_card.is_file():
            return False
        card = self.read_card()
        card.setdefault(section, {})[name] = value
        self.write_card(card)
        return True
