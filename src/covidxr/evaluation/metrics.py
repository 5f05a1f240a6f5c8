"""How figures about a model are presented: estimates with their intervals, and the within-source lines that
evaluate, cv, compare and the report print. The figures themselves are computed by `covidxr.metrics`.

Each function takes a typed result (`covidxr.runs.EvaluationResult`, its parts, a `CompareEntry`) or the JSON object
it was written as; `figure(figures, key)` reads either.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from covidxr.runs import CrossValidationResult

SOURCE_MARGIN = 0.05
Figures = BaseModel | Mapping[str, Any]


def figure(figures: Figures, key: str) -> Any:
    """`figures`' value of `key` (None when it has none), whether a typed result or its JSON form."""
    return figures.get(key) if isinstance(figures, Mapping) else getattr(figures, key, None)


def source_baseline_informative(result: Figures) -> bool:
    """Whether origin alone predicts the label better than chance: the source-only AUC's 95% interval lies above
    0.5. One source, or sources with the same share of positives, give exactly 0.5: nothing to compare with."""
    interval = figure(result, "source_only_auc_ci")
    return interval is not None and interval[0] > 0.5


def source_explains_result(result: Figures) -> bool:
    """True when the source-only baseline is informative and its AUC comes within SOURCE_MARGIN of the model's (or
    beats it): the figure then measures where the images come from at least as much as the disease."""
    auc, baseline = figure(result, "auc"), figure(result, "source_only_auc")
    return auc is not None and baseline is not None and source_baseline_informative(result) and \
        baseline >= auc - SOURCE_MARGIN


def format_number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_interval(value: float | None, interval: list[float] | None) -> str:
    """'0.962 [0.926, 0.989]'; 'n/a' when the value is undefined."""
    if value is None:
        return "n/a"
    return f"{value:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")


def format_estimate(figures: Figures, key: str) -> str:
    """'0.962 [0.926, 0.989]' from figures' `key` and `key_ci`; 'n/a' when undefined."""
    return format_interval(figure(figures, key), figure(figures, f"{key}_ci"))


def within_source_lines(result: Figures, cv: CrossValidationResult | None = None) -> list[str]:
    """The figures that measure the disease rather than the origin: AUC within each source holding both classes
    (from an evaluation `result`) and, from cross-validation results `cv` (cv.json), the pooled out-of-fold AUC
    within each such source."""
    lines = [f"within {source} ({figure(result, 'split')}): {figure(figures, 'n_images')} images, "
             f"{figure(figures, 'n_patients')} patients, AUC {format_estimate(figures, 'auc')}"
             for source, figures in figure(result, "within_source").items()]
    lines += pooled_within_source_lines(cv) if cv is not None else []
    return lines or ["no source holds both classes here: within-source skill cannot be measured"]


def pooled_within_source_lines(cv: CrossValidationResult) -> list[str]:
    """From cross-validation results (cv.json): the pooled out-of-fold AUC within each source holding both
    classes."""
    return [f"within {source}, pooled out of fold ({len(cv.folds)}-fold cross-validation over {cv.splits} rows): "
            f"{figures.n_images} images, {figures.n_patients} patients, AUC {format_estimate(figures, 'auc')}"
            for source, figures in cv.pooled_out_of_fold_within_source.items()]
