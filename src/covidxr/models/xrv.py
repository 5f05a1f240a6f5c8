"""torchxrayvision's chest X-ray backbones by name: `xrv-densenet121-res224-all`, `xrv-resnet50-res512-all`
(any `xrv-<torchxrayvision weights name>` whose architecture is densenet121 or resnet50).

The architectures are timm's `densenet121` and `resnet50` with one input channel: their tensors carry the
same names as torchxrayvision's. The weights are the files torchxrayvision keeps in its cache folder
(`~/.torchxrayvision/models_data/`, the file name from its `model_urls`), or the file given with
`--set model.weights=FILE`; covidxr never downloads them. torchxrayvision stores DenseNets as whole
pickled modules: they are read with `torch.load(weights_only=True)`, allowing only the torchxrayvision
and `torch.nn` classes the file names (any other class is refused). Its pixel scaling (0..255 ->
[-1024, 1024]) is the model's input normalisation, applied inside it. The package (`covidxr[xrv]`) is
needed to find and read its files, not to run a trained model.
"""

from __future__ import annotations

import importlib
import re
from importlib import metadata
from pathlib import Path

import torch

from covidxr.errors import UsageError
from covidxr.models.pretrained import WeightsConversionError
from covidxr.models.weights import WeightsFile, WeightsUnavailable

PREFIX = "xrv-"
ARCHITECTURES = ("densenet121", "resnet50")
"""torchxrayvision architectures whose tensor names timm's models of the same name share."""
MEAN, STD = 0.5, 1 / 2048
"""0..1 -> [-1024, 1024], torchxrayvision's `normalize`."""
_ALLOWED_MODULES = ("torchxrayvision.", "torch.nn.modules.")


def is_xrv(name: str) -> bool:
    return name.startswith(PREFIX)


def weights_name(name: str) -> str:
    """`xrv-densenet121-res224-all` -> torchxrayvision's `densenet121-res224-all`."""
    return name.removeprefix(PREFIX)


def architecture(name: str) -> str:
    """The timm architecture of an `xrv-` name (no torchxrayvision needed)."""
    base = weights_name(name).split("-")[0]
    if base not in ARCHITECTURES:
        raise UsageError(f"{name}: torchxrayvision backbones here are {', '.join(ARCHITECTURES)} "
                         f"(e.g. xrv-densenet121-res224-all, xrv-resnet50-res512-all)")
    return base


def native_resolution(name: str) -> int | None:
    """The image size the weights were trained at (`res224` -> 224), when the name says."""
    match = re.search(r"-res(\d+)", name)
    return int(match.group(1)) if match else None


def _package():
    try:
        return importlib.import_module("torchxrayvision")
    except ImportError:
        raise WeightsUnavailable("torchxrayvision backbones need the torchxrayvision package: pip install "
                                 "'covidxr[xrv]'; or pass a .safetensors file with --set model.weights=FILE") from None


def cache_folder() -> Path:
    """Where torchxrayvision keeps downloaded weights."""
    return Path(_package().utils.get_cache_dir()).expanduser()


def cached_file(name: str) -> WeightsFile:
    """torchxrayvision's cached weights file for `name`; offline and uncached, an error saying what to do."""
    package = _package()
    urls = package.models.model_urls
    key = weights_name(name)
    if key not in urls:
        known = sorted(f"{PREFIX}{k}" for k in urls if k.split("-")[0] in ARCHITECTURES)
        raise UsageError(f"{name}: torchxrayvision has no weights {key!r}; known: {', '.join(known)}")
    url = urls[key]["weights_url"]
    path = cache_folder() / Path(url).name
    if not path.is_file():
        raise WeightsUnavailable(
            f"torchxrayvision weights for {name} are not available here: {path.name} is not in torchxrayvision's "
            f"cache ({cache_folder()}) and covidxr does not download them. Either (1) copy the file there (on a "
            f"machine with internet: python -c \"import torchxrayvision as xrv; xrv.models.get_model('{key}')\" "
            f"fills that cache, or download {url}), or (2) pass it with --set model.weights=FILE, or (3) use "
            f"another backbone (--set model.name=efficientnet_lite0 --set model.pretrained=imagenet works offline).")
    return WeightsFile(source="torchxrayvision", path=path, package="torchxrayvision",
                       version=metadata.version("torchxrayvision"))


def _allowed_classes(path: Path) -> list[type]:
    """The classes a whole-module pickle names, if all are torchxrayvision's or torch.nn's; else an error."""
    names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    refused = [name for name in names if not name.startswith(_ALLOWED_MODULES)]
    if refused:
        raise WeightsConversionError(f"{path}: refused to unpickle it: it names {', '.join(refused)} (only "
                                     "torchxrayvision and torch.nn classes are allowed)")
    if names:
        _package()
    classes = []
    for name in names:
        module, _, attribute = name.rpartition(".")
        classes.append(getattr(importlib.import_module(module), attribute))
    return classes


def read_xrv_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a torchxrayvision weights file: a whole pickled module (its DenseNets) or a state dict
    (its ResNets), read with torch.load(weights_only=True) only."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: weights file not found")
    try:
        with torch.serialization.safe_globals(_allowed_classes(path)):
            content = torch.load(path, map_location="cpu", weights_only=True)
    except WeightsConversionError:
        raise
    except Exception as error:
        raise WeightsConversionError(f"{path}: not a torchxrayvision weights file ({error})") from None
    if isinstance(content, torch.nn.Module):
        content = content.state_dict()
    if not isinstance(content, dict) or not content or not all(isinstance(v, torch.Tensor) for v in content.values()):
        raise WeightsConversionError(f"{path}: expected a torchxrayvision model or a dict of tensors")
    return dict(content)
