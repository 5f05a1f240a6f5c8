"""Classification heads by name, on a backbone's feature map (B, C, H, W):

- `linear`: global average pool -> dropout -> dense.
- `pyimagesearch` (write-up 001): average pool 4x4 -> flatten -> dense 64, ReLU -> dropout 0.5 -> dense.
- `hansen` (write-up 002): flatten -> dropout 0.5 -> dense.
- `zivkovic` (write-up 003): global average pool -> flatten -> dropout -> dense 128, ReLU -> dense.
"""

from __future__ import annotations

from torch import nn

from covidxr.errors import UsageError

HEADS = ("linear", "pyimagesearch", "hansen", "zivkovic")


def make_head(name: str, channels: int, height: int, width: int, num_classes: int, dropout: float = 0.0) -> nn.Module:
    """A head for feature maps of `channels` x `height` x `width`."""
    if name == "linear":
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                             nn.Linear(channels, num_classes))
    if name == "pyimagesearch":
        pool = min(4, height, width)
        pooled = channels * (height // pool) * (width // pool)
        return nn.Sequential(nn.AvgPool2d(pool), nn.Flatten(), nn.Linear(pooled, 64), nn.ReLU(inplace=True),
                             nn.Dropout(0.5), nn.Linear(64, num_classes))
    if name == "hansen":
        return nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(channels * height * width, num_classes))
    if name == "zivkovic":
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout or 0.5),
                             nn.Linear(channels, 128), nn.ReLU(inplace=True), nn.Linear(128, num_classes))
    raise UsageError(f"unknown head; accepted: {', '.join(HEADS)}", "name", name)
