"""Fixed regions of a prepared (square, centred frontal) chest radiograph, as fractions of its side.

The lung field is an approximate rectangle, rows 12%..82% and columns 12%..88%, that holds both lungs
of a centred frontal radiograph; the border band is the outer 10% on every side. The audit hides or
keeps them, and explanations measure how much heat falls inside the lung field.
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


def lung_field_mask(size: int) -> np.ndarray:
    """True inside the approximate lung field of a `size` x `size` prepared image."""
    top, bottom, left, right = lung_field_box(size)
    mask = np.zeros((size, size), dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


def border_mask(size: int) -> np.ndarray:
    """True on the outer band (BORDER_BAND of the side, at least one pixel) of a `size` x `size` image."""
    band = max(1, int(round(BORDER_BAND * size)))
    mask = np.ones((size, size), dtype=bool)
    mask[band:-band, band:-band] = False
    return mask
