"""The segmenter's pixel geometry (NumPy and OpenCV only, so ONNX inference needs no torch).

An image goes to the segmenter letterboxed: its long side scaled to the segmenter's input size (model.json's
`input.size`), the short side padded with black and centred. The probability map becomes a mask of at most
two lungs at that size (regions and holes found there), which alone is scaled back through the same box to the
image's own size (one byte a pixel, whatever the image's size) and checked for plausibility.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from covidxr.data.regions import LUNG_COLUMNS, LUNG_ROWS

SEGMENTER_SIZE = 256
"""The teacher segmenter's input size (the default of training); a segmenter's own is in its model.json."""
MIN_LUNG_SHARE, MAX_LUNG_SHARE = 0.08, 0.75
"""A mask covering less or more of the image than this is implausible (the V7 outlines cover 12%..62%)."""
MIN_SECOND_LUNG = 0.15
"""The second-largest region counts as a lung when it is at least this share of the largest."""


@dataclass(frozen=True)
class Letterbox:
    """Where an image of `height` x `width` lies in the square it was letterboxed into."""

    height: int
    width: int
    top: int
    left: int
    inner_height: int
    inner_width: int


def letterbox(image: np.ndarray, size: int = SEGMENTER_SIZE,
              interpolation: int = cv2.INTER_AREA) -> tuple[np.ndarray, Letterbox]:
    """`image` scaled so its long side is `size`, centred on a black `size` x `size` square."""
    height, width = image.shape[:2]
    scale = size / max(height, width)
    inner_height, inner_width = max(1, round(height * scale)), max(1, round(width * scale))
    if scale > 1 and interpolation == cv2.INTER_AREA:
        interpolation = cv2.INTER_LINEAR
    resized = cv2.resize(image, (inner_width, inner_height), interpolation=interpolation)
    top, left = (size - inner_height) // 2, (size - inner_width) // 2
    square = np.zeros((size, size), dtype=image.dtype)
    square[top:top + inner_height, left:left + inner_width] = resized
    return square, Letterbox(height, width, top, left, inner_height, inner_width)


def letterbox_inner(square: np.ndarray, box: Letterbox) -> np.ndarray:
    """The part of a letterboxed map that covers the image, at the square's resolution."""
    return square[box.top:box.top + box.inner_height, box.left:box.left + box.inner_width]


def unletterbox(square: np.ndarray, box: Letterbox) -> np.ndarray:
    """The part of a letterboxed float map that covers the image, resized back to the image's size."""
    return cv2.resize(np.ascontiguousarray(letterbox_inner(square, box), dtype=np.float32), (box.width, box.height),
                      interpolation=cv2.INTER_LINEAR)


@dataclass(frozen=True)
class LungMask:
    """A lung mask at the image's size (True on the lungs), and what was wrong with the first guess."""

    mask: np.ndarray
    lungs: int
    warnings: tuple[str, ...] = ()
    fallback: bool = False

    @property
    def share(self) -> float:
        return float(self.mask.mean())

    def as_uint8(self) -> np.ndarray:
        """255 on the lungs, 0 elsewhere."""
        return self.mask.astype(np.uint8) * 255


def rectangle_mask(height: int, width: int) -> np.ndarray:
    """The fixed lung-field rectangle (rows 12-82%, columns 12-88%) at any size: the fallback."""
    (top, bottom), (left, right) = (round(f * height) for f in LUNG_ROWS), (round(f * width) for f in LUNG_COLUMNS)
    mask = np.zeros((height, width), dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


def largest_regions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """The largest region, and the second largest when it is at least MIN_SECOND_LUNG of it, with holes
    filled; and how many regions were kept (0, 1 or 2)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    if count <= 1:
        return np.zeros(mask.shape, dtype=bool), 0
    order = np.argsort(areas)[::-1] + 1
    keep = [order[0]] + ([order[1]] if len(order) > 1 and areas[order[1] - 1] >= MIN_SECOND_LUNG * areas[order[0] - 1]
                         else [])
    kept = np.isin(labels, keep).astype(np.uint8)
    contours, _ = cv2.findContours(kept, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(kept)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled.astype(bool), len(keep)


def lung_mask_from_probability(probability: np.ndarray, threshold: float = 0.5) -> LungMask:
    """Threshold, keep the two lungs, check them; an implausible result falls back to the rectangle."""
    return checked_lungs(*largest_regions(probability >= threshold))


def lung_mask_from_letterbox(square: np.ndarray, box: Letterbox, threshold: float = 0.5) -> LungMask:
    """The checked lung mask at the image's size from the probability map of its letterbox: the lungs
    chosen (two largest regions, holes filled) at the map's resolution, then the map restricted to them
    scaled bilinearly (as uint8) to the image and thresholded, so the edge is as smooth as scaling the
    whole float map would make it, at one byte a pixel."""
    inner = letterbox_inner(square, box)
    kept, lungs = largest_regions(inner >= threshold)
    level = int(np.clip(np.ceil(threshold * 255), 1, 255))
    values = np.round(np.clip(inner, 0, 1) * 255).astype(np.uint8)
    border = cv2.dilate(kept.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & ~kept
    restricted = np.where(kept, np.maximum(values, level), np.where(border, np.minimum(values, level - 1), 0))
    scaled = cv2.resize(restricted.astype(np.uint8), (box.width, box.height), interpolation=cv2.INTER_LINEAR)
    return checked_lungs(scaled >= level, lungs)


def checked_lungs(mask: np.ndarray, lungs: int) -> LungMask:
    """The mask of `lungs` regions when plausible, else the rectangle with warnings that say why."""
    share = float(mask.mean())
    problems = []
    if lungs == 0:
        problems.append("no lung found")
    elif lungs == 1:
        problems.append("one lung found (expected two)")
    if lungs and not MIN_LUNG_SHARE <= share <= MAX_LUNG_SHARE:
        problems.append(f"lungs cover {share:.0%} of the image (plausible: {MIN_LUNG_SHARE:.0%}-{MAX_LUNG_SHARE:.0%})")
    if not problems:
        return LungMask(mask, lungs)
    height, width = mask.shape
    return LungMask(rectangle_mask(height, width), lungs,
                    tuple(problems) + ("lung mask replaced by the fixed lung-field rectangle",), fallback=True)


def dice_and_iou(predicted: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of two bool masks (1, 1 when both are empty)."""
    overlap = float(np.logical_and(predicted, truth).sum())
    total, union = float(predicted.sum() + truth.sum()), float(np.logical_or(predicted, truth).sum())
    return (2 * overlap / total if total else 1.0), (overlap / union if union else 1.0)


OUTLINE_COLOUR, FALLBACK_COLOUR = (0, 230, 64), (255, 160, 0)


def outline_overlay(gray: np.ndarray, lungs: LungMask) -> np.ndarray:
    """RGB uint8 copy of a grayscale image with the lung outline drawn on it (orange for a fallback)."""
    canvas = cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
    contours, _ = cv2.findContours(lungs.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    thickness = max(1, round(max(gray.shape) / 256))
    colour = FALLBACK_COLOUR if lungs.fallback else OUTLINE_COLOUR
    cv2.drawContours(canvas, contours, -1, colour, thickness, lineType=cv2.LINE_AA)
    return canvas
