"""The lung segmenter's cost: ms per image at 256 px on ONNX Runtime (vs PyTorch eager, same threads), and
`prepare` with `lungs: crop` vs without, on the shared data (both on all cores, best of two runs).

Targets: <= 20 ms per image with ONNX Runtime; prepare with the lung crop <= 3x the time without.
The last line prints that ratio.
"""

from __future__ import annotations

import tempfile
import time

import numpy as np
import pandas as pd
import torch

from _common import machine, shared_manifests
from covidxr.data.preprocess import Preprocessing
from covidxr.lungs import prepare_with_lungs, shipped_segmenter
from covidxr.lungs.model import load_lung_net
from covidxr.lungs.segment import onnx_session
from covidxr.progress import worker_count

SIZE, THREADS, RUNS = 256, 2, 30


def milliseconds_per_image(run, batch: np.ndarray) -> float:
    for _ in range(3):
        run(batch)
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        run(batch)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times)) / len(batch)


def inference() -> None:
    segmenter = shipped_segmenter()
    session = onnx_session(segmenter.folder / "model.onnx", segmenter.weights_sha256, THREADS)
    torch.set_num_threads(THREADS)
    net = load_lung_net(segmenter.folder / "model.safetensors")

    def eager(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.from_numpy(batch)).numpy()
    for count in (1, 16):
        batch = np.random.default_rng(0).random((count, 1, SIZE, SIZE), dtype=np.float32)
        ours, reference = milliseconds_per_image(session, batch), milliseconds_per_image(eager, batch)
        print(f"batch {count:>2}: ONNX Runtime {ours:.1f} ms/image, PyTorch eager {reference:.1f} ms/image "
              f"({THREADS} threads); ONNX/eager time {ours / reference:.2f}")
    image = np.random.default_rng(0).integers(0, 256, (1024, 1024), dtype=np.uint8)
    whole = milliseconds_per_image(lambda _: segmenter.segment(image), np.zeros(1))
    print(f"segment() on a 1024x1024 image (letterbox, network, resize back, two largest regions, checks): "
          f"{whole:.1f} ms ({segmenter.backend_name})")


def prepare_seconds(files: pd.DataFrame, config: Preprocessing) -> float:
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        report = prepare_with_lungs(files, folder, config)
        seconds = time.perf_counter() - start
    assert len(report.failures) == 0, report.failures
    return seconds


def main() -> None:
    print(f"machine: {machine()}; {worker_count()} worker processes")
    inference()
    cohen, rsna = shared_manifests()
    files = pd.concat([cohen, rsna], ignore_index=True).drop_duplicates("sha256")
    plain, crop = Preprocessing(size=SIZE), Preprocessing(size=SIZE, lungs="crop")
    prepare_seconds(files.head(64), plain)
    without = min(prepare_seconds(files, plain) for _ in range(2))
    with_lungs = min(prepare_seconds(files, crop) for _ in range(2))
    print(f"prepare {len(files)} images: without the lung step {without:.1f} s ({len(files) / without:,.0f} img/s), "
          f"lungs: crop {with_lungs:.1f} s ({len(files) / with_lungs:,.0f} img/s)")
    print(f"prepare with lungs: crop / without: {with_lungs / without:.1f}x (target <= 3x)")


if __name__ == "__main__":
    main()
