"""The data side of training: the recipe's selection applied to a manifest, augmentation, loaders."""

from __future__ import annotations

import logging

import pandas as pd
import torch
from torch.utils.data import DataLoader, WeightedRandomSampler
from torchvision.transforms import v2

from covidxr.config import Augmentation, TrainConfig
from covidxr.data.build import build
from covidxr.data.cache import PixelCache
from covidxr.data.dataset import CachedImages
from covidxr.data.labels import CLASSES
from covidxr.data.split import find_leaks
from covidxr.errors import CovidxrError, UsageError
from covidxr.lungs import prepare_with_lungs

log = logging.getLogger("covidxr.train")


def select_rows(manifest: pd.DataFrame, config: TrainConfig) -> pd.DataFrame:
    """The manifest rows a recipe trains on, with labels and splits.

    Rows outside the recipe's views and sources are dropped. A manifest already built for the recipe's
    task (labels within its classes, train/val/test splits) keeps its splits, unless the recipe asks for
    balance; otherwise `data build` runs here with the recipe's task, balance, split and seed.
    """
    selection = config.data
    table = manifest
    if selection.views is not None:
        wanted = {v.lower() for v in selection.views}
        table = table[table["view"].str.lower().isin(wanted) | (table["view"] == "")]
    if selection.sources is not None:
        unknown = set(selection.sources) - set(manifest["source"])
        if unknown:
            present = sorted(set(manifest["source"]))
            raise UsageError(f"data.sources {sorted(unknown)} not in the manifest; it has {present}")
        table = table[table["source"].isin(selection.sources)]
    classes = CLASSES[config.task]
    built_for_task = set(table["label"]) <= set(classes) and {"train", "val"} <= set(table["split"])
    if built_for_task and selection.balance is None:
        log.info("using the manifest's own splits (%d rows)", len(table))
        result = table.reset_index(drop=True)
    else:
        balance = {None: False, "smallest": True}.get(selection.balance, selection.balance)
        log.info("building the dataset here: task %s, balance %s, split %s, seed %d",
                 config.task, selection.balance, selection.split, config.seed)
        result = build([table], task=config.task, balance=balance, split=selection.split, seed=config.seed).manifest
    if len(find_leaks(result)):
        raise CovidxrError("the training manifest has patients crossing splits; run `covidxr data check`")
    missing = [s for s in ("train", "val") if not (result["split"] == s).any()]
    if missing:
        raise CovidxrError(f"the selected data has no {' or '.join(missing)} rows")
    return result


def augmentation(settings: Augmentation) -> v2.Transform:
    """torchvision v2 augmentation on uint8 (1, H, W) tensors."""
    steps: list[v2.Transform] = [
        v2.RandomAffine(degrees=settings.rotation, translate=(settings.translate, settings.translate),
                        scale=settings.scale),
        v2.ColorJitter(brightness=settings.brightness, contrast=settings.contrast),
    ]
    if settings.hflip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps)


def ensure_cache(manifest: pd.DataFrame, cache_root, config: TrainConfig) -> PixelCache:
    """The recipe's pixel cache, preparing what it lacks; failures are not trained on, they stop the run."""
    report = prepare_with_lungs(manifest, cache_root, config.preprocessing)
    if len(report.failures):
        raise CovidxrError(f"{len(report.failures)} image(s) could not be prepared (see "
                           f"{report.cache.folder / 'failures.csv'}); fix or drop them from the manifest")
    return report.cache


def class_weights(targets: torch.Tensor, classes: int) -> torch.Tensor:
    counts = torch.bincount(targets, minlength=classes).float().clamp(min=1)
    return counts.sum() / (classes * counts)


def loader(dataset, config: TrainConfig, train: bool, seed: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    sampler = None
    if train and config.optimisation.class_balance == "sampler":
        targets = torch.as_tensor(dataset.targets)
        weights = class_weights(targets, int(targets.max()) + 1)[targets]
        sampler = WeightedRandomSampler(weights.double(), num_samples=len(targets), replacement=True,
                                        generator=generator)
    return DataLoader(dataset, batch_size=config.optimisation.batch_size, shuffle=train and sampler is None,
                      sampler=sampler, generator=generator, num_workers=config.trainer.num_workers,
                      persistent_workers=config.trainer.num_workers > 0)


def split_datasets(manifest: pd.DataFrame, cache: PixelCache, config: TrainConfig) -> dict[str, CachedImages]:
    classes = CLASSES[config.task]
    transform = augmentation(config.augmentation)
    return {
        split: CachedImages(manifest[manifest["split"] == split], cache, classes,
                            transform if split == "train" else None)
        for split in ("train", "val")
    }
