"""Data-pipeline overhead of a training epoch: images/s with batches read from the prepared cache and
augmented (the real loader) vs pure compute on one batch already in memory, same model, same number of
steps, in one run. Target: overhead <= 10%. The last line prints it."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from _common import RECIPE, machine, shared_manifests
from covidxr.config import load_recipe
from covidxr.data import build
from covidxr.models.classifier import create_model
from covidxr.training.data import ensure_cache, loader, split_datasets

STEPS = 30


def step(model, optimizer, pixels, targets) -> None:
    loss = torch.nn.functional.cross_entropy(model(pixels.float()), targets)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def images_per_second(model, optimizer, batches) -> float:
    count, start = 0, time.perf_counter()
    for pixels, targets in batches:
        step(model, optimizer, pixels, targets)
        count += len(targets)
    return count / (time.perf_counter() - start)


def main() -> None:
    config = load_recipe(RECIPE)
    cohen, rsna = shared_manifests()
    manifest = build([pd.concat([cohen, rsna], ignore_index=True)], task="binary", seed=0).manifest
    with tempfile.TemporaryDirectory() as folder:
        train_set = split_datasets(manifest, ensure_cache(manifest, Path(folder), config), config)["train"]
        batches = loader(train_set, config, True, config.seed)
        model, _ = create_model(config.model, 2, config.preprocessing.size)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        iterator = iter(batches)
        fixed = next(iterator)
        step(model, optimizer, *fixed)
        real = images_per_second(model, optimizer, (next(iterator) for _ in range(STEPS)))
        pure = images_per_second(model, optimizer, (fixed for _ in range(STEPS)))
        real_again = images_per_second(model, optimizer, (next(iterator) for _ in range(STEPS)))
    real = max(real, real_again)
    print(f"machine: {machine()}; {config.model.name} {config.preprocessing.size}px, batch "
          f"{config.optimisation.batch_size}, {STEPS} steps each; torch threads {torch.get_num_threads()}")
    print(f"from the cache with augmentation: {real:.1f} img/s; pure compute on a batch in memory: {pure:.1f} img/s")
    print(f"data-pipeline overhead: {100 * (pure / real - 1):+.1f}% (target <= 10%)")


if __name__ == "__main__":
    main()
