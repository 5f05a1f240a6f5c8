"""Patient-level splitting: units, stratified grouped splits and folds, balance, and the leak check.

A *unit* is a connected component of patients and duplicate groups: two images share a unit when they
share a patient or a duplicate group, directly or through other images. Units never cross a split or
a fold.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from covidxr.errors import UsageError

DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)
SPLIT_PARTS = 20


def split_units(manifest: pd.DataFrame) -> pd.Series:
    """The unit (int) of each row: components of the patient <-> duplicate-group graph."""
    patient_index, patients = pd.factorize(manifest["patient_id"].astype("string"), sort=True)
    groups = manifest["dup_group"].astype("string")
    groups = groups.where(groups != "", "row:" + manifest["image_id"].astype("string"))
    group_index, group_names = pd.factorize(groups, sort=True)
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
    if len(values) != 3 or min(values) < 0 or abs(sum(values) - 1) > 1e-6 or (values[0] <= 0 and values[2] != 1):
        raise UsageError("expected three numbers train,val,test >= 0 summing to 1, train > 0 (or 0,0,1: a "
                         "test-only set for external validation)", "split", values)


def _parts(fractions: tuple[float, float, float], total: int) -> tuple[int, int]:
    """How many of `total` grouped folds go to val and to test."""
    val, test = (round(f * total) for f in fractions[1:])
    val = max(val, 1) if fractions[1] > 0 else 0
    test = max(test, 1) if fractions[2] > 0 else 0
    if val + test >= total:
        raise UsageError(f"too few patient units ({total}) to split by {fractions}")
    return val, test


def grouped_folds(labels: pd.Series, units: pd.Series, count: int, seed: int) -> np.ndarray:
    """Fold number of each row: scikit-learn's `StratifiedGroupKFold(count, shuffle=True, random_state=seed)`
    (stratified by label, grouped by unit), computed here with the same arithmetic and so the same answer.

    scikit-learn's greedy assignment runs a Python loop over the folds for every unit and another over the rows
    for every fold: minutes at a million rows. Here each unit is one vectorised step over all folds at once.
    """
    label_of_row, _ = pd.factorize(np.asarray(labels), sort=True)
    class_sizes = np.bincount(label_of_row)
    unit_of_row, unit_names = pd.factorize(np.asarray(units), sort=True)
    if (count > class_sizes).all() or count > len(unit_names):
        raise UsageError(f"cannot make {count} grouped folds of {len(unit_names)} patient unit(s) whose largest "
                         f"class holds {class_sizes.max(initial=0)} image(s)")
    per_unit = np.bincount(unit_of_row * len(class_sizes) + label_of_row,
                           minlength=len(unit_names) * len(class_sizes)).reshape(len(unit_names), -1).astype(float)
    shuffled = np.arange(len(unit_names))
    np.random.RandomState(seed).shuffle(shuffled)
    position = np.empty_like(shuffled)
    position[shuffled] = np.arange(len(shuffled))
    return _greedy_folds(per_unit[shuffled], class_sizes, count)[position[unit_of_row]]


def _greedy_folds(per_unit: np.ndarray, class_sizes: np.ndarray, count: int) -> np.ndarray:
    """StratifiedGroupKFold's assignment: units by decreasing spread of their class counts, each to the fold that
    keeps the per-class shares of the folds most even (ties: the fold with fewer rows, then the lower number)."""
    fold_counts = np.zeros((count, len(class_sizes)))
    fold_rows = [0.0] * count
    kinds, kind_of_unit = np.unique(per_unit, axis=0, return_inverse=True)
    kind_of_unit = kind_of_unit.ravel().tolist()
    diagonal = np.eye(count)[:, None, :]
    added: dict[int, np.ndarray] = {}
    rows_of_unit = per_unit.sum(axis=1).tolist()
    fold_of_unit = np.empty(len(per_unit), dtype=np.int64)
    sizes = class_sizes[None, :, None]
    for unit in np.argsort(-np.std(per_unit, axis=1), kind="stable").tolist():
        kind = kind_of_unit[unit]
        if kind not in added:
            added[kind] = diagonal * kinds[kind][None, :, None]
        trial = (fold_counts.T + added[kind]) / sizes
        mean = np.cumsum(trial, axis=2)[:, :, -1:] / count
        deviation = np.square(trial - mean)
        spread = np.add.reduce(np.sqrt(np.cumsum(deviation, axis=2)[:, :, -1] / count), axis=1)
        best = _most_even(spread / len(class_sizes), fold_rows)
        fold_counts[best] += per_unit[unit]
        fold_rows[best] += rows_of_unit[unit]
        fold_of_unit[unit] = best
    return fold_of_unit


def _most_even(spread: np.ndarray, fold_rows: list[float]) -> int:
    """The fold scikit-learn picks: scanning in order, a fold wins when its spread is lower than the best so far,
    or within numpy.isclose of it with fewer rows.

    The first fold with the lowest spread always wins when reached; after it, only folds close enough to be
    reached by such a chain of isclose steps can win, so only those are scanned.
    """
    first = int(spread.argmin())
    lowest = float(spread[first])
    reach = ((1 + 1e-5) ** len(spread) - 1 + 1e-5) * lowest + (len(spread) + 1) * 1e-8 * (1 + 1e-5) ** len(spread)
    best, fewest = first, fold_rows[first]
    for fold in (np.flatnonzero(spread[first + 1:] - lowest <= 2 * reach) + first + 1).tolist():
        value, rows = float(spread[fold]), fold_rows[fold]
        if value < lowest or (abs(value - lowest) <= 1e-8 + 1e-5 * abs(lowest) and rows < fewest):
            best, lowest, fewest = fold, value, rows
    return best


def assign_splits(
    manifest: pd.DataFrame,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    folds: int | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """The manifest with `split` (train/val/test) and, with `folds`, `fold` on train and val rows.
    Fractions 0,0,1 make every row test (an external validation set).

    The split takes 20 stratified grouped folds (fewer when there are fewer units) and gives them to
    train, val and test in the proportions of `fractions` (14/3/3 for 0.7/0.15/0.15).
    """
    check_fractions(fractions)
    table = manifest.copy()
    if fractions[2] == 1:
        if folds is not None:
            raise UsageError(f"--folds {folds}: a test-only set (split 0,0,1) has no train or val rows to fold")
        return table.assign(split="test", fold=pd.array([pd.NA] * len(table), dtype="Int64"))
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
    needs = per_unit.to_numpy()[per_unit.index.get_indexer(order)].tolist()
    taken = [0] * per_unit.shape[1]
    keep_units = []
    for unit, need in zip(order.tolist(), needs):
        if all(have + n <= limit for have, n in zip(taken, need) if n):
            keep_units.append(unit)
            taken = [have + n for have, n in zip(taken, need)]
    return units.isin(keep_units)
