import hashlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import save_image, xray_pixels
from covidxr.cli import main
from covidxr.data import save_manifest
from covidxr.data.cache import CacheMiss, PixelCache, prepare
from covidxr.data.preprocess import Preprocessing, Preprocessor, preprocess
from covidxr.data.sources.base import describe_file

CONFIG = Preprocessing(size=32)


def _manifest(paths, patients=None):
    rows = []
    for index, path in enumerate(paths):
        info = describe_file(str(path))
        rows.append({"image_id": f"i{index}", "path": str(path), "source": "s",
                     "patient_id": f"p{index}", **{k: v for k, v in info.items() if k != "problem"}})
    return pd.DataFrame(rows)


@pytest.fixture
def images(tmp_path):
    return [save_image(xray_pixels(i, size=80), tmp_path / "img" / f"{i}.png") for i in range(5)]


def test_prepare_stores_each_file_once_and_reads_back_the_preprocessed_pixels(images, tmp_path):
    manifest = _manifest(images + [images[0]])
    report = prepare(manifest, tmp_path / "cache", Preprocessor(CONFIG))
    assert (report.prepared, report.reused, len(report.failures)) == (5, 0, 0)
    cache = PixelCache(tmp_path / "cache", CONFIG)
    assert len(cache) == 5 and cache.pixels().shape == (5, 32, 32)
    expected, _ = preprocess(np.asarray(Image.open(images[3]).convert("L")), CONFIG)
    assert np.array_equal(cache.get(manifest.loc[3, "sha256"]), expected)
    slots = cache.slots(manifest["sha256"])
    assert slots[0] == slots[5]


def test_rerun_reuses_and_a_new_config_never_shares_pixels(images, tmp_path):
    manifest = _manifest(images)
    prepare(manifest, tmp_path / "cache", Preprocessor(CONFIG))
    again = prepare(manifest, tmp_path / "cache", Preprocessor(CONFIG))
    assert (again.prepared, again.reused) == (0, 5)
    other = prepare(manifest, tmp_path / "cache", Preprocessor(Preprocessing(size=32, clahe=True)))
    assert other.prepared == 5 and other.cache.folder != again.cache.folder


def test_a_changed_or_broken_file_is_reported_and_never_cached(images, tmp_path):
    broken = tmp_path / "img" / "broken.jpg"
    save_image(xray_pixels(9, size=200), broken, quality=90)
    manifest = _manifest(images + [broken])
    broken.write_bytes(broken.read_bytes()[:600])
    manifest.loc[len(manifest) - 1, "sha256"] = hashlib.sha256(broken.read_bytes()).hexdigest()
    save_image(xray_pixels(50, size=80), images[1])
    report = prepare(manifest, tmp_path / "cache", Preprocessor(CONFIG))
    problems = dict(zip(report.failures["image_id"], report.failures["problem"]))
    assert "changed since import" in problems["i1"]
    assert "truncated" in problems["i5"]
    assert report.prepared == 4
    assert manifest.loc[1, "sha256"] not in report.cache and manifest.loc[5, "sha256"] not in report.cache
    assert "i5" in (report.cache.folder / "failures.csv").read_text()
    with pytest.raises(CacheMiss, match="2 image"):
        report.cache.slots(manifest["sha256"])


def test_pixels_past_the_index_are_cut_off_on_open(images, tmp_path):
    manifest = _manifest(images[:3])
    report = prepare(manifest, tmp_path / "cache", Preprocessor(CONFIG))
    with open(report.cache.data_path, "ab") as handle:
        handle.write(b"\x07" * 500)
    reopened = PixelCache(tmp_path / "cache", CONFIG)
    assert reopened.data_path.stat().st_size == 3 * 32 * 32
    prepare(_manifest(images), tmp_path / "cache", Preprocessor(CONFIG))
    final = PixelCache(tmp_path / "cache", CONFIG)
    expected, _ = preprocess(np.asarray(Image.open(images[4]).convert("L")), CONFIG)
    assert np.array_equal(final.get(_manifest(images).loc[4, "sha256"]), expected)


def test_prepare_command_exit_codes_and_preview(images, tmp_path, capsys):
    manifest = _manifest(images)
    save_manifest(manifest, tmp_path / "m.csv")
    code = main(["prepare", str(tmp_path / "m.csv"), "--size", "32", "-o", str(tmp_path / "cache"),
                 "--preview", "3", "--preview-out", str(tmp_path / "sheet.png")])
    assert code == 0
    sheet = Image.open(tmp_path / "sheet.png")
    assert sheet.format == "PNG" and sheet.height > sheet.width
    (tmp_path / "img" / "0.png").write_bytes(b"")
    save_manifest(manifest, tmp_path / "m.csv")
    capsys.readouterr()
    assert main(["prepare", str(tmp_path / "m.csv"), "--size", "48", "-o", str(tmp_path / "cache")]) == 3
    assert "0.png" in capsys.readouterr().out
    assert main(["prepare", str(tmp_path / "m.csv"), "-o", str(tmp_path / "c"), "--preview", "2"]) == 2


def test_cached_images_dataset_yields_tensors_and_class_indices(images, tmp_path):
    import torch

    from covidxr.data.dataset import CachedImages
    from covidxr.errors import UsageError

    manifest = _manifest(images).assign(label=["covid", "non-covid", "covid", "non-covid", "non-covid"])
    cache = prepare(manifest, tmp_path / "cache", Preprocessor(CONFIG)).cache
    dataset = CachedImages(manifest, cache, classes=["non-covid", "covid"])
    image, target = dataset[2]
    assert len(dataset) == 5 and image.shape == (1, 32, 32) and image.dtype == torch.uint8 and target == 1
    assert torch.equal(image[0], torch.from_numpy(cache.get(manifest.loc[2, "sha256"])))
    flipped = CachedImages(manifest, cache, ["non-covid", "covid"], transform=lambda t: t.flip(-1))
    assert torch.equal(flipped[2][0], image.flip(-1))
    with pytest.raises(UsageError, match="not among the classes"):
        CachedImages(manifest, cache, classes=["covid"])
