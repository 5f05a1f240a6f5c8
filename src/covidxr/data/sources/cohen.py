"""Cohen's COVID-19 image data collection, read by the header its metadata.csv really has."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from covidxr.data.sources.base import DEFAULT_VIEWS, ImportResult, finish_import, read_table, require_columns, url_host

SOURCE = "cohen"
REQUIRED = ("patientid", "finding", "view", "modality", "folder", "filename")
OPTIONAL = ("sex", "age", "license", "location", "url")


def import_cohen(root: str | Path, views: Sequence[str] = DEFAULT_VIEWS) -> ImportResult:
    """Import `root/metadata.csv` and the files it lists (frontal X-rays by default)."""
    root = Path(root).absolute()
    candidates = cohen_candidates(root).drop(columns=["filename"])
    return finish_import(candidates, views, _unlisted_files(root, set(candidates["relpath"])))


def cohen_candidates(root: Path) -> pd.DataFrame:
    """One candidate row (see `base.CANDIDATE_COLUMNS`) per row of `root/metadata.csv`, with its `filename`."""
    metadata_path = root / "metadata.csv"
    table = read_table(metadata_path)
    require_columns(table, REQUIRED, metadata_path)
    for column in OPTIONAL:
        if column not in table:
            table[column] = ""
    relpaths = table["folder"].str.strip() + "/" + table["filename"].str.strip()
    site = table["location"].str.strip()
    site = site.where(site != "", table["url"].map(url_host))
    candidates = pd.DataFrame({
        "path": [os.path.join(root, r) for r in relpaths],
        "relpath": relpaths,
        "source": SOURCE,
        "site": site.where(site != "", SOURCE),
        "patient_id": SOURCE + ":" + table["patientid"].str.strip(),
        "finding": table["finding"],
        "view": table["view"],
        "modality": table["modality"],
        "sex": table["sex"],
        "age": table["age"],
        "license": table["license"],
        "filename": table["filename"].str.strip(),
    })
    return candidates


def _unlisted_files(root: Path, listed: set[str]) -> list[str]:
    """A note on image files in the collection's folders that metadata.csv does not list."""
    folders = {relpath.split("/")[0] for relpath in listed}
    present = {
        f"{folder}/{name}" for folder in sorted(folders) if (root / folder).is_dir()
        for name in os.listdir(root / folder) if not name.startswith(".")
    }
    unlisted = sorted(present - listed)
    if not unlisted:
        return []
    shown = ", ".join(unlisted[:10]) + (", ..." if len(unlisted) > 10 else "")
    return [f"note: {len(unlisted)} file(s) in the collection have no row in metadata.csv (not imported): {shown}"]
