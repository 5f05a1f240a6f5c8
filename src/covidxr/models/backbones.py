"""covidxr's own backbones by name, beside timm's: `@register_backbone` on a timm-style model function
(`fn(pretrained=False, **kwargs) -> nn.Module` with `forward_features`) registers it with timm under the
function's name, so `model.name=that_name` builds it like any timm model, and lists it in covidxr's registry
(named in the error for an unknown model)."""

from __future__ import annotations

from timm.models import register_model

from covidxr.registry import BACKBONES, Builder


def register_backbone(builder: Builder) -> Builder:
    """Register a timm-style model function with timm and with covidxr's backbone registry."""
    return BACKBONES.register(builder.__name__)(register_model(builder))
