"""`prepare` (hash check + decode + border removal + square + resize + cache write, all cores) vs
decode + resize alone (same cores), on the Cohen images at full size and on the whole shared data.

Targets: all shared images prepared in < 60 s on 2 cores; on the Cohen images, border removal and
caching add <= 25% to decode + resize. The last line prints that overhead.
"""

from __future__ import annotations

import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import cv2
import pandas as pd

from _common import machine, shared_manifests
from covidxr.data.cache import prepare
from covidxr.data.imageio import read_grayscale
from covidxr.data.preprocess import Preprocessing, Preprocessor
from covidxr.progress import worker_count

SIZE = 256


def decode_and_resize(path: str) -> int:
    image = read_grayscale(path)
    return int(cv2.resize(image, (SIZE, SIZE), interpolation=cv2.INTER_AREA)[0, 0])


def baseline_seconds(paths: list[str]) -> float:
    start = time.perf_counter()
    with ProcessPoolExecutor(worker_count()) as pool:
        list(pool.map(decode_and_resize, paths, chunksize=16))
    return time.perf_counter() - start


def prepare_seconds(manifest: pd.DataFrame) -> float:
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        report = prepare(manifest, folder, Preprocessor(Preprocessing(size=SIZE)))
        seconds = time.perf_counter() - start
    assert len(report.failures) == 0, report.failures
    return seconds


def compare(name: str, manifest: pd.DataFrame) -> float:
    files = manifest.drop_duplicates("sha256")
    paths = files["path"].tolist()
    baseline_seconds(paths)
    base = min(baseline_seconds(paths) for _ in range(2))
    ours = min(prepare_seconds(files) for _ in range(2))
    print(f"{name}: {len(paths)} images; decode+resize {len(paths) / base:,.0f} img/s ({base:.2f} s); "
          f"prepare {len(paths) / ours:,.0f} img/s ({ours:.2f} s); prepare/baseline time {ours / base:.2f}")
    return ours / base


def main() -> None:
    print(f"machine: {machine()}; {worker_count()} worker processes; size {SIZE}")
    cohen, rsna = shared_manifests()
    compare("all shared data", pd.concat([cohen, rsna], ignore_index=True))
    ratio = compare("Cohen images (full size)", cohen)
    print(f"prepare overhead over decode+resize on the Cohen images: {100 * (ratio - 1):+.0f}% (target <= +25%)")


if __name__ == "__main__":
    main()
