"""`covidxr_cnn`: the small from-scratch CNN of write-up 004 (five conv blocks -> FC -> outputs),
registered with `@register_backbone` (with timm and covidxr's registry) so `timm.create_model("covidxr_cnn", ...)`
makes it like any other model."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from covidxr.errors import UsageError
from covidxr.models.backbones import register_backbone


class CovidxrCNN(nn.Module):
    """Five blocks of conv 3x3 -> batch norm -> ReLU -> max-pool 2, then global average pool -> linear."""

    def __init__(self, num_classes: int = 2, in_chans: int = 1, widths: tuple[int, ...] = (16, 32, 64, 128, 256),
                 drop_rate: float = 0.0, global_pool: str = "avg", **_: Any):
        super().__init__()
        blocks, channels = [], in_chans
        for width in widths:
            blocks += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            channels = width
        self.features = nn.Sequential(*blocks)
        self.num_features = channels
        self.drop_rate = drop_rate
        self.global_pool = global_pool
        self.fc: nn.Module = nn.Identity()
        self.reset_classifier(num_classes, global_pool)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool:
            x = x.mean(dim=(2, 3))
        x = nn.functional.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_backbone
def covidxr_cnn(pretrained: bool = False, **kwargs: Any) -> CovidxrCNN:
    if pretrained:
        raise UsageError("covidxr_cnn has no pretrained weights; accepted: model.pretrained=none (from scratch), or "
                         "a weights file as model.weights=FILE.safetensors", "pretrained", pretrained)
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    return CovidxrCNN(**kwargs)
