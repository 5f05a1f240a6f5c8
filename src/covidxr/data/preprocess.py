"""Border removal, square crop or pad (or the box around the lungs), area resize and optional histogram
equalisation or CLAHE: decoded pixels -> model pixels.

Every step is set by `Preprocessing`, which runs record in their inference contract and the pixel cache
uses as its key, so different settings never share pixels. The lung step (`lungs: crop | mask`) needs a
lung masker, a callable from a decoded image to its bool lung mask. A `Preprocessor` holds both, built once
from a run's settings by `covidxr.lungs.preprocessor(settings)` (with the shipped segmenter); this module only
applies the mask the masker returns.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from covidxr.data.regions import mask_box
from covidxr.errors import UsageError

BorderKind = Literal["black", "white", "uniform"]
ADDED_SETTINGS = ("equalize",)
LungsMode = Literal["none", "crop", "mask"]
LungMasker = Callable[[np.ndarray], np.ndarray]
"""Decoded grayscale uint8 image -> bool lung mask of the same shape. A masker that runs a network (a
`covidxr.lungs.LungSegmenter`) also has `on_threads(threads)`: the same masker on that many threads."""
LUNG_FIELDS = ("lung_margin", "lung_fill", "lung_model")


class LungModelRef(BaseModel):
    """The lung segmenter a preprocessing used: its name and the sha256 of its weights."""

    model_config = ConfigDict(defer_build=True, frozen=True, extra="forbid")

    name: str
    weights_sha256: str


class Preprocessing(BaseModel):
    """How a decoded grayscale uint8 image becomes a `size` x `size` uint8 image."""

    model_config = ConfigDict(defer_build=True, frozen=True, extra="forbid")

    size: int = Field(256, ge=16, le=4096, description="output side in pixels")
    borders: tuple[BorderKind, ...] = Field(("black",), description="edge rows/columns to strip")
    black_level: int = Field(40, ge=0, le=255, description="a pixel darker than this is near-black")
    white_level: int = Field(215, ge=0, le=255, description="a pixel brighter than this is near-white")
    uniform_std: float = Field(2.0, ge=0, description="a row/column with lower std is near-uniform")
    border_share: float = Field(0.5, gt=0, le=1, description="share of a row/column that makes it border")
    min_kept: float = Field(0.5, gt=0, le=1, description="never keep less than this share of an axis")
    crop_top: float = Field(0.0, ge=0, lt=0.5, description="share of rows cut from the top (COVID-Net: 0.08)")
    square: Literal["crop", "pad"] = Field("crop", description="centre crop to the short side, or pad")
    equalize: bool = Field(False, description="global histogram equalisation of every image (or clahe)")
    clahe: bool = False
    clahe_clip: float = Field(2.0, gt=0)
    clahe_tiles: int = Field(8, ge=1, le=64)
    lungs: LungsMode = Field("none", description="none; crop: the box around both lungs plus lung_margin, made "
                                                 "square (instead of `square`); mask: crop, and lung_fill outside "
                                                 "the lungs")
    lung_margin: float = Field(0.1, ge=0, le=1, description="share of the lung box's height/width added per side")
    lung_fill: int = Field(0, ge=0, le=255, description="grey value outside the lungs with lungs=mask")
    lung_model: LungModelRef | None = Field(None, description="the lung segmenter used (set by training)")

    @model_validator(mode="after")
    def _one_equalisation(self) -> Preprocessing:
        if self.equalize and self.clahe:
            raise ValueError("equalize and clahe are alternatives: set one of them")
        return self

    @classmethod
    def from_recorded(cls, recorded: dict) -> Preprocessing:
        """The settings as a run's model.json records them (which adds notes such as `decode` and
        `normalisation` beside the settings)."""
        return cls(**{name: value for name, value in recorded.items() if name in cls.model_fields})

    def key(self) -> str:
        """Short stable hash of every setting in use: the cache folder name. Settings added after the first
        release count only when they differ from their default, and the lung settings only when the lung step is
        on, so caches prepared before them stay valid."""
        settings = self.model_dump(mode="json")
        for name in ADDED_SETTINGS:
            if settings[name] == type(self).model_fields[name].default:
                del settings[name]
        if self.lungs == "none":
            for name in ("lungs", *LUNG_FIELDS):
                del settings[name]
        text = json.dumps(settings, sort_keys=True)
        return f"{self.size}px-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


@dataclass(frozen=True)
class Cut:
    """Rows and columns removed from each edge by border removal."""

    top: int
    bottom: int
    left: int
    right: int


def _edge_run(is_border: np.ndarray) -> tuple[int, int]:
    """Lengths of the True runs at the start and at the end of a 1-D bool array."""
    if is_border.all():
        return len(is_border), 0
    leading = int(np.argmin(is_border))
    trailing = int(np.argmin(is_border[::-1]))
    return leading, trailing


def blockwise_std(image: np.ndarray, axis: int, block_pixels: int = 4_000_000) -> np.ndarray:
    """`image.astype(np.float32).std(axis=axis)`, computed on slices across the other axis, each of at least
    64 lines: the same values (each line's reduction is unchanged), without a float copy of a whole large image
    (a 49 Mpx radiograph took 440 MB here)."""
    lines = image.shape[1 - axis]
    step = max(64, block_pixels // max(1, image.shape[axis]))
    if step >= lines:
        return image.astype(np.float32).std(axis=axis)
    parts = (image[start:start + step] if axis == 1 else image[:, start:start + step]
             for start in range(0, lines, step))
    return np.concatenate([part.astype(np.float32).std(axis=axis) for part in parts])


def border_lines(image: np.ndarray, config: Preprocessing) -> tuple[np.ndarray, np.ndarray]:
    """Which rows and which columns are border, by the kinds in `config.borders`."""
    rows = np.zeros(image.shape[0], dtype=bool)
    columns = np.zeros(image.shape[1], dtype=bool)
    for kind in config.borders:
        if kind == "uniform":
            rows |= blockwise_std(image, axis=1) < config.uniform_std
            columns |= blockwise_std(image, axis=0) < config.uniform_std
            continue
        marked = image < config.black_level if kind == "black" else image > config.white_level
        rows |= np.count_nonzero(marked, axis=1) > config.border_share * image.shape[1]
        columns |= np.count_nonzero(marked, axis=0) > config.border_share * image.shape[0]
    return rows, columns


def _axis_cut(is_border: np.ndarray, min_kept: float) -> tuple[int, int]:
    first, last = _edge_run(is_border)
    if len(is_border) - first - last < min_kept * len(is_border):
        return 0, 0
    return first, last


def find_cut(image: np.ndarray, config: Preprocessing) -> Cut:
    """The border to strip: contiguous border lines from each edge; an axis that would keep less than
    `min_kept` of its length is left whole (a dark image is not all border)."""
    if not config.borders:
        return Cut(0, 0, 0, 0)
    rows, columns = border_lines(image, config)
    top, bottom = _axis_cut(rows, config.min_kept)
    left, right = _axis_cut(columns, config.min_kept)
    return Cut(top, bottom, left, right)


def remove_borders(image: np.ndarray, config: Preprocessing) -> tuple[np.ndarray, Cut]:
    cut = find_cut(image, config)
    height, width = image.shape
    return image[cut.top:height - cut.bottom, cut.left:width - cut.right], cut


def make_square(image: np.ndarray, mode: Literal["crop", "pad"]) -> np.ndarray:
    """Centre crop to the short side, or pad with black to the long side."""
    height, width = image.shape
    if height == width:
        return image
    if mode == "crop":
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        return image[top:top + side, left:left + side]
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    return cv2.copyMakeBorder(image, top, side - height - top, left, side - width - left, cv2.BORDER_CONSTANT, value=0)


def lung_square(image: np.ndarray, lungs: np.ndarray, config: Preprocessing) -> np.ndarray:
    """The square around the lungs' box grown by `lung_margin`, centred on it, black (or `lung_fill` with
    lungs=mask) where it leaves the image; with lungs=mask everything outside the lungs is `lung_fill`. Only the
    square's part of the image is masked and padded (not the whole decoded image)."""
    fill = config.lung_fill if config.lungs == "mask" else 0
    top, bottom, left, right = mask_box(lungs, config.lung_margin)
    side = max(bottom - top, right - left)
    top, left = (top + bottom - side) // 2, (left + right - side) // 2
    height, width = image.shape
    rows, columns = slice(max(0, top), min(height, top + side)), slice(max(0, left), min(width, left + side))
    inner = image[rows, columns]
    if config.lungs == "mask":
        inner = np.where(lungs[rows, columns], inner, np.uint8(fill))
    return cv2.copyMakeBorder(inner, max(0, -top), max(0, top + side - height), max(0, -left),
                              max(0, left + side - width), cv2.BORDER_CONSTANT, value=fill)


def border_trimmed(image: np.ndarray, config: Preprocessing) -> tuple[np.ndarray, Cut]:
    """The decoded image with its border removed and `crop_top` cut (contiguous: a view of `image` where nothing
    was cut), and the border that was cut: what the lung step segments."""
    if image.ndim != 2 or image.dtype != np.uint8:
        raise UsageError(f"shape {image.shape} dtype {image.dtype}: expected a 2-D uint8 grey array (height, width), "
                         "as read_grayscale returns", "image")
    cropped, cut = remove_borders(image, config)
    if config.crop_top:
        cropped = cropped[int(round(config.crop_top * cropped.shape[0])):]
    return np.ascontiguousarray(cropped), cut


def model_pixels(trimmed: np.ndarray, config: Preprocessing, lungs: np.ndarray | None = None) -> np.ndarray:
    """`config.size` square uint8 from a `border_trimmed` image and, for `config.lungs` other than "none", its bool
    lung mask (an error without one)."""
    if config.lungs == "none":
        square = make_square(trimmed, config.square)
    elif lungs is None:
        raise UsageError("needs a lung masker (covidxr.lungs.preprocessor gives it)", "lungs", config.lungs)
    else:
        square = lung_square(trimmed, lungs, config)
    interpolation = cv2.INTER_AREA if square.shape[0] >= config.size else cv2.INTER_LINEAR
    resized = cv2.resize(square, (config.size, config.size), interpolation=interpolation)
    if config.equalize:
        resized = cv2.equalizeHist(resized)
    elif config.clahe:
        clahe = cv2.createCLAHE(clipLimit=config.clahe_clip, tileGridSize=(config.clahe_tiles, config.clahe_tiles))
        resized = clahe.apply(resized)
    return resized


def preprocess(image: np.ndarray, config: Preprocessing, lungs: LungMasker | None = None) -> tuple[np.ndarray, Cut]:
    """Decoded grayscale uint8 -> `config.size` square uint8, and the border that was cut. `lungs` is the
    lung masker that `config.lungs` other than "none" needs."""
    trimmed, cut = border_trimmed(image, config)
    mask = lungs(trimmed) if config.lungs != "none" and lungs is not None else None
    return model_pixels(trimmed, config, mask), cut


@dataclass(frozen=True)
class Preprocessor:
    """The settings and the lung masker they need (None for lungs=none), built once by
    `covidxr.lungs.preprocessor(settings)` and passed down whole. Picklable: worker processes and Ray actors
    receive it."""

    settings: Preprocessing
    masker: LungMasker | None = None

    def border_trimmed(self, image: np.ndarray) -> tuple[np.ndarray, Cut]:
        return border_trimmed(image, self.settings)

    def model_pixels(self, trimmed: np.ndarray, lungs: np.ndarray | None = None) -> np.ndarray:
        return model_pixels(trimmed, self.settings, lungs)

    def pixels(self, image: np.ndarray) -> tuple[np.ndarray, Cut]:
        """Decoded grayscale uint8 -> model pixels, and the border that was cut (see `preprocess`)."""
        return preprocess(image, self.settings, self.masker)

    def on_threads(self, threads: int | None) -> Preprocessor:
        """The same steps with their lung masker on `threads` threads (1 in worker processes, one per core: the
        pool that starts them asks); a masker without threads of its own (no `on_threads`) is kept as it is."""
        on_threads = getattr(self.masker, "on_threads", None)
        return self if on_threads is None else replace(self, masker=on_threads(threads))
