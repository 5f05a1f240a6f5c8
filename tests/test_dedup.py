import numpy as np
import pandas as pd
import pytest

from conftest import save_image, xray_pixels
from covidxr.data.dedup import duplicate_groups, phash_distances_within, thumbnail
from covidxr.data.sources.base import describe_file


def _manifest(paths, patients=None):
    rows = []
    for index, path in enumerate(paths):
        info = describe_file(str(path))
        rows.append({"image_id": f"i{index}", "path": str(path), "patient_id": (patients or {}).get(index, f"p{index}"),
                     **info})
    return pd.DataFrame(rows)


def _groups(table):
    groups, report = duplicate_groups(table)
    return groups.tolist(), report


def test_same_bytes_under_two_names_share_a_group(tmp_path):
    first = save_image(xray_pixels(1), tmp_path / "a.png")
    second = tmp_path / "b.png"
    second.write_bytes(first.read_bytes())
    other = save_image(xray_pixels(2), tmp_path / "c.png")
    groups, report = _groups(_manifest([first, second, other]))
    assert groups[0] == groups[1] != groups[2]
    assert report.groups == 1 and report.largest == 2


def test_same_pixels_in_another_format_share_a_group(tmp_path):
    pixels = xray_pixels(3)
    table = _manifest([save_image(pixels, tmp_path / "a.png"), save_image(pixels, tmp_path / "a.bmp"),
                       save_image(xray_pixels(4), tmp_path / "z.png")])
    assert table["sha256"].nunique() == 3
    groups, _ = _groups(table)
    assert groups[0] == groups[1] != groups[2]


def test_a_re_encoded_brighter_copy_is_a_near_duplicate(tmp_path):
    pixels = xray_pixels(5, size=128)
    brighter = np.clip(pixels.astype(int) * 0.9 + 20, 0, 255).astype(np.uint8)
    table = _manifest([save_image(pixels, tmp_path / "a.png"), save_image(brighter, tmp_path / "b.jpg", quality=70)])
    groups, report = _groups(table)
    assert groups[0] == groups[1] and report.pairs == 1


def test_close_hashes_with_different_pixels_must_not_join(tmp_path):
    """Same coarse anatomy, opposite fine texture: pHash within 4 bits, 64x64 Pearson r < 0.95."""
    base = xray_pixels(6, size=256).astype(float)
    cells = np.indices((64, 64)).sum(axis=0) % 2 * 2 - 1
    texture = np.kron(cells, np.ones((4, 4))) * 30
    images = [np.clip(base * 0.5 + 64 + sign * texture, 0, 255).astype(np.uint8) for sign in (1, -1)]
    table = _manifest([save_image(image, tmp_path / f"{i}.png") for i, image in enumerate(images)])
    hashes = np.array([int(h, 16) for h in table["phash"]], dtype=np.uint64)
    assert len(phash_distances_within(hashes, 4)) == 1, "precondition: the hashes are candidates"
    thumbs = [thumbnail(p) for p in table["path"]]
    assert np.corrcoef(*thumbs)[0, 1] < 0.95, "precondition: the pixels disagree"
    groups, report = _groups(table)
    assert groups[0] != groups[1] and report.pairs == 0


def test_distinct_images_stay_apart_and_groups_are_stable(tmp_path):
    table = _manifest([save_image(xray_pixels(10 + i), tmp_path / f"{i}.png") for i in range(30)])
    groups, report = _groups(table)
    assert len(set(groups)) == 30 and report.groups == 0 and report.largest == 1
    assert groups == _groups(table)[0]


def test_phash_candidates_are_pairs_within_the_distance():
    hashes = np.array([0b0, 0b1111, 0b11111, 0xFFFF << 48], dtype=np.uint64)
    pairs = phash_distances_within(hashes, 4).tolist()
    assert pairs == [[0, 1], [1, 2]]


def test_a_large_group_is_warned_about():
    from covidxr.data.dedup import DuplicateReport

    assert any("warning" in line for line in DuplicateReport(pairs=30, groups=1, largest=21).lines())
    assert not any("warning" in line for line in DuplicateReport(pairs=3, groups=1, largest=20).lines())


def test_bad_thresholds_are_usage_errors(tmp_path):
    from covidxr.errors import UsageError

    table = _manifest([save_image(xray_pixels(1), tmp_path / "a.png")])
    with pytest.raises(UsageError, match="max_distance=65: must be 0..64"):
        duplicate_groups(table, max_distance=65)
    with pytest.raises(UsageError, match=r"min_correlation=1.5: must be in \[-1, 1\]"):
        duplicate_groups(table, min_correlation=1.5)
