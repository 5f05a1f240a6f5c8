"""What every importer shares: filtering, hashing and decoding the files, and the import report."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

import imagehash
import pandas as pd
from PIL import Image

from covidxr.data.imageio import ImageReadError, read_grayscale
from covidxr.data.manifest import StageResult, conform, describe_drops, make_image_id
from covidxr.errors import CovidxrError, UsageError
from covidxr.progress import map_with_progress

IMPORT_REASONS = ("modality", "view", "file missing", "unreadable")
DEFAULT_VIEWS = ("PA", "AP", "AP Supine", "AP erect")
XRAY_MODALITIES = frozenset({"x-ray", "xray", "cr", "dx", "dr", "radiograph"})
CANDIDATE_COLUMNS = (
    "path", "relpath", "source", "site", "patient_id", "finding", "view", "modality", "sex", "age", "license",
)


class SourceError(CovidxrError, ValueError):
    """A dataset layout or table that cannot be imported; the message names the file and the problem."""


class ImportResult(StageResult):
    """An importer's manifest and dropped rows; `lines` counts the drops per reason and adds notes."""


def read_table(path: str | Path) -> pd.DataFrame:
    """A CSV as strings (UTF-8, else Windows-1252), with errors that name the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"{path}: table not found")
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding=encoding)
        except UnicodeDecodeError:
            continue
        except pd.errors.EmptyDataError:
            raise SourceError(f"{path}: the table is empty") from None
        except pd.errors.ParserError as error:
            raise SourceError(f"{path}: malformed CSV ({str(error).strip()})") from None
        break
    else:
        raise SourceError(f"{path}: not a text table (neither UTF-8 nor Windows-1252)")
    table.columns = [str(c).strip() for c in table.columns]
    return table


def require_columns(table: pd.DataFrame, columns: Sequence[str], path: str | Path) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise UsageError(
            f"{path}: no column {', '.join(repr(c) for c in missing)}; "
            f"columns present: {', '.join(repr(c) for c in table.columns)}"
        )


def url_host(url: str) -> str:
    return urlparse(url.strip()).hostname or ""


def describe_file(path: str) -> dict[str, object]:
    """sha256 of the bytes, decoded size and pHash of one file, or the problem that stops decoding."""
    try:
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        gray = read_grayscale(path)
    except ImageReadError as error:
        return {"problem": error.problem}
    except OSError as error:
        return {"problem": f"cannot read ({error.strerror})"}
    return {
        "sha256": digest, "width": gray.shape[1], "height": gray.shape[0],
        "phash": str(imagehash.phash(Image.fromarray(gray))),
    }


def _mark(candidates: pd.DataFrame, mask: pd.Series, reason: str, detail: pd.Series | str = "") -> None:
    mask = mask & (candidates["reason"] == "")
    candidates.loc[mask, "reason"] = reason
    candidates.loc[mask, "detail"] = detail[mask] if isinstance(detail, pd.Series) else detail


def _is_listed(values: pd.Series, accepted: Sequence[str]) -> pd.Series:
    accepted_lower = {a.strip().lower() for a in accepted}
    cleaned = values.str.strip().str.lower()
    return (cleaned == "") | cleaned.isin(accepted_lower)


def finish_import(candidates: pd.DataFrame, views: Sequence[str], notes: list[str] | None = None) -> ImportResult:
    """Filter candidate rows (see CANDIDATE_COLUMNS) in the contract's order and decode what is kept.

    A blank modality or view is unknown and kept; a known one outside X-ray / `views` is dropped.
    """
    candidates = candidates.reset_index(drop=True).copy()
    for column in CANDIDATE_COLUMNS:
        candidates[column] = candidates.get(column, pd.Series("", index=candidates.index)).astype(str).str.strip()
    candidates["reason"], candidates["detail"] = "", ""
    _mark(candidates, ~_is_listed(candidates["modality"], tuple(XRAY_MODALITIES)), "modality",
          "modality " + candidates["modality"])
    _mark(candidates, ~_is_listed(candidates["view"], views), "view", "view " + candidates["view"])
    exists = candidates["path"].map(lambda p: Path(p).is_file())
    _mark(candidates, ~exists, "file missing")
    candidates = _decode_kept(candidates)
    candidates["license"] = candidates["license"].where(candidates["license"] != "", "unknown")
    candidates["image_id"] = [
        make_image_id(s, p, r) for s, p, r in zip(candidates["source"], candidates["patient_id"], candidates["relpath"])
    ]
    _mark(candidates, candidates["image_id"].duplicated(), "listed twice", "same file, same patient")
    kept = candidates[candidates["reason"] == ""].drop(columns=["reason", "detail", "relpath"])
    dropped = candidates[candidates["reason"] != ""].drop(columns=["sha256", "width", "height", "phash"])
    dropped = dropped.reset_index(drop=True)
    return ImportResult(conform(kept), dropped, describe_drops(dropped, IMPORT_REASONS) + (notes or []))


def _decode_kept(candidates: pd.DataFrame) -> pd.DataFrame:
    paths = sorted(set(candidates.loc[candidates["reason"] == "", "path"]))
    described = dict(zip(paths, map_with_progress(describe_file, paths, "hashing images")))
    columns = ["sha256", "width", "height", "phash", "problem"]
    info = pd.DataFrame([described.get(p, {}) for p in candidates["path"]], index=candidates.index, columns=columns)
    candidates[columns[:-1]] = info[columns[:-1]]
    problem = info["problem"].astype("string")
    _mark(candidates, problem.notna(), "unreadable", problem.fillna(""))
    return candidates
