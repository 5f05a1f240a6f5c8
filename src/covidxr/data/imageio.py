"""Decode any supported chest X-ray file into one grayscale array.

`read_grayscale` returns a 2-D ``uint8`` array, 0 = black, 255 = white, whatever the file held:
8-bit images are kept as stored; deeper images (16-bit PNG/TIFF, 32-bit, DICOM after its modality and
VOI LUTs) are scaled linearly from their own minimum and maximum to 0..255; DICOM MONOCHROME1 is
inverted so that bone is bright. The format is sniffed from the content, never from the extension.
"""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from covidxr.errors import CovidxrError

DEFAULT_MAX_PIXELS = 50_000_000
_MAGIC = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"GIF8", "gif"),
)
SUPPORTED_FORMATS = ("jpeg", "png", "bmp", "tiff", "webp", "gif", "dicom")


class ImageReadError(CovidxrError, ValueError):
    """A file that cannot become a grayscale image; the message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


def sniff_format(head: bytes) -> str | None:
    """The image format the first 132 bytes of a file announce, or None."""
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[128:132] == b"DICM":
        return "dicom"
    return None


def file_format(path: str | Path) -> str:
    """The sniffed format of a file; raises ImageReadError when it is not a supported image."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except OSError as error:
        raise ImageReadError(path, f"cannot open ({error.strerror})") from None
    if not head:
        raise ImageReadError(path, "empty file (0 bytes)")
    found = sniff_format(head)
    if found is None:
        raise ImageReadError(
            path,
            f"not an image or DICOM file (starts with {head[:12]!r}); "
            f"supported: {', '.join(SUPPORTED_FORMATS)}",
        )
    return found


def read_grayscale(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode `path` to a 2-D uint8 grayscale array (see the module docstring)."""
    if file_format(path) == "dicom":
        return _read_dicom(path, max_pixels)
    return _read_pillow(path, max_pixels)


def _check_pixel_count(path: str | Path, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageReadError(
            path,
            f"{width}x{height} = {width * height:,} pixels exceeds the limit of {max_pixels:,} "
            "(possible decompression bomb)",
        )
    if width < 1 or height < 1:
        raise ImageReadError(path, f"image has no pixels ({width}x{height})")


def _read_pillow(path: str | Path, max_pixels: int) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                _check_pixel_count(path, image.width, image.height, max_pixels)
                image.load()
                image = ImageOps.exif_transpose(image)
                return _pillow_to_gray(image)
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageReadError(path, f"pixel count exceeds the limit (possible decompression bomb: {error})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageReadError(path, f"cannot decode image ({_describe(error)})") from None


def _describe(error: Exception) -> str:
    text = str(error)
    return "image file is truncated" if "truncated" in text else text or type(error).__name__


def _pillow_to_gray(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return scale_to_uint8(np.asarray(image))
    if image.mode in ("LA", "PA", "RGBA", "La", "RGBa"):
        image = image.convert("RGBA").convert("RGB")
    return np.asarray(image.convert("L"), dtype=np.uint8).copy()


def scale_to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Linearly map an array's own minimum..maximum to 0..255 (a constant image becomes 0)."""
    values = pixels.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((values - low) * (255.0 / (high - low))).astype(np.uint8)


def malformed_dicom_errors() -> tuple[type[Exception], ...]:
    """What pydicom raises on a malformed file (measured by corrupting test files byte by byte): its own
    InvalidDicomError and BytesLengthException, AttributeError for a missing required element, struct.error and
    EOFError for truncated elements, NotImplementedError (a RuntimeError) for an unknown VR, RuntimeError from its
    pixel decoders, OSError; ValueError/TypeError (NumPy's too, inside the LUTs) for header values of the wrong
    kind, which are parsed lazily, on first use."""
    from pydicom.errors import BytesLengthException, InvalidDicomError

    return (InvalidDicomError, BytesLengthException, AttributeError, KeyError, IndexError, struct.error, EOFError,
            RuntimeError, OSError, ValueError, TypeError)


def _read_dicom(path: str | Path, max_pixels: int) -> np.ndarray:
    """The DICOM file's pixels; its problems are named by type only, since pydicom's messages can quote header
    values (patient identifiers among them)."""
    import pydicom

    malformed = malformed_dicom_errors()
    try:
        dataset = pydicom.dcmread(path)
    except malformed as error:
        raise ImageReadError(path, f"cannot parse DICOM ({type(error).__name__})") from None
    if "PixelData" not in dataset:
        raise ImageReadError(path, "DICOM file has no pixel data")
    try:
        _check_pixel_count(path, int(dataset.get("Columns", 0)), int(dataset.get("Rows", 0)), max_pixels)
        return _dicom_grey(_dicom_pixels(path, dataset, malformed), dataset)
    except ImageReadError:
        raise
    except malformed as error:
        raise ImageReadError(path, f"malformed DICOM header value ({type(error).__name__})") from None


def _dicom_pixels(path: str | Path, dataset, malformed: tuple[type[Exception], ...]) -> np.ndarray:
    try:
        return dataset.pixel_array
    except malformed as error:
        syntax = dataset.file_meta.get("TransferSyntaxUID", "unknown")
        name = getattr(syntax, "name", str(syntax))
        raise ImageReadError(path, f"cannot decode DICOM pixel data (transfer syntax {name}: {error})") from None


def _dicom_grey(pixels: np.ndarray, dataset) -> np.ndarray:
    """Modality and VOI LUTs, then 0..255 (MONOCHROME1 inverted); colour converted to grey."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric.startswith("MONOCHROME"):
        if pixels.ndim == 3:
            pixels = pixels[0]
        values = apply_voi_lut(apply_modality_lut(pixels, dataset), dataset)
        gray = scale_to_uint8(values)
        return 255 - gray if photometric == "MONOCHROME1" else gray
    if pixels.ndim == 4:
        pixels = pixels[0]
    rgb = Image.fromarray(scale_to_uint8(pixels))
    return np.asarray(rgb.convert("L"), dtype=np.uint8).copy()
