"""ONNX export with the inference contract in the file's metadata, a parity check against PyTorch, and an
ONNX Runtime predictor that `predict` and `serve` use when `RUN/model.onnx` matches the run's weights."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pandas as pd
import torch

from covidxr.data.dataset import CachedImages
from covidxr.errors import CovidxrError
from covidxr.lungs import prepare_with_lungs
from covidxr.models.loading import RunModel, load_run
from covidxr.runs import default_cache_root

log = logging.getLogger("covidxr.export")
PARITY_TOLERANCE = 1e-4


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


def write_onnx(model: torch.nn.Module, size: int, out: Path) -> Path:
    """The model as ONNX: input `pixels` (batch, 1, size, size) float grey 0..255, output `logits`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.zeros(2, 1, size, size),), out, dynamo=True, verbose=False,
                          input_names=["pixels"],
                          output_names=["logits"],
                          dynamic_shapes={"pixels": {0: torch.export.Dim("batch", min=1, max=4096)}})
    return out


def export_onnx(run_dir: str | Path, out: str | Path | None = None) -> tuple[Path, float]:
    """Write `out` (default RUN/model.onnx); returns it and the max |ONNX - PyTorch| logit difference."""
    run = load_run(run_dir)
    out = Path(out) if out else run.run / "model.onnx"
    write_onnx(run.model, run.preprocessing.size, out)
    model = onnx.load(str(out))
    metadata = {"covidxr_model_json": json.dumps(run.contract), "weights_sha256": run.contract["weights_sha256"],
                "preprocessing": json.dumps(run.contract["preprocessing"]), "classes": json.dumps(run.classes),
                "input": "pixels: float32 (batch, 1, size, size), grey 0..255; output: logits (batch, classes)"}
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(out))
    pixels = parity_inputs(run)
    with torch.no_grad():
        expected = run.model(pixels).numpy()
    difference = float(np.abs(OnnxModel(out).logits(pixels.numpy()) - expected).max())
    if difference > PARITY_TOLERANCE:
        out.unlink()
        raise CovidxrError(f"ONNX parity check failed: max |difference| {difference:.2e} > {PARITY_TOLERANCE:.0e}")
    return out, difference


class OnnxModel:
    """ONNX Runtime session over an exported model."""

    def __init__(self, path: str | Path):
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.metadata = self.session.get_modelmeta().custom_metadata_map

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"pixels": np.ascontiguousarray(pixels, dtype=np.float32)})[0]


def matching_onnx(run: RunModel) -> OnnxModel | None:
    """RUN/model.onnx when it exists and records the same weights hash as model.json."""
    path = run.run / "model.onnx"
    if not path.is_file():
        return None
    model = OnnxModel(path)
    if model.metadata.get("weights_sha256") != run.contract["weights_sha256"]:
        log.warning("%s was exported from other weights; using PyTorch", path)
        return None
    return model
