"""Training-loader throughput: batches/s read from the prepared cache vs decoding and preprocessing the
files for every batch (what a loader without a cache does), same manifest, same batch size, with 0 and
2 loader worker processes. The last line prints the best of each and their ratio."""

from __future__ import annotations

import tempfile
import time

import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from _common import machine, shared_manifests
from covidxr.data.cache import prepare
from covidxr.data.dataset import CachedImages
from covidxr.data.imageio import read_grayscale
from covidxr.data.preprocess import Preprocessing, Preprocessor, preprocess

BATCH, BATCHES, SIZE = 32, 40, 224


class DecodedImages(Dataset):
    def __init__(self, manifest: pd.DataFrame, config: Preprocessing):
        self.paths, self.config = manifest["path"].tolist(), config

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        pixels, _ = preprocess(read_grayscale(self.paths[index]), self.config)
        return torch.from_numpy(pixels).unsqueeze(0), 0


def batches_per_second(dataset: Dataset, workers: int) -> float:
    sampler = RandomSampler(dataset, replacement=True, num_samples=BATCH * (BATCHES + 1),
                            generator=torch.Generator().manual_seed(0))
    loader = DataLoader(dataset, batch_size=BATCH, sampler=sampler, num_workers=workers)
    iterator = iter(loader)
    next(iterator)
    start = time.perf_counter()
    for _ in range(BATCHES):
        next(iterator)
    return BATCHES / (time.perf_counter() - start)


def main() -> None:
    cohen, rsna = shared_manifests()
    manifest = pd.concat([cohen, rsna.sample(len(cohen), random_state=0)], ignore_index=True)
    manifest = manifest.drop_duplicates("sha256").assign(label="x")
    config = Preprocessing(size=SIZE)
    print(f"machine: {machine()}; {len(manifest)} images (all Cohen frontal + as many RSNA), "
          f"batch {BATCH}, {SIZE} px, {BATCHES} batches timed")
    with tempfile.TemporaryDirectory() as folder:
        cache = prepare(manifest, folder, Preprocessor(config)).cache
        cached = CachedImages(manifest, cache, classes=["x"])
        decoded = DecodedImages(manifest, config)
        results = {}
        for workers in (0, 2):
            results[("cache", workers)] = batches_per_second(cached, workers)
            results[("files", workers)] = batches_per_second(decoded, workers)
            print(f"{workers} workers: cache {results[('cache', workers)]:.1f} batches/s, "
                  f"decoding files {results[('files', workers)]:.1f} batches/s")
    best_cache = max(v for (kind, _), v in results.items() if kind == "cache")
    best_files = max(v for (kind, _), v in results.items() if kind == "files")
    print(f"loader: cache {best_cache:.1f} vs files {best_files:.1f} batches/s (best of 0/2 workers): "
          f"{best_cache / best_files:.1f}x")


if __name__ == "__main__":
    main()
