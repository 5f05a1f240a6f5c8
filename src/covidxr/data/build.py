"""`data build`: label, filter, deduplicate, balance and split one or more imported manifests."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from covidxr.data.dedup import DEFAULT_MAX_DISTANCE, DEFAULT_MIN_CORRELATION, ThumbnailLoader, duplicate_groups
from covidxr.data.labels import DEFAULT_TABLE, LabelTable, labels_for, load_label_table
from covidxr.data.manifest import StageResult, conform, describe_drops, load_dropped, load_manifest, validate
from covidxr.data.severity import NO_SCORE, SEVERITY_TASK, labelling_task, split_by_severity, unscored
from covidxr.data.sources.base import ImportResult
from covidxr.data.split import DEFAULT_FRACTIONS, assign_splits, balance_classes, find_leaks
from covidxr.errors import CovidxrError, UsageError

BUILD_REASONS = ("finding unmapped", "license excluded", "balance")
ManifestInput = str | Path | pd.DataFrame | ImportResult


class LeakError(CovidxrError):
    """A patient unit crosses splits or folds."""


class BuildResult(StageResult):
    """The built manifest and every row dropped on the way (the imports' and the build's)."""


def _read_inputs(manifests: Sequence[ManifestInput]) -> tuple[pd.DataFrame, pd.DataFrame]:
    tables, dropped = [], []
    for item in manifests:
        if isinstance(item, ImportResult):
            tables.append(item.manifest)
            dropped.append(item.dropped)
        elif isinstance(item, pd.DataFrame):
            tables.append(conform(item))
        else:
            tables.append(load_manifest(item))
            dropped.append(load_dropped(item))
    if not tables:
        raise UsageError("data build needs at least one manifest")
    table = pd.concat(tables, ignore_index=True)
    validate(table, name="the combined manifests (is one given twice?)")
    inherited = pd.concat(dropped, ignore_index=True) if dropped else pd.DataFrame(columns=["path", "reason", "detail"])
    return table, inherited


def _drop(
    table: pd.DataFrame, mask: pd.Series, reason: str, detail: pd.Series | str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    dropped = table[mask].assign(reason=reason, detail=detail[mask] if isinstance(detail, pd.Series) else detail)
    return table[~mask].reset_index(drop=True), dropped


def build(
    manifests: Sequence[ManifestInput],
    task: str,
    balance: bool | int = False,
    split: tuple[float, float, float] = DEFAULT_FRACTIONS,
    folds: int | None = None,
    seed: int = 0,
    labels: str | Path | LabelTable | None = None,
    exclude_license: str | None = None,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    min_correlation: float = DEFAULT_MIN_CORRELATION,
    thumbnails: ThumbnailLoader | None = None,
) -> BuildResult:
    """Build a dataset from imported manifests (files, tables or ImportResults): label, filter, deduplicate,
    balance and split as docs/reference.md describes ("Duplicates and splits"). `task="severity"` keeps the
    rows with both severity scores and stratifies by extent (`covidxr.data.severity`).

    `balance=True` keeps the smallest class's count of images per class; an int keeps that many. `thumbnails`
    replaces decoding the files for the near-duplicate pixel check (see `duplicate_groups`).
    """
    labelling = labelling_task(task)
    if task == SEVERITY_TASK and balance is not False:
        raise UsageError("balances classes; a severity build has scores, not classes: leave it out", "balance", balance)
    table_in_use = load_label_table(labels) if isinstance(labels, (str, Path)) else (labels or DEFAULT_TABLE)
    if labelling not in table_in_use:
        raise UsageError(f"the label table has no '{labelling}' mapping; it maps: {', '.join(table_in_use)}")
    license_pattern = _compile_license(exclude_license)
    table, inherited = _read_inputs(manifests)
    drops = []

    table["label"] = labels_for(table["finding"], labelling, table_in_use)
    table, dropped = _drop(table, table["label"] == "", "finding unmapped", "finding " + table["finding"].map(repr))
    drops.append(dropped)
    if license_pattern is not None:
        matches = table["license"].map(lambda text: bool(license_pattern.search(text)))
        table, dropped = _drop(table, matches, "license excluded", "license " + table["license"])
        drops.append(dropped)
    if task == SEVERITY_TASK:
        table, dropped = _drop(table, unscored(table), NO_SCORE, "")
        drops.append(dropped)
    if table.empty:
        raise CovidxrError("no image is left after labelling and licence filtering; see the dropped rows")

    table["dup_group"], duplicates = duplicate_groups(table, max_distance, min_correlation, thumbnails)
    if balance is not False:
        keep = balance_classes(table, None if balance is True else int(balance), seed)
        table, dropped = _drop(table, ~keep, "balance", "")
        drops.append(dropped)
    table = (split_by_severity if task == SEVERITY_TASK else assign_splits)(table, split, folds, seed)
    leaks = find_leaks(table)
    if len(leaks):
        raise LeakError(f"{len(leaks)} patient unit(s) cross splits or folds:\n{leaks.to_string(index=False)}")

    built_drops = pd.concat(drops, ignore_index=True).drop(columns=["sha256", "phash", "dup_group", "split", "fold"])
    lines = describe_drops(built_drops, BUILD_REASONS) + _unmapped_line(built_drops) + duplicates.lines()
    everything = pd.concat([inherited.astype("string"), built_drops.astype("string")], ignore_index=True).fillna("")
    return BuildResult(conform(table), everything, lines)


def _compile_license(pattern: str | None) -> re.Pattern[str] | None:
    if pattern is None:
        return None
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error as error:
        raise UsageError(f"not a regular expression ({error})", "exclude_license", pattern) from None


def _unmapped_line(dropped: pd.DataFrame) -> list[str]:
    findings = dropped.loc[dropped["reason"] == "finding unmapped", "finding"].value_counts()
    if findings.empty:
        return []
    listed = ", ".join(f"{finding!r} ({count})" for finding, count in findings.items())
    return [f"unmapped findings (no label for this task; pass --labels MAP.yaml to map them): {listed}"]

