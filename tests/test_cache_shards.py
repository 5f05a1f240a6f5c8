"""The sharded pixel cache: parallel writers, one reader over all shards, and DDP ranks reading their own shards."""

from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import save_image, xray_pixels
from covidxr.data import cache as cache_module
from covidxr.data.cache import PixelCache, Prepared, ShardedPixels, prepare, rank_rows, write_shard
from covidxr.data.dataset import CachedImages, ShardRankSampler
from covidxr.data.preprocess import Preprocessing, Preprocessor, preprocess
from covidxr.data.sources.base import describe_file

CONFIG = Preprocessing(size=16)


def _manifest(paths):
    rows = [{"image_id": f"i{n}", "path": str(path), "source": "s", "patient_id": f"p{n}",
             **{k: v for k, v in describe_file(str(path)).items() if k != "problem"}} for n, path in enumerate(paths)]
    return pd.DataFrame(rows)


@pytest.fixture
def images(tmp_path):
    return [save_image(xray_pixels(i, size=48), tmp_path / "img" / f"{i}.png") for i in range(7)]


def _expected(path):
    return preprocess(np.asarray(Image.open(path).convert("L")), CONFIG)[0]


def test_a_large_prepare_is_written_as_shards_by_the_workers_and_read_as_one_cache(images, tmp_path, monkeypatch):
    monkeypatch.setattr(cache_module, "SHARD_FILES", 2)
    manifest = _manifest(images)
    report = prepare(manifest, tmp_path / "cache", Preprocessor(CONFIG))
    assert (report.prepared, report.reused, len(report.failures)) == (7, 0, 0)
    assert len(list((report.cache.folder / "shards").glob("*.csv"))) == 4, "7 files in shards of 2"
    assert not report.cache.data_path.exists(), "the main shard is not written"
    cache = PixelCache(tmp_path / "cache", CONFIG)
    assert len(cache) == 7 and cache.shard_count == 5 and isinstance(cache.pixels(), ShardedPixels)
    for path, sha256 in zip(images, manifest["sha256"]):
        assert np.array_equal(cache.get(sha256), _expected(path))
    slots = cache.slots(manifest["sha256"])
    assert np.array_equal(cache.pixels()[slots], np.stack([_expected(path) for path in images]))
    dataset = CachedImages(manifest.assign(label="covid"), cache, ["non-covid", "covid"])
    assert np.array_equal(dataset[3][0][0].numpy(), _expected(images[3]))
    again = prepare(manifest, tmp_path / "cache", Preprocessor(CONFIG))
    assert (again.prepared, again.reused) == (0, 7)


def test_a_shard_without_its_index_is_not_read_and_its_files_are_prepared_again(images, tmp_path, monkeypatch):
    monkeypatch.setattr(cache_module, "SHARD_FILES", 4)
    manifest = _manifest(images)
    report = prepare(manifest, tmp_path / "cache", Preprocessor(CONFIG))
    killed = sorted((report.cache.folder / "shards").glob("*.csv"))[0]
    lost = len(pd.read_csv(killed))
    killed.unlink()
    assert len(PixelCache(tmp_path / "cache", CONFIG)) == 7 - lost
    assert prepare(manifest, tmp_path / "cache", Preprocessor(CONFIG)).prepared == lost


def _write_one(job):
    folder, seed = job
    pixels = np.full((16, 16), seed, dtype=np.uint8)
    return str(write_shard(folder, CONFIG, [Prepared(f"sha{seed}", pixels, 16, 16), Prepared(f"bad{seed}", None)]))


def test_many_processes_write_shards_at_once(tmp_path):
    folder = PixelCache(tmp_path / "cache", CONFIG).folder
    with ProcessPoolExecutor(max_workers=2) as pool:
        written = list(pool.map(_write_one, [(folder, seed) for seed in range(6)]))
    assert len(set(written)) == 6
    cache = PixelCache(tmp_path / "cache", CONFIG)
    assert len(cache) == 6 and "bad0" not in cache
    assert [int(cache.get(f"sha{seed}")[0, 0]) for seed in range(6)] == list(range(6))


def test_the_main_shard_keeps_growing_beside_written_shards(images, tmp_path):
    manifest = _manifest(images)
    cache = PixelCache(tmp_path / "cache", CONFIG)
    steps = Preprocessor(CONFIG)
    first = [cache_module.prepare_file((str(p), s, steps)) for p, s in zip(images[:3], manifest["sha256"][:3])]
    cache.add_shard(first)
    rest = [cache_module.prepare_file((str(p), s, steps)) for p, s in zip(images[3:], manifest["sha256"][3:])]
    cache.add(rest[:2])
    cache.add_shard(rest[2:] + first[:1])
    reopened = PixelCache(tmp_path / "cache", CONFIG)
    assert len(reopened) == 7 and len(reopened.index) == 7, "an entry two shards hold is read once"
    for path, sha256 in zip(images, manifest["sha256"]):
        assert np.array_equal(reopened.get(sha256), _expected(path))


def test_each_rank_reads_its_own_blocks_of_the_cache():
    slots = np.concatenate([np.arange(10), (1 << 32) + np.arange(4), (2 << 32) + np.arange(3)])
    slots = np.random.default_rng(0).permutation(np.repeat(slots, 2))
    parts = [rank_rows(slots, rank, 2, block=4) for rank in range(2)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(slots))), "every row to exactly one rank"
    blocks = [set(((slots[part] >> 32) * 100 + (slots[part] & 0xFFFFFFFF) // 4).tolist()) for part in parts]
    assert not blocks[0] & blocks[1], "no block of the cache is read by both ranks"
    assert abs(len(parts[0]) - len(parts[1])) <= 8, "about even, to a block"
    with pytest.raises(Exception, match="rank=2: must be in 0..1"):
        rank_rows(slots, 2, 2)


def test_the_rank_sampler_gives_each_rank_its_own_rows_and_the_same_count():
    slots = np.concatenate([np.arange(30), (1 << 32) + np.arange(11)])
    samplers = [ShardRankSampler(slots, shuffle=True, seed=3, rank=rank, world_size=2) for rank in range(2)]
    drawn = [list(sampler) for sampler in samplers]
    assert len(drawn[0]) == len(drawn[1]) == len(samplers[0]), "equal lengths keep DDP steps in step"
    owned = [set(rank_rows(slots, rank, 2, block=max(1, len(slots) // 8)).tolist()) for rank in range(2)]
    assert set(drawn[0]) == owned[0] and set(drawn[1]) == owned[1] and not owned[0] & owned[1]
    samplers[0].set_epoch(1)
    assert list(samplers[0]) != drawn[0] and sorted(set(samplers[0])) == sorted(owned[0]), "reshuffled each epoch"
    weights = torch.zeros(len(slots), dtype=torch.double)
    weights[sorted(owned[1])[:2]] = 1.0
    weighted = list(ShardRankSampler(slots, shuffle=True, seed=0, weights=weights, rank=1, world_size=2))
    assert set(weighted) == set(sorted(owned[1])[:2]) and len(weighted) == len(samplers[1])
    assert sorted(ShardRankSampler(slots, shuffle=False, seed=0)) == list(range(len(slots))), "one process: all rows"


def test_files_that_fail_in_a_sharded_prepare_are_reported_and_not_cached(images, tmp_path, monkeypatch):
    monkeypatch.setattr(cache_module, "SHARD_FILES", 3)
    manifest = _manifest(images)
    images[2].write_bytes(b"")
    report = prepare(manifest, tmp_path / "cache", Preprocessor(CONFIG))
    assert (report.prepared, len(report.failures)) == (6, 1)
    assert report.failures["image_id"].tolist() == ["i2"]
    assert "changed since import" in report.failures["problem"].iloc[0]
    assert manifest.loc[2, "sha256"] not in report.cache and len(report.cache) == 6
