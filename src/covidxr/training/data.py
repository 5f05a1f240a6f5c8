"""The data side of training: the recipe's selection applied to a manifest, augmentation, loaders."""

from __future__ import annotations

import logging
import math

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, WeightedRandomSampler
from torchvision.transforms import v2

from covidxr.config import Harmonisation, TrainConfig
from covidxr.data.build import build
from covidxr.data.cache import PixelCache, prepare
from covidxr.data.dataset import CachedImages, ShardRankSampler
from covidxr.data.labels import CLASSES
from covidxr.data.split import find_leaks
from covidxr.errors import CovidxrError, UsageError
from covidxr.lungs import preprocessor

log = logging.getLogger("covidxr.train")


def is_built_for(manifest: pd.DataFrame, task: str) -> bool:
    """True when the manifest is built for `task`: labels within its classes, train and val rows."""
    return set(manifest["label"]) <= set(CLASSES[task]) and {"train", "val"} <= set(manifest["split"])


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
    if len(table) and (table["split"] == "test").all():
        raise UsageError("the manifest holds test rows only (built with --split 0,0,1 for external validation): "
                         "evaluate a model on it with `covidxr evaluate --data`, do not train on it")
    if is_built_for(table, config.task) and selection.balance is None:
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


class RandomGamma(v2.Transform):
    """A gamma drawn uniformly from `gamma_range` for each image (torchvision has no random gamma)."""

    def __init__(self, gamma_range: tuple[float, float]):
        super().__init__()
        self.gamma_range = gamma_range

    def make_params(self, flat_inputs: list) -> dict:
        return {"gamma": float(torch.empty(1).uniform_(*self.gamma_range))}

    def transform(self, inpt, params: dict):
        return v2.functional.adjust_gamma(inpt, params["gamma"])


class RandomJpeg(v2.Transform):
    """JPEG re-encoding with OpenCV at a quality drawn from `quality_range` (torchvision's own JPEG transform
    rests on its image codecs, deprecated since 0.29)."""

    def __init__(self, quality_range: tuple[int, int]):
        super().__init__()
        self.quality_range = quality_range

    def make_params(self, flat_inputs: list) -> dict:
        low, high = self.quality_range
        return {"quality": int(torch.randint(low, high + 1, ()).item())}

    def transform(self, inpt, params: dict):
        pixels = inpt.numpy()
        _, encoded = cv2.imencode(".jpg", pixels[0], [cv2.IMWRITE_JPEG_QUALITY, params["quality"]])
        return torch.from_numpy(cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE)).reshape(inpt.shape)


def harmonisation_steps(settings: Harmonisation, size: int) -> list[v2.Transform]:
    """The enabled harmonisation degradations, each applied with its probability, in a fixed order."""
    low, high = (max(2, round(size * share)) for share in settings.rescale_range)
    steps = [
        (settings.rescale_p, [v2.RandomResize(low, high + 1, antialias=True), v2.Resize(size, antialias=True)]),
        (settings.jpeg_p, [RandomJpeg(settings.jpeg_quality)]),
        (settings.blur_p, [v2.GaussianBlur(2 * math.ceil(3 * settings.blur_sigma[1]) + 1, settings.blur_sigma)]),
        (settings.noise_p, [v2.GaussianNoise(sigma=settings.noise_sigma)]),
        (settings.gamma_p, [RandomGamma(settings.gamma_range)]),
    ]
    return [v2.RandomApply(transforms, p=p) for p, transforms in steps if p > 0]


def augmentation(config: TrainConfig) -> v2.Transform:
    """torchvision v2 transforms on uint8 (1, H, W) tensors: harmonisation, then augmentation."""
    settings = config.augmentation
    steps: list[v2.Transform] = [
        *harmonisation_steps(config.harmonisation, config.preprocessing.size),
        v2.RandomAffine(degrees=settings.rotation, translate=(settings.translate, settings.translate),
                        scale=settings.scale),
        v2.ColorJitter(brightness=settings.brightness, contrast=settings.contrast),
    ]
    if settings.hflip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps)


def ensure_cache(manifest: pd.DataFrame, cache_root, config: TrainConfig) -> PixelCache:
    """The recipe's pixel cache, preparing what it lacks; failures are not trained on, they stop the run."""
    report = prepare(manifest, cache_root, preprocessor(config.preprocessing))
    if len(report.failures):
        raise CovidxrError(f"{len(report.failures)} image(s) could not be prepared (see "
                           f"{report.cache.folder / 'failures.csv'}); fix or drop them from the manifest")
    return report.cache


def class_weights(targets: torch.Tensor, classes: int) -> torch.Tensor:
    counts = torch.bincount(targets, minlength=classes).float().clamp(min=1)
    return counts.sum() / (classes * counts)


def source_label_weights(targets: np.ndarray, sources: np.ndarray) -> torch.Tensor:
    """Sampling weight of each row so that labels are equally likely, and within each label the sources
    that hold it: row weight = 1 / (labels x sources of its label x rows of its source and label)."""
    cells = pd.DataFrame({"label": targets, "source": sources})
    rows_per_cell = cells.groupby(["label", "source"])["label"].transform("size")
    sources_per_label = cells.groupby("label")["source"].transform("nunique")
    weights = 1.0 / (cells["label"].nunique() * sources_per_label * rows_per_cell)
    return torch.tensor(weights.to_numpy(), dtype=torch.double)


def sampling_weights(dataset, class_balance: str) -> torch.Tensor | None:
    """Per-row weights of the training sampler, or None for plain shuffling."""
    targets = torch.as_tensor(dataset.targets)
    if class_balance == "sampler":
        return class_weights(targets, int(targets.max()) + 1)[targets].double()
    if class_balance == "source-label":
        return source_label_weights(np.asarray(dataset.targets), np.asarray(dataset.sources))
    return None


def by_cache_shard(config: TrainConfig, dataset) -> bool:
    """True when DDP ranks should each read their own part of the pixel cache (ShardRankSampler): a DDP strategy
    and a dataset read from the cache (not the head stage's cached features)."""
    return "ddp" in str(config.trainer.strategy) and hasattr(dataset, "slots")


def loader(dataset, config: TrainConfig, train: bool, seed: int) -> DataLoader:
    """The DataLoader of a split; under DDP over the pixel cache, each rank samples its own shards (the Trainer
    then leaves the sampler alone, see `by_cache_shard`)."""
    generator = torch.Generator().manual_seed(seed)
    weights = sampling_weights(dataset, config.optimisation.class_balance) if train else None
    if by_cache_shard(config, dataset):
        sampler = ShardRankSampler(dataset.slots, shuffle=train, seed=seed, weights=weights)
    else:
        sampler = None if weights is None else WeightedRandomSampler(weights, num_samples=len(weights),
                                                                     replacement=True, generator=generator)
    return DataLoader(dataset, batch_size=config.optimisation.batch_size, shuffle=train and sampler is None,
                      sampler=sampler, generator=generator, num_workers=config.trainer.num_workers,
                      persistent_workers=config.trainer.num_workers > 0)


def domain_indices(manifest: pd.DataFrame, column: str) -> tuple[np.ndarray, list[str]]:
    """Each row's index among the sorted distinct values of `column` (the adversary's targets), and those."""
    names = sorted(set(manifest[column]))
    if len(names) < 2:
        raise UsageError(f"adversarial.target {column}: the training rows hold a single {column} ({names}); "
                         "the adversary needs at least two")
    return manifest[column].map({name: i for i, name in enumerate(names)}).to_numpy(np.int64), names


def split_datasets(manifest: pd.DataFrame, cache: PixelCache, config: TrainConfig) -> dict[str, CachedImages]:
    """Train and val datasets; with an adversary, training items also carry their domain index."""
    classes = CLASSES[config.task]
    train_rows = manifest[manifest["split"] == "train"]
    domains = None
    if config.adversarial.weight > 0:
        domains, names = domain_indices(train_rows, config.adversarial.target)
        log.info("adversarial: a gradient-reversal head predicts %s among %d values (%s), weight %g",
                 config.adversarial.target, len(names), ", ".join(names[:5]) + (", ..." if len(names) > 5 else ""),
                 config.adversarial.weight)
    return {
        "train": CachedImages(train_rows, cache, classes, augmentation(config), domains),
        "val": CachedImages(manifest[manifest["split"] == "val"], cache, classes),
    }
