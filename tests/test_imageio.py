"""Decoding: every supported format to one uint8 grayscale array, and clear errors for broken files."""

import io
import struct
import zlib

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from conftest import write_dicom, xray_pixels
from covidxr.data.imageio import ImageReadError, read_grayscale
from hostile import dicom_with, float_tiff, jpeg_claiming, nan_slope_dicom, rle_multiframe, special_files

GRAY = xray_pixels(7, size=64)


def _check_gray(array, shape=(64, 64)):
    assert array.dtype == np.uint8 and array.ndim == 2 and array.shape == shape


@pytest.mark.parametrize("name, mode, options", [
    ("grey.png", "L", {}), ("rgb.png", "RGB", {}), ("rgba.png", "RGBA", {}), ("la.png", "LA", {}),
    ("palette.png", "P", {}), ("grey.jpg", "L", {"quality": 95}), ("rgb.jpg", "RGB", {"quality": 95}),
    ("cmyk.jpg", "CMYK", {"quality": 95}), ("grey.bmp", "L", {}), ("grey.tif", "L", {}),
    ("rgb.webp", "RGB", {"lossless": True}), ("progressive.jpg", "L", {"quality": 95, "progressive": True}),
])
def test_pillow_formats_decode_to_the_same_grey(tmp_path, name, mode, options):
    image = Image.fromarray(GRAY).convert(mode)
    image.save(tmp_path / name, **options)
    decoded = read_grayscale(tmp_path / name)
    _check_gray(decoded)
    tolerance = 12 if name.endswith(".jpg") else 2
    assert np.abs(decoded.astype(int) - GRAY.astype(int)).mean() < tolerance


def test_the_extension_is_never_trusted(tmp_path):
    Image.fromarray(GRAY).save(tmp_path / "really.png", format="JPEG")
    _check_gray(read_grayscale(tmp_path / "really.png"))


def test_sixteen_bit_png_is_scaled_from_its_own_range(tmp_path):
    twelve_bit = (GRAY.astype(np.uint16) * 16)
    Image.fromarray(twelve_bit).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    decoded = read_grayscale(tmp_path / "deep.png")
    assert decoded.min() == 0 and decoded.max() == 255
    assert np.corrcoef(decoded.ravel(), GRAY.ravel())[0, 1] > 0.999


def test_exif_orientation_is_applied(tmp_path):
    tall = np.zeros((80, 40), dtype=np.uint8)
    tall[:10] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(tall).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    decoded = read_grayscale(tmp_path / "rotated.jpg")
    assert decoded.shape == (40, 80)
    assert decoded[:, -10:].mean() > 200 and decoded[:, :10].mean() < 50


def _dicom(path, photometric="MONOCHROME2", slope=1.0, intercept=0.0, window=None, pixels=True):
    return write_dicom(path, GRAY if pixels else None, photometric=photometric, slope=slope, intercept=intercept,
                       window=window)


def test_dicom_monochrome2_and_inverted_monochrome1(tmp_path):
    mono2 = read_grayscale(_dicom(tmp_path / "a.dcm"))
    mono1 = read_grayscale(_dicom(tmp_path / "b.dcm", photometric="MONOCHROME1"))
    _check_gray(mono2)
    assert np.corrcoef(mono2.ravel(), GRAY.ravel())[0, 1] > 0.999
    assert np.array_equal(mono1, 255 - mono2)


def test_dicom_rescale_and_window_are_applied(tmp_path):
    rescaled = read_grayscale(_dicom(tmp_path / "r.dcm", slope=2.0, intercept=-1024.0))
    assert np.corrcoef(rescaled.ravel(), GRAY.ravel())[0, 1] > 0.999
    center = float(np.median(GRAY) * 16)
    windowed = read_grayscale(_dicom(tmp_path / "w.dcm", window=(center, 400.0)))
    saturated = np.mean((windowed == 0) | (windowed == 255))
    assert saturated > 0.3, "a narrow window clips what lies outside it"


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_compressed_dicom_decodes_through_pydicom_handlers(tmp_path, syntax):
    path = _dicom(tmp_path / "plain.dcm")
    dataset = pydicom.dcmread(path)
    dataset.compress(syntax)
    dataset.save_as(tmp_path / "packed.dcm", enforce_file_format=True)
    assert np.array_equal(read_grayscale(tmp_path / "packed.dcm"), read_grayscale(path))


def test_undecodable_transfer_syntax_is_named(tmp_path):
    dataset = pydicom.dcmread(_dicom(tmp_path / "plain.dcm"))
    dataset.file_meta.TransferSyntaxUID = JPEGLSLossless
    dataset.PixelData = encapsulate([b"\xff\xd8 not really JPEG-LS"])
    dataset["PixelData"].VR = "OB"
    dataset.save_as(tmp_path / "odd.dcm", enforce_file_format=True)
    with pytest.raises(ImageReadError, match="transfer syntax JPEG-LS Lossless"):
        read_grayscale(tmp_path / "odd.dcm")


def test_dicom_without_pixel_data(tmp_path):
    with pytest.raises(ImageReadError, match="no pixel data"):
        read_grayscale(_dicom(tmp_path / "empty.dcm", pixels=False))


@pytest.mark.parametrize("cut", [0.3, 0.6, 0.9])
def test_malformed_dicom_headers_and_truncated_files_are_read_errors_not_crashes(tmp_path, cut):
    content = _dicom(tmp_path / "w.dcm", window=(2000.0, 3000.0)).read_bytes()
    (tmp_path / "bad-window.dcm").write_bytes(content.replace(b"2000.0", b"20x0.0", 1))
    with pytest.raises(ImageReadError, match=r"bad-window.dcm: malformed DICOM header value \(TypeError: .+\)"):
        read_grayscale(tmp_path / "bad-window.dcm")
    (tmp_path / "cut.dcm").write_bytes(content[:int(len(content) * cut)])
    with pytest.raises(ImageReadError, match="cut.dcm: ") as error:
        read_grayscale(tmp_path / "cut.dcm")
    assert "SECRET-ID" not in str(error.value)


def test_errors_never_show_patient_identifiers(tmp_path):
    path = _dicom(tmp_path / "empty.dcm", pixels=False)
    with pytest.raises(ImageReadError) as error:
        read_grayscale(path)
    assert "SECRET-ID" not in str(error.value) and "Doe" not in str(error.value)


def _encoded(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(xray_pixels(3, size=256)).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("name, content, message", [
    ("cut.jpg", _encoded("JPEG")[:3000], "truncated"),
    ("cut.png", _encoded("PNG")[:3000], "cannot decode"),
    ("empty.png", b"", "empty file"),
    ("page.png", b"<!DOCTYPE html><html><body>404</body></html>", "not an image or DICOM"),
    ("notes.jpg", b"just some text\n", "not an image or DICOM"),
])
def test_broken_files_raise_an_error_naming_file_and_problem(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match=message) as error:
        read_grayscale(path)
    assert str(path) in str(error.value)


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")


def test_a_pixel_bomb_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(100_000, 100_000))
    with pytest.raises(ImageReadError, match="exceeds the limit"):
        read_grayscale(path)
    Image.fromarray(GRAY).save(tmp_path / "small.png")
    with pytest.raises(ImageReadError, match="64x64 = 4,096 pixels exceeds the limit of 100"):
        read_grayscale(tmp_path / "small.png", max_pixels=100)
    _dicom(tmp_path / "small.dcm")
    with pytest.raises(ImageReadError, match="exceeds the limit of 100"):
        read_grayscale(tmp_path / "small.dcm", max_pixels=100)


def test_missing_file(tmp_path):
    with pytest.raises(ImageReadError, match="file not found"):
        read_grayscale(tmp_path / "nope.png")


def test_special_files_are_named_and_never_block(tmp_path):
    files = special_files(tmp_path / "special")
    for kind, problem in (("fifo", "named pipe"), ("loop", "symbolic link loop"), ("dangling", "dangling")):
        with pytest.raises(ImageReadError, match=problem):
            read_grayscale(files[kind])  # a FIFO would block open() forever


def test_only_the_first_frame_is_decoded_and_the_frame_count_is_checked_first(tmp_path):
    import tracemalloc

    with pytest.raises(ImageReadError, match="100,000 frames exceeds the limit"):
        read_grayscale(rle_multiframe(tmp_path / "huge.dcm", declared=100_000))
    path = rle_multiframe(tmp_path / "many.dcm", declared=64, stored=2, size=256)  # 8 MiB if all were decoded
    tracemalloc.start()
    try:
        gray = read_grayscale(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    _check_gray(gray, (256, 256))
    assert peak < 3 * 2**20, f"decoding one 256x256 frame peaked at {peak:,} bytes"


@pytest.mark.parametrize("keyword, vr, value, message", [
    ("Rows", "LO", "abc", "Rows is 'abc': expected one whole number"),
    ("Rows", "US", [96, 96], "Rows is .*expected one whole number"),
    ("Columns", "IS", "-5", "Columns is -5: expected a whole number of at least 1"),
    ("NumberOfFrames", "IS", "2.5", "NumberOfFrames is 2.5"),
    ("SamplesPerPixel", "US", 4, "SamplesPerPixel is 4"),
])
def test_odd_image_geometry_is_refused_with_the_reason(tmp_path, keyword, vr, value, message):
    with pytest.raises(ImageReadError, match=message):
        read_grayscale(dicom_with(tmp_path / "odd.dcm", **{keyword: (vr, value)}))


@pytest.mark.parametrize("make, message", [
    (lambda folder: float_tiff(folder / "nan.tif", float("nan")), "1 pixel value\\(s\\) are not finite"),
    (lambda folder: float_tiff(folder / "inf.tif", float("inf")), "not finite"),
    (lambda folder: nan_slope_dicom(folder / "nan.dcm"), "RescaleSlope is nan"),
])
def test_non_finite_pixels_are_refused(tmp_path, make, message):
    with pytest.raises(ImageReadError, match=message):
        read_grayscale(make(tmp_path))


def test_a_jpeg_claiming_more_pixels_than_its_data_holds_is_refused(tmp_path):
    forged = tmp_path / "forged.jpg"
    forged.write_bytes(jpeg_claiming(7000, 7000))
    with pytest.raises(ImageReadError, match="claims 7000x7000 pixels but the file holds only"):
        read_grayscale(forged)
    honest = tmp_path / "honest.jpg"
    honest.write_bytes(jpeg_claiming(224, 224))
    _check_gray(read_grayscale(honest), (224, 224))
    black = np.zeros((1024, 1024), dtype=np.uint8)  # compresses to little, yet above the bound
    Image.fromarray(black).save(tmp_path / "black.jpg", quality=95)
    _check_gray(read_grayscale(tmp_path / "black.jpg"), (1024, 1024))


def test_large_images_convert_in_blocks_to_the_same_grey():
    from covidxr.data.imageio import to_uint8

    values = np.random.default_rng(0).normal(1000, 300, size=(300, 200))
    whole = to_uint8(values, "x", block_pixels=10**9)
    assert np.array_equal(to_uint8(values, "x", block_pixels=1000), whole)
    assert whole.min() == 0 and whole.max() == 255
