"""A folder tree whose folder names are the classes: `DIR/<class>/**/image` (Kaggle's chest_xray too).

The class of a file is the nearest folder above it whose name is a known finding (case-insensitive:
`NORMAL`, `PNEUMONIA`, `COVID`, `COVID-19`, `viral pneumonia`, a finding of the label table, ...), else
its own folder's name, which `data build` drops as unmapped if no label fits. DICOM files give their
modality, view, sex and age, and a keyed pseudonym of PatientID; other files are their own patient,
except Kaggle's pediatric names (`person12_virus_3.jpeg`, `IM-0115-0001.jpeg`), whose patient is read
from the name.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from covidxr.data.imageio import ImageReadError, file_format, malformed_dicom_errors
from covidxr.data.labels import known_findings
from covidxr.data.privacy import pseudonym, secret_key
from covidxr.data.sources.base import DEFAULT_VIEWS, ImportResult, SourceError, finish_import

log = logging.getLogger("covidxr.data")

FOLDER_FINDINGS = {
    "covid": "COVID-19", "covid19": "COVID-19", "covidpositive": "COVID-19",
    "normal": "Normal", "healthy": "Normal", "nofinding": "No Finding",
    "pneumonia": "Pneumonia", "viral": "Viral", "viralpneumonia": "Viral",
    "bacterial": "Bacterial", "bacteria": "Bacterial", "bacterialpneumonia": "Bacterial",
}
KAGGLE_PATIENT = re.compile(r"^(person\d+)_(?:bacteria|virus)|^((?:NORMAL2-)?IM-\d+)-", re.IGNORECASE)


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def folder_finding(parts: Sequence[str]) -> str:
    """The finding named by the nearest folder in `parts` (outermost first), else the last folder."""
    findings = FOLDER_FINDINGS | {_key(f): f for f in known_findings()}
    for part in reversed(parts):
        if _key(part) in findings:
            return findings[_key(part)]
    return parts[-1] if parts else ""


def import_folders(root: str | Path, source: str | None = None, views: Sequence[str] = DEFAULT_VIEWS) -> ImportResult:
    root = Path(root).absolute()
    if not root.is_dir():
        raise SourceError(f"{root}: not a folder")
    source = source or root.name.lower()
    key = None
    rows, hidden = [], 0
    for directory, subdirectories, names in os.walk(root):
        subdirectories[:] = sorted(d for d in subdirectories if not d.startswith("."))
        hidden += sum(name.startswith(".") for name in names)
        for name in sorted(n for n in names if not n.startswith(".")):
            path = Path(directory) / name
            relpath = path.relative_to(root).as_posix()
            row = {"path": str(path), "relpath": relpath, "source": source, "site": source,
                   "finding": folder_finding(relpath.split("/")[:-1])}
            if _is_dicom(path):
                key = key or secret_key()
                row |= _dicom_fields(path, key)
            row["patient_id"] = f"{source}:{row.get('patient_id') or _patient_from_name(name) or 'image:' + relpath}"
            rows.append(row)
    notes = [f"note: {hidden} hidden file(s) skipped"] if hidden else []
    columns = ["path", "relpath", "source", "site", "finding", "patient_id", "view", "modality", "sex", "age"]
    return finish_import(pd.DataFrame(rows, columns=columns, dtype=object).fillna(""), views, notes)


def _patient_from_name(name: str) -> str:
    match = KAGGLE_PATIENT.match(name)
    return (match.group(1) or match.group(2)) if match else ""


def _is_dicom(path: Path) -> bool:
    try:
        return file_format(path) == "dicom"
    except ImageReadError:
        return False


def _dicom_fields(path: Path, key: bytes) -> dict[str, str]:
    """Non-identifying header fields and the keyed pseudonym of PatientID; never the bare identifiers."""
    import pydicom

    try:  # values are parsed lazily, so a malformed one fails on `get`, not on `dcmread`
        header = pydicom.dcmread(path, stop_before_pixels=True)
        patient = str(header.get("PatientID", "") or "").strip()
        age = re.match(r"^(\d{1,3})Y$", str(header.get("PatientAge", "") or ""))
        fields = {name: str(header.get(tag, "") or "") for name, tag in
                  (("modality", "Modality"), ("view", "ViewPosition"), ("sex", "PatientSex"))}
    except malformed_dicom_errors() as error:
        log.warning("%s: malformed DICOM header (%s); its patient, view, sex and age are left empty", path,
                    type(error).__name__)
        return {}
    return {"patient_id": pseudonym(patient, key) if patient else "", **fields,
            "age": str(int(age.group(1))) if age else ""}
