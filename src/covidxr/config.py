"""Validated configuration: `--set key=value` overrides applied to pydantic models, with usage errors
that name the bad key or value and list the accepted ones."""

from __future__ import annotations

from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from covidxr.errors import UsageError

Model = TypeVar("Model", bound=BaseModel)


def parse_overrides(items: list[str]) -> dict:
    """['a.b=1', 'c=x,y'] -> {'a': {'b': 1}, 'c': 'x,y'}; values are read as YAML scalars/lists."""
    nested: dict = {}
    for item in items:
        key, separator, text = item.partition("=")
        if not separator or not key.strip():
            raise UsageError(f"--set {item!r}: expected key=value, e.g. --set trainer.max_epochs=1")
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


def with_overrides(model: Model, overrides: dict, where: str = "--set") -> Model:
    """A copy of `model` with `overrides` applied and validated."""
    model_type = type(model)
    unknown = [key for key in overrides if key not in model_type.model_fields]
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(model_type.model_fields)}")
    try:
        return model_type.model_validate(_coerce_lists(model_type, _merge(model.model_dump(), overrides)))
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise UsageError(f"{where}: {problems}") from None
