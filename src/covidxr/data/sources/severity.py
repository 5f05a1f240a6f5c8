"""COVID-19 severity scores for Cohen's collection (`annotations/covid-severity-scores.csv`, Cohen et al. 2020,
"Predicting COVID-19 Pneumonia Severity on Chest X-ray with Deep Learning"): per image, the mean of three
radiologists' geographic extent (0-8) and opacity (0-6) scores.

The table opens with `##` comment lines, then `filename,geographic_mean,opacity_mean`. Each score row is
joined to the row(s) of the collection's `metadata.csv` with that file name (patient, view, site, licence,
...), so the result is an ordinary manifest with two more columns, `severity_extent` and `severity_opacity`.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from covidxr.data.manifest import SEVERITY_MAXIMA, describe_drops
from covidxr.data.sources.base import (
    DEFAULT_VIEWS,
    IMPORT_REASONS,
    ImportResult,
    SourceError,
    finish_import,
    require_columns,
)
from covidxr.data.sources.cohen import cohen_candidates

SCORE_COLUMNS = {"geographic_mean": "severity_extent", "opacity_mean": "severity_opacity"}
"""The published column -> the manifest column."""
NOT_IN_METADATA = "not in metadata"
SEVERITY_REASONS = (NOT_IN_METADATA, *IMPORT_REASONS)


def read_severity_scores(file: str | Path) -> pd.DataFrame:
    """`filename`, `severity_extent`, `severity_opacity` of every score row; `##` lines skipped. A score that
    is not a number in its range, or a file scored twice, is an error naming the file, the line and the value."""
    file = Path(file)
    try:
        lines = file.read_text(encoding="utf-8-sig").splitlines()
    except OSError as error:
        raise SourceError(f"{file}: cannot be read ({error.strerror or error})") from None
    except UnicodeDecodeError:
        raise SourceError(f"{file}: not a UTF-8 text table") from None
    skipped = sum(1 for line in lines if line.startswith("##"))
    body = "\n".join(line for line in lines if not line.startswith("##"))
    if not body.strip():
        raise SourceError(f"{file}: no table after its {skipped} '##' header line(s)")
    try:
        table = pd.read_csv(io.StringIO(body), dtype=str, keep_default_na=False)
    except pd.errors.ParserError as error:
        raise SourceError(f"{file}: malformed CSV ({str(error).strip()})") from None
    table.columns = [str(c).strip() for c in table.columns]
    require_columns(table, ["filename", *SCORE_COLUMNS], file)
    scores = table[["filename", *SCORE_COLUMNS]].rename(columns=SCORE_COLUMNS)
    scores["filename"] = scores["filename"].str.strip()
    for column, maximum in SEVERITY_MAXIMA.items():
        scores[column] = _checked_scores(scores[column], column, maximum, file, first_line=skipped + 2)
    twice = scores["filename"][scores["filename"].duplicated()].unique().tolist()
    if twice:
        raise SourceError(f"{file}: file(s) scored twice: {', '.join(twice[:5])}")
    return scores


def _checked_scores(values: pd.Series, column: str, maximum: float, file: Path, first_line: int) -> pd.Series:
    numbers = pd.to_numeric(values.str.strip(), errors="coerce")
    bad = numbers.isna() | (numbers < 0) | (numbers > maximum)
    if bad.any():
        position = int(bad.to_numpy().argmax())
        published = next(name for name, ours in SCORE_COLUMNS.items() if ours == column)
        raise SourceError(f"{file}: line {first_line + position}: {published} {values.iloc[position]!r} is not a "
                          f"score between 0 and {maximum:g}")
    return numbers.astype(float)


def import_severity(file: str | Path, root: str | Path, views: Sequence[str] = DEFAULT_VIEWS) -> ImportResult:
    """The scored images of Cohen's collection at `root` (the folder of its `metadata.csv`) as a manifest
    with `severity_extent` and `severity_opacity`. A scored file without a metadata row is dropped as
    `not in metadata`; then the importers' filters apply (modality, view, file missing, unreadable)."""
    scores = read_severity_scores(file)
    root = Path(root).absolute()
    candidates = cohen_candidates(root)
    joined = candidates.merge(scores, on="filename", how="inner", validate="many_to_one")
    result = finish_import(joined.drop(columns=["filename"]), views)
    unmatched = scores[~scores["filename"].isin(candidates["filename"])]
    missing_rows = pd.DataFrame({"path": [str(root / name) for name in unmatched["filename"]],
                                 "reason": NOT_IN_METADATA, "detail": "no row in metadata.csv",
                                 **{column: unmatched[column].to_numpy() for column in SEVERITY_MAXIMA}})
    dropped = pd.concat([missing_rows, result.dropped], ignore_index=True)
    scored = f"{len(scores)} scored image(s) in {Path(file).name}; {len(result.manifest)} row(s) kept"
    return ImportResult(result.manifest, dropped, [scored, *describe_drops(dropped, SEVERITY_REASONS)])
