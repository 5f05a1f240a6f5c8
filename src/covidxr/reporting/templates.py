"""HTML pages from the jinja2 templates in `templates/` (autoescaped): one page wrapper (`base.html`) around the
report, the compare page and the model card. Templates only lay out what was computed before; the filters here
format figures (`estimate`, `number`, `percent`) and embed PNG files (`png`)."""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup, escape

from covidxr.evaluation.metrics import format_estimate, format_interval, format_number
from covidxr.runs import NOT_FOR_CLINICAL_USE


@dataclass(frozen=True)
class Table:
    """A table of text cells, its header first."""

    columns: list[str]
    rows: list[list[str]]

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> Table:
        return cls([str(column) for column in frame.columns],
                   [[_cell(value) for value in row] for row in frame.itertuples(index=False)])


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def png(path: Path) -> Markup:
    """An <img> holding the PNG file itself (the page stays one self-contained file)."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return Markup(f'<img alt="{escape(Path(path).name)}" src="data:image/png;base64,{data}">')


def _environment() -> Environment:
    environment = Environment(loader=PackageLoader("covidxr.reporting", "templates"), autoescape=True,
                              undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    environment.filters.update(estimate=format_estimate, interval=format_interval, number=format_number, png=png,
                               percent=lambda value: f"{value:.0%}")
    environment.globals["notice"] = NOT_FOR_CLINICAL_USE
    return environment


ENVIRONMENT = _environment()


def render(template: str, **context: Any) -> str:
    return ENVIRONMENT.get_template(template).render(**context)
