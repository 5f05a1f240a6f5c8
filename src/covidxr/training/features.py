"""Head-only training: the frozen backbone's features, computed once, as a dataset."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from covidxr.data.dataset import CachedImages
from covidxr.models.classifier import Classifier
from covidxr.progress import progress_bar


class FeatureSet(Dataset):
    """Backbone feature maps (stored as float16), their class indices and sources (for the sampler)."""

    def __init__(self, features: torch.Tensor, targets, sources):
        self.features, self.targets, self.sources = features, targets, sources

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int):
        return self.features[index], int(self.targets[index])


@torch.no_grad()
def backbone_features(model: Classifier, images: CachedImages, batch_size: int = 64) -> FeatureSet:
    """Run the backbone once over `images` (without augmentation) and keep its feature maps."""
    transform, images.transform = images.transform, None
    was_training = model.training
    model.eval()
    chunks = []
    try:
        with progress_bar() as bar:
            task = bar.add_task("backbone features", total=len(images))
            for pixels, *_ in DataLoader(images, batch_size=batch_size, shuffle=False):
                chunks.append(model.features(pixels).to(torch.float16))
                bar.advance(task, len(pixels))
    finally:
        images.transform = transform
        model.train(was_training)
    return FeatureSet(torch.cat(chunks), images.targets, images.sources)
