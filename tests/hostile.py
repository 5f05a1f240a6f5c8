"""A hostile corpus, made by the tests themselves: what an attacker or a careless client sends.

Each builder writes one file (or returns bytes) and says in its name what is wrong with it. DICOM files carry
identifying values (a one-part patient name among them, which highdicom would quote in a warning) so that
the tests can grep logs and answers for them.
"""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.uid import RLELossless

from conftest import write_dicom, write_radiograph, xray_pixels

SECRET_NAMES = ("RaceSecret", "MRN-SECRET", "19291231")


def secret_patient(index: int) -> dict[str, str]:
    """Identifying values of a made-up patient: a one-part name (highdicom warns quoting it), an id, a date."""
    return {"PatientName": f"RaceSecret{index:03d}", "PatientID": f"MRN-SECRET-{index}", "PatientBirthDate": "19291231"}


def with_patient(path: Path, index: int) -> Path:
    dataset = pydicom.dcmread(path)
    for keyword, value in secret_patient(index).items():
        setattr(dataset, keyword, value)
    dataset.save_as(path, enforce_file_format=True)
    return path


def rle_multiframe(path: Path, declared: int, stored: int = 4, size: int = 256) -> Path:
    """An RLE-compressed CR whose header declares `declared` frames; `stored` frames are really there."""
    source = pydicom.dcmread(write_radiograph(path, xray_pixels(1, size), frames=stored))
    source.compress(RLELossless)
    source.NumberOfFrames = declared
    source.save_as(path, enforce_file_format=True)
    return path


def dicom_with(path: Path, **raw: tuple[str, object]) -> Path:
    """A radiograph with header elements replaced as given: keyword -> (VR, value), e.g. Rows=("LO", "abc")."""
    dataset = pydicom.dcmread(write_radiograph(path, xray_pixels(2, 96)))
    for keyword, (vr, value) in raw.items():
        tag = pydicom.datadict.tag_for_keyword(keyword)
        if tag in dataset:
            del dataset[tag]
        dataset.add_new(tag, vr, value)
    dataset.save_as(path, enforce_file_format=True)
    return path


def nan_slope_dicom(path: Path) -> Path:
    dataset = pydicom.dcmread(write_dicom(path, xray_pixels(3, 96)))
    dataset.RescaleSlope = "NaN"
    dataset.save_as(path, enforce_file_format=True)
    return path


def float_tiff(path: Path, bad: float) -> Path:
    """A 32-bit float TIFF with one non-finite pixel (`bad`: nan or inf)."""
    values = xray_pixels(4, 96).astype(np.float32)
    values[10, 10] = bad
    Image.fromarray(values, mode="F").save(path, format="TIFF")
    return path


def jpeg_claiming(width: int, height: int, real: int = 224) -> bytes:
    """A real `real`x`real` JPEG whose frame header claims `width`x`height`."""
    buffer = io.BytesIO()
    Image.fromarray(xray_pixels(5, real)).save(buffer, format="JPEG", quality=90)
    content = bytearray(buffer.getvalue())
    frame = content.index(b"\xff\xc0")
    content[frame + 5:frame + 9] = struct.pack(">HH", height, width)
    return bytes(content)


def special_files(folder: Path) -> dict[str, Path]:
    """A FIFO, a symbolic link loop and a dangling link, beside one good image."""
    folder.mkdir(parents=True, exist_ok=True)
    good = folder / "good.png"
    Image.fromarray(xray_pixels(6, 96)).save(good)
    fifo = folder / "pipe.jpg"
    os.mkfifo(fifo)
    (folder / "loop-a.png").symlink_to(folder / "loop-b.png")
    (folder / "loop-b.png").symlink_to(folder / "loop-a.png")
    (folder / "dangling.png").symlink_to(folder / "gone.png")
    return {"good": good, "fifo": fifo, "loop": folder / "loop-a.png", "dangling": folder / "dangling.png"}
