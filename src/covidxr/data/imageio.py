"""Decode any supported chest X-ray file into one grayscale array.

`read_grayscale` returns a 2-D ``uint8`` array, 0 = black, 255 = white, whatever the file held:
8-bit images are kept as stored; deeper images (16-bit PNG/TIFF, 32-bit, DICOM after its modality and
VOI LUTs) are scaled linearly from their own minimum and maximum to 0..255; DICOM MONOCHROME1 is
inverted so that bone is bright. The format is sniffed from the content, never from the extension.

Refused before any pixel is decoded, with the reason: anything but a regular file (a FIFO would block
the reader), more pixels per frame than the limit, DICOM geometry that is not one whole number per
attribute or more than MAX_FRAMES frames (only the first frame is ever decoded), a Huffman JPEG too short
for the pixels it claims. Refused after decoding: non-finite pixel values. Large images are converted in
blocks (BLOCK_PIXELS) so memory stays bounded. DICOM problems carry the library's message without
identifying values (covidxr.data.privacy).
"""

from __future__ import annotations

import errno
import io
import math
import os
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
from PIL import Image, ImageOps

from covidxr.data.privacy import describe_error, keep_header_values_out_of_logs
from covidxr.errors import CovidxrError

if TYPE_CHECKING:
    from pydicom import Dataset

DEFAULT_MAX_PIXELS = 50_000_000
MAX_FRAMES = 1_000
BLOCK_PIXELS = 4_000_000  # float64 values converted at once (32 MB)
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


def _file_problem(path: str | Path) -> str | None:
    """Why `path` cannot be opened as a regular file (a FIFO would block the reader forever), or None."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "dangling symbolic link (its target does not exist)" if os.path.islink(path) else "file not found"
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "symbolic link loop"
        return f"cannot open ({error.strerror})"
    if stat.S_ISDIR(mode):
        return "a folder, not a file"
    if not stat.S_ISREG(mode):
        kind = "named pipe (FIFO)" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode) else "device"
        return f"not a regular file (a {kind})"
    return None


def format_of(head: bytes, name: str | Path) -> str:
    """The sniffed format of a file that starts with `head`; ImageReadError (naming `name`) when it is not a
    supported image."""
    if not head:
        raise ImageReadError(name, "empty file (0 bytes)")
    found = sniff_format(head)
    if found is None:
        raise ImageReadError(
            name,
            f"not an image or DICOM file (starts with {head[:12]!r}); "
            f"supported: {', '.join(SUPPORTED_FORMATS)}",
        )
    return found


def file_format(path: str | Path) -> str:
    """The sniffed format of a file; raises ImageReadError when it is not a regular file or not a supported
    image."""
    problem = _file_problem(path)
    if problem:
        raise ImageReadError(path, problem)
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError as error:
        raise ImageReadError(path, f"cannot open ({error.strerror})") from None
    return format_of(head, path)


def read_grayscale(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode `path` to a 2-D uint8 grayscale array (see the module docstring)."""
    kind = file_format(path)
    with open(path, "rb") as handle:
        return decode_grayscale(handle, path, kind, max_pixels)


Decoded = tuple[str, np.ndarray | None, str]
"""A file as `decoded_file` reads it: (the path as given, its grey pixels or None, why it cannot be read)."""


def decoded_file(path: str | Path) -> Decoded:
    """`read_grayscale` of a file that may be unreadable: its pixels, or the reason (an error row's)."""
    try:
        return os.fspath(path), read_grayscale(path), ""
    except ImageReadError as error:
        return os.fspath(path), None, error.problem


def decode_bytes(content: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """`read_grayscale` of a file's content held in memory (an upload); errors name `name`."""
    return decode_grayscale(io.BytesIO(content), name, format_of(content[:132], name), max_pixels)


def decode_grayscale(handle: BinaryIO, name: str | Path, kind: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an open binary file of sniffed format `kind`; errors name `name`."""
    if kind == "dicom":
        return _read_dicom(handle, name, max_pixels)
    return _read_pillow(handle, name, max_pixels)


def _check_pixel_count(path: str | Path, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageReadError(
            path,
            f"{width}x{height} = {width * height:,} pixels exceeds the limit of {max_pixels:,} "
            "(possible decompression bomb)",
        )
    if width < 1 or height < 1:
        raise ImageReadError(path, f"image has no pixels ({width}x{height})")


def _read_pillow(handle: BinaryIO, name: str | Path, max_pixels: int) -> np.ndarray:
    try:
        with Image.open(handle) as image:
            _check_pixel_count(name, image.width, image.height, max_pixels)
            if image.format == "JPEG":
                _check_jpeg_length(handle, name, image.width, image.height)
            image.load()
            image = ImageOps.exif_transpose(image)
            return _pillow_to_gray(image, name)
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageReadError(name, f"pixel count exceeds the limit (possible decompression bomb: {error})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageReadError(name, f"cannot decode image ({_describe(error)})") from None


def _jpeg_frame_marker(handle: BinaryIO) -> int | None:
    """The JPEG's start-of-frame marker (0xC0..0xCF but DHT, JPG and DAC), read segment by segment."""
    handle.seek(2)
    for _ in range(256):
        head = handle.read(4)
        if len(head) < 4 or head[0] != 0xFF:
            return None
        marker, length = head[1], struct.unpack(">H", head[2:])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return marker
        handle.seek(length - 2, os.SEEK_CUR)
    return None


def _check_jpeg_length(handle: BinaryIO, name: str | Path, width: int, height: int) -> None:
    """A Huffman-coded JPEG needs at least 2 bits per 8x8 block (sequential: a DC and an end-of-block code) or
    1 bit (progressive: the first DC scan); a file shorter than that cannot hold the pixels its header claims,
    and libjpeg would fill the missing part with grey without an error."""
    bits_per_block = {0xC0: 2, 0xC1: 2, 0xC2: 1}.get(_jpeg_frame_marker(handle))
    size = handle.seek(0, os.SEEK_END)
    handle.seek(0)
    if bits_per_block is None:
        return
    needed = math.ceil(width / 8) * math.ceil(height / 8) * bits_per_block // 8
    if size < needed:
        raise ImageReadError(name, f"the JPEG header claims {width}x{height} pixels but the file holds only {size:,} "
                                   f"bytes (at least {needed:,} needed): truncated or forged")


def _describe(error: Exception) -> str:
    text = str(error)
    return "image file is truncated" if "truncated" in text else text or type(error).__name__


def _pillow_to_gray(image: Image.Image, name: str | Path) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return to_uint8(np.asarray(image), name)
    if image.mode in ("LA", "PA", "RGBA", "La", "RGBa"):
        image = image.convert("RGBA").convert("RGB")
    return np.asarray(image.convert("L"), dtype=np.uint8).copy()


def scale_to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Linearly map an array's own minimum..maximum to 0..255 (a constant image becomes 0)."""
    return to_uint8(pixels, "<array>")


def to_uint8(pixels: np.ndarray, name: str | Path, transform: Callable[[np.ndarray], np.ndarray] | None = None,
             block_pixels: int = BLOCK_PIXELS) -> np.ndarray:
    """`transform(pixels)` (e.g. DICOM LUTs; elementwise) mapped from its own minimum..maximum to 0..255, in
    blocks of rows, so a large image never holds more than `block_pixels` float64 values at once (the result is
    the same as in one piece). Non-finite values (NaN, infinity) are refused: no grey scale can show them."""
    transform = transform or (lambda block: block)
    step = max(1, block_pixels // max(1, int(np.prod(pixels.shape[1:]))))
    starts = range(0, len(pixels), step)
    low, high = math.inf, -math.inf
    for start in starts:
        values = _finite(transform(pixels[start:start + step]), name)
        low, high = min(low, float(values.min())), max(high, float(values.max()))
    gray = np.zeros(pixels.shape, dtype=np.uint8)
    if high <= low:
        return gray
    for start in starts:
        values = np.asarray(transform(pixels[start:start + step]), dtype=np.float64)
        gray[start:start + step] = np.round((values - low) * (255.0 / (high - low)))
    return gray


def _finite(values: np.ndarray, name: str | Path) -> np.ndarray:
    if values.dtype.kind in "fc":
        bad = int(values.size - np.count_nonzero(np.isfinite(values)))
        if bad:
            raise ImageReadError(name, f"{bad:,} pixel value(s) are not finite numbers (NaN or infinity); "
                                       "such an image cannot be shown or classified")
    return values


def malformed_dicom_errors() -> tuple[type[Exception], ...]:
    """What pydicom raises on a malformed file (measured by corrupting test files byte by byte): its own
    InvalidDicomError and BytesLengthException, AttributeError for a missing required element, struct.error and
    EOFError for truncated elements, NotImplementedError (a RuntimeError) for an unknown VR, RuntimeError from its
    pixel decoders, OSError; ValueError/TypeError (NumPy's too, inside the LUTs) for header values of the wrong
    kind, which are parsed lazily, on first use."""
    from pydicom.errors import BytesLengthException, InvalidDicomError

    return (InvalidDicomError, BytesLengthException, AttributeError, KeyError, IndexError, struct.error, EOFError,
            RuntimeError, OSError, ValueError, TypeError)


def _read_dicom(handle: BinaryIO, name: str | Path, max_pixels: int) -> np.ndarray:
    """The DICOM file's pixels; problems carry the library's message without identifying values."""
    import pydicom

    keep_header_values_out_of_logs()
    try:
        dataset = pydicom.dcmread(handle)
    except malformed_dicom_errors() as error:
        raise ImageReadError(name, f"cannot parse DICOM ({describe_error(error)})") from None
    return dicom_grayscale(dataset, name, max_pixels)


@dataclass(frozen=True)
class DicomGeometry:
    rows: int
    columns: int
    frames: int
    samples: int


def _whole_number(dataset: Dataset, keyword: str, default: int | None) -> int:
    """A header value that must be one whole number (Rows, NumberOfFrames ...); ImageReadError otherwise."""
    raw = dataset.get(keyword, default)
    if raw is None or raw == "":
        if default is None:
            raise ImageReadError("", f"{keyword} is missing")
        return default
    try:
        value = float(raw)
    except (TypeError, ValueError):
        shown = repr(str(raw))[:40]
        raise ImageReadError("", f"{keyword} is {shown}: expected one whole number") from None
    if not value.is_integer() or value < 1:
        raise ImageReadError("", f"{keyword} is {raw}: expected a whole number of at least 1")
    return int(value)


def dicom_geometry(dataset: Dataset, name: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> DicomGeometry:
    """Rows, columns, frames and samples from the header, checked before any pixel is decoded: each one whole
    number, at most MAX_FRAMES frames, a frame within `max_pixels` (only the first frame is ever decoded)."""
    try:
        geometry = DicomGeometry(*(_whole_number(dataset, keyword, default) for keyword, default in (
            ("Rows", None), ("Columns", None), ("NumberOfFrames", 1), ("SamplesPerPixel", 1))))
    except ImageReadError as error:
        raise ImageReadError(name, error.problem) from None
    except malformed_dicom_errors() as error:
        raise ImageReadError(name, f"malformed DICOM image header ({describe_error(error, dataset)})") from None
    if geometry.frames > MAX_FRAMES:
        raise ImageReadError(name, f"{geometry.frames:,} frames exceeds the limit of {MAX_FRAMES:,} (a radiograph "
                                   "has one; only the first would be used)")
    if geometry.samples not in (1, 3):
        raise ImageReadError(name, f"SamplesPerPixel is {geometry.samples}: expected 1 (grey) or 3 (colour)")
    _check_pixel_count(name, geometry.columns, geometry.rows, max_pixels)
    return geometry


def dicom_grayscale(dataset: Dataset, name: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Grey pixels of a parsed DICOM dataset (first frame only: the others are never decoded), as
    `read_grayscale` returns them; `name` names the dataset in errors (a file, an upload, or an instance
    retrieved from a server)."""
    keep_header_values_out_of_logs()
    if "PixelData" not in dataset:
        raise ImageReadError(name, "DICOM file has no pixel data")
    geometry = dicom_geometry(dataset, name, max_pixels)
    try:
        pixels = _first_frame(name, dataset)
        if pixels.shape[:2] != (geometry.rows, geometry.columns):
            raise ImageReadError(name, f"decoded {pixels.shape[1]}x{pixels.shape[0]} pixels, not the "
                                       f"{geometry.columns}x{geometry.rows} of its header")
        return _dicom_grey(pixels, dataset, name)
    except ImageReadError:
        raise
    except malformed_dicom_errors() as error:
        raise ImageReadError(name, f"malformed DICOM header value ({describe_error(error, dataset)})") from None


def _first_frame(name: str | Path, dataset: Dataset) -> np.ndarray:
    from pydicom.pixels import pixel_array

    try:
        return pixel_array(dataset, index=0)
    except malformed_dicom_errors() as error:
        syntax = (getattr(dataset, "file_meta", None) or {}).get("TransferSyntaxUID", "unknown")
        syntax_name = getattr(syntax, "name", str(syntax))
        raise ImageReadError(name, f"cannot decode DICOM pixel data (transfer syntax {syntax_name}: "
                                   f"{describe_error(error, dataset)})") from None


def _rescale_problem(dataset: Dataset) -> str | None:
    for keyword in ("RescaleSlope", "RescaleIntercept"):
        value = dataset.get(keyword)
        if value is not None and value != "" and not math.isfinite(float(value)):
            return f"{keyword} is {float(value)}: pixel values cannot be rescaled to a finite number"
    return None


def _dicom_grey(pixels: np.ndarray, dataset: Dataset, name: str | Path) -> np.ndarray:
    """Modality and VOI LUTs, then 0..255 (MONOCHROME1 inverted); colour converted to grey."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric.startswith("MONOCHROME"):
        problem = _rescale_problem(dataset)
        if problem:
            raise ImageReadError(name, problem)
        gray = to_uint8(pixels, name, lambda block: apply_voi_lut(apply_modality_lut(block, dataset), dataset))
        return 255 - gray if photometric == "MONOCHROME1" else gray
    rgb = Image.fromarray(to_uint8(pixels, name))
    return np.asarray(rgb.convert("L"), dtype=np.uint8).copy()


def declared_pixels(content: bytes) -> int:
    """The pixel count a file's header declares (its first frame), read without decoding; 0 when the header
    cannot be read (decoding will then say why)."""
    try:
        if sniff_format(content[:132]) == "dicom":
            import pydicom

            keep_header_values_out_of_logs()
            header = pydicom.dcmread(io.BytesIO(content), stop_before_pixels=True)
            geometry = dicom_geometry(header, "upload", max_pixels=2**62)
            return geometry.rows * geometry.columns * geometry.samples
        with Image.open(io.BytesIO(content)) as image:
            return image.width * image.height * len(image.getbands())
    except (ImageReadError, OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError,
            *malformed_dicom_errors()):
        return 0
