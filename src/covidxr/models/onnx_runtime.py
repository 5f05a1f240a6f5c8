"""ONNX Runtime sessions for every network covidxr ships or exports: the classifier (`RUN/model.onnx`, written by
`covidxr export`), its severity feature network and the lung segmenter.

One rule for all of them (`ModelRuntime`): a model folder's `model.onnx` is used when its metadata records the
weights sha256 that its `model.json` does; a missing file, or one exported from other weights, falls back to
PyTorch (`model.safetensors`), loaded on first use only.

Sessions start from the optimised graph that ONNX Runtime saved the first time (`optimised_graph_path`, in the
user's cache folder, keyed by the file, its weights hash, the ONNX Runtime version and the CPU): graph
optimisation is most of what opening a session costs. A cached graph that does not load or records other weights
is ignored and rebuilt.

This module imports ONNX Runtime and NumPy only, never PyTorch.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import threading
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np
import onnxruntime

from covidxr.errors import CovidxrError
from covidxr.paths import user_cache

log = logging.getLogger("covidxr.onnx")

OUTPUTS = ["logits", "embedding"]
"""What `covidxr export` writes: logits (batch, classes) and the pooled embedding (batch, channels); files
exported before the embedding have `logits` only."""
Forward = Callable[[np.ndarray], np.ndarray]
"""A network's forward pass on a float32 batch (its first output)."""
TorchForward = TypeVar("TorchForward", bound=Forward)
"""What a runtime's PyTorch loader gives: a forward pass, which may also be the loaded model (a `RunModel`)."""


def cache_folder() -> Path:
    """Where optimised graphs are kept: $XDG_CACHE_HOME/covidxr/onnxruntime (default ~/.cache/...), not beside the
    model, whose folder (the installed package) may be read-only."""
    return user_cache("onnxruntime")


@lru_cache(maxsize=1)
def _cpu_signature() -> str:
    """The CPU's identity as far as ONNX Runtime's saved layout optimisations depend on it (its instruction set
    flags on Linux; elsewhere the platform's processor string)."""
    try:
        with open("/proc/cpuinfo") as info:
            flags = next((line for line in info if line.startswith(("flags", "Features"))), "")
    except OSError:
        flags = ""
    return f"{platform.machine()}|{flags or platform.processor()}"


def optimised_graph_path(path: Path, weights_sha256: str = "") -> Path:
    """The cache file of `path`'s optimised graph: a new name whenever the file (its place, size, modification
    time), its weights hash, ONNX Runtime or the CPU changes, so a cached graph never outlives its source."""
    stat = path.stat()
    identity = "|".join([str(path.resolve()), str(stat.st_size), str(stat.st_mtime_ns), weights_sha256,
                         onnxruntime.__version__, _cpu_signature()])
    key = hashlib.sha256(identity.encode()).hexdigest()[:20]
    return cache_folder() / f"{path.stem}-ort{onnxruntime.__version__}-{key}.onnx"


def _options(threads: int | None, optimise: bool = True) -> onnxruntime.SessionOptions:
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    # idle pool threads sleep instead of spinning: on 2 cores shared with decoding workers (or other jobs), spinning
    # burnt a third of predict's CPU time (bench_predict_cli.py, benchmarks/README.md)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not optimise:
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    return options


def _open(path: Path, options: onnxruntime.SessionOptions) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _recorded_weights(session: onnxruntime.InferenceSession) -> str:
    return session.get_modelmeta().custom_metadata_map.get("weights_sha256", "")


def _cached_session(cached: Path, threads: int | None) -> onnxruntime.InferenceSession | None:
    """The session over a cached optimised graph (not optimised again); None when the file does not load (then it
    is removed, to be rebuilt)."""
    try:
        return _open(cached, _options(threads, optimise=False))
    except Exception as error:  # noqa: BLE001 - ONNX Runtime raises its own untyped errors for a bad file
        log.warning("ignoring the unreadable cached ONNX graph %s (%s); rebuilding it", cached, error)
        cached.unlink(missing_ok=True)
        return None


def inference_session(path: str | Path, threads: int | None = None,
                      weights_sha256: str = "") -> onnxruntime.InferenceSession:
    """An ONNX Runtime session (CPU) over `path`, from its cached optimised graph when there is one; the first
    time, the graph is optimised and saved (atomically; a cache folder that cannot be written is only noted).
    `weights_sha256`: what a cached graph must record (else it is stale and rebuilt). `threads`: intra-op threads
    (default: ONNX Runtime's, one per core)."""
    path = Path(path)
    try:
        cached = optimised_graph_path(path, weights_sha256)
    except OSError:
        cached = None
    if cached is not None and cached.is_file():
        session = _cached_session(cached, threads)
        if session is not None and (not weights_sha256 or _recorded_weights(session) == weights_sha256):
            return session
        cached.unlink(missing_ok=True)  # stale: it records other weights than the file it stands for
    if cached is None:
        return _open(path, _options(threads))
    return _build_and_save(path, cached, threads)


def _build_and_save(path: Path, cached: Path, threads: int | None) -> onnxruntime.InferenceSession:
    """A session over `path`, optimised now, its optimised graph saved as `cached` (written beside it, then renamed:
    another process never reads half a file); where it cannot be saved, the session without saving."""
    options = _options(threads)
    partial = cached.with_name(f".{cached.name}.{os.getpid()}.{threading.get_ident()}.partial")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        options.optimized_model_filepath = str(partial)
        session = _open(path, options)
        os.replace(partial, cached)
        return session
    except Exception as error:  # noqa: BLE001 - OSError, or ONNX Runtime's own error when it cannot write
        log.info("not caching the optimised graph of %s (%s)", path, error)
    with contextlib.suppress(OSError):
        partial.unlink(missing_ok=True)
    return _open(path, _options(threads))


def matching_session(path: Path, weights_sha256: str, threads: int | None = None
                     ) -> onnxruntime.InferenceSession | None:
    """The session over `path` when the file exists and its metadata records `weights_sha256` (model.json's);
    else None, with a warning when the file is there but was exported from other weights."""
    if not path.is_file():
        return None
    session = inference_session(path, threads, weights_sha256)
    if _recorded_weights(session) != weights_sha256:
        log.warning("%s was exported from other weights; using PyTorch", path)
        return None
    return session


class ModelRuntime(Generic[TorchForward]):
    """A network's forward pass: ONNX Runtime over `onnx_path` when that file records `weights_sha256` (see
    `matching_session`), else the PyTorch forward that `load_torch()` builds, on first use (`torch_forward`: also
    where the PyTorch model is wanted for more than its forward, once, whichever asks first). `input_name` and
    `output_name`: the ONNX graph's input and the output returned (default: its first)."""

    def __init__(self, onnx_path: Path, weights_sha256: str, load_torch: Callable[[], TorchForward], input_name: str,
                 threads: int | None = None, output_name: str | None = None):
        self.session = matching_session(onnx_path, weights_sha256, threads)
        self.input_name = input_name
        self._outputs = None if output_name is None else [output_name]
        self._load_torch = load_torch
        self._torch: TorchForward | None = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return "onnxruntime" if self.session is not None else "pytorch"

    def torch_forward(self) -> TorchForward:
        """What `load_torch()` built, built now on first use (one thread builds it; the others wait)."""
        with self._lock:
            if self._torch is None:
                self._torch = self._load_torch()
        return self._torch

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if self.session is not None:
            return self.session.run(self._outputs, {self.input_name: batch})[0]
        return self.torch_forward()(batch)


class OnnxModel:
    """ONNX Runtime session over an exported model (a path, or a session already open): input `pixels` (batch, 1,
    size, size) float32 grey 0..255, outputs `logits` (batch, classes) and, in files exported since it exists,
    `embedding`."""

    def __init__(self, source: str | Path | onnxruntime.InferenceSession, threads: int | None = None):
        self.session = source if isinstance(source, onnxruntime.InferenceSession) else \
            inference_session(source, threads)
        self.metadata: dict[str, str] = self.session.get_modelmeta().custom_metadata_map

    @property
    def has_embedding(self) -> bool:
        return "embedding" in {output.name for output in self.session.get_outputs()}

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run(["logits"], self._feed(pixels))[0]

    def outputs(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits, pooled embedding) from one run; an error for a file exported without the embedding."""
        if not self.has_embedding:
            raise CovidxrError("this model.onnx was exported without the `embedding` output: export it again "
                               "(covidxr export --run RUN --format onnx)")
        logits, embedding = self.session.run(OUTPUTS, self._feed(pixels))
        return logits, embedding

    def embedding(self, pixels: np.ndarray) -> np.ndarray:
        """(batch, channels) output `embedding` (the classifier's pooled embedding, or a severity feature
        network's)."""
        if not self.has_embedding:
            raise CovidxrError("this ONNX file has no `embedding` output: export it again "
                               "(covidxr export --run RUN --format onnx)")
        return self.session.run(["embedding"], self._feed(pixels))[0]

    @staticmethod
    def _feed(pixels: np.ndarray) -> dict[str, np.ndarray]:
        return {"pixels": np.ascontiguousarray(pixels, dtype=np.float32)}
