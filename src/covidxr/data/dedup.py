"""Exact and near-duplicate images (docs/reference.md, "Duplicates and splits").

Exact: same file bytes (`sha256`) or same decoded pixels. Near: pHash Hamming distance at most
`max_distance` *and* Pearson r of the two images as 64x64 grey at least `min_correlation`. pHash alone
joins different people (normals at 224 px look alike to a hash); the pixel check keeps groups honest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from covidxr.data.hashindex import pairs_between, pairs_within, parse_hashes
from covidxr.data.imageio import ImageReadError, read_grayscale
from covidxr.errors import UsageError
from covidxr.progress import map_with_progress

DEFAULT_MAX_DISTANCE = 4
DEFAULT_MIN_CORRELATION = 0.95
THUMBNAIL_SIZE = 64
LARGE_GROUP = 20
_PAIR_CHUNK = 2048
ThumbnailLoader = Callable[[list[str]], Iterable[np.ndarray | None]]
"""Paths -> their 64x64 grey thumbnails (as `thumbnail` makes them), in order; None for a file that cannot be read."""


@dataclass(frozen=True)
class DuplicateReport:
    pairs: int
    groups: int
    largest: int

    def lines(self) -> list[str]:
        lines = [f"duplicates: {self.pairs} joined pair(s) in {self.groups} group(s) of more than one image; "
                 f"largest holds {self.largest}"]
        if self.largest > LARGE_GROUP:
            lines.append(f"warning: a duplicate group holds {self.largest} images (> {LARGE_GROUP}): "
                         "check the thresholds, such a group usually joins different patients")
        return lines


def phash_distances_within(hashes: np.ndarray, max_distance: int) -> np.ndarray:
    """Index pairs (i < j) of 64-bit hashes at most `max_distance` bits apart, sorted, shape (n, 2); found by
    multi-index hashing (covidxr.data.hashindex), never by comparing all pairs."""
    return pairs_within(hashes, max_distance)


def thumbnail(path: str) -> np.ndarray:
    """The image as 64x64 grey (area-averaged), flattened to float32."""
    image = Image.fromarray(read_grayscale(path)).resize((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.BOX)
    return np.asarray(image, dtype=np.float32).ravel()


def readable_thumbnail(path: str) -> np.ndarray | None:
    """`thumbnail(path)`, or None when the file cannot be read on this machine."""
    try:
        return thumbnail(path)
    except (ImageReadError, OSError):
        return None


def read_thumbnails(paths: list[str]) -> Iterator[np.ndarray]:
    """The files' thumbnails, in order, on all cores (an unreadable file raises)."""
    return map_with_progress(thumbnail, paths, "comparing near-duplicates")


def _read_thumbnails_if_readable(paths: list[str]) -> Iterator[np.ndarray | None]:
    return map_with_progress(readable_thumbnail, paths, "comparing near-duplicates")


def thumbnail_matrix(thumbs: Iterable[np.ndarray | None], count: int) -> tuple[np.ndarray, np.ndarray]:
    """The `count` thumbnails as rows, and which of them were readable (None: not readable).

    Rows are uint8 while every thumbnail holds whole numbers in 0..255 (decoded images do): a quarter of the
    memory of float32, which matters when a million-row build holds the thumbnails of every candidate.
    """
    matrix = np.zeros((count, THUMBNAIL_SIZE * THUMBNAIL_SIZE), dtype=np.uint8)
    readable = np.zeros(count, dtype=bool)
    for row, thumb in enumerate(thumbs):
        if thumb is None:
            continue
        values = np.asarray(thumb, dtype=np.float32).ravel()
        if matrix.dtype == np.uint8 and not _whole_bytes(values):
            matrix = matrix.astype(np.float32)
        matrix[row], readable[row] = values, True
    return matrix, readable


def _whole_bytes(values: np.ndarray) -> bool:
    return bool(values.min() >= 0 and values.max() <= 255 and np.array_equal(values, np.round(values)))


def correlated_pairs(matrix: np.ndarray, pairs: np.ndarray, min_correlation: float) -> np.ndarray:
    """Per pair of rows of `matrix` (shape (n, 2)): Pearson r >= min_correlation; two constant rows agree when equal."""
    agree = np.zeros(len(pairs), dtype=bool)
    for start in range(0, len(pairs), _PAIR_CHUNK):
        chunk = pairs[start:start + _PAIR_CHUNK]
        agree[start:start + len(chunk)] = _rows_agree(matrix[chunk[:, 0]], matrix[chunk[:, 1]], min_correlation)
    return agree


def _rows_agree(first: np.ndarray, second: np.ndarray, min_correlation: float) -> np.ndarray:
    flat = [rows.min(axis=1) == rows.max(axis=1) for rows in (first, second)]
    same_constant = flat[0] & flat[1] & (first[:, 0] == second[:, 0])
    centred = [rows - rows.mean(axis=1, keepdims=True, dtype=np.float64) for rows in (first, second)]
    cross = np.einsum("ij,ij->i", *centred)
    norms = [np.sqrt(np.einsum("ij,ij->i", rows, rows)) for rows in centred]
    with np.errstate(divide="ignore", invalid="ignore"):
        correlation = cross / norms[0] / norms[1]
    return np.where(flat[0] | flat[1], same_constant, correlation >= min_correlation)


def near_duplicates_between(
    first: pd.DataFrame,
    second: pd.DataFrame,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    min_correlation: float = DEFAULT_MIN_CORRELATION,
) -> pd.DataFrame:
    """Pairs of rows of `first` and `second` whose files differ in bytes but that the near-duplicate rule joins:
    columns `first`, `second` (row positions) and `verified` (False when a file could not be read here, so the
    pair rests on the pHash alone)."""
    pairs = pairs_between(parse_hashes(first["phash"]), parse_hashes(second["phash"]), max_distance)
    pairs = pairs[first["sha256"].to_numpy()[pairs[:, 0]] != second["sha256"].to_numpy()[pairs[:, 1]]]
    ends = [first["path"].to_numpy(str)[pairs[:, 0]], second["path"].to_numpy(str)[pairs[:, 1]]]
    paths = pd.unique(np.concatenate(ends))
    matrix, readable = thumbnail_matrix(_read_thumbnails_if_readable(list(paths)), len(paths))
    rows = np.stack([pd.Index(paths).get_indexer(end) for end in ends], axis=1).reshape(-1, 2)
    verified = readable[rows[:, 0]] & readable[rows[:, 1]]
    keep = ~verified | correlated_pairs(matrix, rows, min_correlation)
    return pd.DataFrame({"first": pairs[keep, 0], "second": pairs[keep, 1], "verified": verified[keep]}).astype(
        {"first": int, "second": int, "verified": bool})


def duplicate_groups(
    manifest: pd.DataFrame,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    min_correlation: float = DEFAULT_MIN_CORRELATION,
    thumbnails: ThumbnailLoader | None = None,
) -> tuple[pd.Series, DuplicateReport]:
    """A `dup_group` id per row (singletons get their own) and what was joined.

    `thumbnails` gives the 64x64 grey pixels of a list of paths (default: decode the files, `read_thumbnails`);
    a caller whose rows have no files on this machine, such as the scale benchmark, passes its own.
    """
    if not 0 <= max_distance <= 64:
        raise UsageError("must be 0..64 bits", "max_distance", max_distance)
    if not -1 <= min_correlation <= 1:
        raise UsageError("must be in [-1, 1]", "min_correlation", min_correlation)
    file_of_row, files = pd.factorize(manifest["sha256"].to_numpy(str))
    first_row = np.unique(file_of_row, return_index=True)[1]
    candidates = pairs_within(parse_hashes(manifest["phash"].iloc[first_row]), max_distance)
    involved = np.unique(candidates)
    paths = manifest["path"].to_numpy(str)[first_row[involved]].tolist()
    matrix, _ = thumbnail_matrix((thumbnails or read_thumbnails)(paths), len(paths))
    joined = candidates[correlated_pairs(matrix, np.searchsorted(involved, candidates), min_correlation)]
    graph = coo_matrix((np.ones(len(joined)), (joined[:, 0], joined[:, 1])), shape=(len(files), len(files)))
    component = connected_components(graph, directed=False)[1][file_of_row]
    group_of_row, group_components = pd.factorize(component)
    names = np.array([f"dup{number:05d}" for number in range(len(group_components))], dtype=object)
    sizes = np.bincount(group_of_row)
    report = DuplicateReport(pairs=len(joined), groups=int((sizes > 1).sum()), largest=int(sizes.max(initial=0)))
    return pd.Series(names[group_of_row], index=manifest.index, name="dup_group"), report
