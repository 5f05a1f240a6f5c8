"""`covidxr predict --engine ray` vs `--engine local` on the same folder, side by side.

With the shipped model (ONNX Runtime) and its input check, on the RSNA normal images of DATA (the README's Data
section): the local engine (`Predictor.predict_files`: worker processes decode and check, this process runs the
model) against the Ray engine (`RayEngine.predict`: tasks decode, actors check and predict) on a Ray started with
the same cores. Each engine runs on a fresh results cache; the Ray figures are steady state (Ray already started,
as on a cluster) and, separately, what starting a local Ray costs a command. Also measured, for the scaling model in
benchmarks/README.md: the Ray engine on 1 core and on all cores (images/s per core), the mean file size and decoded
pixels per image (what the object store and the shared file system carry per image).

    python benchmarks/bench_engine.py [--images 400]

Goal: Ray/local throughput >= 0.8 on 2 cores. Last line: the ratio.

`--prepare` instead times `covidxr prepare` (`engine(...).prepare`, the CLI's path: 256 px, `--lungs` none by
default or crop) on the first IMAGES Cohen frontal X-rays (full-size radiographs) with each engine, side by side:
local, Ray, local, Ray, each into a fresh cache, the best of the two per engine; Ray already started (steady), its
start and stop timed apart. Last line: the ratio.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from _common import DATA, machine, shared_manifests
from covidxr.data.imageio import read_grayscale
from covidxr.data.preprocess import Preprocessing, Preprocessor
from covidxr.engines import engine
from covidxr.engines.ray import RayEngine
from covidxr.predict import Predictor, load_model
from covidxr.progress import worker_count


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def ray_rate(predictor: Predictor, paths: list[Path], cpus: int) -> tuple[float, float]:
    """(images/s steady state, seconds to start and stop Ray) of the Ray engine on `cpus` cores: Ray's processes
    are pinned to the first `cpus` cores (they inherit this process's affinity), not only told that many."""
    import logging

    import ray

    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, sorted(allowed)[:cpus])
    with tempfile.TemporaryDirectory() as cache:
        os.environ["XDG_CACHE_HOME"] = cache
        start = time.perf_counter()
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        started = time.perf_counter() - start
        try:
            seconds = timed(lambda: RayEngine().predict(predictor, paths))
        finally:
            start = time.perf_counter()
            ray.shutdown()
            started += time.perf_counter() - start
            os.sched_setaffinity(0, allowed)
    return len(paths) / seconds, started


def prepare_seconds(name: str, manifest, steps: Preprocessor) -> float:
    """Seconds `prepare` takes on engine `name` into a fresh cache (every file prepared, none failing)."""
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        report = engine(name).prepare(manifest, Path(cache), steps)
        seconds = time.perf_counter() - start
    assert len(report.failures) == 0 and report.prepared == len(manifest), report.lines()
    return seconds


def compare_prepare(images: int, lungs_mode: str) -> None:
    import logging

    import ray

    from covidxr.lungs import preprocessor

    cohen, _ = shared_manifests()
    manifest = cohen.drop_duplicates("sha256").head(images)
    steps = preprocessor(Preprocessing(size=256, lungs=lungs_mode))
    cores = worker_count()
    mean_kb = sum(Path(path).stat().st_size for path in manifest["path"]) / len(manifest) / 1e3
    print(f"machine: {machine()}; prepare 256 px, lungs={lungs_mode}, {len(manifest)} Cohen frontal X-rays "
          f"(full size, {mean_kb:.0f} kB a file on average)")
    start = time.perf_counter()
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    started = time.perf_counter() - start
    try:
        times: dict[str, list[float]] = {"local": [], "ray": []}
        for _ in range(2):
            for name in ("local", "ray"):
                times[name].append(prepare_seconds(name, manifest, steps))
                print(f"  {name:5s} engine: {times[name][-1]:6.1f} s", flush=True)
    finally:
        start = time.perf_counter()
        ray.shutdown()
        started += time.perf_counter() - start
    local, on_ray = (len(manifest) / min(times[name]) for name in ("local", "ray"))
    with_start = len(manifest) / (min(times["ray"]) + started)
    print(f"local engine, {cores} cores:          {local:6.1f} images/s (best of 2)")
    print(f"ray engine, {cores} cores (steady):   {on_ray:6.1f} images/s (best of 2)")
    print(f"starting + stopping a local Ray:    {started:6.1f} s")
    print(f"prepare ray/local throughput on {cores} cores (steady): {on_ray / local:.2f}; including Ray's start: "
          f"{with_start / local:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--prepare", action="store_true", help="time prepare instead of predict")
    parser.add_argument("--lungs", choices=("none", "crop"), default="none", help="prepare's lung step")
    args = parser.parse_args()
    if args.prepare:
        compare_prepare(args.images, args.lungs)
        return
    folder = DATA / "rsna-normal-224" / "normal_dataset"
    paths = sorted(folder.glob("*.jpg"))[:args.images]
    if not paths:
        raise SystemExit(f"no images in {folder}; set DATA=dir")
    cores = worker_count()
    print(f"machine: {machine()}; {len(paths)} RSNA normal images ({folder}), shipped model with its input check")
    predictor = load_model()
    predictor.predict_files(paths[:16])  # warm: the page cache and ONNX Runtime's first run
    local = len(paths) / timed(lambda: predictor.predict_files(paths))
    print(f"local engine, {cores} cores:               {local:7.1f} images/s")
    one, _ = ray_rate(predictor, paths, 1)
    print(f"ray engine, 1 core (steady, pinned):     {one:7.1f} images/s per core")
    on_ray, start_stop = ray_rate(predictor, paths, cores)
    print(f"ray engine, {cores} cores (steady):            {on_ray:7.1f} images/s "
          f"({on_ray / cores:.1f} per core; scaling {on_ray / one / cores:.2f} of linear)")
    print(f"starting + stopping a local Ray:         {start_stop:7.1f} s per command")
    with_start = len(paths) / (len(paths) / on_ray + start_stop)
    print(f"ray engine incl. start ({len(paths)} images):     {with_start:7.1f} images/s")
    file_bytes = sum(path.stat().st_size for path in paths) / len(paths)
    sample = paths[:50]
    pixel_bytes = sum(read_grayscale(path).nbytes for path in sample) / len(sample)
    print(f"per image: {file_bytes / 1e3:.1f} kB file read, {pixel_bytes / 1e3:.1f} kB decoded pixels through the "
          f"object store")
    print(f"ray/local throughput on {cores} cores (steady): {on_ray / local:.2f} (goal >= 0.8); "
          f"including Ray's start: {with_start / local:.2f}")


if __name__ == "__main__":
    main()
