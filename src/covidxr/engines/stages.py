"""The per-row work of each command as a `Stage` (engines.base): `decode` one item in a light task, then batches
through what `open` builds once per process (an actor's model, ONNX Runtime session or segmenter). Each half calls
the very functions the local engine runs (`decoded_file`, `prepared_from`, `Predictor.predict_prepared`,
`segment_decoded`, `read_checked`, `prepare_decoded`, `occlusion_batch`), so every row is the one the local engine
makes, failures included. Picklable: Ray sends them to its tasks and actors, on any node.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from covidxr.data.cache import PixelCache, prepare_decoded, read_checked, write_shard
from covidxr.data.imageio import Decoded, decoded_file
from covidxr.data.preprocess import Preprocessing, Preprocessor
from covidxr.lungs import LungSegmenter
from covidxr.lungs.segment import BATCH as SEGMENT_BATCH
from covidxr.lungs.segment import segment_decoded
from covidxr.paths import user_cache
from covidxr.predict import BATCH, ModelRequest, prepared_from

SHARD_BATCH = 128
"""Files per shard a `prepare` actor writes: a batch of decoded full-size images held at once (a 3000 x 2500
radiograph decodes to 7.5 MB), and the unit a rerun skips."""
OCCLUSION_BATCH = 64  # as the local audit's


def results_folder(kind: str, *settings: Any) -> Path:
    """$XDG_CACHE_HOME/covidxr/KIND/<hash of the settings>: where a stage keeps its answers. `settings`: JSON values
    (a model's contract as loaded, e.g. `InferenceContract.content`: a recalibrated model.json is another key)."""
    digest = hashlib.sha256(json.dumps(settings, default=str).encode()).hexdigest()[:24]
    return user_cache(kind) / digest


def file_identity(path: str | Path) -> list:
    """A file as given and absolute, with its size and modification time (None when it cannot be read): a
    changed file gets another identity, so it is done again."""
    try:
        stat = os.stat(path)
        state = [stat.st_size, stat.st_mtime_ns]
    except OSError:
        state = None
    return [os.fspath(path), os.path.abspath(path), state]


@dataclass(frozen=True)
class PredictStage:
    """`predict`: files decode in tasks; the model (its ONNX Runtime sessions) checks, prepares and predicts."""

    request: ModelRequest
    results: Path
    batch: int = BATCH
    holds_model: ClassVar[bool] = True

    def identity(self, path: Path) -> list:
        return file_identity(path)

    def decode(self, path: Path) -> Decoded:
        return decoded_file(path)

    def open(self, threads: int) -> Callable[[list], list[dict]]:
        predictor = self.request.load(threads)

        def predict(decoded: list[Decoded]) -> list[dict]:
            prepared = prepared_from(decoded, predictor.steps)
            return [prediction.as_dict() for prediction in predictor.predict_prepared(prepared)]
        return predict


@dataclass(frozen=True)
class SegmentStage:
    """`segment`: (file, output stem) items decode in tasks; the segmenter writes masks (and overlays) into `out`."""

    segmenter: Path
    out: Path
    overlay: bool
    results: Path
    batch: int = SEGMENT_BATCH
    holds_model: ClassVar[bool] = True

    def identity(self, item: tuple[Path, str]) -> list:
        return [file_identity(item[0]), item[1]]

    def decode(self, item: tuple[Path, str]) -> tuple[Decoded, str]:
        return decoded_file(item[0]), item[1]

    def open(self, threads: int) -> Callable[[list], list[dict]]:
        segmenter = LungSegmenter(self.segmenter, threads)
        segmenter.backend_name  # noqa: B018 -- opens the session here, once

        def segment(decoded: list[tuple[Decoded, str]]) -> list[dict]:
            return [asdict(segment_decoded(item, stem, self.out, self.overlay, segmenter)) for item, stem in decoded]
        return segment


@dataclass(frozen=True)
class PrepareStage:
    """`prepare`: (path, sha256) items are read, checked against their hash and decoded in tasks; the actor
    preprocesses them (with its lung segmenter, where the preprocessing needs one) and writes each batch as a shard
    of the cache `folder`. Answers the problem of each file (empty when prepared); nothing is kept besides the
    shards: the cache itself tells a rerun what is done."""

    folder: str
    preprocessor: Preprocessor
    batch: int = SHARD_BATCH

    results: ClassVar[None] = None  # the cache itself tells a rerun what is done

    @property
    def holds_model(self) -> bool:
        return self.preprocessor.masker is not None  # else preprocessing is all: tasks do it

    def identity(self, item: tuple[str, str]) -> list:
        return list(item)

    def decode(self, item: tuple[str, str]) -> tuple[str, np.ndarray | None, str]:
        path, sha256 = item
        return (sha256, *read_checked(path, sha256))

    def open(self, threads: int) -> Callable[[list], list[dict]]:
        preprocessor = self.preprocessor.on_threads(threads)

        def prepare(decoded: list[tuple[str, np.ndarray | None, str]]) -> list[dict]:
            results = [prepare_decoded(image, problem, sha256, preprocessor) for sha256, image, problem in decoded]
            write_shard(self.folder, preprocessor.settings, results)
            return [{"sha256": result.sha256, "problem": result.problem} for result in results]
        return prepare


@dataclass(frozen=True)
class OcclusionStage:
    """`audit`'s occlusion pass: sha256 items; the actor holds the run's PyTorch model, the lung segmenter and the
    memory-mapped pixel cache (reading an entry is a copy, no decoding: there is nothing for a task to do)."""

    run: Path
    cache_root: Path
    config: Preprocessing
    segmenter: Path
    results: Path
    batch: int = OCCLUSION_BATCH
    holds_model: ClassVar[bool] = True

    def identity(self, sha256: str) -> str:
        return sha256

    def decode(self, sha256: str) -> str:
        return sha256

    def open(self, threads: int) -> Callable[[list], list[dict]]:
        import torch

        from covidxr.evaluation.audit import OCCLUSION_KEYS, occlusion_batch
        from covidxr.models.loading import load_run

        torch.set_num_threads(threads)
        run = load_run(self.run)
        cache = PixelCache(self.cache_root, self.config)
        segmenter = LungSegmenter(self.segmenter, threads)

        def occlude(sha256s: list[str]) -> list[dict]:
            pixels = torch.from_numpy(np.array(cache.pixels()[cache.slots(sha256s)]))[:, None]
            found = occlusion_batch(run, pixels, segmenter)
            return [{key: found[key][row].tolist() for key in OCCLUSION_KEYS} for row in range(len(sha256s))]
        return occlude


def part_name(stage: Any, items: Sequence[Any]) -> str:
    """The hash of the items' identities: the name of the file a part's answers are kept in."""
    return hashlib.sha256(json.dumps([stage.identity(item) for item in items]).encode()).hexdigest()[:32] + ".parquet"
