"""torch Dataset over the prepared-pixel cache: rows of a manifest -> (uint8 image tensor, class index)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from covidxr.data.cache import PixelCache
from covidxr.errors import UsageError


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
