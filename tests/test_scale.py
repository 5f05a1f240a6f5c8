"""The data stages that must grow linearly: the near-duplicate index, the grouped folds, the label lookup, and the
thumbnail seam the build offers to callers whose rows have no files (the scale benchmark)."""

import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import StratifiedGroupKFold

from covidxr.data.dedup import duplicate_groups, thumbnail_matrix
from covidxr.data.hashindex import block_masks, pairs_between, pairs_within, parse_hashes
from covidxr.data.labels import label_for, labels_for
from covidxr.data.split import grouped_folds
from covidxr.errors import UsageError


def _half_set(rng: np.random.Generator, count: int) -> np.ndarray:
    bits = np.argsort(rng.random((count, 64)), axis=1)[:, :32].astype(np.uint64)
    return np.bitwise_or.reduce(np.uint64(1) << bits, axis=1)


def _flip(hashes: np.ndarray, flips: int, rng: np.random.Generator) -> np.ndarray:
    masks = [np.bitwise_or.reduce(np.uint64(1) << rng.choice(64, flips, replace=False).astype(np.uint64))
             for _ in hashes]
    return hashes ^ np.array(masks, dtype=np.uint64)


def _planted_hashes(count: int = 5000, seed: int = 0) -> np.ndarray:
    """pHash-like hashes (32 bits set) with copies 0..6 bits away from other rows and a look-alike cluster."""
    rng = np.random.default_rng(seed)
    hashes = _half_set(rng, count)
    copies, originals, cluster = np.split(rng.permutation(count), [count // 7, 2 * (count // 7)])
    for flips, part, source in zip(range(7), np.array_split(copies, 7), np.array_split(originals, 7)):
        hashes[part] = _flip(hashes[source], flips, rng)
    hashes[cluster[:count // 25]] = _flip(np.full(count // 25, hashes[cluster[-1]]), 3, rng)
    return hashes


def _all_pairs(first: np.ndarray, second: np.ndarray, max_distance: int) -> set[tuple[int, int]]:
    rows, columns = np.nonzero(np.bitwise_count(first[:, None] ^ second[None, :]) <= max_distance)
    return set(zip(rows.tolist(), columns.tolist()))


@pytest.mark.parametrize("max_distance", [0, 2, 4, 8])
def test_the_index_finds_exactly_the_all_pairs_answer_on_5k_hashes(max_distance):
    hashes = _planted_hashes()
    expected = {(i, j) for i, j in _all_pairs(hashes, hashes, max_distance) if i < j}
    found = pairs_within(hashes, max_distance)
    assert len(expected) > 100, "precondition: the planted copies and the cluster make pairs"
    assert [tuple(pair) for pair in found.tolist()] == sorted(expected)


def test_pairs_between_two_sets_equal_the_all_pairs_answer():
    hashes = _planted_hashes(seed=1)
    first, second = hashes[:2000], hashes[2000:]
    found = pairs_between(first, second, 4)
    expected = _all_pairs(first, second, 4)
    assert len(expected) > 20 and set(map(tuple, found.tolist())) == expected


def test_the_index_compares_blocks_not_all_pairs():
    masks = block_masks(1_000_000, 4)
    assert len(masks) == 15, "d=4 at a million hashes: 6 blocks, 2 of them equal (pigeonhole)"
    assert all(bin(int(mask)).count("1") >= 20 for mask in masks)
    assert len(block_masks(2000, 4)) == 5, "at two thousand: 5 blocks, one equal"
    assert block_masks(1000, 60) is None, "a distance that joins most pairs falls back to comparing them all"


def test_a_large_distance_falls_back_to_all_pairs_with_the_same_answer():
    hashes = _planted_hashes(count=300)
    expected = {(i, j) for i, j in _all_pairs(hashes, hashes, 40) if i < j}
    assert set(map(tuple, pairs_within(hashes, 40).tolist())) == expected


def test_hashes_parse_without_a_loop_and_bad_ones_are_named():
    assert parse_hashes(pd.Series(["ffffffffffffffff", "0000000000000001", "1f"])).tolist() == [2**64 - 1, 1, 31]
    with pytest.raises(UsageError, match=r"1 phash value\(s\).*'not-a-hash'"):
        parse_hashes(pd.Series(["0123456789abcdef", "not-a-hash"]))


def _sklearn_folds(labels, units, count, seed):
    fold = np.empty(len(labels), dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=count, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for number, (_, held_out) in enumerate(splitter.split(np.zeros(len(labels)), labels, units)):
            fold[held_out] = number
    return fold


@pytest.mark.parametrize("case", range(12))
def test_grouped_folds_equal_scikit_learns_stratified_group_kfold(case):
    rng = np.random.default_rng(case)
    rows = int(rng.integers(50, 600))
    labels = pd.Series(rng.choice(["covid", "normal", "pneumonia"][:2 + case % 2], rows))
    units = pd.Series(rng.integers(0, rows // (1 + case % 3), rows))
    count = [2, 3, 5, 20][case % 4]
    expected = _sklearn_folds(labels, units, count, case)
    assert grouped_folds(labels, units, count, seed=case).tolist() == expected.tolist()


def test_grouped_folds_refuse_more_folds_than_units():
    with pytest.raises(UsageError, match="cannot make 5 grouped folds of 3 patient unit"):
        grouped_folds(pd.Series(["a", "b", "a", "b"]), pd.Series([0, 1, 2, 2]), 5, seed=0)


def test_labels_for_equals_label_for_on_every_row():
    findings = pd.Series(["COVID-19", "covid-19, ARDS", "No Finding", "todo", "", "Lipoid", "COVID-19"] * 3)
    for task in ("binary", "three-class"):
        assert labels_for(findings, task).tolist() == [label_for(f, task) or "" for f in findings]


def _rows(hashes: list[str], paths: list[str]) -> pd.DataFrame:
    numbers = range(len(paths))
    return pd.DataFrame({"image_id": [f"i{n}" for n in numbers], "sha256": [f"s{n}" for n in numbers],
                         "path": paths, "phash": hashes, "patient_id": [f"p{n}" for n in numbers]})


def test_the_build_reads_pixels_through_the_thumbnail_seam_when_rows_have_no_files():
    rng = np.random.default_rng(0)
    pixels = {name: rng.integers(0, 256, 4096).astype(np.float32) for name in ("a", "c")}
    pixels["b"] = np.clip(pixels["a"] + rng.normal(0, 3, 4096), 0, 255).round().astype(np.float32)
    asked = []

    def thumbnails(paths):
        asked.extend(paths)
        return (pixels[path.rsplit("/", 1)[-1]] for path in paths)

    close = ["00000000ffffffff", "00000001fffffffe", "00000003fffffffc"]
    groups, report = duplicate_groups(_rows(close, ["/nowhere/a", "/nowhere/b", "/nowhere/c"]), thumbnails=thumbnails)
    assert sorted(asked) == ["/nowhere/a", "/nowhere/b", "/nowhere/c"], "every candidate's pixels, each once"
    assert groups[0] == groups[1] != groups[2], "a and b agree in pixels; c's hash is close but its pixels differ"
    assert report.pairs == 1


def test_thumbnails_are_held_as_bytes_unless_they_need_floats():
    whole = [np.full(4096, 7, dtype=np.float32), None]
    matrix, readable = thumbnail_matrix(iter(whole), 2)
    assert matrix.dtype == np.uint8 and readable.tolist() == [True, False]
    matrix, _ = thumbnail_matrix(iter([np.full(4096, 7, dtype=np.float32), np.full(4096, 0.5, dtype=np.float32)]), 2)
    assert matrix.dtype == np.float32 and matrix[0, 0] == 7 and matrix[1, 0] == 0.5
