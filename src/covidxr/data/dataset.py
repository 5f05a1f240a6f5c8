"""torch Dataset over the prepared-pixel cache: rows of a manifest -> (uint8 image tensor, class index); and the
sampler that gives each DDP rank the rows of its own part of the cache."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import distributed
from torch.utils.data import Dataset, Sampler

from covidxr.data.cache import SHARD_FILES, PixelCache, rank_rows
from covidxr.errors import UsageError

log = logging.getLogger("covidxr.data")


class CachedImages(Dataset):
    """Images of `manifest` read from `cache` (memory-mapped): a 1 x size x size uint8 tensor and the
    index of the row's label in `classes`, after `transform` when given. With `domains` (one integer per
    row, e.g. its source's index), items are (image, label index, domain index)."""

    def __init__(
        self,
        manifest: pd.DataFrame,
        cache: PixelCache,
        classes: Sequence[str],
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        domains: np.ndarray | None = None,
    ):
        unknown = sorted(set(manifest["label"]) - set(classes))
        if unknown:
            raise UsageError(f"label(s) {unknown} are not among the classes {list(classes)}")
        if domains is not None and len(domains) != len(manifest):
            raise ValueError(f"{len(domains)} domain indices for {len(manifest)} rows")
        self.slots = cache.slots(manifest["sha256"])
        self.targets = np.array([list(classes).index(label) for label in manifest["label"]], dtype=np.int64)
        self.sources = manifest["source"].to_numpy(str)
        self.domains = domains
        self.pixels = cache.pixels()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.slots)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | tuple[torch.Tensor, int, int]:
        image = torch.from_numpy(np.array(self.pixels[self.slots[index]])).unsqueeze(0)
        if self.transform is not None:
            image = self.transform(image)
        if self.domains is not None:
            return image, int(self.targets[index]), int(self.domains[index])
        return image, int(self.targets[index])


class ShardRankSampler(Sampler[int]):
    """The rows of this DDP rank only: whole blocks of the pixel cache (`rank_rows`), so each rank reads its own
    part of the cache files. Rank and world size come from torch.distributed when iterating (Lightning starts the
    process group after the loaders are made) unless given. Every rank yields as many rows as the largest share
    (a shorter share repeats rows, as DistributedSampler pads). With `weights` (the class-balancing samplers'),
    rows are drawn with replacement in proportion to them, else shuffled each epoch (`set_epoch`) or kept in order.
    """

    def __init__(self, slots: np.ndarray, shuffle: bool, seed: int, weights: torch.Tensor | None = None,
                 rank: int | None = None, world_size: int | None = None):
        self.slots = np.asarray(slots, dtype=np.int64)
        self.shuffle, self.seed, self.weights = shuffle, seed, weights
        self.placement = None if rank is None else (rank, world_size or 1)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _shares(self) -> tuple[np.ndarray, int]:
        if self.placement is not None:
            rank, world_size = self.placement
        elif distributed.is_available() and distributed.is_initialized():
            rank, world_size = distributed.get_rank(), distributed.get_world_size()
        else:
            rank, world_size = 0, 1
        block = max(1, min(SHARD_FILES, len(self.slots) // (4 * world_size)))
        shares = [rank_rows(self.slots, part, world_size, block) for part in range(world_size)]
        if world_size > 1 and self.epoch == 0:
            log.info("rank %d of %d reads %d of %d rows: its own blocks of the pixel cache", rank, world_size,
                     len(shares[rank]), len(self.slots))
        return shares[rank], max(len(share) for share in shares)

    def __len__(self) -> int:
        return self._shares()[1]

    def __iter__(self):
        rows, count = self._shares()
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.weights is not None:
            picks = torch.multinomial(self.weights[rows], count, replacement=True, generator=generator).numpy()
            return iter(rows[picks].tolist())
        if self.shuffle:
            rows = rows[torch.randperm(len(rows), generator=generator).numpy()]
        return iter(np.resize(rows, count).tolist())
