"""Validated configuration: `key=value` overrides (`--set` on the command line) applied to pydantic models,
with usage errors that name the bad key or value and list the accepted ones."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from covidxr.data.preprocess import Preprocessing
from covidxr.data.sources.base import DEFAULT_VIEWS
from covidxr.errors import UsageError
from covidxr.registry import HEADS

Model = TypeVar("Model", bound=BaseModel)


def parse_overrides(items: list[str]) -> dict:
    """['a.b=1', 'c=x,y'] -> {'a': {'b': 1}, 'c': 'x,y'}; values are read as YAML scalars/lists."""
    nested: dict = {}
    for item in items:
        key, separator, text = item.partition("=")
        if not separator or not key.strip():
            raise UsageError("expected key=value, e.g. trainer.max_epochs=1", "overrides", item)
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return nested


def _merge(base: dict, overrides: dict) -> dict:
    merged = dict(base)
    for key, value in overrides.items():
        merged[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return merged


def _coerce_lists(model_type: type[BaseModel], values: dict) -> dict:
    """'black,white' for a tuple/list field -> ['black', 'white']."""
    coerced = dict(values)
    for name, field in model_type.model_fields.items():
        annotation = str(field.annotation)
        if isinstance(coerced.get(name), str) and ("tuple" in annotation or "list" in annotation):
            text = coerced[name]
            coerced[name] = [] if text.lower() in ("none", "") else [part.strip() for part in text.split(",")]
    return coerced


def _valid_keys(model_type: type[BaseModel], location: tuple) -> list[str]:
    """The field names of the (sub-)model that `location` points into."""
    current: type[BaseModel] = model_type
    for part in location[:-1]:
        field = current.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        current = annotation
    return list(current.model_fields)


def validated(model_type: type[Model], values: dict, where: str | None) -> Model:
    """`model_type(**values)`, or a UsageError naming each bad key/value (and the valid keys). `where` names the
    file or recipe the values come from; None: they are the `overrides` argument."""
    try:
        return model_type.model_validate(values)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            location = ".".join(map(str, item["loc"]))
            if item["type"] == "extra_forbidden":
                problems.append(f"unknown key {location}; valid: {', '.join(_valid_keys(model_type, item['loc']))}")
            else:
                message = item["msg"].removeprefix("Value error, ")
                problems.append(f"{location}: {message}" if location else message)
        problem = "; ".join(problems)
        raise (UsageError(problem, "overrides") if where is None else UsageError(f"{where}: {problem}")) from None


def with_overrides(model: Model, overrides: dict) -> Model:
    """A copy of `model` with (nested) `overrides` applied and validated."""
    merged = _merge(model.model_dump(), overrides)
    return validated(type(model), _coerce_nested(type(model), merged), None)


def _coerce_nested(model_type: type[BaseModel], values: dict) -> dict:
    coerced = _coerce_lists(model_type, values)
    for name, field in model_type.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) and isinstance(coerced.get(name), dict):
            coerced[name] = _coerce_nested(annotation, coerced[name])
    return coerced


class _Strict(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid", protected_namespaces=())


class DataSelection(_Strict):
    """Which rows of the given manifest a recipe trains on, and how it splits them when it must."""

    views: tuple[str, ...] | None = DEFAULT_VIEWS
    sources: tuple[str, ...] | None = None
    balance: int | Literal["smallest"] | None = None
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)


class ModelSpec(_Strict):
    name: str = "resnet18"
    pretrained: Literal["none", "imagenet"] = "none"
    weights: Path | None = None
    head: str = Field("linear", description="a registered head (covidxr.models.heads, `@register_head`)")
    in_chans: Literal[1, 3] = 1
    dropout: float = Field(0.0, ge=0, lt=1)

    @field_validator("head")
    @classmethod
    def _registered_head(cls, name: str) -> str:
        return HEADS.check(name)


class Transfer(_Strict):
    mode: Literal["full", "head", "two-stage"] = "full"
    head_epochs: int = Field(5, ge=1, description="two-stage: epochs of head-only training first")
    backbone_lr_factor: float = Field(0.1, gt=0, le=1, description="backbone lr = lr x this (two-stage, full)")


class Optimisation(_Strict):
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    batch_size: int = Field(32, ge=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    class_balance: Literal["weights", "sampler", "source-label", "none"] = Field(
        "sampler", description="sampler: batches balanced by label; source-label: by label, and within each label "
                               "by the sources that hold it; weights: a class-weighted loss")


class Augmentation(_Strict):
    rotation: float = Field(10.0, ge=0, le=180)
    translate: float = Field(0.05, ge=0, lt=1)
    scale: tuple[float, float] = (0.9, 1.1)
    brightness: float = Field(0.1, ge=0, lt=1)
    contrast: float = Field(0.1, ge=0, lt=1)
    hflip: bool = False


def _ordered(low: float, high: float, name: str) -> None:
    if low > high:
        raise ValueError(f"{name} [{low}, {high}]: the first value must not exceed the second")


class Harmonisation(_Strict):
    """Training-time degradations that make images of different sources alike (each off at probability 0):
    down-then-up scaling, JPEG re-encoding, blur, Gaussian noise and gamma, applied in that order."""

    rescale_p: float = Field(0.0, ge=0, le=1, description="probability of scaling down then back up")
    rescale_range: tuple[float, float] = Field((0.25, 0.75), description="share of the side scaled down to")
    jpeg_p: float = Field(0.0, ge=0, le=1, description="probability of JPEG re-encoding")
    jpeg_quality: tuple[int, int] = Field((20, 90), description="JPEG quality range")
    blur_p: float = Field(0.0, ge=0, le=1, description="probability of a Gaussian blur")
    blur_sigma: tuple[float, float] = Field((0.3, 1.5), description="blur sigma range in pixels")
    noise_p: float = Field(0.0, ge=0, le=1, description="probability of Gaussian noise")
    noise_sigma: float = Field(0.03, gt=0, le=1, description="noise standard deviation, share of full scale")
    gamma_p: float = Field(0.0, ge=0, le=1, description="probability of a random gamma")
    gamma_range: tuple[float, float] = Field((0.7, 1.4), description="gamma range")

    @model_validator(mode="after")
    def _check_ranges(self) -> Harmonisation:
        for name in ("rescale_range", "jpeg_quality", "blur_sigma", "gamma_range"):
            _ordered(*getattr(self, name), name)
        if not 0 < self.rescale_range[0] <= self.rescale_range[1] <= 1:
            raise ValueError(f"rescale_range {list(self.rescale_range)}: shares must lie in (0, 1]")
        if not 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100:
            raise ValueError(f"jpeg_quality {list(self.jpeg_quality)}: qualities must lie in 1..100")
        if self.blur_sigma[0] <= 0 or self.gamma_range[0] <= 0:
            raise ValueError("blur_sigma and gamma_range must be positive")
        return self

    def active(self) -> bool:
        return any(getattr(self, name) > 0 for name in ("rescale_p", "jpeg_p", "blur_p", "noise_p", "gamma_p"))


class Adversarial(_Strict):
    """Domain-adversarial training (Ganin and Lempitsky 2015): a head predicts `target` from the pooled
    embedding through a gradient-reversal layer, so the backbone learns features that hide it."""

    weight: float = Field(0.0, ge=0, description="strength of the reversed gradient; 0: off")
    target: Literal["source", "site"] = Field("source", description="the manifest column the head predicts")
    hidden: int = Field(64, ge=1, description="width of the domain head's hidden layer")
    warmup: bool = Field(True, description="ramp the strength from 0 as 2/(1+exp(-10p))-1 over training (Ganin)")


class TrainerSettings(_Strict):
    max_epochs: int = Field(10, ge=1)
    patience: int = Field(5, ge=1, description="early stopping on validation AUC")
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = Field(1, ge=1)
    strategy: str = "auto"
    precision: str | None = None
    checkpoint_every_n_steps: int = Field(50, ge=1)
    num_workers: int = Field(0, ge=0)


class ThresholdRule(_Strict):
    rule: Literal["youden", "sensitivity"] = "youden"
    target: float = Field(0.95, gt=0, lt=1, description="target sensitivity for rule: sensitivity")


class TrainConfig(_Strict):
    """A recipe: everything `train` needs besides the manifest."""

    description: str = ""
    task: Literal["binary", "three-class"] = "binary"
    seed: int = 0
    data: DataSelection = DataSelection()
    preprocessing: Preprocessing = Preprocessing(size=224)
    model: ModelSpec = ModelSpec()
    transfer: Transfer = Transfer()
    optimisation: Optimisation = Optimisation()
    augmentation: Augmentation = Augmentation()
    harmonisation: Harmonisation = Harmonisation()
    adversarial: Adversarial = Adversarial()
    trainer: TrainerSettings = TrainerSettings()
    threshold: ThresholdRule = ThresholdRule()
    input_check: Literal["shipped", "none"] = Field(
        "shipped", description="shipped: model.json carries the package's input check (is this a frontal chest "
                               "radiograph?) and predict refuses what it refuses; none: every prediction says skipped")

    @model_validator(mode="after")
    def _adversary_needs_a_trained_backbone(self) -> TrainConfig:
        if self.adversarial.weight > 0 and self.transfer.mode == "head":
            raise ValueError("adversarial.weight > 0 needs a backbone that trains: transfer.mode full or two-stage, "
                             "not head")
        return self


def recipe_names() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in resources.files("covidxr.recipes").iterdir()
                  if p.name.endswith(".yaml"))


def load_recipe(name_or_path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """A shipped recipe by name (src/covidxr/recipes/NAME.yaml) or a YAML file, with `overrides` ('key=value')."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.is_file():
        if not candidate.is_file():
            raise UsageError(f"{candidate}: recipe file not found")
        text, where = candidate.read_text(encoding="utf-8"), str(candidate)
    elif str(name_or_path) in recipe_names():
        text = (resources.files("covidxr.recipes") / f"{name_or_path}.yaml").read_text(encoding="utf-8")
        where = f"recipe {name_or_path}"
    else:
        raise UsageError(f"unknown recipe {str(name_or_path)!r}; shipped: {', '.join(recipe_names())}, or a YAML path")
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise UsageError(f"{where}: not valid YAML ({error})") from None
    if not isinstance(values, dict):
        raise UsageError(f"{where}: expected a mapping of settings")
    config = validated(TrainConfig, _coerce_nested(TrainConfig, values), where)
    return with_overrides(config, parse_overrides(overrides or []))
