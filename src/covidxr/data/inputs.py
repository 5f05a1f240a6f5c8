"""The files a command is given: image files as they are, folders walked, manifests read for their `path` column
(what `predict` and `segment` work on)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from covidxr.errors import UsageError

MANIFEST_SUFFIXES = (".csv", ".parquet")


def manifest_paths(manifest: Path) -> list[Path]:
    """The `path` column of a table (.csv or .parquet: a covidxr manifest, or any table with that column), in its
    row order; paths as written (relative ones from the current folder, as `prepare` reads them)."""
    from covidxr.data.manifest import ManifestError, read_table  # lazy: predicting folders stays without pandas

    try:
        table = read_table(manifest)
    except ManifestError as error:
        raise UsageError(str(error)) from None
    if "path" not in table.columns:
        raise UsageError(f"{manifest}: a manifest needs a 'path' column (one image file per row); columns present: "
                         f"{', '.join(map(str, table.columns)) or 'none'}")
    blank = table.index[table["path"].isna() | (table["path"].astype(str).str.strip() == "")]
    if len(blank):
        raise UsageError(f"{manifest}: row {blank[0] + 1} has no path ({len(blank)} row(s) without one)")
    return [Path(str(path)) for path in table["path"]]


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given; folders recursively (hidden files skipped), sorted; manifests (.csv, .parquet) as the files
    of their `path` column, in row order. Entries of a folder that are not folders are all listed, pipes and broken
    links too, so that reading them reports why they failed."""
    expanded = []
    for path in map(Path, paths):
        if path.is_dir():
            expanded += sorted(p for p in path.rglob("*") if not p.is_dir() and not any(
                part.startswith(".") for part in p.relative_to(path).parts))
        elif path.suffix.lower() in MANIFEST_SUFFIXES and path.is_file():
            expanded += manifest_paths(path)
        else:
            expanded.append(path)
    return expanded
