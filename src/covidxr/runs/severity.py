"""A severity head: linear maps from a classifier's pooled embedding to COVID-19 severity scores (geographic
extent 0-8, opacity 0-6), with the cross-validated mean absolute error that is its stated uncertainty.

`RUN/severity.json` (the shipped one: `covidxr/shipped/severity.json`) holds it. It names the weights hash of
the classifier whose prepared input it shares (the same lung-masked pixels), so a head is only ever applied
beside that model, and where its embedding comes from: `features_onnx`, an ONNX file beside it whose output
`embedding` it reads (the shipped head: ImageNet EfficientNet-Lite0's pooled stages 3-6), or, without one,
the classifier's own ONNX output `embedding`. NumPy and pydantic only: the lean inference path (ONNX
Runtime, no torch) computes severity from that `embedding` output.

    >>> head = read_severity_head(RunDir(run), contract.weights_sha256)      # None: this model has no severity
    >>> network = severity_features_file(RunDir(run), head)                  # None: the classifier's embedding
    >>> severity_from_embedding(OnnxModel(network).embedding(pixels)[0], head)
    {"extent": 3.1, "opacity": 2.4, "mae": {"extent": 1.2, "opacity": 0.8}}
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from covidxr.errors import CovidxrError
from covidxr.runs.cards import CardSeverity
from covidxr.runs.rundir import NOT_FOR_CLINICAL_USE, RunDir, file_sha256, read_json, write_json

SEVERITY_FILE = "severity.json"
SCORES = ("extent", "opacity")
log = logging.getLogger("covidxr.severity")


class SeverityScore(BaseModel):
    """One score's linear map `clip(embedding @ coefficients + intercept, 0, maximum)` and its figures."""

    model_config = ConfigDict(defer_build=True, frozen=True, extra="forbid")

    maximum: float = Field(gt=0, description="the score's top (extent 8, opacity 6); predictions are clipped to it")
    coefficients: list[float] = Field(description="one per embedding value")
    intercept: float
    alpha: float = Field(ge=0, description="ridge penalty chosen by patient-grouped inner cross-validation")
    mae: float = Field(ge=0, description="cross-validated mean absolute error, in score points")
    mae_ci: tuple[float, float] = Field(description="its 95% patient-bootstrap interval")
    pearson_r: float | None = None
    pearson_r_ci: tuple[float, float] | None = None


class SeverityHead(BaseModel):
    """What `severity.json` holds (docs/severity.md lists its fields; `SeverityHead.model_json_schema()` is its
    JSON Schema)."""

    model_config = ConfigDict(defer_build=True, frozen=True, extra="forbid")

    format_version: Literal[1] = 1
    feature: str = Field(description="what the coefficients multiply")
    embedding_size: int = Field(gt=0)
    weights_sha256: str = Field(description="sha256 of the classifier weights beside which the head is used: it reads "
                                            "the same prepared pixels (and, without features_onnx, its embedding)")
    preprocessing: str = Field(description="Preprocessing.key() of the pixels the embedding is computed on")
    features_onnx: str | None = Field(None, description="ONNX file beside severity.json whose output `embedding` "
                                                        "the coefficients multiply; none: the classifier's own")
    features_sha256: str | None = Field(None, description="sha256 of features_onnx")
    extent: SeverityScore
    opacity: SeverityScore
    evaluation: dict = Field(description="how the figures were measured: data, patients, folds, repeats, seed, "
                                         "CI method, baselines")
    provenance: dict = Field(description="the scores' source, raters and licence")
    notice: str = NOT_FOR_CLINICAL_USE

    @model_validator(mode="after")
    def _coefficients_fit(self) -> SeverityHead:
        for name in SCORES:
            count = len(getattr(self, name).coefficients)
            if count != self.embedding_size:
                raise ValueError(f"{name} has {count} coefficients for an embedding of {self.embedding_size}")
        return self

    @property
    def mae(self) -> dict[str, float]:
        return {name: getattr(self, name).mae for name in SCORES}

    def weights(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(embedding_size, 2) coefficients, (2,) intercepts and (2,) maxima, in the order of SCORES."""
        scores = [getattr(self, name) for name in SCORES]
        coefficients = np.array([score.coefficients for score in scores], dtype=np.float64).T
        return coefficients, np.array([s.intercept for s in scores]), np.array([s.maximum for s in scores])


def severity_scores(embeddings: np.ndarray, head: SeverityHead) -> np.ndarray:
    """(N, 2) extent and opacity of (N, embedding_size) pooled embeddings, clipped to each score's range."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if embeddings.ndim != 2 or embeddings.shape[1] != head.embedding_size:
        raise CovidxrError(f"embedding of shape {embeddings.shape}: this severity head reads (images, "
                           f"{head.embedding_size}) pooled embeddings ({head.feature})")
    if not np.isfinite(embeddings).all():
        raise CovidxrError("the embedding holds NaN or infinite values; no severity can be computed from it")
    coefficients, intercepts, maxima = head.weights()
    return np.clip(embeddings @ coefficients + intercepts, 0, maxima)


def severity_from_embedding(embedding: np.ndarray, head: SeverityHead) -> dict:
    """One image's `severity` object of a prediction, `{"extent", "opacity", "mae": {"extent", "opacity"}}`, from
    its (embedding_size,) pooled embedding."""
    embedding = np.asarray(embedding)
    if embedding.ndim != 1:
        raise CovidxrError(f"embedding of shape {embedding.shape}: expected one image's ({head.embedding_size},) "
                           "vector (use severity_scores for a batch)")
    extent, opacity = severity_scores(embedding[None], head)[0]
    return {"extent": round(float(extent), 2), "opacity": round(float(opacity), 2),
            "mae": {name: round(value, 2) for name, value in head.mae.items()}}


def read_severity_head(rundir: RunDir, weights_sha256: str) -> SeverityHead | None:
    """The run's severity head when `RUN/severity.json` exists and reads the embedding of the classifier with
    `weights_sha256`; None without one (a model without severity), or, with a warning, for another model's."""
    path = rundir.root / SEVERITY_FILE
    if not path.is_file():
        return None
    try:
        head = SeverityHead.model_validate(read_json(path))
    except ValidationError as error:
        raise CovidxrError(f"{path}: not a severity head ({error.errors()[0]['loc']}: {error.errors()[0]['msg']})") \
            from None
    if head.weights_sha256 != weights_sha256:
        log.warning("%s was fitted on another classifier's embedding; no severity is given", path)
        return None
    return head


def severity_features_file(rundir: RunDir, head: SeverityHead) -> Path | None:
    """The head's own feature network (an ONNX file with input `pixels` and output `embedding`), checked
    against its recorded sha256; None when the head reads the classifier's embedding."""
    if head.features_onnx is None:
        return None
    path = rundir.root / head.features_onnx
    if not path.is_file():
        raise CovidxrError(f"{path}: the severity head's feature network is missing; reinstall covidxr or remove "
                           f"{rundir.root / SEVERITY_FILE}")
    if file_sha256(path) != head.features_sha256:
        raise CovidxrError(f"{path}: its sha256 differs from the one {SEVERITY_FILE} records; the file was altered")
    return path


def write_severity_head(rundir: RunDir, head: SeverityHead) -> None:
    write_json(rundir.root / SEVERITY_FILE, head.model_dump(mode="json"))


def card_section(head: SeverityHead, compared: list[dict]) -> CardSeverity:
    """The model card's `severity`: what is predicted, its cross-validated error with CIs, every recipe of the study
    that chose it (`compared`, the baselines among them: the training mean and the lung share alone), and
    provenance."""
    return CardSeverity.model_validate({
        "scores": {"extent": "geographic extent, 0-8", "opacity": "opacity, 0-6"},
        "feature": head.feature,
        **{name: {"mae": score.mae, "mae_ci": list(score.mae_ci), "pearson_r": score.pearson_r,
                  "pearson_r_ci": list(score.pearson_r_ci) if score.pearson_r_ci else None}
           for name, score in (("extent", head.extent), ("opacity", head.opacity))},
        "evaluation": head.evaluation, "provenance": head.provenance,
        "compared": [{"recipe": entry["recipe"], "baseline": entry["baseline"], **entry["figures"]}
                     for entry in compared],
        "note": "given for accepted frontal images whatever their label; fitted on COVID-19 images of one "
                "collection only. " + NOT_FOR_CLINICAL_USE})
