"""The run directory, in one place: its paths, reading and writing `model.json` (the inference contract, whose
schema is `covidxr.runs.contract`) and `model_card.json` (`covidxr.runs.cards`), the shipped model's location and
where evaluations are written.

Training writes a run through `RunDir`; evaluation, explain, predict, export and serving only read it.
This module imports nothing heavier than pydantic and NumPy, so the lean inference path can use it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from covidxr.errors import CovidxrError, UsageError
from covidxr.paths import user_cache
from covidxr.runs.cards import ModelCard
from covidxr.runs.contract import InferenceContract

NOT_FOR_CLINICAL_USE = "Research and teaching only. Not for clinical use: not a medical device, not validated."
SHIPPED_EVALUATION_FOLDER = "evaluation-shipped-model"


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
    return user_cache("pixels")


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

    def write_contract(self, contract: InferenceContract | dict) -> InferenceContract:
        """Write model.json, checked first (a dict is validated, as a reader would)."""
        contract = InferenceContract.parse(contract, self.model_json)
        write_json(self.model_json, contract.content)
        return contract

    def check_weights(self, contract: InferenceContract) -> None:
        """Fail when model.safetensors is not the file model.json describes."""
        if file_sha256(self.weights) != contract.weights_sha256:
            raise CovidxrError(f"{self.weights}: its sha256 differs from model.json's weights_sha256; the run was "
                               "altered")

    def read_card(self) -> ModelCard:
        return ModelCard.parse(read_json(self.model_card), self.model_card)

    def write_card(self, card: ModelCard) -> None:
        write_json(self.model_card, card.to_json())

    def update_card(self, section: Literal["evaluations", "audits"], name: str, value: BaseModel) -> bool:
        """Set the card's `section[name]` to `value` (a `CardEvaluation` or `AuditVerdicts`) in model_card.json
        (read, modify, write). Skipped, returning False, for the shipped model or a run without a card."""
        if self.is_shipped or not self.model_card.is_file():
            return False
        card = self.read_card()
        self.write_card(card.updated(**{section: {**(getattr(card, section) or {}), name: value}}))
        return True
