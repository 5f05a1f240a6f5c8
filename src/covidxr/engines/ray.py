"""The Ray engine: Ray Data on a Ray cluster ($RAY_ADDRESS or --ray-address), else on a Ray started for the command
with this machine's cores (shut down when the command ends).

Every command's per-row work is a `Stage` (engines.stages) and runs through one pipeline, `run_stage`: the items
become a Ray dataset; Ray tasks `decode` them; a pool of actors (callable classes), each opening the stage's model
once in `__init__` (ONNX Runtime sessions with one intra-op thread per CPU the actor holds; they cannot be pickled
or forked), runs the decoded batches. A stage that holds no model (`prepare` without a lung step) runs whole in
tasks, a batch each, as the local engine's worker processes do: no decoded image crosses processes. Both halves
call the local engine's own functions, so every row is the one the local engine makes, unreadable files and refused
inputs included.

Answers are gathered part by part (PART items each, in input order) and, for a stage with a results folder, written
as Parquet, one file per part, `$XDG_CACHE_HOME/covidxr/<kind>/<model and settings>/<part>.parquet`; a part's name
is the hash of its items (files: paths, sizes and modification times), so a rerun (after an interruption too) runs
only the parts not yet written, and a changed file is done again. `prepare` keeps nothing there: its actors write
the pixel cache's shards, and the cache tells a rerun what is done. On a cluster every node reads the files and the
cache at the path given: a shared file system mounted at the same place (docs/cluster.md).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import pickle
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from covidxr.data.cache import PixelCache, PrepareReport, prepare
from covidxr.data.preprocess import Preprocessor
from covidxr.engines.base import Stage
from covidxr.engines.stages import (
    OcclusionStage,
    PredictStage,
    PrepareStage,
    SegmentStage,
    part_name,
    results_folder,
)
from covidxr.errors import UsageError
from covidxr.lungs import LungSegmenter
from covidxr.lungs.segment import SegmentedFile, output_stems
from covidxr.predict import CHUNK, Prediction, Predictor
from covidxr.progress import worker_count

if TYPE_CHECKING:  # PyTorch: only the audit's occlusion pass needs it
    from covidxr.evaluation.audit import OcclusionPass
    from covidxr.models.loading import RunModel

PART = 256  # items per result file: what a rerun skips at a time
DECODE_CPUS = 0.25  # a decoding task (light next to the check and the model); bounds how many run at once
DECODES_IN_FLIGHT = 2  # CPUs kept for this many decoding tasks; the model actors share the rest, one per core


def _ray():
    try:
        import ray
    except ImportError as error:
        raise UsageError("--engine ray needs Ray: pip install 'covidxr[ray]' (or choose --engine local)") from error
    return ray


def connect(address: str | None) -> bool:
    """Ray connected to `address` (default $RAY_ADDRESS), else started here on this machine's cores; a Ray this
    process already started (tests, notebooks) is used as it is. True when this call started or joined it."""
    ray = _ray()
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its per-operator INFO lines; the progress bar stays
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise UsageError(f"cannot connect to the Ray cluster at {address!r}: {error} (start one with `ray start "
                             f"--head`, or leave out --ray-address and RAY_ADDRESS for a local Ray)") from error
    else:
        ray.init(num_cpus=worker_count(), logging_level=logging.WARNING, log_to_driver=False, include_dashboard=False)
    return True


def decode(batch: dict[str, np.ndarray], stage: Stage) -> dict[str, np.ndarray]:
    """A Ray task: each item decoded by the stage (pickled, so any shape travels)."""
    decoded = [pickle.dumps(stage.decode(pickle.loads(item))) for item in batch["item"]]
    return {"part": batch["part"], "index": batch["index"], "decoded": np.array(decoded, dtype=object)}


def run_in_task(batch: dict[str, np.ndarray], stage: Stage) -> dict[str, np.ndarray]:
    """A Ray task doing a whole batch of a stage that holds no model (decode and run in one process: nothing
    decoded crosses processes)."""
    answers = stage.open(1)([stage.decode(pickle.loads(item)) for item in batch["item"]])
    return {"part": batch["part"], "index": batch["index"],
            "answer": np.array([json.dumps(answer) for answer in answers], dtype=object)}


class StageActor:
    """A Ray actor holding what the stage opens (its model, once): runs batches of decoded items."""

    def __init__(self, stage: Stage, threads: int):
        self.run = stage.open(threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        answers = self.run([pickle.loads(blob) for blob in batch["decoded"]])
        return {"part": batch["part"], "index": batch["index"],
                "answer": np.array([json.dumps(answer) for answer in answers], dtype=object)}


def write_part(path: Path, rows: list[str]) -> None:
    """One part's answers (JSON, in input order), written whole or not at all."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    pq.write_table(pa.table({"answer": rows}), partial)
    partial.replace(path)


def read_part(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(path).column("answer").to_pylist()


def answered_parts(stage: Stage, parts: list[list[Any]], todo: list[int]) -> Iterator[tuple[int, list[str]]]:
    """(part number, its answers in order) of the parts `todo`, each as soon as it is complete."""
    ray = _ray()
    rows = [{"part": k, "index": i, "item": pickle.dumps(item)} for k in todo for i, item in enumerate(parts[k])]
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    dataset = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // CHUNK, 4 * cpus * 8)))
    if not stage.holds_model:
        dataset = dataset.map_batches(run_in_task, fn_kwargs={"stage": stage}, batch_size=stage.batch, num_cpus=1)
    else:
        actors = max(1, min(cpus, -(-len(rows) // stage.batch)))  # no more actors (models loaded) than batches
        actor_cpus = max(0.5, (cpus - DECODE_CPUS * DECODES_IN_FLIGHT) / actors)
        dataset = dataset.map_batches(decode, fn_kwargs={"stage": stage}, batch_size=CHUNK, num_cpus=DECODE_CPUS)
        dataset = dataset.map_batches(StageActor, fn_constructor_kwargs={"stage": stage,
                                                                        "threads": max(1, round(actor_cpus))},
                                      batch_size=stage.batch, num_cpus=actor_cpus,
                                      compute=ray.data.ActorPoolStrategy(size=actors))
    received: dict[int, dict[int, str]] = defaultdict(dict)
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        for part, index, answer in zip(batch["part"], batch["index"], batch["answer"]):
            done = received[int(part)]
            done[int(index)] = str(answer)
            if len(done) == len(parts[int(part)]):
                yield int(part), [done[i] for i in range(len(done))]
                del received[int(part)]


class RayEngine:
    def __init__(self, address: str | None = None):
        self.address = address
        self.started = False

    def run_stage(self, stage: Stage, items: Sequence[Any]) -> list[dict]:
        """The stage's answer for each item, in order: parts kept from an earlier run are read, the others run on
        Ray (started or joined on first need, left when the process ends)."""
        parts = [list(items[start:start + PART]) for start in range(0, len(items), PART)]
        folder = stage.results
        files = [folder / part_name(stage, part) for part in parts] if folder else []
        todo = [k for k in range(len(parts)) if not files or not files[k].is_file()]
        answers: dict[int, list[str]] = {}
        if todo:
            if not self.started and connect(self.address):
                self.started = True
                atexit.register(self.close)
            for k, rows in answered_parts(stage, parts, todo):
                if files:
                    write_part(files[k], rows)
                else:
                    answers[k] = rows
        return [json.loads(row) for k in range(len(parts)) for row in (read_part(files[k]) if files else answers[k])]

    def close(self) -> None:
        """Shut down the Ray this engine started or joined (not one the process started before)."""
        if self.started:
            _ray().shutdown()
            self.started = False

    def predict(self, predictor: Predictor, paths: Sequence[Path]) -> list[Prediction]:
        request = replace(predictor.request, run=predictor.request.run.resolve())  # actors may run elsewhere
        folder = results_folder("predictions", predictor.contract.content, request.operating_point, request.prevalence,
                                request.input_check)
        positive = predictor.contract.positive_class
        return [Prediction.from_dict(row, positive) for row in self.run_stage(PredictStage(request, folder), paths)]

    def segment(self, segmenter: LungSegmenter, paths: Sequence[Path], out: Path,
                overlay: bool) -> list[SegmentedFile]:
        out = Path(out).resolve()
        out.mkdir(parents=True, exist_ok=True)
        folder = results_folder("segments", segmenter.contract, os.fspath(out), overlay)
        stage = SegmentStage(segmenter.folder.resolve(), out, overlay, folder)
        return [SegmentedFile(**row) for row in self.run_stage(stage, list(zip(paths, output_stems(paths))))]

    def prepare(self, manifest: pd.DataFrame, root: Path, preprocessor: Preprocessor) -> PrepareReport:
        return prepare(manifest, root, preprocessor, prepare_files=self.prepare_files)

    def prepare_files(self, cache: PixelCache, files: list[tuple[str, str]], preprocessor: Preprocessor
                      ) -> dict[str, str]:
        """`covidxr.data.cache.FilePreparer` on Ray: actors write shards of the cache; the problems by sha256."""
        stage = PrepareStage(os.fspath(cache.folder.resolve()), preprocessor)
        return {row["sha256"]: row["problem"] for row in self.run_stage(stage, files) if row["problem"]}

    def occlusion(self, run: RunModel, rows: pd.DataFrame, cache: PixelCache,
                  segmenter: LungSegmenter) -> OcclusionPass:
        from covidxr.evaluation.audit import OCCLUSION_KEYS, joined_pass

        folder = results_folder("occlusion", run.contract.content, cache.config.key(), segmenter.weights_sha256)
        stage = OcclusionStage(Path(run.run).resolve(), cache.folder.parent.resolve(), cache.config,
                               segmenter.folder.resolve(), folder)
        answers = self.run_stage(stage, list(rows["sha256"]))
        return joined_pass([{key: np.array([answer[key] for answer in answers]) for key in OCCLUSION_KEYS}])
