"""The one table every stage reads and writes: one row per image occurrence (docs/reference.md, "Manifest")."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from covidxr.errors import CovidxrError

COLUMNS: tuple[str, ...] = (
    "image_id", "sha256", "path", "source", "site", "patient_id", "finding", "label",
    "view", "modality", "sex", "age", "license", "width", "height", "phash", "dup_group",
    "split", "fold",
)
INT_COLUMNS = ("width", "height", "fold")
FLOAT_COLUMNS = ("age",)
STRING_COLUMNS = tuple(c for c in COLUMNS if c not in INT_COLUMNS + FLOAT_COLUMNS)
SEVERITY_MAXIMA: dict[str, float] = {"severity_extent": 8.0, "severity_opacity": 6.0}
"""Optional, nullable score columns (COVID-19 severity, mean of raters) -> their maximum; the minimum is 0."""
SPLITS = ("train", "val", "test")
FORMATS = (".csv", ".parquet")


class ManifestError(CovidxrError, ValueError):
    """A manifest file or table that does not follow the contract."""


def make_image_id(source: str, patient_id: str, relative_path: str) -> str:
    """Stable id of one image occurrence: hash of source, patient and path under the import root."""
    key = "\x1f".join((source, patient_id, relative_path.replace("\\", "/")))
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def conform(table: pd.DataFrame) -> pd.DataFrame:
    """The table with every contract column, in contract order and types; extra columns kept after."""
    table = table.copy()
    for column in COLUMNS:
        if column not in table:
            table[column] = pd.NA
    for column in STRING_COLUMNS:
        table[column] = table[column].astype("string").fillna("")
    for column in INT_COLUMNS:
        table[column] = pd.to_numeric(table[column].replace("", pd.NA), errors="raise").astype("Int64")
    for column in FLOAT_COLUMNS:
        table[column] = pd.to_numeric(table[column].replace("", pd.NA), errors="coerce").astype("Float64")
    for column in SEVERITY_MAXIMA:
        if column in table:
            table[column] = pd.to_numeric(table[column].replace("", pd.NA), errors="raise").astype("Float64")
    extra = [c for c in table.columns if c not in COLUMNS]
    return table[list(COLUMNS) + extra].reset_index(drop=True)


def _check_format(path: Path) -> None:
    if path.suffix.lower() not in FORMATS:
        raise ManifestError(f"{path}: manifest must end in {' or '.join(FORMATS)}, not {path.suffix!r}")


def read_table(path: Path) -> pd.DataFrame:
    """A .csv (every column as text, empty cells as "") or .parquet table, as stored; ManifestError naming the
    file when it cannot be parsed."""
    try:
        if path.suffix.lower() == ".csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False)
        return pd.read_parquet(path)
    except (ValueError, OSError) as error:  # pandas' and pyarrow's parse errors are ValueErrors
        raise ManifestError(f"{path}: cannot read manifest ({error})") from None


def load_manifest(path: str | Path) -> pd.DataFrame:
    """Read and validate a manifest (.csv or .parquet)."""
    path = Path(path)
    _check_format(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest file not found")
    table = read_table(path)
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ManifestError(
            f"{path}: not a covidxr manifest, missing column(s) {', '.join(missing)}; "
            f"columns present: {', '.join(map(str, table.columns))}"
        )
    try:
        table = conform(table)
    except (ValueError, TypeError) as error:
        raise ManifestError(f"{path}: bad value in a numeric column ({error})") from None
    validate(table, name=str(path))
    return table


def validate(table: pd.DataFrame, name: str = "manifest") -> None:
    """Raise ManifestError when ids repeat or split values are outside the contract."""
    repeated = table["image_id"][table["image_id"].duplicated()].unique().tolist()
    if repeated:
        raise ManifestError(f"{name}: image_id must be unique per row; repeated: {', '.join(repeated[:5])}")
    splits = set(table["split"]) - set(SPLITS) - {""}
    if splits:
        raise ManifestError(f"{name}: unknown split value(s) {sorted(splits)}; accepted: {', '.join(SPLITS)}")


def save_manifest(table: pd.DataFrame, path: str | Path) -> Path:
    """Write a manifest as .csv or .parquet, by the file's suffix."""
    path = Path(path)
    _check_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = conform(table)
    if path.suffix.lower() == ".csv":
        table.to_csv(path, index=False)
    else:
        table.to_parquet(path, index=False)
    return path


def dropped_path(path: str | Path) -> Path:
    """Where the rows a stage dropped are written: OUT.dropped.csv beside OUT."""
    path = Path(path)
    return path.with_name(f"{path.stem}.dropped.csv")


def save_dropped(dropped: pd.DataFrame, out: str | Path) -> Path:
    target = dropped_path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    dropped.to_csv(target, index=False)
    return target


def load_dropped(out: str | Path) -> pd.DataFrame:
    """The dropped rows written beside a manifest, or an empty table when there are none."""
    target = dropped_path(out)
    if not target.is_file():
        return pd.DataFrame(columns=["path", "reason", "detail"])
    return pd.read_csv(target, dtype=str, keep_default_na=False)


def drop_counts(dropped: pd.DataFrame, reasons: tuple[str, ...]) -> dict[str, int]:
    """Rows dropped per reason: the given reasons first, in their order, then any others."""
    counts = dropped["reason"].value_counts() if len(dropped) else pd.Series(dtype=int)
    ordered = {reason: int(counts.get(reason, 0)) for reason in reasons}
    ordered.update({str(r): int(n) for r, n in counts.items() if r not in ordered})
    return ordered


def describe_drops(dropped: pd.DataFrame, reasons: tuple[str, ...], name_up_to: int = 10) -> list[str]:
    """One line per reason with its count, naming the files (and problems) when there are few."""
    lines = []
    for reason, count in drop_counts(dropped, reasons).items():
        line = f"dropped {count:>5}  {reason}"
        rows = dropped[dropped["reason"] == reason]
        if 0 < count <= name_up_to:
            details = [f"{Path(p).name}" + (f" ({d})" if d else "") for p, d in zip(rows["path"], rows["detail"])]
            line += ": " + "; ".join(details)
        lines.append(line)
    return lines


@dataclass
class StageResult:
    """What a stage made: its manifest, the rows it dropped (with `reason` and `detail`), its report lines."""

    manifest: pd.DataFrame
    dropped: pd.DataFrame
    lines: list[str] = field(default_factory=list)

    def save(self, out: str | Path) -> Path:
        """Write the manifest to `out` and the dropped rows beside it (OUT.dropped.csv)."""
        save_dropped(self.dropped, out)
        return save_manifest(self.manifest, out)

    def report(self) -> list[str]:
        kept = self.manifest
        return [f"kept    {len(kept):>5}  images of {kept['patient_id'].nunique()} patients"] + self.lines
