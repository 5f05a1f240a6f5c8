"""`data summary` and `data check`: what a manifest holds, where it came from, what was dropped."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from covidxr.data.build import BUILD_REASONS
from covidxr.data.labels import DEFAULT_TABLE, TASKS, label_for
from covidxr.data.manifest import drop_counts, load_dropped, load_manifest
from covidxr.data.sources.base import IMPORT_REASONS
from covidxr.data.split import find_leaks

REASONS = IMPORT_REASONS + BUILD_REASONS


UNLABELLED = "unlabelled"


def _labels(manifest: pd.DataFrame) -> pd.Series:
    return manifest["label"].where(manifest["label"] != "", UNLABELLED)


def _counts(manifest: pd.DataFrame, by: str) -> dict[str, dict[str, int]]:
    result: dict[str, dict[str, int]] = {}
    for (key, label), n in manifest.groupby([manifest[by], _labels(manifest)]).size().items():
        result.setdefault(str(key), {})[str(label)] = int(n)
    return result


def summarize(manifest: pd.DataFrame, dropped: pd.DataFrame | None = None) -> dict:
    """The contract's `data summary --json` object."""
    dropped = dropped if dropped is not None else pd.DataFrame(columns=["reason"])
    groups = manifest.loc[manifest["dup_group"] != "", "dup_group"].value_counts()
    return {
        "images": int(len(manifest)),
        "patients": int(manifest["patient_id"].nunique()),
        "by_label": {str(k): int(v) for k, v in _labels(manifest).value_counts().sort_index().items()},
        "by_source": _counts(manifest, "source"),
        "by_split": _counts(manifest[manifest["split"] != ""], "split"),
        "duplicate_groups": int((groups > 1).sum()),
        "largest_duplicate_group": int(groups.max()) if len(groups) else 0,
        "leaks": int(len(find_leaks(manifest))) if (manifest["split"] != "").any() else 0,
        "dropped": {reason: n for reason, n in drop_counts(dropped, REASONS).items() if n},
    }


def summarize_file(path: str | Path) -> tuple[dict, pd.DataFrame]:
    manifest = load_manifest(path)
    return summarize(manifest, load_dropped(path)), manifest


def label_table_in_use(manifest: pd.DataFrame) -> pd.DataFrame:
    """Each finding with its count and label: the build's label where set, else the default table's."""
    counts = manifest.groupby(["finding", "label"]).size().rename("images").reset_index()
    if (counts["label"] != "").all():
        return counts.sort_values("images", ascending=False)
    for task in TASKS:
        counts[task] = counts["finding"].map(lambda f: label_for(f, task, DEFAULT_TABLE) or "(dropped)")
    return counts.drop(columns=["label"]).sort_values("images", ascending=False)


def print_summary(summary: dict, manifest: pd.DataFrame, console: Console) -> None:
    console.print(f"{summary['images']} images of {summary['patients']} patients")
    console.print(_crosstab(manifest, "source", "by source"))
    if (manifest["split"] != "").any():
        console.print(_crosstab(manifest, "split", "by split"))
    console.print(_frame_table(label_table_in_use(manifest), "findings and labels (the label table in use)"))
    console.print(f"duplicate groups (more than one image): {summary['duplicate_groups']}; "
                  f"largest: {summary['largest_duplicate_group']}; units crossing splits: {summary['leaks']}")
    dropped = ", ".join(f"{reason} {n}" for reason, n in summary["dropped"].items()) or "none recorded"
    console.print(f"dropped: {dropped}")


def _crosstab(manifest: pd.DataFrame, by: str, title: str) -> Table:
    crossed = pd.crosstab(manifest[by], _labels(manifest), margins=True, margins_name="total")
    patients = manifest.groupby(by)["patient_id"].nunique()
    crossed["patients"] = patients.reindex(crossed.index).fillna(manifest["patient_id"].nunique()).astype(int)
    return _frame_table(crossed.reset_index(), title)


def _frame_table(frame: pd.DataFrame, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column in frame.columns:
        table.add_column(str(column), justify="right" if pd.api.types.is_numeric_dtype(frame[column]) else "left")
    for row in frame.itertuples(index=False):
        table.add_row(*(str(value) for value in row))
    return table
