"""Exact and near-duplicate images (docs/reference.md, "Duplicates and splits").

Exact: same file bytes (`sha256`) or same decoded pixels. Near: pHash Hamming distance at most
`max_distance` *and* Pearson r of the two images as 64x64 grey at least `min_correlation`. pHash alone
joins different people (normals at 224 px look alike to a hash); the pixel check keeps groups honest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from covidxr.data.imageio import read_grayscale
from covidxr.errors import UsageError
from covidxr.progress import map_with_progress

DEFAULT_MAX_DISTANCE = 4
DEFAULT_MIN_CORRELATION = 0.95
THUMBNAIL_SIZE = 64
LARGE_GROUP = 20


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
    """Index pairs (i < j) of 64-bit hashes at most `max_distance` bits apart, shape (n, 2)."""
    found = []
    for start in range(0, len(hashes), 512):
        block = hashes[start:start + 512, None] ^ hashes[None, :]
        distance = np.bitwise_count(block)
        rows, columns = np.nonzero(distance <= max_distance)
        rows = rows + start
        keep = rows < columns
        found.append(np.stack([rows[keep], columns[keep]], axis=1))
    return np.concatenate(found) if found else np.empty((0, 2), dtype=np.int64)


def thumbnail(path: str) -> np.ndarray:
    """The image as 64x64 grey (area-averaged), flattened to float32."""
    image = Image.fromarray(read_grayscale(path)).resize((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.BOX)
    return np.asarray(image, dtype=np.float32).ravel()


def pixels_agree(first: np.ndarray, second: np.ndarray, min_correlation: float) -> bool:
    """Pearson r >= min_correlation; two constant thumbnails agree when equal."""
    if first.std() == 0 or second.std() == 0:
        return bool(np.array_equal(first, second))
    return float(np.corrcoef(first, second)[0, 1]) >= min_correlation


def duplicate_groups(
    manifest: pd.DataFrame,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    min_correlation: float = DEFAULT_MIN_CORRELATION,
) -> tuple[pd.Series, DuplicateReport]:
    """A `dup_group` id per row (singletons get their own) and what was joined."""
    if not 0 <= max_distance <= 64:
        raise UsageError("must be 0..64 bits", "max_distance", max_distance)
    if not -1 <= min_correlation <= 1:
        raise UsageError("must be in [-1, 1]", "min_correlation", min_correlation)
    files = manifest.drop_duplicates("sha256")[["sha256", "path", "phash"]].reset_index(drop=True)
    hashes = np.array([int(h, 16) for h in files["phash"]], dtype=np.uint64)
    candidates = phash_distances_within(hashes, max_distance)
    involved = np.unique(candidates)
    paths = files["path"].iloc[involved]
    thumbs = dict(zip(involved, map_with_progress(thumbnail, paths, "comparing near-duplicates")))
    joined = np.array([pair for pair in candidates if pixels_agree(thumbs[pair[0]], thumbs[pair[1]], min_correlation)],
                      dtype=np.int64).reshape(-1, 2)
    count = len(files)
    graph = coo_matrix((np.ones(len(joined)), (joined[:, 0], joined[:, 1])), shape=(count, count))
    _, component = connected_components(graph, directed=False)
    per_row = manifest["sha256"].map(dict(zip(files["sha256"], component)))
    order = {c: i for i, c in enumerate(pd.unique(per_row))}
    groups = per_row.map(lambda c: f"dup{order[c]:05d}")
    sizes = groups.value_counts()
    largest = int(sizes.max()) if len(sizes) else 0
    report = DuplicateReport(pairs=len(joined), groups=int((sizes > 1).sum()), largest=largest)
    return groups.rename("dup_group"), report
