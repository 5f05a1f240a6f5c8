"""The Ray engine: Ray Data on a Ray cluster ($RAY_ADDRESS or --ray-address), else on a Ray started for the command
with this machine's cores and shut down after it.

The inputs become a Ray dataset of file names; Ray tasks decode the files (`read_grayscale`); a pool of actors, each
holding the run's model (its ONNX Runtime sessions opened once, in `__init__`, with one intra-op thread per CPU the
actor holds), checks and prepares the decoded images (`ImageSteps`, the local engine's own steps) and predicts them
(`Predictor.predict_prepared`), so every row is the `Prediction` the local engine makes, unreadable files and refused
inputs included.

Results are written part by part (PART files each, in input order) as Parquet, one file per part, in
`$XDG_CACHE_HOME/covidxr/predictions/<model and settings>/<part>.parquet`; a part's name is the hash of its files'
paths, sizes and modification times, so a rerun (after an interruption too) predicts only the parts not yet written,
and a changed file is predicted again. On a cluster every node reads the files at the path given: a shared file
system mounted at the same place (docs/cluster.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np

from covidxr.data.imageio import ImageReadError, read_grayscale
from covidxr.engines.base import ModelRequest
from covidxr.errors import UsageError
from covidxr.predict import BATCH, CHUNK, Prediction, Predictor, PreparedFile
from covidxr.progress import worker_count

PART = 256  # files per result file: what a rerun skips at a time
DECODE_CPUS = 0.25  # a decoding task (light next to the check and the model); bounds how many run at once
DECODES_IN_FLIGHT = 2  # CPUs kept for this many decoding tasks; the model actors share the rest, one per core
RESULTS = "predictions"


def _ray():
    try:
        import ray
    except ImportError as error:
        raise UsageError("--engine ray needs Ray: pip install 'covidxr[ray]' (or choose --engine local)") from error
    return ray


@contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Ray connected to `address` (default $RAY_ADDRESS), else started here on this machine's cores and shut down
    after; a Ray this process already started (tests, notebooks) is used as it is."""
    ray = _ray()
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its per-operator INFO lines; the progress bar stays
    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise UsageError(f"cannot connect to the Ray cluster at {address!r}: {error} (start one with `ray start "
                             f"--head`, or leave out --ray-address and RAY_ADDRESS for a local Ray)") from error
    else:
        ray.init(num_cpus=worker_count(), logging_level=logging.WARNING, log_to_driver=False, include_dashboard=False)
    try:
        yield
    finally:
        ray.shutdown()


def decode(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A Ray task: each file's grey pixels, or why it cannot be read (pickled, so any shape travels)."""
    decoded = []
    for file in batch["file"]:
        try:
            decoded.append(pickle.dumps((read_grayscale(file), "")))
        except ImageReadError as error:
            decoded.append(pickle.dumps((None, error.problem)))
    return {"part": batch["part"], "index": batch["index"], "path": batch["path"],
            "decoded": np.array(decoded, dtype=object)}


class PredictActor:
    """A Ray actor holding the run's model: checks, prepares and predicts batches of decoded images."""

    def __init__(self, request: ModelRequest, threads: int):
        self.predictor = request.load(threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        prepared = []
        for path, blob in zip(batch["path"], batch["decoded"]):
            gray, error = pickle.loads(blob)
            prepared.append(PreparedFile(str(path), error=error) if gray is None else
                            self.predictor.steps.run(gray, str(path)))
        predictions = self.predictor.predict_prepared(prepared)
        return {"part": batch["part"], "index": batch["index"],
                "prediction": np.array([json.dumps(p.as_dict()) for p in predictions], dtype=object)}


def results_folder(request: ModelRequest, predictor: Predictor) -> Path:
    """Where this model's predictions under these settings are kept: model.json (weights, calibration, operating
    points, input check) and the request's settings name it."""
    digest = hashlib.sha256(predictor.rundir.model_json.read_bytes())
    digest.update(json.dumps([request.operating_point, request.prevalence, request.input_check]).encode())
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "covidxr" / RESULTS / digest.hexdigest()[:24]


def part_name(paths: Sequence[Path]) -> str:
    """The hash of the files' paths (absolute), sizes and modification times."""
    digest = hashlib.sha256()
    for path in paths:
        try:
            stat = os.stat(path)
            state = [stat.st_size, stat.st_mtime_ns]
        except OSError:
            state = None
        digest.update(json.dumps([os.fspath(path), os.path.abspath(path), state]).encode())
    return digest.hexdigest()[:32] + ".parquet"


def write_part(path: Path, rows: list[str]) -> None:
    """One part's predictions (JSON of `Prediction.as_dict`, in input order), written whole or not at all."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    pq.write_table(pa.table({"prediction": rows}), partial)
    partial.replace(path)


def read_part(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(path).column("prediction").to_pylist()


class RayEngine:
    def __init__(self, address: str | None = None):
        self.address = address

    def predict(self, request: ModelRequest, predictor: Predictor, paths: Sequence[Path]) -> list[Prediction]:
        folder = results_folder(request, predictor)
        parts = [list(paths[start:start + PART]) for start in range(0, len(paths), PART)]
        files = [folder / part_name(part) for part in parts]
        todo = [k for k, file in enumerate(files) if not file.is_file()]
        if todo:
            with ray_session(self.address):
                self._run(request, parts, files, todo)
        positive = predictor.contract.positive_class
        return [Prediction.from_dict(json.loads(row), positive) for file in files for row in read_part(file)]

    @staticmethod
    def _run(request: ModelRequest, parts: list[list[Path]], files: list[Path], todo: list[int]) -> None:
        ray = _ray()
        request = replace(request, run=Path(request.run).resolve())  # actors may run elsewhere than this folder
        rows = [{"part": k, "index": i, "path": os.fspath(path), "file": os.path.abspath(path)}
                for k in todo for i, path in enumerate(parts[k])]
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        actors = cpus
        actor_cpus = (cpus - DECODE_CPUS * DECODES_IN_FLIGHT) / actors
        dataset = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // CHUNK, 4 * cpus * 8)))
        dataset = dataset.map_batches(decode, batch_size=CHUNK, num_cpus=DECODE_CPUS)
        dataset = dataset.map_batches(PredictActor, fn_constructor_kwargs={"request": request,
                                                                           "threads": max(1, round(actor_cpus))},
                                      batch_size=BATCH, num_cpus=actor_cpus,
                                      compute=ray.data.ActorPoolStrategy(size=actors))
        received: dict[int, dict[int, str]] = defaultdict(dict)
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            for part, index, row in zip(batch["part"], batch["index"], batch["prediction"]):
                done = received[int(part)]
                done[int(index)] = str(row)
                if len(done) == len(parts[int(part)]):
                    write_part(files[int(part)], [done[i] for i in range(len(done))])
                    del received[int(part)]
