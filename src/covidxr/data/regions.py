"""Regions of a chest radiograph: fixed ones of a prepared (square, centred frontal) image, as fractions
of its side, and the box around a mask.

The lung field is an approximate rectangle, rows 12%..82% and columns 12%..88%, that holds both lungs
of a centred frontal radiograph: the fallback when no lung mask can be had. The border band is the
outer 10% on every side.
"""

from __future__ import annotations

import numpy as np

LUNG_ROWS, LUNG_COLUMNS = (0.12, 0.82), (0.12, 0.88)
BORDER_BAND = 0.10


def lung_field_box(size: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) pixel bounds of the lung field in a `size` x `size` image."""
    top, bottom = (int(round(f * size)) for f in LUNG_ROWS)
    left, right = (int(round(f * size)) for f in LUNG_COLUMNS)
    return top, bottom, left, right


def border_mask(size: int) -> np.ndarray:
    """True on the outer band (BORDER_BAND of the side, at least one pixel) of a `size` x `size` image."""
    band = max(1, int(round(BORDER_BAND * size)))
    mask = np.ones((size, size), dtype=bool)
    mask[band:-band, band:-band] = False
    return mask


def mask_box(mask: np.ndarray, margin: float = 0.0) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the mask's True pixels, grown by `margin` of the box's size on each
    side and clipped to the image; the whole image when the mask is empty."""
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    height, width = mask.shape
    if not len(rows):
        return 0, height, 0, width
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(columns[0]), int(columns[-1]) + 1
    grow_rows, grow_columns = round(margin * (bottom - top)), round(margin * (right - left))
    return (max(0, top - grow_rows), min(height, bottom + grow_rows),
            max(0, left - grow_columns), min(width, right + grow_columns))
