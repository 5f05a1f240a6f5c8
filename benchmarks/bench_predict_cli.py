"""`covidxr predict` as a user meets it: cold start, peak memory and folder throughput, side by side.

With the shipped model (its model.onnx: the lean ONNX Runtime path), in one run:
1. cold `python -m covidxr.cli predict IMAGE` wall time vs a bare `python -c "import onnxruntime, cv2"` (the
   floor any ONNX Runtime + OpenCV program pays), median of alternating runs; goal <= 2x the floor;
2. peak resident memory of those predict processes (getrusage of the children); goal <= 400 MB;
3. folder throughput: `predict_files` on the Cohen images (decoded and prepared in worker processes while
   ONNX Runtime runs batches here) vs single-process decode + resize of the same files; goal >= 1.5x.
   Also shown: the model alone on prepared pixels, the ceiling of any pipeline on this machine.
For context, one cold predict through PyTorch (the same model without model.onnx). Last line: the ratios.
"""

from __future__ import annotations

import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from _common import DATA, machine
from covidxr.data.imageio import ImageReadError, read_grayscale
from covidxr.predict import BATCH, load_model, prepare_file
from covidxr.progress import worker_count
from covidxr.runs import shipped_run

COLD_RUNS = 5


def wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def decode_and_resize(paths: list[Path], size: int) -> int:
    """The baseline: decode and resize every file in this one process (no border removal, no model)."""
    done = 0
    for path in paths:
        try:
            gray = read_grayscale(path)
        except ImageReadError:
            continue
        cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA)
        done += 1
    return done


def best_rate(function, count: int, repeats: int = 2) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return count / min(times)


def main() -> None:
    folder = DATA / "covid-chestxray-dataset" / "images"
    paths = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    if not paths:
        sys.exit(f"shared data not found in {DATA}; set DATA=dir")
    image = str(next(p for p in paths if p.suffix.lower() in (".jpg", ".jpeg")))
    python = sys.executable
    floor_command = [python, "-c", "import onnxruntime, cv2"]
    predict_command = [python, "-m", "covidxr.cli", "predict", image]
    wall(predict_command)  # warm the page cache for both
    floors, predicts = [], []
    for _ in range(COLD_RUNS):
        floors.append(wall(floor_command))
        predicts.append(wall(predict_command))
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    floor, cold = statistics.median(floors), statistics.median(predicts)

    with tempfile.TemporaryDirectory() as scratch:
        torch_run = Path(scratch) / "run"
        shutil.copytree(shipped_run(), torch_run, ignore=shutil.ignore_patterns("model.onnx"))
        torch_cold = wall([python, "-m", "covidxr.cli", "predict", image, "--run", str(torch_run)])

    predictor = load_model()
    size = predictor.preprocessing.size
    predictor.predict_files(paths[:64])  # warm-up: page cache, ONNX Runtime's first batches
    readable = decode_and_resize(paths, size)
    baseline = best_rate(lambda: decode_and_resize(paths, size), len(paths))
    ours = best_rate(lambda: predictor.predict_files(paths), len(paths))
    serial = best_rate(lambda: predictor.predict_files(paths, workers=1), len(paths))
    first = (prepare_file(path, predictor.preprocessing, predictor.lungs) for path in paths[:BATCH * 4])
    prepared = [p.pixels for p in first if p.pixels is not None]
    pixels = np.stack(prepared)
    model_alone = best_rate(lambda: [predictor.logits(pixels[i:i + BATCH]) for i in range(0, len(pixels), BATCH)],
                            len(pixels), repeats=3)

    print(f"machine: {machine()}; shipped model ({predictor.info['architecture']['name']}, {size} px, "
          f"runtime {predictor.info['runtime']})")
    print(f"| cold start, median of {COLD_RUNS} | wall |")
    print("|---|---:|")
    print(f"| python -c 'import onnxruntime, cv2' (floor) | {floor:.2f} s |")
    print(f"| covidxr predict IMAGE (ONNX Runtime) | {cold:.2f} s |")
    print(f"| covidxr predict IMAGE through PyTorch (no model.onnx; one run) | {torch_cold:.2f} s |")
    print(f"peak RSS of the predict processes (ONNX Runtime): {peak_mib:.0f} MiB")
    print(f"| {len(paths)} Cohen files ({readable} readable images) | img/s |")
    print("|---|---:|")
    print(f"| decode + resize, one process (baseline) | {baseline:.0f} |")
    print(f"| predict_files, one process (decode, prepare, then each batch of {BATCH}) | {serial:.0f} |")
    print(f"| predict_files: decode + prepare in {worker_count()} worker processes, ONNX Runtime batches here | "
          f"{ours:.0f} |")
    print(f"| the model alone on prepared pixels (ceiling) | {model_alone:.0f} |")
    print(f"cold predict / import floor: {cold / floor:.2f}x (goal <= 2); peak RSS {peak_mib:.0f} MiB (goal <= 400); "
          f"folder throughput / single-process decode+resize: {ours / baseline:.2f}x (goal >= 1.5)")


if __name__ == "__main__":
    main()
