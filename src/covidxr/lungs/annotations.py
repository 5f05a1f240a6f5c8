"""Published lung outlines of Cohen's images, read into one table of masks keyed by the manifest.

Three formats, as their owners publish them:
- V7 Labs Darwin JSON (`covid-only.zip`): `Lung` polygons drawn by people (the lung behind the heart
  included), in the pixel coordinates of the image V7 had (`image.width/height`); rescaled to the file here.
- lungVAE masks (`annotations/lungVAE-masks/<stem>_mask.png`): binary masks made by a model.
- COCO boxes (`annotations/imageannotation_ai_lung_bounding_boxes.json`): one box per lung.

    >>> from covidxr.lungs.annotations import annotation_table
    >>> table = annotation_table(manifest, "data/covid-chestxray-dataset", "data/v7labs/annotations/covid-only.zip")
    >>> table.masks[["image_id", "sha256", "origin", "lungs"]]      # `mask`: bool array, the image's size

Masks exist only for the images their owners chose (the V7 outlines only for COVID-19 images): they
train and test the segmenter; they must never reach a classifier.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image

from covidxr.errors import CovidxrError

ORIGINS = ("v7", "lungvae", "coco-boxes")
"""Hand-drawn polygons, model-made masks, boxes."""
LUNGVAE_FOLDER = "annotations/lungVAE-masks"
COCO_FILE = "annotations/imageannotation_ai_lung_bounding_boxes.json"
TABLE_COLUMNS = ["image_id", "sha256", "path", "origin", "lungs", "mask"]
_SUBPIXEL_BITS = 4


class AnnotationError(CovidxrError, ValueError):
    """An annotation file that cannot be read; the message names the file and the problem."""


@dataclass(frozen=True)
class Outline:
    """The lung shapes one annotation file gives one image, in that file's own coordinate frame."""

    filename: str
    frame: tuple[int, int] | None
    """(width, height) the shapes' coordinates refer to; None: the image's own pixels."""
    polygons: tuple[np.ndarray, ...] = ()
    mask: np.ndarray | None = None

    def rasterise(self, width: int, height: int) -> np.ndarray:
        """The outline as a bool mask of `height` x `width` (shapes rescaled from their frame)."""
        if self.mask is not None:
            if self.mask.shape != (height, width):
                resized = cv2.resize(self.mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
                return resized.astype(bool)
            return self.mask.astype(bool)
        scale = np.ones(2) if self.frame is None else np.array([width / self.frame[0], height / self.frame[1]])
        canvas = np.zeros((height, width), dtype=np.uint8)
        for polygon in self.polygons:
            points = np.round(polygon * scale * (1 << _SUBPIXEL_BITS)).astype(np.int32)
            cv2.fillPoly(canvas, [points], 1, lineType=cv2.LINE_8, shift=_SUBPIXEL_BITS)
        return canvas.astype(bool)

    @property
    def lungs(self) -> int:
        return len(self.polygons) if self.mask is None else _component_count(self.mask)


def _component_count(mask: np.ndarray) -> int:
    count, _ = cv2.connectedComponents(mask.astype(np.uint8))
    return count - 1


def _read_json(data: bytes, name: str) -> dict:
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AnnotationError(f"{name}: not valid JSON ({error})") from None


def _points(path: list[dict], name: str) -> np.ndarray:
    try:
        return np.array([[float(point["x"]), float(point["y"])] for point in path], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        raise AnnotationError(f"{name}: a polygon point is not {{'x': number, 'y': number}}") from None


def darwin_outline(document: dict, name: str) -> Outline:
    """One Darwin JSON document (V7 Labs) -> its `Lung` polygons in the frame of `image.width/height`."""
    try:
        image = document["image"]
        filename, frame = str(image["original_filename"]), (int(image["width"]), int(image["height"]))
        annotations = document["annotations"]
    except (KeyError, TypeError, ValueError):
        raise AnnotationError(f"{name}: not a Darwin JSON file (needs image.original_filename, "
                              "image.width, image.height and annotations)") from None
    polygons = []
    for annotation in annotations:
        if annotation.get("name") != "Lung":
            continue
        if "polygon" in annotation:
            polygons.append(_points(annotation["polygon"]["path"], name))
        elif "complex_polygon" in annotation:
            polygons += [_points(path, name) for path in annotation["complex_polygon"]["path"]]
    return Outline(filename, frame, tuple(polygons))


def read_v7_outlines(zip_path: str | Path) -> Iterator[Outline]:
    """Every Darwin JSON file of a V7 Labs export zip."""
    try:
        with zipfile.ZipFile(zip_path) as archive:
            for member in sorted(n for n in archive.namelist() if n.endswith(".json")):
                yield darwin_outline(_read_json(archive.read(member), f"{zip_path}:{member}"), f"{zip_path}:{member}")
    except (zipfile.BadZipFile, FileNotFoundError, IsADirectoryError) as error:
        raise AnnotationError(f"{zip_path}: cannot read the V7 annotations zip ({error})") from None


def read_lungvae_masks(folder: str | Path) -> Iterator[Outline]:
    """`<stem>_mask.png` files -> outlines of the image `<stem>.*` (any non-zero pixel is lung)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AnnotationError(f"{folder}: lungVAE mask folder not found")
    for path in sorted(folder.glob("*_mask.png")):
        try:
            with Image.open(path) as image:
                mask = np.asarray(image.convert("L")) > 0
        except OSError as error:
            raise AnnotationError(f"{path}: cannot decode the mask ({error})") from None
        yield Outline(path.name.removesuffix("_mask.png"), None, mask=mask)


def read_coco_boxes(json_path: str | Path) -> Iterator[Outline]:
    """COCO lung boxes (`bbox` = x, y, width, height in the frame of the image's `width/height`); a box
    published with null coordinates is no box."""
    json_path = Path(json_path)
    try:
        document = _read_json(json_path.read_bytes(), str(json_path))
        images = {item["id"]: item for item in document["images"]}
        boxes: dict[int, list[np.ndarray]] = {i: [] for i in images}
        for annotation in document["annotations"]:
            if None in annotation["bbox"]:
                continue
            x, y, w, h = (float(v) for v in annotation["bbox"])
            corners = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]])
            boxes.setdefault(annotation["image_id"], []).append(corners)
        outlines = [Outline(str(images[i]["file_name"]), (int(images[i]["width"]), int(images[i]["height"])),
                        tuple(shapes)) for i, shapes in sorted(boxes.items())]
    except FileNotFoundError:
        raise AnnotationError(f"{json_path}: COCO box file not found") from None
    except (KeyError, TypeError, ValueError) as error:
        raise AnnotationError(f"{json_path}: not a COCO annotation file ({type(error).__name__}: {error})") from None
    yield from outlines


def _stem_or_name(path: str) -> tuple[str, str]:
    name = Path(path).name
    return name, Path(name).stem


@dataclass
class AnnotationTable:
    """Masks keyed by manifest rows, and lines saying what was left out and why."""

    masks: pd.DataFrame
    lines: list[str] = field(default_factory=list)

    def of(self, origin: str) -> pd.DataFrame:
        return self.masks[self.masks["origin"] == origin]


def _match(manifest: pd.DataFrame, outlines: Iterator[Outline], origin: str, by_stem: bool) -> AnnotationTable:
    """Rows for every manifest image an outline names (by file name, or by stem for lungVAE masks)."""
    names = manifest["path"].map(lambda p: _stem_or_name(str(p))[1 if by_stem else 0])
    rows, unmatched, empty = [], 0, 0
    for outline in outlines:
        matching = manifest[names == outline.filename]
        if matching.empty:
            unmatched += 1
            continue
        if outline.lungs == 0:
            empty += 1
            continue
        first = matching.iloc[0]
        mask = outline.rasterise(int(first["width"]), int(first["height"]))
        rows += [{"image_id": row.image_id, "sha256": row.sha256, "path": row.path, "origin": origin,
                  "lungs": outline.lungs, "mask": mask} for row in matching.itertuples()]
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    line = f"{origin:<10} {table['sha256'].nunique():>4} image(s), {len(table)} manifest row(s)"
    skipped = [f"{unmatched} name no manifest image"] if unmatched else []
    skipped += [f"{empty} draw no lung"] if empty else []
    return AnnotationTable(table, [line + (f"; left out: {', '.join(skipped)}" if skipped else "")])


def annotation_table(manifest: pd.DataFrame, cohen_root: str | Path, v7_zip: str | Path | None = None,
                     origins: tuple[str, ...] = ORIGINS) -> AnnotationTable:
    """The masks of `origins` for the manifest's images, each at the image's own width and height."""
    unknown = set(origins) - set(ORIGINS)
    if unknown:
        raise AnnotationError(f"unknown annotation origin(s) {sorted(unknown)}; known: {', '.join(ORIGINS)}")
    cohen_root = Path(cohen_root)
    readers = {
        "v7": lambda: _match(manifest, read_v7_outlines(v7_zip), "v7", by_stem=False),
        "lungvae": lambda: _match(manifest, read_lungvae_masks(cohen_root / LUNGVAE_FOLDER), "lungvae", by_stem=True),
        "coco-boxes": lambda: _match(manifest, read_coco_boxes(cohen_root / COCO_FILE), "coco-boxes", by_stem=False),
    }
    if "v7" in origins and v7_zip is None:
        raise AnnotationError("the V7 outlines need v7_zip (the path of covid-only.zip)")
    parts = [readers[origin]() for origin in origins]
    masks = pd.concat([part.masks for part in parts], ignore_index=True)
    return AnnotationTable(masks, [line for part in parts for line in part.lines])
