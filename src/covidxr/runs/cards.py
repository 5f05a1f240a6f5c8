"""The schemas of the two `model_card.json` files: a classifier run's (`ModelCard`) and a lung segmenter's
(`LungModelCard`), with the lung segmenter's evaluation they carry (`LungEvaluation`, also `lungs-evaluation.json`).

Training writes a classifier's card; evaluate and audit add their entries (`evaluations`, `audits`), `covidxr
calibrate` its `recalibration`, packaging the shipped model its calibration, severity and input check sections.
Every reader (the report, the service's `/v1/model`, packaging, tracking) takes the typed card; `docs/reference.md`
shows their JSON Schema. Both cards state that the model is not for clinical use (`not_for_clinical_use`: true).

Migration: cards written before `format_version` existed have none; a card without one is read as format 1 (the
only format so far), and `to_json()` writes it from then on. Sections a card of an earlier run lacks (calibration,
evaluations, audits...) are optional; a key no writer writes is an error naming it.
"""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import Field

from covidxr.runs.calibration import FittedOn, OperatingPoint
from covidxr.runs.results import (
    AuditResult,
    EvaluationResult,
    Figures,
    Interval,
    OperatingPointFigures,
    SubgroupFigures,
    WrittenFile,
)

CARD_FORMAT_VERSION = 1
LUNG_CARD_FORMAT_VERSION = 1
EVALUATION_KEYS = ("n_images", "n_patients", "prevalence", "auc", "auc_ci", "sensitivity", "sensitivity_ci",
                   "specificity", "specificity_ci", "source_only_auc", "source_only_auc_ci", "within_source", "ece",
                   "ece_ci", "ece_before_calibration", "operating_point", "operating_points")
"""What evaluate keeps in a run's card of each evaluation."""


class CardBase(WrittenFile):
    """What both cards share: what the model is for, that it is not for clinical use, and its limits."""

    def updated(self, **changes: Any) -> Self:
        """This card with `changes` (typed sections; None removes a section), checked as a reader would check it:
        a CovidxrError naming the first problem."""
        content = self.model_copy(update=changes).to_json()
        removed = {name for name, value in changes.items() if value is None}
        return type(self).parse({key: value for key, value in content.items() if key not in removed},
                                f"model_card.json with new {', '.join(changes)}")


class CardModel(Figures):
    """The card's `model`: the network and how it was trained."""

    architecture: str
    head: str
    classes: list[str]
    pretrained: str | dict[str, Any] = Field(description="the weights training started from, in words (runs before "
                                                         "2026-11-25: model.json's `pretrained` object)")
    transfer: str = Field(description="the transfer mode (full, frozen, two-stage)")
    transfer_note: str | None = Field(None, description="only when a frozen backbone had random weights")


class TrainingData(Figures):
    """What the weights were trained on (model.json's `data`)."""

    sources: dict[str, int] = Field(description="images per source")
    images: int
    patients: int
    by_split: dict[str, dict[str, int]] = Field(description="images per label in each split")
    licences: dict[str, int] = Field(description="images per licence")


class CardOperatingPoint(Figures):
    """The default operating point: its threshold on the calibrated probability and where it was fitted."""

    threshold: float
    rule: str
    name: str | None = Field(None, description="the operating point's name (absent in runs before calibration)")
    temperature: float | None = Field(None, description="only in runs before calibration: the softmax temperature")
    fitted_on: str


class CardCalibration(Figures):
    """model.json's calibration and operating points, as the card shows them."""

    method: str
    fitted_on: FittedOn | None
    prevalence: float | None
    compared: dict[str, dict[str, float | None]]
    operating_points: dict[str, OperatingPoint]
    default_operating_point: str
    why_this_default: str | None = Field(None, description="the shipped model only: why its default was chosen")


class CardValidation(Figures):
    """The validation split's figures: they chose the checkpoint, calibration and thresholds (optimistic)."""

    split: str
    images: int
    auc_covid_vs_rest: float | None
    note: str


class CardEvaluation(Figures):
    """What the card keeps of an evaluation (`covidxr evaluate`'s result, `EvaluationResult`): the keys it was
    given, which changed as evaluate grew (every key is optional)."""

    n_images: int | None = None
    n_patients: int | None = None
    prevalence: float | None = None
    auc: float | None = None
    sensitivity: float | None = None
    specificity: float | None = None
    auc_ci: Interval = None
    sensitivity_ci: Interval = None
    specificity_ci: Interval = None
    operating_point: str | None = None
    calibration: str | None = Field(None, description="the calibration method")
    ece: float | None = None
    ece_ci: Interval = None
    ece_before_calibration: float | None = None
    ece_before_calibration_ci: Interval = None
    brier: float | None = None
    within_source: dict[str, SubgroupFigures] | None = None
    source_only_auc: float | None = None
    source_only_auc_ci: Interval = None
    operating_points: dict[str, OperatingPointFigures] | None = None

    @classmethod
    def of(cls, result: EvaluationResult) -> CardEvaluation:
        """The entry of an evaluation: its EVALUATION_KEYS."""
        return cls.model_validate(result.model_dump(mode="json", include=set(EVALUATION_KEYS)))

    def merged(self, newer: CardEvaluation) -> CardEvaluation:
        """This entry with the keys `newer` has replaced by its values."""
        return CardEvaluation.model_validate({**self.model_dump(mode="json", exclude_unset=True),
                                              **newer.model_dump(mode="json", exclude_unset=True)})


class AuditVerdicts(Figures):
    """The one-line verdict of each part of `covidxr audit`."""

    source_predictability: str
    occlusion: str
    leave_one_site_out: str

    @classmethod
    def of(cls, result: AuditResult) -> AuditVerdicts:
        return cls.model_validate(result.verdicts())


class PointRecalibration(Figures):
    sensitivity: float | None
    sensitivity_ci: Interval
    specificity: float | None
    specificity_ci: Interval


class CalibrationError(Figures):
    ece: float | None
    ece_ci: Interval


class CalibrationErrorAndPoints(CalibrationError):
    operating_points: dict[str, PointRecalibration]


class RecalibrationFigures(Figures):
    """Out-of-fold figures on the recalibration rows: before, with the prevalence moved only, and after."""

    before: CalibrationErrorAndPoints
    prior_shift_only: CalibrationError | None
    after: CalibrationErrorAndPoints


class Recalibration(Figures):
    """What `covidxr calibrate` refitted the calibration on, and its out-of-fold figures (also model.json's
    `recalibration`)."""

    data: str
    split: str | None = Field(None, description="absent: every labelled row")
    manifest_sha256: str
    images: int
    patients: int
    positives: int
    negatives: int
    folds: int
    figures_out_of_fold: RecalibrationFigures
    ci_method: str
    minimum_per_class: int
    from_run: str
    weights_changed: bool


class ScoreFigures(Figures):
    """A severity score's cross-validated error and correlation with the raters, with 95% intervals."""

    mae: float
    mae_ci: Interval
    pearson_r: float | None
    pearson_r_ci: Interval


class SeverityRecipe(Figures):
    """One recipe of the severity study."""

    recipe: str
    baseline: bool
    extent: ScoreFigures
    opacity: ScoreFigures


class CardSeverity(Figures):
    """The severity head's section (severity.json's figures, the study that chose it, provenance)."""

    scores: dict[str, str] = Field(description="each score and its range")
    feature: str
    extent: ScoreFigures
    opacity: ScoreFigures
    evaluation: dict[str, Any] = Field(description="severity.json's `evaluation`: data, patients, folds, repeats, "
                                                   "seed, CI method, recipe")
    provenance: dict[str, str]
    compared: list[SeverityRecipe] | None = Field(None, description="absent in cards before the study's recipes "
                                                                     "were recorded")
    note: str


class KindFigures(Figures):
    """The input check on one kind of image: the share accepted (frontal) or refused (the rest)."""

    measure: str
    goal: float
    images: int
    groups: int
    rate: float | None
    rate_ci: Interval
    reasons: dict[str, int] = Field(description="refusals by reason")


class InputCheckFigures(Figures):
    splits: list[str]
    ci_method: str
    by_kind: dict[str, KindFigures]


class CardInputCheck(Figures):
    """The input check's name, what it was fitted on and its held-out figures."""

    name: str
    fitted_on: dict[str, Any] = Field(description="model.json's `input_check.fitted_on`")
    figures: dict[str, InputCheckFigures]


class ModelCard(CardBase):
    """A classifier run's `model_card.json`: the model, its data and licences, its operating point and
    calibration, validation figures, limitations, and what later stages added (evaluations, audits, recalibration;
    the shipped model's severity and input check). A card without `format_version` reads as format 1."""

    format_version: Literal[1] = CARD_FORMAT_VERSION
    model: CardModel
    intended_use: str
    not_for_clinical_use: Literal[True]
    training_data: TrainingData
    licences: dict[str, int]
    operating_point: CardOperatingPoint
    calibration: CardCalibration | None = Field(None, description="absent in runs before calibration")
    validation: CardValidation
    limitations: list[str]
    evaluations: dict[str, CardEvaluation] | None = Field(
        None, description="by `<data>-<split>`, from `covidxr evaluate`")
    audits: dict[str, AuditVerdicts] | None = Field(None, description="by data, from `covidxr audit`")
    recalibration: Recalibration | None = Field(None, description="runs written by `covidxr calibrate` only")
    severity: CardSeverity | None = Field(None, description="models with a severity head only")
    input_check: CardInputCheck | None = Field(None, description="the shipped model only")


class SegmenterIdentity(Figures):
    name: str
    weights_sha256: str


class MaskFigures(Figures):
    """Agreement of the segmenter's masks with one kind of annotation: means with 95% patient-bootstrap intervals
    and medians (null without images)."""

    data: str | None = Field(None, description="what was compared (absent in a part of a larger figure)")
    n_images: int
    n_patients: int
    fallbacks: int
    dice: float | None = None
    dice_ci: Interval = None
    dice_median: float | None = None
    iou: float | None = None
    iou_ci: Interval = None
    iou_median: float | None = None
    box_iou: float | None = None
    box_iou_ci: Interval = None
    box_iou_median: float | None = None


class OutlineAgreement(Figures):
    n_images: int
    dice: float | None
    note: str


class LungVaeFigures(Figures):
    data: str
    v7_vs_lungvae: OutlineAgreement
    covid: MaskFigures
    non_covid: MaskFigures


class ShareGroup(Figures):
    group: str = Field(description="source / label")
    images: int
    median: float
    q1: float
    q3: float
    fallbacks: int


class LungShares(Figures):
    data: str
    by_group: list[ShareGroup]
    verdict: str


class SegmenterSpeed(Figures):
    """What the segmenter costs per image on the machine that evaluated it (wall-clock medians)."""

    machine: str = Field(description="CPU cores and model, ONNX Runtime version")
    backend: str = Field(description="what ran the network (ONNX Runtime, else PyTorch)")
    threads: int = Field(description="the network's intra-op threads")
    input_size: int
    network_ms_batch_1: float = Field(description="the network alone, one letterboxed image per run")
    network_ms_batch_16: float = Field(description="the network alone, per image in batches of 16")
    segment_ms: float = Field(description="`segment()` of each held-out image at its own size: letterbox, network "
                                          "and the checked mask at the image's size")
    n_images: int = Field(description="held-out images timed")


class LungEvaluation(Figures):
    """The lung segmenter's evaluation (`lungs-evaluation.json`, and the card's `evaluation`)."""

    model: SegmenterIdentity
    intended_use: str
    ci_method: str
    held_out: MaskFigures
    lungvae: LungVaeFigures
    coco_boxes: MaskFigures
    lung_share: LungShares
    speed: SegmenterSpeed | None = Field(None, description="absent in evaluations from before it was measured")

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_unset=True)


class LungModelCard(CardBase):
    """A lung segmenter's `model_card.json`: what it is, its network, training data and evaluation, its limits.
    A card without `format_version` reads as format 1."""

    format_version: Literal[1] = LUNG_CARD_FORMAT_VERSION
    model: str
    intended_use: str
    not_for_clinical_use: Literal[True]
    what: str
    architecture: dict[str, Any] = Field(description="model.json's `architecture`")
    pretrained: dict[str, Any] | None = Field(description="model.json's `pretrained`")
    training_data: dict[str, Any] | None = Field(description="model.json's `data`")
    evaluation: LungEvaluation
    limitations: list[str]
