"""ONNX export with the inference contract in the file's metadata and a parity check against PyTorch;
`predict` and `serve` run `RUN/model.onnx` through `covidxr.models.onnx_runtime` when it matches the run's
weights."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxscript.optimizer
import pandas as pd
import torch
from onnx import TensorProto, helper, numpy_helper
from onnxscript import ir

from covidxr.data.dataset import CachedImages
from covidxr.errors import CovidxrError
from covidxr.lungs import prepare_with_lungs
from covidxr.models.classifier import Classifier, WithEmbedding
from covidxr.models.loading import RunModel, load_run
from covidxr.models.onnx_runtime import OUTPUTS, OnnxModel
from covidxr.runs import default_cache_root

log = logging.getLogger("covidxr.export")
PARITY_TOLERANCE = 1e-4
FLOAT16_SUFFIX = "__float16"


def parity_inputs(run: RunModel, count: int = 16) -> torch.Tensor:
    """Real prepared test images of the run when its cache is reachable, else seeded random pixels."""
    size = run.preprocessing.size
    try:
        manifest = pd.read_csv(run.run / "manifest.csv", dtype=str, keep_default_na=False)
        rows = manifest[manifest["split"] == "test"].head(count).reset_index(drop=True)
        report = prepare_with_lungs(rows, default_cache_root(), run.preprocessing)
        rows = rows[~rows["sha256"].isin(report.failures["sha256"])].reset_index(drop=True)
        images = CachedImages(rows, report.cache, run.classes)
        if len(images):
            return torch.stack([images[i][0] for i in range(len(images))]).float()
    except (OSError, CovidxrError, KeyError) as error:
        log.warning("parity on random pixels: the run's test images are not readable here (%s)", error)
    return torch.randint(0, 256, (count, 1, size, size), generator=torch.Generator().manual_seed(0)).float()


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
    """The model as one ONNX file: input `pixels` (batch, 1, size, size) float grey 0..255, outputs `logits`
    (batch, classes) and `embedding` (batch, channels), the pooled embedding a severity head reads.

    Constants are folded but batch normalisation is left unfused (ONNX Runtime fuses it when it loads the
    file), so the weights are stored as trained and weights kept in float16 stay exactly float16."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(WithEmbedding(model).eval(), (torch.zeros(2, 1, size, size),), dynamo=True,
                                    optimize=False, verbose=False, input_names=["pixels"], output_names=OUTPUTS,
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


def export_onnx(run_dir: str | Path, out: str | Path | None = None) -> tuple[Path, float]:
    """Write `out` (default RUN/model.onnx); returns it and the max |ONNX - PyTorch| difference of the logits
    and of the pooled embedding."""
    run = load_run(run_dir)
    out = Path(out) if out else run.rundir.onnx
    metadata = {"covidxr_model_json": json.dumps(run.contract), "weights_sha256": run.inference.weights_sha256,
                "preprocessing": json.dumps(run.contract["preprocessing"]), "classes": json.dumps(run.classes),
                "input": "pixels: float32 (batch, 1, size, size), grey 0..255; outputs: logits (batch, classes), "
                         "embedding (batch, channels): the backbone's pooled last feature map"}
    write_onnx(run.model, run.preprocessing.size, out, metadata)
    pixels = parity_inputs(run)
    with torch.no_grad():
        expected = [output.numpy() for output in WithEmbedding(run.model)(pixels)]
    exported = OnnxModel(out).outputs(pixels.numpy())
    difference = max(float(np.abs(got - want).max()) for got, want in zip(exported, expected))
    if difference > PARITY_TOLERANCE:
        out.unlink()
        raise CovidxrError(f"ONNX parity check failed: max |difference| {difference:.2e} > {PARITY_TOLERANCE:.0e}")
    return out, difference
