"""Classification heads by name on a backbone's feature map (B, C, H, W); `@register_head("name")` adds one,
`create_head` builds one:

- `linear`: global average pool -> dropout -> dense.
- `pyimagesearch` (write-up 001): average pool 4x4 -> flatten -> dense 64, ReLU -> dropout 0.5 -> dense.
- `hansen` (write-up 002): flatten -> dropout 0.5 -> dense.
- `zivkovic` (write-up 003): global average pool -> flatten -> dropout -> dense 128, ReLU -> dense.

`DomainHead` is the adversary of domain-adversarial training: it predicts where an image comes from
through a gradient-reversal layer (Ganin and Lempitsky 2015, "Unsupervised domain adaptation by
backpropagation").
"""

from __future__ import annotations

import torch
from torch import nn

from covidxr.registry import HEADS

register_head = HEADS.register
"""`@register_head("name")` on a builder(channels, height, width, num_classes, dropout) -> nn.Module makes
`model.head=name` valid in a recipe and builds it."""


def create_head(name: str, channels: int, height: int, width: int, num_classes: int,
                dropout: float = 0.0) -> nn.Module:
    """The head registered as `name` for feature maps of `channels` x `height` x `width`; a UsageError listing
    the registered heads for an unknown name."""
    return HEADS.create(name, channels=channels, height=height, width=width, num_classes=num_classes,
                        dropout=dropout)


@register_head("linear")
def linear(channels: int, height: int, width: int, num_classes: int, dropout: float) -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels, num_classes))


@register_head("pyimagesearch")
def pyimagesearch(channels: int, height: int, width: int, num_classes: int, dropout: float) -> nn.Module:
    pool = min(4, height, width)
    pooled = channels * (height // pool) * (width // pool)
    return nn.Sequential(nn.AvgPool2d(pool), nn.Flatten(), nn.Linear(pooled, 64), nn.ReLU(inplace=True),
                         nn.Dropout(0.5), nn.Linear(64, num_classes))


@register_head("hansen")
def hansen(channels: int, height: int, width: int, num_classes: int, dropout: float) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(channels * height * width, num_classes))


@register_head("zivkovic")
def zivkovic(channels: int, height: int, width: int, num_classes: int, dropout: float) -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout or 0.5),
                         nn.Linear(channels, 128), nn.ReLU(inplace=True), nn.Linear(128, num_classes))


class GradientReversal(torch.autograd.Function):
    """Identity forward; the gradient multiplied by -coefficient backward."""

    @staticmethod
    def forward(ctx, inputs: torch.Tensor, coefficient: float) -> torch.Tensor:
        ctx.coefficient = coefficient
        return inputs.view_as(inputs)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.coefficient * grad_output, None


class DomainHead(nn.Module):
    """Global average pool -> gradient reversal -> dense `hidden`, ReLU -> dense `num_domains`. The head learns
    to predict the domain; the reversed gradient teaches the backbone to hide it."""

    def __init__(self, channels: int, num_domains: int, hidden: int = 64):
        super().__init__()
        self.classifier = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True),
                                        nn.Linear(hidden, num_domains))

    def forward(self, features: torch.Tensor, coefficient: float) -> torch.Tensor:
        return self.classifier(GradientReversal.apply(features.mean(dim=(2, 3)), coefficient))
