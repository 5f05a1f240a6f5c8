"""Weights in and out: ImageNet through timm's own mechanism (Hugging Face cache / hub), local
safetensors files, and `.pth` -> `.safetensors` conversion. Foreign pickles are never unpickled."""

from __future__ import annotations

import os
import pickle
import socket
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from timm.models import adapt_input_conv
from torch import nn

from covidxr.errors import CovidxrError, UsageError
from covidxr.runs import file_sha256

HUB_HOST = "huggingface.co"


class WeightsUnavailable(CovidxrError):
    """Pretrained weights that are neither cached nor downloadable; the message says what to do."""


@dataclass(frozen=True)
class WeightsFile:
    """The file a backbone's weights came from, and who provided it: what `model.json` `pretrained` records."""

    source: str
    """imagenet | torchxrayvision | file"""
    path: Path
    package: str | None = None
    version: str | None = None
    provider: str | None = None

    def provenance(self) -> dict:
        described = {"source": self.source, "file": self.path.name, "sha256": file_sha256(self.path)}
        extra = {"package": self.package, "version": self.version, "provider": self.provider}
        return described | {key: value for key, value in extra.items() if value is not None}


@dataclass
class LoadReport:
    """What loading a weights file did."""

    loaded: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        lines = [f"loaded {self.loaded} tensor(s)"]
        for label, keys in (("missing (left as initialised)", self.missing),
                            ("unexpected (ignored)", self.unexpected),
                            ("skipped for a shape mismatch", self.skipped),
                            ("adapted to the input channels", self.adapted)):
            if keys:
                lines.append(f"{len(keys)} {label}: {', '.join(keys[:8])}{', ...' if len(keys) > 8 else ''}")
        return lines


def hub_file(name: str) -> tuple[str, str]:
    """(Hugging Face repo, file) of timm's default pretrained weights for `name`."""
    config = timm.models.get_pretrained_cfg(name)
    if config is None or not config.hf_hub_id:
        raise UsageError(f"timm has no ImageNet weights on the hub for {name!r}; use model.pretrained=none")
    return config.hf_hub_id, getattr(config, "hf_hub_filename", None) or "model.safetensors"


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        socket.create_connection((HUB_HOST, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def cached_hub_weights(name: str) -> WeightsFile | None:
    """timm's ImageNet weights file for `name` in the local Hugging Face cache, if there."""
    from huggingface_hub import try_to_load_from_cache

    hub_id, filename = hub_file(name)
    cached = try_to_load_from_cache(hub_id, filename)
    return WeightsFile(source="imagenet", path=Path(cached), provider=f"timm hub {hub_id}") \
        if isinstance(cached, str) else None


def imagenet_backbone(name: str, in_chans: int) -> nn.Module:
    """timm's ImageNet weights for `name` from the local cache, else the hub; fails fast when offline."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.constants import HF_HUB_CACHE

    hub_id, filename = hub_file(name)
    cached = try_to_load_from_cache(hub_id, filename)
    if isinstance(cached, str):
        overlay = {"file": cached}
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, num_classes=0,
                                 in_chans=in_chans)
    if not _hub_reachable():
        raise WeightsUnavailable(
            f"ImageNet weights for {name} are not available here: {hub_id}/{filename} is not in the Hugging Face "
            f"cache ({HF_HUB_CACHE}) and {HUB_HOST} cannot be reached. Either (1) set the recipe key "
            f"model.weights=FILE.safetensors to a local file (on a machine with internet: python -c \"import timm; "
            f"timm.create_model('{name}', pretrained=True)\" fills that cache, which you can copy here), or "
            f"(2) train from scratch with model.pretrained=none."
        )
    return timm.create_model(name, pretrained=True, num_classes=0, in_chans=in_chans)


def _adapt_first_conv(tensor: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    """RGB conv weights -> the model's input channels with timm's `adapt_input_conv` (summed for grey)."""
    if tensor.ndim == 4 and target.ndim == 4 and tensor.shape[0] == target.shape[0] \
            and tensor.shape[2:] == target.shape[2:] and tensor.shape[1] == 3:
        return adapt_input_conv(target.shape[1], tensor)
    return None


def load_weights(module: nn.Module, path: str | Path) -> LoadReport:
    """Load a safetensors file into `module`, matching by name; shapes that differ are skipped (a 3->1
    channel first conv is adapted), and missing/unexpected keys are reported, not fatal."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise UsageError(f"{path}: weights must be a .safetensors file; convert a .pth with "
                         f"`covidxr weights convert {path} -o {path.with_suffix('.safetensors')}`")
    if not path.is_file():
        raise UsageError(f"{path}: weights file not found")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise CovidxrError(f"{path}: not a readable safetensors file ({error})") from None
    own = module.state_dict()
    report = LoadReport(loaded=0)
    usable = {}
    for key, tensor in tensors.items():
        if key not in own:
            report.unexpected.append(key)
        elif tensor.shape == own[key].shape:
            usable[key] = tensor
        elif (adapted := _adapt_first_conv(tensor, own[key])) is not None:
            usable[key] = adapted
            report.adapted.append(key)
        else:
            report.skipped.append(f"{key} {tuple(tensor.shape)}->{tuple(own[key].shape)}")
    module.load_state_dict(usable, strict=False)
    report.loaded = len(usable)
    report.missing = [key for key in own if key not in usable]
    if not usable:
        raise CovidxrError(f"{path}: no tensor matches this model's parameter names "
                           f"(e.g. file has {next(iter(tensors), 'nothing')}, model has {next(iter(own))})")
    return report


def convert_checkpoint(source: str | Path, target: str | Path) -> int:
    """`.pth` state dict -> `.safetensors`, reading with torch.load(weights_only=True) only."""
    source, target = Path(source), Path(target)
    try:
        content = torch.load(source, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UsageError(f"{source}: file not found") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:  # measured: what torch.load raises
        raise CovidxrError(f"{source}: not a plain tensor checkpoint; refused to unpickle it ({error})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(content, dict) and isinstance(content.get(key), dict):
            content = content[key]
    if not isinstance(content, dict) or not content or not all(isinstance(v, torch.Tensor) for v in content.values()):
        raise CovidxrError(f"{source}: expected a dict of tensors (a state dict)")
    tensors = {key.removeprefix("module."): value.contiguous() for key, value in content.items()}
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(target))
    return len(tensors)
