"""Any table with an image column and a finding column (RSNA normals, COVID collections, your own)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from covidxr.data.sources.base import DEFAULT_VIEWS, ImportResult, finish_import, read_table, require_columns, url_host

OPTIONAL = {
    "view": ("view", "viewposition", "view position"),
    "modality": ("modality",),
    "sex": ("sex", "gender", "patient sex"),
    "age": ("age", "patient age"),
    "license": ("license", "licence"),
    "site": ("site", "location", "hospital"),
    "url": ("url",),
}


def import_csv(
    file: str | Path,
    image_col: str,
    label_col: str,
    patient_col: str | None = None,
    root: str | Path | None = None,
    source: str | None = None,
    views: Sequence[str] = DEFAULT_VIEWS,
) -> ImportResult:
    """Import the rows of `file`; image paths are relative to `root` (default: the table's folder).

    `source` defaults to the name of the table's folder. Without `patient_col` every image is its own
    patient. Columns named like view, modality, sex, age, licence, site/location or url are carried over.
    """
    file = Path(file).absolute()
    table = read_table(file)
    require_columns(table, [image_col, label_col] + ([patient_col] if patient_col else []), file)
    root = Path(root).absolute() if root is not None else file.parent
    source = source or file.parent.name.lower()
    relpaths = table[image_col].str.strip()
    patients = table[patient_col].str.strip() if patient_col else pd.Series("", index=table.index)
    patients = patients.where(patients != "", "image:" + relpaths)
    extra = _optional_columns(table)
    site = extra["site"].where(extra["site"] != "", extra["url"].map(url_host))
    candidates = pd.DataFrame({
        "path": [os.path.join(root, r) for r in relpaths],
        "relpath": relpaths,
        "source": source,
        "site": site.where(site != "", source),
        "patient_id": source + ":" + patients,
        "finding": table[label_col],
        **{key: extra[key] for key in ("view", "modality", "sex", "age", "license")},
    })
    return finish_import(candidates, views)


def _optional_columns(table: pd.DataFrame) -> dict[str, pd.Series]:
    by_lower = {str(c).strip().lower(): c for c in table.columns}
    found = {}
    for key, names in OPTIONAL.items():
        column = next((by_lower[n] for n in names if n in by_lower), None)
        found[key] = table[column].str.strip() if column is not None else pd.Series("", index=table.index)
    return found
