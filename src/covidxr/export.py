"""ONNX export with the inference contract in the file's metadata and a parity check against PyTorch;
`predict` and `serve` run `RUN/model.onnx` through `covidxr.models.onnx_runtime` when it matches the run's
weights."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from covidxr.data.cache import prepare
from covidxr.data.dataset import CachedImages
from covidxr.errors import CovidxrError
from covidxr.lungs import preprocessor
from covidxr.models.classifier import WithEmbedding
from covidxr.models.loading import RunModel, load_run
from covidxr.models.onnx_export import PARITY_TOLERANCE, write_onnx
from covidxr.models.onnx_runtime import OnnxModel
from covidxr.runs import default_cache_root

log = logging.getLogger("covidxr.export")


def parity_inputs(run: RunModel, count: int = 16) -> torch.Tensor:
    """Real prepared test images of the run when its cache is reachable, else seeded random pixels."""
    size = run.preprocessing.size
    try:
        manifest = pd.read_csv(run.run / "manifest.csv", dtype=str, keep_default_na=False)
        rows = manifest[manifest["split"] == "test"].head(count).reset_index(drop=True)
        report = prepare(rows, default_cache_root(), preprocessor(run.preprocessing))
        rows = rows[~rows["sha256"].isin(report.failures["sha256"])].reset_index(drop=True)
        images = CachedImages(rows, report.cache, run.classes)
        if len(images):
            return torch.stack([images[i][0] for i in range(len(images))]).float()
    except (OSError, CovidxrError, KeyError) as error:
        log.warning("parity on random pixels: the run's test images are not readable here (%s)", error)
    return torch.randint(0, 256, (count, 1, size, size), generator=torch.Generator().manual_seed(0)).float()


def export_onnx(run_dir: str | Path, out: str | Path | None = None) -> tuple[Path, float]:
    """Write `out` (default RUN/model.onnx); returns it and the max |ONNX - PyTorch| difference of the logits
    and of the pooled embedding."""
    run = load_run(run_dir)
    out = Path(out) if out else run.rundir.onnx
    metadata = {"covidxr_model_json": json.dumps(run.contract.content), "weights_sha256": run.contract.weights_sha256,
                "preprocessing": json.dumps(run.contract.preprocessing), "classes": json.dumps(run.classes),
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
