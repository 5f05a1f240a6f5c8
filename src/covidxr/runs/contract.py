"""The schemas of the two `model.json` files: a classifier's run contract (`InferenceContract`) and a lung
segmenter's (`LungModelContract`), with what they share (`ContractBase`) and the one migration that lets run
directories of an earlier format load.

Training writes them, every model-using stage reads them; `docs/reference.md` shows their JSON Schema
(`docs/schemas/`, generated from these classes). Both allow further keys (provenance, notes), kept as written.
"""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import ConfigDict, Field, field_validator, model_validator

from covidxr.errors import UsageError
from covidxr.runs.calibration import Calibration, OperatingPoint, Scorer, check_prevalence
from covidxr.runs.inputcheck import InputCheckModel
from covidxr.runs.results import WrittenFile

FORMAT_VERSION = 2
LUNG_FORMAT_VERSION = 1
RECORDED_POINT = "recorded"


class ContractBase(WrittenFile):
    """What a classifier's and a lung segmenter's `model.json` share: how the network is built, the threshold its
    output is cut at and the hash of the weights it describes."""

    model_config = ConfigDict(defer_build=True, extra="allow", strict=True)

    architecture: dict[str, Any] = Field(description="how the network is built: `name` and its settings")
    threshold: float = Field(description="the cut on the output probability")
    weights_sha256: str = Field(description="sha256 of model.safetensors")
    pretrained: dict[str, Any] | None = Field(None, description="the weights training started from: `source` and, "
                                                                "where a file, its package, version and sha256")
    data: dict[str, Any] | None = Field(None, description="what the weights were trained on")
    training: dict[str, Any] | None = Field(None, description="how they were trained")

    @field_validator("architecture")
    @classmethod
    def _named(cls, architecture: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(architecture.get("name"), str):
            raise ValueError("architecture has no `name`")
        return architecture

    @field_validator("threshold")
    @classmethod
    def _a_probability(cls, threshold: float) -> float:
        if not 0 <= threshold <= 1:
            raise ValueError(f"threshold {threshold:g} is not a probability (0..1)")
        return threshold

    @property
    def content(self) -> dict[str, Any]:
        """The object as written to model.json (further keys included)."""
        return self.to_json()

    def updated(self, **changes: Any) -> Self:
        """This contract with `changes` (JSON values; a further key is kept as written), checked as a reader
        would check it: a CovidxrError naming the first problem."""
        return type(self).parse({**self.content, **changes}, f"model.json with new {', '.join(changes)}")



class LungModelContract(ContractBase):
    """A lung segmenter's `model.json`: lung logits of a letterboxed grey image; lungs where sigmoid >= threshold."""

    format_version: Literal[1] = LUNG_FORMAT_VERSION
    name: str
    input: dict[str, Any] = Field(description="`size` (side of the letterboxed square), `fit`, `scale`, `channels`")

    @field_validator("input")
    @classmethod
    def _sized(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(value.get("size"), int) or value["size"] <= 0:
            raise ValueError("input.size must be a positive integer")
        return value

    @property
    def size(self) -> int:
        return int(self.input["size"])

    def identity(self) -> dict[str, str]:
        """What a classifier's model.json records of the segmenter its preprocessing used."""
        return {"name": self.name, "weights_sha256": self.weights_sha256}


def migrate_contract(content: Any) -> Any:
    """A classifier's model.json of format 1 in format 2. Format 1 did not record calibrations or operating points:
    its temperature becomes a temperature-only calibration (prevalence unknown) and its one threshold the operating
    point `recorded`, the default. Content that already has them keeps them; anything but a JSON object is returned
    unchanged (for the schema to reject)."""
    if not isinstance(content, dict):
        return content
    migrated = {**content, "format_version": FORMAT_VERSION} if content.get("format_version", 1) == 1 else \
        dict(content)
    if "calibration" not in content and "temperature" in content:
        migrated["calibration"] = {"method": "temperature", "temperature": content["temperature"]}
    if "operating_points" not in content and "threshold" in content:
        migrated["operating_points"] = {RECORDED_POINT: {"threshold": content["threshold"],
                                                         "rule": content.get("threshold_rule", "unknown")}}
    if "default_operating_point" not in content and isinstance(migrated.get("operating_points"), dict):
        migrated["default_operating_point"] = next(iter(migrated["operating_points"]), RECORDED_POINT)
    return migrated


class InferenceContract(ContractBase):
    """A classifier's `model.json` (the run contract): everything inference needs, with what the weights were
    trained on. A model.json of format 1 is migrated when read (`migrate_contract`)."""

    format_version: Literal[2] = FORMAT_VERSION
    classes: list[str] = Field(min_length=2)
    positive_class: str = Field(description="the class whose probability the threshold applies to")
    preprocessing: dict[str, Any] = Field(description="prepare's settings as recorded (`size` and the rest), decode "
                                                      "and normalisation notes")
    threshold_rule: str
    temperature: float
    calibration: Calibration
    operating_points: dict[str, OperatingPoint] = Field(min_length=1)
    default_operating_point: str
    created: str | None = Field(None, description="when training finished (ISO 8601, UTC)")
    transfer: str | None = Field(None, description="the transfer mode (full, frozen, two-stage)")
    input_check: InputCheckModel | None = Field(
        None, description="the input check's parameters; null: trained without one; absent: the shipped one")

    @model_validator(mode="before")
    @classmethod
    def _migrated(cls, content: Any) -> Any:
        return migrate_contract(content)

    @field_validator("temperature")
    @classmethod
    def _positive(cls, temperature: float) -> float:
        if not temperature > 0:
            raise ValueError(f"temperature {temperature:g} must be above 0")
        return temperature

    @field_validator("preprocessing")
    @classmethod
    def _sized(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(value.get("size"), int) or isinstance(value["size"], bool) or value["size"] <= 0:
            raise ValueError("preprocessing.size must be a positive integer")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> InferenceContract:
        if self.positive_class not in self.classes:
            raise ValueError(f"positive_class {self.positive_class!r} is not one of the classes {self.classes}")
        if self.default_operating_point not in self.operating_points:
            raise ValueError(f"default_operating_point {self.default_operating_point!r} is not one of the "
                             f"operating points {list(self.operating_points)}")
        return self

    @property
    def positive_index(self) -> int:
        return self.classes.index(self.positive_class)

    @property
    def image_size(self) -> int:
        return int(self.preprocessing["size"])

    @property
    def records_input_check(self) -> bool:
        """Whether model.json says which input check the model uses (`input_check`, null included)."""
        return "input_check" in self.model_fields_set

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
