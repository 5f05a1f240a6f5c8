"""What the input check reads of an image: a standardised grey thumbnail, grey-level statistics and the shape of
the lung segmenter's mask. NumPy and OpenCV only (and the segmenter's ONNX Runtime session)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from covidxr.lungs.geometry import LungMask, largest_regions
from covidxr.lungs.segment import LungSegmenter

THUMBNAIL = 16
WORKING_SIDE = 512  # statistics are read on a copy at most this large: the cost stays flat for large images
GLOBAL_FEATURES = ("log_aspect", "mean", "std", "dark_share", "bright_share", "entropy", "edge_share",
                   "mirror_correlation")
LUNG_FEATURES = ("regions", "lung_share", "fallback", "confidence", "uncertain_share", "balance", "centre_row",
                 "centre_column", "box_height", "box_width", "mirror_overlap")


@dataclass(frozen=True)
class ImageFeatures:
    """One image's thumbnail (flattened, standardised), its statistics (GLOBAL_FEATURES + LUNG_FEATURES), the
    segmenter's checked lung mask (of the image at most WORKING_SIDE on its long side) and its short side."""

    thumbnail: np.ndarray
    statistics: np.ndarray
    lungs: LungMask
    short_side: int


def working_copy(gray: np.ndarray) -> np.ndarray:
    scale = WORKING_SIDE / max(gray.shape)
    if scale >= 1:
        return gray
    size = (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale)))
    return cv2.resize(gray, size, interpolation=cv2.INTER_AREA)


def standardised_thumbnail(gray: np.ndarray) -> np.ndarray:
    small = cv2.resize(gray, (THUMBNAIL, THUMBNAIL), interpolation=cv2.INTER_AREA).astype(np.float64).ravel()
    return (small - small.mean()) / (small.std() + 1.0)


def grey_statistics(gray: np.ndarray, thumbnail: np.ndarray) -> list[float]:
    values = gray.astype(np.float64) / 255
    histogram = np.bincount(gray.ravel() // 8, minlength=32) / gray.size
    entropy = -float(np.sum(histogram[histogram > 0] * np.log2(histogram[histogram > 0])))
    edges = cv2.Canny(gray, 50, 150)
    square = thumbnail.reshape(THUMBNAIL, THUMBNAIL)
    mirrored = square[:, ::-1]
    correlation = float(np.corrcoef(square.ravel(), mirrored.ravel())[0, 1]) if square.std() > 0 else 0.0
    return [float(np.log(gray.shape[1] / gray.shape[0])), float(values.mean()), float(values.std()),
            float((gray < 20).mean()), float((gray > 235).mean()), entropy / 5, float((edges > 0).mean()),
            correlation]


def lung_statistics(probability: np.ndarray, lungs: LungMask, threshold: float) -> list[float]:
    """The shape of the lungs in the segmenter's map at its own resolution (shares and positions relative to the
    map, so its size does not matter), and whether the mask fell back to the rectangle."""
    raw, regions = largest_regions(probability >= threshold)
    share = float(raw.mean())
    height, width = probability.shape
    if regions:
        rows, columns = np.nonzero(raw)
        centre = (rows.mean() / height, columns.mean() / width)
        box = ((rows.max() - rows.min() + 1) / height, (columns.max() - columns.min() + 1) / width)
        left, right = raw[:, : width // 2].sum(), raw[:, width // 2:].sum()
        balance = float(min(left, right) / max(left, right, 1))
        overlap = float((raw & raw[:, ::-1]).sum() / max(1, (raw | raw[:, ::-1]).sum()))
    else:
        centre, box, balance, overlap = (0.5, 0.5), (0.0, 0.0), 0.0, 0.0
    confidence = float(np.abs(2 * probability - 1).mean())
    uncertain = float(((probability > 0.2) & (probability < 0.8)).sum() / max(1.0, float(raw.sum())))
    return [regions / 2, share, float(lungs.fallback), confidence, min(uncertain, 5.0), balance, *centre, *box,
            overlap]


def image_features(gray: np.ndarray, segmenter: LungSegmenter) -> ImageFeatures:
    """The features of a decoded grey image (2-D uint8), with the segmenter's checked lung mask of it."""
    return image_features_many([gray], segmenter)[0]


def image_features_many(grays: Sequence[np.ndarray], segmenter: LungSegmenter) -> list[ImageFeatures]:
    """`image_features` of each image, the segmenter run once over all of them (batched)."""
    smalls = [working_copy(gray) for gray in grays]
    threshold = segmenter.contract.threshold
    found = []
    for gray, small, (probability, lungs) in zip(grays, smalls, segmenter.own_maps_and_masks(smalls)):
        thumbnail = standardised_thumbnail(small)
        statistics = grey_statistics(small, thumbnail) + lung_statistics(probability, lungs, threshold)
        found.append(ImageFeatures(thumbnail, np.asarray(statistics), lungs, int(min(gray.shape))))
    return found
