"""The input check's parameters (`model.json`'s `input_check`) and its decision, in NumPy only: "is this a frontal
chest radiograph?" asked before any probability. The features it reads are made by `covidxr.inputcheck` (a
thumbnail, grey-level statistics and the shipped lung segmenter's mask); they are fitted there on frontal chest
radiographs of both shared sources against CT slices, lateral views and non-medical images.

Two learned parts decide, both fitted on training rows with thresholds chosen on validation rows:
- a multinomial logistic regression over {frontal, lateral, ct, other}: its P(frontal) is the `score`; below
  `score_threshold` the input is refused with the reason of its likeliest other class;
- a Mahalanobis distance to the training frontal images in the same standardised feature space: beyond
  `novelty_threshold` an input unlike anything seen (of any class) is refused as `not-a-radiograph`.
An accepted input whose segmenter finds no lung region at all is refused as `no-lungs-found`, and one whose short
side is under `min_side` pixels as `too-small`.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

Reason = Literal["not-a-radiograph", "not-frontal", "no-lungs-found", "too-small"]
Status = Literal["accepted", "refused", "skipped"]
CLASS_REASONS: dict[str, Reason] = {"lateral": "not-frontal", "ct": "not-a-radiograph", "other": "not-a-radiograph"}
REASON_WORDS: dict[str, str] = {
    "not-a-radiograph": "it does not look like a radiograph (a photo, a document, a CT slice or another image)",
    "not-frontal": "it looks like a lateral view, not a frontal (PA or AP) one",
    "no-lungs-found": "no lungs were found in it",
    "too-small": "it is too small to read",
}


class InputCheckResult(BaseModel):
    """`input_check` of a prediction."""

    model_config = ConfigDict(defer_build=True, frozen=True)

    status: Status
    reason: Reason | None = None
    score: float | None = Field(None, description="P(frontal chest radiograph) from the check's model")

    @property
    def accepted(self) -> bool:
        return self.status != "refused"

    def words(self) -> str:
        """The refusal in a sentence a person reads."""
        if self.status != "refused":
            return ""
        return f"This does not look like a frontal chest X-ray: {REASON_WORDS[self.reason]}."


SKIPPED = InputCheckResult(status="skipped")


class InputCheckModel(BaseModel):
    """Fitted parameters: the feature layout, the thumbnail PCA, the standardisation, the classifier, the
    novelty statistics and the thresholds; with what it was fitted on and how it scored on held-out images."""

    model_config = ConfigDict(defer_build=True, extra="forbid")

    name: str
    features: list[str]
    thumbnail: int = Field(description="side of the grey thumbnail the PCA reads")
    pca_mean: list[float]
    pca_components: list[list[float]]
    scaler_mean: list[float]
    scaler_scale: list[float]
    classes: list[str]
    coef: list[list[float]]
    intercept: list[float]
    novelty_mean: list[float]
    novelty_precision: list[list[float]]
    score_threshold: float
    novelty_threshold: float
    min_side: int = 64
    fitted_on: dict = Field(default_factory=dict)
    figures: dict = Field(default_factory=dict, description="acceptance and refusal rates on held-out images")

    def standardised(self, raw: np.ndarray) -> np.ndarray:
        return (np.asarray(raw, dtype=np.float64) - self.scaler_mean) / self.scaler_scale

    def class_probabilities(self, standardised: np.ndarray) -> np.ndarray:
        logits = standardised @ np.asarray(self.coef).T + np.asarray(self.intercept)
        logits -= logits.max(axis=-1, keepdims=True)
        exponentials = np.exp(logits)
        return exponentials / exponentials.sum(axis=-1, keepdims=True)

    def novelty(self, standardised: np.ndarray) -> np.ndarray:
        """Mahalanobis distance to the training frontal images."""
        centred = standardised - np.asarray(self.novelty_mean)
        return np.sqrt(np.maximum(np.einsum("...i,ij,...j->...", centred, np.asarray(self.novelty_precision),
                                            centred), 0))

    def decide(self, raw: np.ndarray, lungs_found: bool, short_side: int) -> InputCheckResult:
        """The outcome for one image's feature vector."""
        standardised = self.standardised(raw)
        probabilities = self.class_probabilities(standardised)
        score = float(probabilities[self.classes.index("frontal")])
        if short_side < self.min_side:
            return InputCheckResult(status="refused", reason="too-small", score=score)
        if score < self.score_threshold:
            others = {name: p for name, p in zip(self.classes, probabilities) if name != "frontal"}
            return InputCheckResult(status="refused", reason=CLASS_REASONS[max(others, key=others.get)], score=score)
        if float(self.novelty(standardised)) > self.novelty_threshold:
            return InputCheckResult(status="refused", reason="not-a-radiograph", score=score)
        if not lungs_found:
            return InputCheckResult(status="refused", reason="no-lungs-found", score=score)
        return InputCheckResult(status="accepted", score=score)
