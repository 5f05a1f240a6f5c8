"""The lung segmenter's cost: ms per image on ONNX Runtime (batch of 1 and of 16, 2 threads) of the shipped
segmenter against the old one (the U-Net with an EfficientNet-Lite0 encoder at 256 px, rebuilt here with
random weights: the time does not depend on them); `segment()` of a large image with the traced memory of
its mask step; and `prepare` of the shared data with `lungs: crop` against without, side by side.

Targets (issue 29): <= 4 ms per image on 2 cores; prepare with the lung step <= 3x the time without.
`--segmenter DIR` measures another segmenter folder than the shipped one.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd

from _common import machine, shared_manifests
from covidxr.data.cache import prepare
from covidxr.data.preprocess import LungMasker, LungModelRef, Preprocessing, Preprocessor
from covidxr.evaluation.lungs import median_ms
from covidxr.lungs import LungSegmenter, shipped_segmenter
from covidxr.lungs.geometry import lung_mask_from_probability
from covidxr.lungs.model import LungNet, export_onnx
from covidxr.models.onnx_runtime import matching_session
from covidxr.progress import worker_count

OLD_SIZE, THREADS, RUNS, PREPARE_SIZE = 256, 2, 30, 256
OLD_SHA256 = "old-segmenter"


def milliseconds_per_image(run, batch: np.ndarray) -> float:
    return median_ms(lambda: run(batch), len(batch), RUNS)


def onnx_session(path: Path, weights_sha256: str, threads: int):
    """The forward pass of ONNX Runtime over `path` (as the segmenter's runtime opens it)."""
    session = matching_session(path, weights_sha256, threads)
    return lambda batch: session.run(None, {"image": np.ascontiguousarray(batch, dtype=np.float32)})[0]


def old_segmenter_session(folder: Path):
    """ONNX Runtime session of the old segmenter's network (same graph and storage, random weights)."""
    path = folder / "old.onnx"
    export_onnx(LungNet(), path, OLD_SIZE, {"weights_sha256": OLD_SHA256})
    return onnx_session(path, OLD_SHA256, THREADS)


def inference(segmenter: LungSegmenter) -> None:
    new = onnx_session(segmenter.folder / "model.onnx", segmenter.weights_sha256, THREADS)
    with tempfile.TemporaryDirectory() as folder:
        old = old_segmenter_session(Path(folder))
        for count in (1, 16):
            rng = np.random.default_rng(0)
            ours = milliseconds_per_image(new, rng.random((count, 1, segmenter.size, segmenter.size), dtype=np.float32))
            before = milliseconds_per_image(old, rng.random((count, 1, OLD_SIZE, OLD_SIZE), dtype=np.float32))
            print(f"batch {count:>2}: {segmenter.name} ({segmenter.size} px) {ours:.2f} ms/image, old segmenter "
                  f"({OLD_SIZE} px) {before:.2f} ms/image ({THREADS} threads); new/old time {ours / before:.2f}")
    for side in (1024, 5000):
        image = np.random.default_rng(0).integers(0, 256, (side, side), dtype=np.uint8)
        whole = milliseconds_per_image(lambda _: segmenter.segment(image), np.zeros(1))
        tracemalloc.start()
        segmenter.segment(image)
        ours = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        tracemalloc.start()
        lung_mask_from_probability(segmenter.probabilities([image])[0])
        full = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(f"segment() of a {side}x{side} image: {whole:.1f} ms ({segmenter.backend_name}); traced peak "
              f"{ours / 2**20:.0f} MiB (the mask made from a full-size float map: {full / 2**20:.0f} MiB)")


def prepare_seconds(files: pd.DataFrame, config: Preprocessing, lungs: LungMasker | None = None) -> float:
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        report = prepare(files, folder, Preprocessor(config, lungs))
        seconds = time.perf_counter() - start
    assert len(report.failures) == 0, report.failures
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segmenter", help="segmenter folder (default: the shipped one)")
    args = parser.parse_args()
    segmenter = LungSegmenter(args.segmenter) if args.segmenter else shipped_segmenter()
    print(f"machine: {machine()}; {worker_count()} worker processes")
    inference(segmenter)
    cohen, rsna = shared_manifests()
    files = pd.concat([cohen, rsna], ignore_index=True).drop_duplicates("sha256")
    plain = Preprocessing(size=PREPARE_SIZE)
    crop = Preprocessing(size=PREPARE_SIZE, lungs="crop", lung_model=LungModelRef(**segmenter.identity()))
    lungs = LungSegmenter(segmenter.folder, threads=1 if worker_count() > 1 else None)
    prepare_seconds(files.head(64), plain)
    prepare_seconds(files.head(64), crop, lungs)
    without, with_lungs = [], []
    for _ in range(2):
        without.append(prepare_seconds(files, plain))
        with_lungs.append(prepare_seconds(files, crop, lungs))
    without, with_lungs = min(without), min(with_lungs)
    print(f"prepare {len(files)} images: without the lung step {without:.1f} s ({len(files) / without:,.0f} img/s), "
          f"lungs: crop {with_lungs:.1f} s ({len(files) / with_lungs:,.0f} img/s)")
    print(f"prepare with lungs: crop / without: {with_lungs / without:.1f}x (target <= 3x)")


if __name__ == "__main__":
    main()
