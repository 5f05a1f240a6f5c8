"""Writing ONNX files of the project's networks (the classifier with its embedding and, where it has a closed
form, its Grad-CAM maps; the severity feature network): dynamo export, constants folded, weights that are
exactly float16 stored as float16."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxscript.optimizer
import torch
from onnx import TensorProto, helper, numpy_helper
from onnxscript import ir
from torch import nn

from covidxr.errors import CovidxrError
from covidxr.models.classifier import Classifier, WithEmbedding
from covidxr.models.gradcam import OUTPUT as GRADCAM_OUTPUT
from covidxr.models.gradcam import analytic_gradcam
from covidxr.models.onnx_runtime import OUTPUTS, OnnxModel

FLOAT16_SUFFIX = "__float16"
PARITY_TOLERANCE = 1e-4


def store_exact_float16(model: onnx.ModelProto) -> int:
    """Store every float32 initializer whose values are all exactly float16 numbers as float16, cast back
    to float32 where it is used: the file halves for weights kept in float16 (the shipped model's), and the
    computation is unchanged, value for value. Returns how many initializers were converted."""
    graph, casts = model.graph, []
    for initializer in graph.initializer:
        if initializer.data_type != TensorProto.FLOAT:
            continue
        values = numpy_helper.to_array(initializer)
        halves = values.astype(np.float16)
        if not np.array_equal(halves.astype(np.float32), values):
            continue
        name = initializer.name
        initializer.CopyFrom(numpy_helper.from_array(halves, name + FLOAT16_SUFFIX))
        casts.append(helper.make_node("Cast", [name + FLOAT16_SUFFIX], [name], to=TensorProto.FLOAT))
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return len(casts)


def write_onnx(model: Classifier, size: int, out: Path, metadata: dict[str, str] | None = None) -> Path:
    """The classifier as one ONNX file: input `pixels` (batch, 1, size, size) float grey 0..255, outputs
    `logits` (batch, classes) and `embedding` (batch, channels), the pooled embedding a severity head reads;
    for classifiers whose Grad-CAM has a closed form (covidxr.models.gradcam) also `gradcam` (batch, classes,
    h, w), so that explaining needs no PyTorch."""
    with_gradcam = analytic_gradcam(model, size)
    if with_gradcam is not None:
        return write_module_onnx(with_gradcam, size, out, [*OUTPUTS, GRADCAM_OUTPUT], metadata)
    return write_module_onnx(WithEmbedding(model), size, out, OUTPUTS, metadata)


def write_module_onnx(module: nn.Module, size: int, out: Path, outputs: list[str],
                      metadata: dict[str, str] | None = None) -> Path:
    """A module of grey pixels as one ONNX file: input `pixels` (batch, 1, size, size) float 0..255, the
    module's outputs named `outputs`, `metadata` in the file's properties.

    Constants are folded but batch normalisation is left unfused (ONNX Runtime fuses it when it loads the
    file), so the weights are stored as trained and weights kept in float16 stay exactly float16."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module.eval(), (torch.zeros(2, 1, size, size),), dynamo=True,
                                    optimize=False, verbose=False, input_names=["pixels"], output_names=outputs,
                                    dynamic_shapes={"pixels": {0: torch.export.Dim("batch", min=1, max=4096)}})
    graph = program.model
    ir.passes.common.NameFixPass()(graph)
    onnxscript.optimizer.fold_constants(graph)
    onnxscript.optimizer.remove_unused_nodes(graph)
    proto = ir.serde.serialize_model(graph)
    store_exact_float16(proto)
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(out))
    return out


def write_features_onnx(network: nn.Module, size: int, out: Path, pixels: np.ndarray,
                        metadata: dict[str, str] | None = None) -> float:
    """`network` (pixels -> (batch, features)) as an ONNX file with output `embedding`, checked against PyTorch
    on `pixels` (N, size, size); returns the max |difference| (the file is removed above PARITY_TOLERANCE)."""
    write_module_onnx(network, size, out, ["embedding"], metadata)
    batch = np.ascontiguousarray(pixels[:, None], dtype=np.float32)
    with torch.no_grad():
        expected = network.eval()(torch.from_numpy(batch)).numpy()
    difference = float(np.abs(OnnxModel(out).embedding(batch) - expected).max())
    if difference > PARITY_TOLERANCE:
        out.unlink()
        raise CovidxrError(f"{out}: ONNX parity check failed: max |difference| {difference:.2e} > "
                           f"{PARITY_TOLERANCE:.0e}")
    return difference
