"""The images the input check is fitted and tested on, each with its kind, split and group (a patient, or the
base image a variant was made from; groups never straddle splits):
- `frontal`: the frontal chest radiographs of a built manifest (both sources), in that manifest's own split;
- `lateral` and `ct`: the lateral views and CT slices of Cohen's collection that the manifest drops, in the split
  of the patient's frontal images where the manifest has them, else by a hash of the patient id;
- `other`: scikit-image's and matplotlib's sample photos, rendered text pages, charts and synthetic images
  (uniform, gradients, noise).
Training rows of the scarce kinds also get flipped, cropped and rotated variants.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from covidxr.data.imageio import read_grayscale

SPLITS = ("train", "val", "test")
TRAIN_FRONTAL_PER_SOURCE = 600
VARIANTS = 4
PHOTOS_HELD_OUT = {"chelsea": "test", "cat": "test", "coffee": "test", "camera": "test", "rocket": "test",
                   "page": "test", "moon": "test", "grace_hopper.jpg": "test", "astronaut": "val", "clock": "val",
                   "text": "val", "coins": "val", "Minduka_Present_Blue_Pack.png": "val"}
GENERATED = {"document": 60, "chart": 60, "synthetic": 30, "face": 60}
WORDS = ("patient report the of and clinical summary results table figure method data analysis value total page "
         "invoice date account payment section chapter introduction conclusion").split()


@dataclass(frozen=True)
class Sample:
    name: str
    kind: str
    split: str
    group: str
    origin: str
    load: Callable[[], np.ndarray]


def split_of(key: str, shares: tuple[float, float] = (0.5, 0.2)) -> str:
    """A stable split from a hash of `key`: train, val and test in shares 0.5 / 0.2 / 0.3 by default."""
    fraction = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "train" if fraction < shares[0] else "val" if fraction < shares[0] + shares[1] else "test"


def frontal_samples(manifest: pd.DataFrame, seed: int = 0) -> list[Sample]:
    """Every validation and test row; at most TRAIN_FRONTAL_PER_SOURCE training rows of each source."""
    train = manifest[manifest["split"] == "train"]
    kept = pd.concat([train.groupby("source", group_keys=False).apply(
        lambda part: part.sample(min(len(part), TRAIN_FRONTAL_PER_SOURCE), random_state=seed)),
        manifest[manifest["split"] != "train"]])
    return [Sample(row.path, "frontal", row.split, row.patient_id, row.source,
                   lambda path=row.path: read_grayscale(path)) for row in kept.itertuples()]


def cohen_other_views(cohen_root: Path, manifest: pd.DataFrame) -> list[Sample]:
    """Lateral views and CT slices of Cohen's collection whose files are present."""
    metadata = pd.read_csv(cohen_root / "metadata.csv", dtype=str).fillna("")
    patient_split = dict(zip(manifest["patient_id"], manifest["split"]))
    samples = []
    for row in metadata.itertuples():
        kind = "ct" if row.modality == "CT" else "lateral" if row.view == "L" else None
        path = cohen_root / (row.folder or "images") / row.filename
        if kind is None or not path.is_file():
            continue
        patient = f"cohen:{row.patientid}"
        samples.append(Sample(str(path), kind, patient_split.get(patient) or split_of(patient), patient,
                              f"cohen {kind}", lambda path=path: read_grayscale(path)))
    return samples


def _photo_loaders() -> dict[str, Callable[[], np.ndarray]]:
    import matplotlib
    import skimage.data

    names = ("astronaut", "brick", "camera", "cat", "cell", "checkerboard", "chelsea", "clock", "coffee", "coins",
             "colorwheel", "grass", "gravel", "hubble_deep_field", "immunohistochemistry", "logo", "microaneurysms",
             "moon", "page", "retina", "rocket", "stereo_motorcycle", "text")
    loaders = {name: (lambda name=name: _as_gray(getattr(skimage.data, name)())) for name in names}
    sample_data = Path(matplotlib.get_data_path()) / "sample_data"
    for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png"):
        loaders[name] = lambda path=sample_data / name: read_grayscale(path)
    return loaders


def _as_gray(image: np.ndarray | tuple) -> np.ndarray:
    image = np.asarray(image[0] if isinstance(image, tuple) else image)
    if image.ndim == 3:
        image = image[..., 0] if image.shape[2] == 2 else np.asarray(Image.fromarray(image[..., :3]).convert("L"))
    if image.dtype != np.uint8:
        image = (255 * (image - image.min()) / max(1e-9, float(image.max() - image.min()))).astype(np.uint8)
    return image


def document(seed: int) -> np.ndarray:
    """A rendered page of text lines (some dark on light, some light on dark, one or two columns)."""
    rng = np.random.default_rng(seed)
    width, height = int(rng.integers(500, 1000)), int(rng.integers(600, 1200))
    dark = rng.random() < 0.2
    page = Image.new("L", (width, height), int(rng.integers(0, 40)) if dark else int(rng.integers(215, 256)))
    draw = ImageDraw.Draw(page)
    font = ImageFont.load_default(size=int(rng.integers(12, 30)))
    columns = int(rng.integers(1, 3))
    y = int(rng.integers(20, 80))
    while y < height - 40:
        for column in range(columns):
            words = " ".join(rng.choice(WORDS, int(rng.integers(2, 9))))
            draw.text((30 + column * width // columns, y), words, fill=230 if dark else int(rng.integers(0, 60)),
                      font=font)
        y += int(font.size * rng.uniform(1.3, 2.2))
    return np.asarray(page)


def chart(seed: int) -> np.ndarray:
    """A matplotlib chart: lines, bars, scatter, a histogram or a pie."""
    from matplotlib.figure import Figure

    rng = np.random.default_rng(seed)
    figure = Figure(figsize=(rng.uniform(4, 8), rng.uniform(3, 6)), dpi=80)
    axis = figure.subplots()
    kind = seed % 5
    if kind == 0:
        axis.plot(np.cumsum(rng.normal(size=(50, 3)), axis=0))
    elif kind == 1:
        axis.bar(range(8), rng.random(8))
    elif kind == 2:
        axis.scatter(*rng.normal(size=(2, 200)), s=5)
    elif kind == 3:
        axis.hist(rng.normal(size=500), bins=30)
    else:
        axis.pie(rng.random(5))
    axis.set_title(" ".join(rng.choice(WORDS, 3)))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return np.asarray(Image.open(buffer).convert("L"))


def synthetic(seed: int) -> np.ndarray:
    """A uniform, gradient, noise or blob image: what an empty or broken capture looks like."""
    rng = np.random.default_rng(seed)
    height, width = int(rng.integers(200, 800)), int(rng.integers(200, 800))
    kind = seed % 4
    if kind == 0:
        return np.full((height, width), int(rng.integers(0, 256)), np.uint8)
    if kind == 1:
        return np.tile(np.linspace(0, 255, width, dtype=np.uint8), (height, 1))
    if kind == 2:
        return rng.integers(0, 256, (height, width), dtype=np.uint8)
    blobs = cv2.GaussianBlur(rng.random((height, width)).astype(np.float32), (0, 0), 25)
    return _as_gray(blobs)


def face(index: int) -> np.ndarray:
    """One of scikit-image's small face photos, enlarged."""
    import skimage.data

    faces = skimage.data.lfw_subset()
    return cv2.resize(_as_gray(faces[index % len(faces)]), (200, 200), interpolation=cv2.INTER_CUBIC)


def other_samples() -> list[Sample]:
    samples = [Sample(name, "other", PHOTOS_HELD_OUT.get(name, "train"), f"photo:{name}", "photo", load)
               for name, load in _photo_loaders().items()]
    makers = {"document": document, "chart": chart, "synthetic": synthetic, "face": face}
    for kind, count in GENERATED.items():
        for seed in range(count):
            split = "train" if seed < count // 2 else "val" if seed < 3 * count // 4 else "test"
            samples.append(Sample(f"{kind}-{seed}", "other", split, f"{kind}:{seed}", kind,
                                  lambda maker=makers[kind], seed=seed: maker(seed)))
    return samples


def variant(gray: np.ndarray, seed: int) -> np.ndarray:
    """A flipped, cropped and slightly rotated copy."""
    rng = np.random.default_rng(seed)
    height, width = gray.shape
    if rng.random() < 0.5:
        gray = gray[:, ::-1]
    scale = rng.uniform(0.8, 1.0)
    top, left = int(rng.uniform(0, 1 - scale) * height), int(rng.uniform(0, 1 - scale) * width)
    gray = np.ascontiguousarray(gray[top:top + int(scale * height), left:left + int(scale * width)])
    rotation = cv2.getRotationMatrix2D((gray.shape[1] / 2, gray.shape[0] / 2), rng.uniform(-10, 10), 1.0)
    return cv2.warpAffine(gray, rotation, (gray.shape[1], gray.shape[0]), borderMode=cv2.BORDER_REFLECT)


def with_variants(samples: list[Sample]) -> list[Sample]:
    """Training samples of every kind but `frontal` also as VARIANTS variants."""
    extra = [Sample(f"{sample.name}#{number}", sample.kind, sample.split, sample.group, sample.origin,
                    lambda sample=sample, number=number: variant(sample.load(), number))
             for sample in samples if sample.split == "train" and sample.kind != "frontal"
             for number in range(VARIANTS)]
    return samples + extra


def corpus(manifest: pd.DataFrame, cohen_root: Path) -> list[Sample]:
    return with_variants(frontal_samples(manifest) + cohen_other_views(cohen_root, manifest) + other_samples())
