"""`covidxr predict` as a user meets it: cold start, peak memory and folder throughput, side by side.

With the shipped model (its model.onnx: the lean ONNX Runtime path), in one run:
1. cold `python -m covidxr.cli predict IMAGE` wall time vs a bare `python -c "import onnxruntime, cv2"` (the
   floor any ONNX Runtime + OpenCV program pays), median of alternating runs; goal <= 2x the floor. Also cold
   predicts whose optimised-graph cache is empty (each in a fresh $XDG_CACHE_HOME: what the first predict after
   installing pays), and where the time goes: a child process timing each step (median of the runs);
2. peak resident memory of those predict processes (getrusage of the children); goal <= 400 MB;
3. folder throughput: `predict_files` on Cohen images (decoded, checked and prepared in worker processes while
   ONNX Runtime runs batches here) vs single-process decode + resize of the same files; goal >= 1.0x.
   Also shown: one process, and the classifier alone on prepared pixels.
For context, one cold predict through PyTorch (the same model without model.onnx). Last line: the ratios.
Every child process may write and read compiled bytecode, as an installed package has it (pip compiles it at
install time): with PYTHONDONTWRITEBYTECODE set, each cold start would compile covidxr's sources again.

    python bench_predict_cli.py [--files N]     # the tree on PYTHONPATH (or the installed covidxr)
"""

from __future__ import annotations

import argparse
import json
import os
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
from covidxr.predict import BATCH, load_model, prepare_files
from covidxr.progress import worker_count
from covidxr.runs import shipped_run

COLD_RUNS = 5
CHILD_ENV = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}
STEPS = """
import time, sys, json
start = time.perf_counter(); marks = {}
def mark(name):
    marks[name] = time.perf_counter()
import numpy, onnxruntime, cv2; mark("import onnxruntime, cv2 (the floor)")
import pydantic; mark("import pydantic")
import rich.console, rich.progress; mark("import rich (console, progress)")
import PIL.Image; mark("import Pillow")
import covidxr.data.preprocess; mark("import covidxr.data, covidxr.runs (pydantic models built)")
import covidxr.inputcheck; mark("import covidxr.lungs, covidxr.inputcheck, covidxr.models")
import covidxr.predict, covidxr.cli, covidxr.engines.local; mark("import covidxr.predict, covidxr.cli, engines")
from covidxr.predict import load_model
from covidxr.runs import shipped_run
predictor = load_model(); mark("load_model: model.json, input check, 3 ONNX Runtime sessions")
result = predictor.predict_files([sys.argv[1]]); mark("predict one image: decode, check, lungs, classifier, severity")
times, last = {}, start
for name, at in marks.items():
    times[name], last = 1000 * (at - last), at
print(json.dumps(times))
"""


def wall(command: list[str], env: dict | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env or CHILD_ENV)
    return time.perf_counter() - start


def steps_ms(image: str) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", STEPS, image], check=True, capture_output=True, text=True,
                          env=CHILD_ENV)
    return json.loads(done.stdout.strip().splitlines()[-1])


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


def cpu_seconds() -> float:
    """CPU time of this process and its reaped children (the worker processes, once their pool closes)."""
    used = os.times()
    return used.user + used.system + used.children_user + used.children_system


def best_rate(function, count: int, repeats: int = 2) -> tuple[float, float]:
    """(items per second, CPU milliseconds per item) of the fastest of `repeats` runs: CPU time says what an item
    costs even when other jobs share the cores."""
    best = (0.0, 0.0)
    for _ in range(repeats):
        start, cpu = time.perf_counter(), cpu_seconds()
        function()
        rate = count / (time.perf_counter() - start)
        best = max(best, (rate, 1000 * (cpu_seconds() - cpu) / count))
    return best


def session_starts(runs: int = 3) -> dict[str, tuple[float, float]]:
    """Milliseconds to open a session over each shipped network: optimising the graph now (no cache) vs from the
    cached optimised graph (best of `runs`); empty where this tree has no cache."""
    try:
        from covidxr.models.onnx_runtime import _open, _options, inference_session
    except ImportError:
        return {}
    folder = shipped_run()
    found = {}
    for path in (folder / "model.onnx", folder / "severity-features.onnx", folder / "lungs" / "model.onnx"):
        inference_session(path)  # the cache holds it from now on
        fresh, cached = [], []
        for _ in range(runs):
            start = time.perf_counter()
            _open(path, _options(None))
            fresh.append(time.perf_counter() - start)
            start = time.perf_counter()
            inference_session(path)
            cached.append(time.perf_counter() - start)
        found[str(path.relative_to(folder))] = (1000 * min(fresh), 1000 * min(cached))
    return found


def cold_start(image: str) -> dict:
    python = sys.executable
    floor_command = [python, "-c", "import onnxruntime, cv2"]
    predict_command = [python, "-m", "covidxr.cli", "predict", image]
    wall(predict_command)  # warm the page cache and the optimised-graph cache
    floors, predicts, empties, steps = [], [], [], []
    for _ in range(COLD_RUNS):
        floors.append(wall(floor_command))
        predicts.append(wall(predict_command))
        with tempfile.TemporaryDirectory() as cache:
            empties.append(wall(predict_command, {**CHILD_ENV, "XDG_CACHE_HOME": cache}))
        steps.append(steps_ms(image))
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    with tempfile.TemporaryDirectory() as scratch:
        torch_run = Path(scratch) / "run"
        shutil.copytree(shipped_run(), torch_run, ignore=shutil.ignore_patterns("model.onnx"))
        torch_cold = wall([python, "-m", "covidxr.cli", "predict", image, "--run", str(torch_run)])
    return {"floor": statistics.median(floors), "cold": statistics.median(predicts),
            "empty_cache": statistics.median(empties), "torch": torch_cold, "peak_mib": peak_mib,
            "steps": {name: statistics.median(run[name] for run in steps) for name in steps[0]}}


def throughput(paths: list[Path]) -> dict:
    predictor = load_model()
    size = predictor.preprocessing.size
    predictor.predict_files(paths[:32])  # warm-up: page cache, ONNX Runtime's first batches
    readable = decode_and_resize(paths, size)
    baseline = best_rate(lambda: decode_and_resize(paths, size), len(paths))
    ours = best_rate(lambda: predictor.predict_files(paths), len(paths))
    serial = best_rate(lambda: predictor.predict_files(paths, workers=1), len(paths))
    prepared = [item.pixels for item in prepare_files(paths[:BATCH * 2], predictor.steps)]
    pixels = np.stack([p for p in prepared if p is not None])

    def networks() -> None:
        for start in range(0, len(pixels), BATCH):
            predictor.probabilities(pixels[start:start + BATCH])
            predictor.severities(pixels[start:start + BATCH])
    model_alone = best_rate(networks, len(pixels), repeats=3)[0]
    return {"readable": readable, "baseline": baseline, "ours": ours, "serial": serial, "model": model_alone,
            "architecture": predictor.info["architecture"]["name"], "size": size, "runtime": predictor.info["runtime"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=200, help="Cohen files for the throughput part (default 200)")
    args = parser.parse_args()
    folder = DATA / "covid-chestxray-dataset" / "images"
    paths = sorted(p for p in folder.iterdir() if p.is_file())[:args.files] if folder.is_dir() else []
    if not paths:
        sys.exit(f"shared data not found in {DATA}; set DATA=dir")
    image = str(next(p for p in paths if p.suffix.lower() in (".jpg", ".jpeg")))
    load = os.getloadavg()[0]
    cold = cold_start(image)
    rates = throughput(paths)
    starts = session_starts()
    print(f"machine: {machine()}; load average at the start {load:.1f}; bytecode cached in the children; "
          f"shipped model ({rates['architecture']}, "
          f"{rates['size']} px, runtime {rates['runtime']})")
    print(f"| cold start, median of {COLD_RUNS} alternating runs | wall |")
    print("|---|---:|")
    print(f"| python -c 'import onnxruntime, cv2' (floor) | {cold['floor']:.2f} s |")
    print(f"| covidxr predict IMAGE (ONNX Runtime, optimised graphs cached) | {cold['cold']:.2f} s |")
    print(f"| covidxr predict IMAGE, empty optimised-graph cache | {cold['empty_cache']:.2f} s |")
    print(f"| covidxr predict IMAGE through PyTorch (no model.onnx; one run) | {cold['torch']:.2f} s |")
    print(f"peak RSS of the predict processes (ONNX Runtime): {cold['peak_mib']:.0f} MiB")
    print("| where a cold predict's time goes (child process, median) | ms |")
    print("|---|---:|")
    for name, ms in cold["steps"].items():
        print(f"| {name} | {ms:.0f} |")
    if starts:
        print("| opening a session over | optimising now | from the cached optimised graph |")
        print("|---|---:|---:|")
        for name, (fresh, cached) in starts.items():
            print(f"| {name} | {fresh:.0f} ms | {cached:.0f} ms |")
    print(f"| {len(paths)} Cohen files ({rates['readable']} readable images) | img/s | CPU ms/image |")
    print("|---|---:|---:|")
    print(f"| decode + resize, one process (baseline) | {rates['baseline'][0]:.1f} | {rates['baseline'][1]:.1f} |")
    print(f"| predict_files, one process | {rates['serial'][0]:.1f} | {rates['serial'][1]:.1f} |")
    print(f"| predict_files: decode, check + prepare in {worker_count()} worker processes, ONNX Runtime batches "
          f"here | {rates['ours'][0]:.1f} | {rates['ours'][1]:.1f} |")
    print(f"| the classifier (and severity) alone on prepared pixels | {rates['model']:.1f} | |")
    print(f"cold predict / import floor: {cold['cold'] / cold['floor']:.2f}x (goal <= 2; empty cache "
          f"{cold['empty_cache'] / cold['floor']:.2f}x); peak RSS {cold['peak_mib']:.0f} MiB (goal <= 400); "
          f"folder predict / single-process decode+resize: {rates['ours'][0] / rates['baseline'][0]:.2f}x "
          f"(goal >= 1.0)")


if __name__ == "__main__":
    main()
