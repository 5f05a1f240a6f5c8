"""Overlap between an evaluation set and a training set: the same file, a near-duplicate (the build's
pHash + pixel-correlation rule) or the same patient. Any of them makes an "external" figure optimistic.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from covidxr.data.dedup import DEFAULT_MAX_DISTANCE, DEFAULT_MIN_CORRELATION, near_duplicates_between

OVERLAP_KINDS = {"same_file": "same file", "near_duplicate": "near-duplicate", "same_patient": "same patient"}
OVERLAP_COLUMNS = ["image_id", "path", "patient_id", "kind", "training_matches", "training_example"]
SHOWN = 20


def training_part(manifest: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The rows a model was trained and tuned on (train and val when the manifest is split; else all), and
    a description of them."""
    if (manifest["split"] != "").any():
        rows = manifest[manifest["split"].isin(["train", "val"])]
        description = "train and val rows"
    else:
        rows, description = manifest, "all rows"
    return rows.reset_index(drop=True), f"{description}: {len(rows)} images, {rows['patient_id'].nunique()} patients"


@dataclass(frozen=True)
class OverlapReport:
    """One row per evaluation row and kind of overlap (OVERLAP_COLUMNS), and what it was checked against."""

    rows: pd.DataFrame
    against: str
    unverified: int = 0

    def counts(self) -> dict[str, int]:
        """Evaluation rows per kind, and `rows`: evaluation rows with any overlap."""
        per_kind = {key: int((self.rows["kind"] == kind).sum()) for key, kind in OVERLAP_KINDS.items()}
        return {**per_kind, "rows": int(self.rows["image_id"].nunique())}

    def as_dict(self) -> dict:
        return {**self.counts(), "against": self.against, "near_duplicates_by_hash_only": self.unverified,
                "examples": self.rows.head(SHOWN).to_dict(orient="records")}

    def lines(self) -> list[str]:
        counts = self.counts()
        if not counts["rows"]:
            return [f"overlap with training ({self.against}): none (no shared file, near-duplicate or patient)"]
        lines = [f"OVERLAP with training ({self.against}): {counts['rows']} evaluation row(s) — "
                 + ", ".join(f"{kind} {counts[key]}" for key, kind in OVERLAP_KINDS.items())]
        if self.unverified:
            lines.append(f"  {self.unverified} near-duplicate(s) rest on the pHash alone: a file is not readable here")
        lines.append(self.rows.head(SHOWN).to_string(index=False))
        if len(self.rows) > SHOWN:
            lines.append(f"  ... and {len(self.rows) - SHOWN} more")
        return lines


def _matches(evaluation: pd.DataFrame, training: pd.DataFrame, pairs: pd.DataFrame, kind: str) -> pd.DataFrame:
    """Per evaluation row in `pairs` (columns first, second): the number of training matches and one of them."""
    if pairs.empty:
        return pd.DataFrame(columns=OVERLAP_COLUMNS)
    grouped = pairs.groupby("first")["second"]
    first = grouped.size().index.to_numpy()
    return evaluation.iloc[first][["image_id", "path", "patient_id"]].assign(
        kind=kind, training_matches=grouped.size().to_numpy(),
        training_example=training["path"].to_numpy()[grouped.first().to_numpy()])


def _pairs_on(evaluation: pd.DataFrame, training: pd.DataFrame, column: str) -> pd.DataFrame:
    left = evaluation[[column]].reset_index(names="first")
    right = training[[column]].reset_index(names="second")
    return left.merge(right, on=column)[["first", "second"]]


def overlap_with_training(
    evaluation: pd.DataFrame,
    training: pd.DataFrame,
    against: str,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    min_correlation: float = DEFAULT_MIN_CORRELATION,
) -> OverlapReport:
    """Evaluation rows sharing a file (`sha256`), a near-duplicate or a `patient_id` with `training`."""
    evaluation, training = evaluation.reset_index(drop=True), training.reset_index(drop=True)
    near = near_duplicates_between(evaluation, training, max_distance, min_correlation)
    found = [
        _matches(evaluation, training, _pairs_on(evaluation, training, "sha256"), "same file"),
        _matches(evaluation, training, near[["first", "second"]], "near-duplicate"),
        _matches(evaluation, training, _pairs_on(evaluation, training, "patient_id"), "same patient"),
    ]
    rows = pd.concat([part for part in found if len(part)], ignore_index=True) if any(len(f) for f in found) \
        else pd.DataFrame(columns=OVERLAP_COLUMNS)
    return OverlapReport(rows.reset_index(drop=True), against, int((~near["verified"]).sum()))
