"""The schemas of what evaluate, audit and compare write: `evaluate-<data>-<split>.json` (`EvaluationResult`),
`audit-<data>.json` (`AuditResult`) and each entry of `compare.json` (`CompareEntry`).

Their writers build these objects and every reader (the CLI, the HTML report and compare page, the model card)
takes them; `docs/reference.md` shows their JSON Schema. Figures that cannot be computed (an AUC of a single-class
set, an interval undefined in most resamples) are null. A key that only some results have (the overlap with
training of an external evaluation, PPV/NPV at a prevalence asked for, the per-class figures of a three-class
model) is absent, not null, where it does not apply: `to_json()` writes the keys that were given.
"""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from covidxr.errors import CovidxrError

RESULT_FORMAT_VERSION = 1
Interval = list[float] | None


class WrittenFile(BaseModel):
    """A JSON object a stage writes: its `format_version` first, then the keys it was given."""

    model_config = ConfigDict(defer_build=True, extra="forbid")

    def to_json(self) -> dict[str, Any]:
        return {"format_version": getattr(self, "format_version"), **self.model_dump(mode="json", exclude_unset=True)}

    @classmethod
    def parse(cls, content: Any, source: object) -> Self:
        """`content` (read from `source`) checked; a CovidxrError naming `source` and the first problem."""
        try:
            return cls.model_validate(content)
        except ValidationError as error:
            raise CovidxrError(f"{source}: {problem_in_words(cls, error)}") from None


def problem_in_words(schema: type[BaseModel], error: ValidationError) -> str:
    """The first problem of a ValidationError in words: what is missing, of the wrong type, or out of range."""
    problems = error.errors()
    missing = [".".join(map(str, p["loc"])) for p in problems if p["type"] == "missing"]
    if missing:
        required = [name for name, field in schema.model_fields.items() if field.is_required()]
        return f"lacks {', '.join(missing)} ({schema.__name__} needs {', '.join(required)})"
    first = problems[0]
    where = ".".join(map(str, first["loc"]))
    if first["type"] == "value_error":
        return str(first["ctx"]["error"])
    if first["type"].endswith("_type") or first["type"].endswith("_parsing"):
        return f"wrong type for {where} ({type(first['input']).__name__})"
    return f"{where}: {first['msg']}"


class Figures(BaseModel):
    """Part of a result: its keys as given, nothing else."""

    model_config = ConfigDict(defer_build=True, extra="forbid")


class SubgroupFigures(Figures):
    """AUC, sensitivity and specificity within one source or site holding both classes."""

    n_images: int
    n_patients: int
    auc: float | None
    auc_ci: Interval
    sensitivity: float | None
    specificity: float | None


class ValidationFigures(Figures):
    """What an operating point had on validation, where it was chosen."""

    sensitivity: float | None
    specificity: float | None
    ci: dict[str, Interval]


class OperatingPointFigures(Figures):
    """One of the model's operating points applied to the evaluated rows."""

    threshold: float
    rule: str
    sensitivity: float | None
    sensitivity_ci: Interval
    specificity: float | None
    specificity_ci: Interval
    ppv: float | None
    ppv_ci: Interval
    npv: float | None
    npv_ci: Interval
    validation: ValidationFigures


class ClassFigures(Figures):
    """One class of a multi-class model, one-vs-rest."""

    auc: float | None
    auc_ci: Interval
    sensitivity: float | None
    specificity: float | None
    f1: float | None


class EvaluationResult(WrittenFile):
    """`covidxr evaluate`'s result: binary figures of the positive class with patient-bootstrap 95% intervals
    (`<figure>_ci`), calibration, every operating point, within-source and within-site figures and the
    source-only and site-only baselines."""

    format_version: Literal[1] = RESULT_FORMAT_VERSION
    overlap_with_training: dict[str, Any] | None = Field(
        None, description="external data only: rows shared with the run's training rows (same file, "
                          "near-duplicate, same patient)")
    run: str
    data: str = Field(description="'internal' (the run's own manifest) or the manifest's name")
    split: str
    n_images: int
    n_patients: int
    prevalence: float
    auc: float | None
    pr_auc: float | None
    accuracy: float | None
    sensitivity: float | None
    specificity: float | None
    ppv: float | None
    npv: float | None
    f1: float | None
    auc_ci: Interval
    pr_auc_ci: Interval
    accuracy_ci: Interval
    sensitivity_ci: Interval
    specificity_ci: Interval
    ppv_ci: Interval
    npv_ci: Interval
    f1_ci: Interval
    threshold: float = Field(description="the default operating point's threshold on the calibrated probability")
    threshold_rule: str
    operating_point: str
    calibration: str = Field(description="the calibration method")
    calibration_prevalence: float | None
    confusion_matrix: list[list[int]] = Field(description="[[tn, fp], [fn, tp]] at the threshold")
    ece: float
    ece_ci: Interval
    ece_before_calibration: float
    ece_before_calibration_ci: Interval
    brier: float
    brier_before_calibration: float
    within_source: dict[str, SubgroupFigures]
    within_site: dict[str, SubgroupFigures]
    ci_method: str
    source_only_auc: float | None
    source_only_auc_ci: Interval
    site_only_auc: float | None
    site_only_auc_ci: Interval
    ppv_at_prevalence: float | None = Field(None, description="with --prevalence only")
    npv_at_prevalence: float | None = Field(None, description="with --prevalence only")
    operating_points: dict[str, OperatingPointFigures]
    per_class: dict[str, ClassFigures] | None = Field(None, description="more than two classes only")
    macro: dict[str, float | None] | None = Field(None, description="more than two classes only")


class SourcePredictability(Figures):
    source_auc: float | None = Field(description="out-of-fold AUC of predicting the source from the embeddings")
    source_auc_ci: Interval
    site_auc: float | None
    verdict: str


class OccludedFigures(Figures):
    auc: float | None
    auc_ci: Interval
    share_of_auc_above_chance_kept: float | None


class Occlusion(Figures):
    auc: float | None = Field(description="AUC on the whole prepared image")
    auc_ci: Interval
    lungs_hidden: OccludedFigures
    lungs_only: OccludedFigures
    borders_only: OccludedFigures
    shortcut_suspected: bool
    verdict: str


class SiteFigures(Figures):
    n_images: int
    auc: float


class LeaveOneSiteOut(Figures):
    sites: dict[str, SiteFigures]
    notes: list[str]
    verdict: str


class FallbackRectangle(Figures):
    images: int
    rows: tuple[float, float]
    columns: tuple[float, float]


class AuditLungs(Figures):
    masks: str
    fallback_rectangle: FallbackRectangle
    mean_lung_share: float | None
    border_band: float


AUDIT_PARTS = ("source_predictability", "occlusion", "leave_one_site_out")


class AuditResult(WrittenFile):
    """`covidxr audit`'s result: origin predicted from the model's embeddings, AUC with parts of the image hidden,
    and leave-one-site-out; each with a one-line verdict."""

    format_version: Literal[1] = RESULT_FORMAT_VERSION
    run: str
    data: str
    n_images: int
    n_patients: int
    splits: str
    ci_method: str
    source_predictability: SourcePredictability
    occlusion: Occlusion
    leave_one_site_out: LeaveOneSiteOut
    lungs: AuditLungs

    def verdicts(self) -> dict[str, str]:
        """The verdict of each part, in order (what the model card and the report keep)."""
        return {part: getattr(self, part).verdict for part in AUDIT_PARTS}


class CompareEntry(WrittenFile):
    """One recipe of `covidxr compare` (an element of `compare.json`, and its `DIR/NAME/entry.json`)."""

    format_version: Literal[1] = RESULT_FORMAT_VERSION
    recipe: str
    description: str | None
    run: str
    data: str
    test_images: int
    test_patients: int
    auc: float | None = Field(description="AUC on the split's test rows")
    auc_ci: Interval
    source_only_auc: float | None
    source_only_auc_ci: Interval
    within_source: dict[str, SubgroupFigures]
    oof_within_source_auc: float | None = Field(
        description="pooled out-of-fold AUC within `oof_source`, cross-validated over every patient")
    oof_within_source_auc_ci: Interval
    oof_source: str | None
    oof_images: int | None
    oof_patients: int | None
    oof_folds: int
    oof_auc: float | None
    oof_auc_ci: Interval
    cv_seconds: float
    lungs_hidden_auc: float | None
    lungs_hidden_auc_ci: Interval
    origin_auc: float | None
    origin_auc_ci: Interval
    audit_rows: str
    train_seconds: float
    ci_method: str



class FoldFigures(Figures):
    """One fold's held-out figures; threshold figures at a threshold fitted on that fold (optimistic)."""

    fold: int
    n_images: int
    n_patients: int
    auc: float | None
    accuracy: float | None
    sensitivity: float | None
    specificity: float | None
    f1: float | None


class FoldSummary(Figures):
    """The mean or standard deviation of each fold figure over folds (null where a fold lacks it)."""

    auc: float | None
    accuracy: float | None
    sensitivity: float | None
    specificity: float | None
    f1: float | None


class PooledSourceFigures(Figures):
    n_images: int
    n_patients: int
    auc: float | None
    auc_ci: Interval


class CrossValidationResult(WrittenFile):
    """`covidxr cv`'s result (`DIR/cv.json`): each fold's figures, their mean and sd, and the pooled out-of-fold AUC
    overall and within each source holding both classes, with patient-bootstrap 95% intervals. A cv.json without
    `format_version` (written before it existed) reads as format 1."""

    format_version: Literal[1] = RESULT_FORMAT_VERSION
    folds: list[FoldFigures]
    splits: str = Field("train and val", description="the rows folded over")
    mean: FoldSummary
    sd: FoldSummary
    pooled_out_of_fold_auc: float | None
    pooled_out_of_fold_auc_ci: Interval
    source_only_auc: float | None = Field(
        None, description="AUC of each pooled row scored by its source's share of positives (what origin alone gives); "
                          "absent in cv.json written before it was recorded")
    source_only_auc_ci: Interval = None
    pooled_out_of_fold_within_source: dict[str, PooledSourceFigures] = Field(
        default_factory=dict, description="by source holding both classes")
    n_images: int
    n_patients: int
    ci_method: str
    note: str
