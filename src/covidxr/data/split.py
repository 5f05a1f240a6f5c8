"""Patient-level splitting: units, stratified grouped splits and folds, balance, and the leak check.

A *unit* is a connected component of patients and duplicate groups: two images share a unit when they
share a patient or a duplicate group, directly or through other images. Units never cross a split or
a fold.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.model_selection import StratifiedGroupKFold

from covidxr.errors import UsageError

DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)
SPLIT_PARTS = 20


def split_units(manifest: pd.DataFrame) -> pd.Series:
    """The unit (int) of each row: components of the patient <-> duplicate-group graph."""
    patients, patient_index = np.unique(manifest["patient_id"].to_numpy(str), return_inverse=True)
    groups = manifest["dup_group"].to_numpy(str)
    groups = np.where(groups == "", "row:" + manifest["image_id"].to_numpy(str), groups)
    group_names, group_index = np.unique(groups, return_inverse=True)
    size = len(patients) + len(group_names)
    edges = coo_matrix((np.ones(len(manifest)), (patient_index, group_index + len(patients))), shape=(size, size))
    _, component = connected_components(edges, directed=False)
    return pd.Series(component[patient_index], index=manifest.index, name="unit")


def parse_fractions(text: str) -> tuple[float, float, float]:
    """'0.7,0.15,0.15' -> (0.7, 0.15, 0.15); three non-negative numbers summing to 1, test > 0."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise UsageError("expected three numbers train,val,test such as 0.7,0.15,0.15", "split", text) from None
    check_fractions(values)
    return values  # type: ignore[return-value]


def check_fractions(values: tuple[float, ...]) -> None:
    if len(values) != 3 or min(values) < 0 or abs(sum(values) - 1) > 1e-6 or values[0] <= 0:
        raise UsageError("expected three numbers train,val,test >= 0 summing to 1, train > 0", "split", values)


def _parts(fractions: tuple[float, float, float], total: int) -> tuple[int, int]:
    """How many of `total` grouped folds go to val and to test."""
    val, test = (round(f * total) for f in fractions[1:])
    val = max(val, 1) if fractions[1] > 0 else 0
    test = max(test, 1) if fractions[2] > 0 else 0
    if val + test >= total:
        raise UsageError(f"too few patient units ({total}) to split by {fractions}")
    return val, test


def grouped_folds(labels: pd.Series, units: pd.Series, count: int, seed: int) -> np.ndarray:
    """Fold number of each row from StratifiedGroupKFold (stratified by label, grouped by unit)."""
    fold = np.empty(len(labels), dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=count, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class")
        for number, (_, held_out) in enumerate(splitter.split(np.zeros(len(labels)), labels, units)):
            fold[held_out] = number
    return fold


def assign_splits(
    manifest: pd.DataFrame,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    folds: int | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """The manifest with `split` (train/val/test) and, with `folds`, `fold` on train and val rows.

    The split takes 20 stratified grouped folds (fewer when there are fewer units) and gives them to
    train, val and test in the proportions of `fractions` (14/3/3 for 0.7/0.15/0.15).
    """
    check_fractions(fractions)
    table = manifest.copy()
    units = split_units(table)
    total = min(SPLIT_PARTS, units.nunique(), int(table["label"].value_counts().max()))
    if total < 2:
        raise UsageError(f"cannot split {units.nunique()} patient unit(s); need at least 2")
    val_parts, test_parts = _parts(fractions, total)
    part = grouped_folds(table["label"], units, total, seed)
    train_parts = total - val_parts - test_parts
    table["split"] = np.where(part < train_parts, "train", np.where(part < train_parts + val_parts, "val", "test"))
    table["fold"] = pd.array([pd.NA] * len(table), dtype="Int64")
    if folds is not None:
        development = table["split"] != "test"
        available = units[development].nunique()
        if not 2 <= folds <= available:
            raise UsageError(f"must be between 2 and the {available} patient units of train+val", "folds", folds)
        table.loc[development, "fold"] = grouped_folds(
            table.loc[development, "label"], units[development], folds, seed
        )
    return table


def find_leaks(manifest: pd.DataFrame) -> pd.DataFrame:
    """Units whose rows lie in more than one split or fold, with their patients and duplicate groups.

    Test rows that carry a fold are reported too (test stays out of every fold).
    """
    table = manifest.assign(unit=split_units(manifest), fold_text=manifest["fold"].astype("string").fillna(""))
    folded = table[table["fold_text"] != ""]
    units = pd.Index(table["unit"].unique())
    crossing = (table.groupby("unit")["split"].nunique().reindex(units) > 1) | \
        (folded.groupby("unit")["fold_text"].nunique().reindex(units, fill_value=0) > 1)
    test_folded = set(folded.loc[folded["split"] == "test", "unit"])
    bad = sorted(set(units[crossing.to_numpy()]) | test_folded)
    rows = []
    for _, unit in table[table["unit"].isin(bad)].groupby("unit", sort=True):
        rows.append({
            "patients": ", ".join(sorted(set(unit["patient_id"]))),
            "dup_groups": ", ".join(sorted(set(unit["dup_group"]) - {""})),
            "splits": ", ".join(sorted(set(unit["split"]))),
            "folds": ", ".join(sorted(set(unit["fold_text"]) - {""})), "images": len(unit),
        })
    return pd.DataFrame(rows, columns=["patients", "dup_groups", "splits", "folds", "images"])


def balance_classes(manifest: pd.DataFrame, per_class: int | None, seed: int) -> pd.Series:
    """Rows to keep so that each label has at most `per_class` images, drawing whole units at random.

    `per_class=None` takes the smallest class. A unit is taken only if it fits every label it holds.
    """
    counts = manifest["label"].value_counts()
    limit = int(counts.min()) if per_class is None else per_class
    if limit < 1:
        raise UsageError("must be a positive number of images per class", "balance", per_class)
    units = split_units(manifest)
    rng = np.random.default_rng(seed)
    order = rng.permutation(units.unique())
    per_unit = manifest.groupby(units)["label"].value_counts().unstack(fill_value=0)
    taken = dict.fromkeys(per_unit.columns, 0)
    keep_units = []
    for unit in order:
        need = per_unit.loc[unit]
        if all(taken[label] + n <= limit for label, n in need.items() if n):
            keep_units.append(unit)
            for label, n in need.items():
                taken[label] += n
    return units.isin(keep_units)
