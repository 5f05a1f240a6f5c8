"""Inference: ONNX Runtime vs PyTorch eager, same model, same real images, one run.

The first wave's default architecture (`ablation/0-resnet18-scratch.yaml`: resnet18, 128 px; trained
weights do not change the speed), shared Cohen images prepared as `predict` prepares them. Single-image
latency (median of 200 calls after warm-up) and batch-of-32 throughput. Target: ONNX latency <= 0.6x
eager. Last line: the ratio."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from _common import RECIPE, machine, shared_manifests
from covidxr.config import load_recipe
from covidxr.data.imageio import read_grayscale
from covidxr.data.preprocess import preprocess
from covidxr.evaluation.lungs import median_ms
from covidxr.export import write_onnx
from covidxr.models.classifier import create_model
from covidxr.models.onnx_runtime import OnnxModel

CALLS, BATCH = 200, 32


def main() -> None:
    config = load_recipe(RECIPE)
    size = config.preprocessing.size
    cohen, _ = shared_manifests()
    images = np.stack([preprocess(read_grayscale(p), config.preprocessing)[0] for p in cohen["path"].head(BATCH)])
    pixels = images[:, None].astype(np.float32)
    model, _ = create_model(config.model, 2, size)
    model.eval()
    with tempfile.TemporaryDirectory() as folder:
        runtime = OnnxModel(write_onnx(model, size, Path(folder) / "model.onnx"))
        one = pixels[:1]
        with torch.no_grad():
            eager_single = median_ms(lambda: model(torch.from_numpy(one)), runs=CALLS)
            eager_batch = median_ms(lambda: model(torch.from_numpy(pixels)), BATCH, 10)
            difference = float(np.abs(runtime.logits(pixels) - model(torch.from_numpy(pixels)).numpy()).max())
        onnx_single = median_ms(lambda: runtime.logits(one), runs=CALLS)
        onnx_batch = median_ms(lambda: runtime.logits(pixels), BATCH, 10)
    print(f"machine: {machine()}; {config.model.name} {size}px; torch threads {torch.get_num_threads()}; "
          f"max |logit difference| {difference:.1e}")
    print(f"single image: eager {eager_single:.2f} ms, ONNX Runtime {onnx_single:.2f} ms")
    print(f"batch of {BATCH}: eager {1000 / eager_batch:.0f} img/s, ONNX Runtime {1000 / onnx_batch:.0f} img/s")
    print(f"inference latency: ONNX Runtime / eager = {onnx_single / eager_single:.2f} (target <= 0.6)")


if __name__ == "__main__":
    main()
