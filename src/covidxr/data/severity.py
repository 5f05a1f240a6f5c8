"""`data build --task severity`: regression targets (`severity_extent` 0-8, `severity_opacity` 0-6) instead of
class labels. Rows keep the binary label of their finding; rows without both scores are dropped as
`no severity score`; splits and folds are patient-grouped as for classification, stratified by bands of the
extent score instead of the label, so every fold sees mild and severe images."""

from __future__ import annotations

import numpy as np
import pandas as pd

from covidxr.data.labels import TASKS, check_task
from covidxr.data.manifest import SEVERITY_MAXIMA
from covidxr.data.split import assign_splits, grouped_folds, split_units
from covidxr.errors import UsageError

SEVERITY_TASK = "severity"
BUILD_TASKS = (*TASKS, SEVERITY_TASK)
NO_SCORE = "no severity score"
LABELS_OF_SEVERITY = "binary"
"""The label table a severity build labels its rows with (every scored image of Cohen's table is COVID-19)."""
EXTENT_BANDS = 3


def labelling_task(task: str) -> str:
    """The label-table task that labels the rows of a build for `task`."""
    if task == SEVERITY_TASK:
        return LABELS_OF_SEVERITY
    if task not in TASKS:
        raise UsageError(f"unknown task {task!r}; accepted: {', '.join(BUILD_TASKS)}")
    return check_task(task)


def unscored(table: pd.DataFrame) -> pd.Series:
    """Rows lacking either score; a usage error when the columns are absent (not a severity import)."""
    absent = [column for column in SEVERITY_MAXIMA if column not in table]
    if absent:
        raise UsageError(f"needs the column(s) {', '.join(absent)}, which `covidxr data import severity` writes; the "
                         "given manifests lack them", "task", SEVERITY_TASK)
    return table[list(SEVERITY_MAXIMA)].isna().any(axis=1)


def extent_bands(extent: pd.Series, bands: int = EXTENT_BANDS) -> pd.Series:
    """`extent 0`, `extent 1`, ... : equal-width bands of the 0-8 extent score (the folds' strata)."""
    edges = np.linspace(0, SEVERITY_MAXIMA["severity_extent"], bands + 1)[1:-1]
    return pd.Series(np.digitize(extent.to_numpy(float), edges), index=extent.index).map(lambda b: f"extent {b}")


def split_by_severity(table: pd.DataFrame, fractions: tuple[float, float, float], folds: int | None,
                      seed: int) -> pd.DataFrame:
    """`assign_splits` stratified by extent bands (within units of patients and duplicate groups), each row
    keeping its own label."""
    strata = extent_bands(table["severity_extent"])
    return assign_splits(table.assign(label=strata), fractions, folds, seed).assign(label=table["label"])


def repeated_grouped_folds(table: pd.DataFrame, folds: int, repeats: int, seed: int = 0) -> np.ndarray:
    """(repeats, rows) fold numbers: `repeats` draws of `folds` patient-grouped folds (units of patients and
    duplicate groups never split), stratified by extent bands, seeds `seed`..`seed + repeats - 1`."""
    units = split_units(table)
    if not 2 <= folds <= units.nunique():
        raise UsageError(f"must be between 2 and the {units.nunique()} patient units", "folds", folds)
    strata = extent_bands(table["severity_extent"])
    return np.stack([grouped_folds(strata, units, folds, seed + repeat) for repeat in range(repeats)])
