"""Using a trained model: `covidxr.load_model(run).predict(path_or_array)` and `covidxr predict`.

Per image: class probabilities (temperature-scaled), the label at the run's operating threshold, and
warnings where something is evident (very low resolution, inverted grey scale, a colour image).
Unreadable files get `status="error"` with the reason; the others are still predicted.

The lean path: when `RUN/model.onnx` matches the run's weights, predicting imports ONNX Runtime, NumPy,
OpenCV, Pillow (and pydicom for DICOM files) but never PyTorch, Lightning or scikit-learn; PyTorch is
loaded on first use only when there is no matching ONNX file, or to explain (class activation maps).
Folders are decoded and prepared in worker processes while the model runs batches in this one.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from covidxr.data.imageio import ImageReadError, read_grayscale
from covidxr.data.preprocess import LungMasker, Preprocessing, preprocess
from covidxr.errors import UsageError
from covidxr.models.onnx_runtime import matching_onnx
from covidxr.progress import progress_bar, worker_count
from covidxr.runs import NOT_FOR_CLINICAL_USE, RunDir, predicted_classes, shipped_run, softmax_with_temperature

if TYPE_CHECKING:
    from covidxr.models.loading import RunModel

LOW_RESOLUTION = 256
BATCH = 32
PARALLEL_FROM = 16  # fewer files are decoded here, without a progress bar: workers would cost more than they save
CHUNK = 8  # files per task sent to a worker process
CHUNKS_IN_FLIGHT_PER_WORKER = 3  # bounds the memory held by prepared images waiting for the model


@dataclass
class Prediction:
    path: str
    status: str = "ok"
    error: str = ""
    label: str = ""
    threshold: float | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"path": self.path, "status": self.status, "error": self.error or None, "label": self.label or None,
                "threshold": self.threshold, "probabilities": self.probabilities, "warnings": self.warnings}


@dataclass
class PreparedFile:
    """A file decoded and prepared for the model (`pixels`), or the reason it could not be (`error`)."""

    path: str
    pixels: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)
    error: str = ""


def image_warnings(gray: np.ndarray) -> list[str]:
    """What is evident from the decoded pixels alone."""
    found = []
    if min(gray.shape) < LOW_RESOLUTION:
        found.append(f"very low resolution ({gray.shape[1]}x{gray.shape[0]})")
    band = max(1, min(gray.shape) // 20)
    frame = np.concatenate([gray[:band].ravel(), gray[-band:].ravel(), gray[:, :band].ravel(), gray[:, -band:].ravel()])
    height, width = gray.shape
    centre = gray[height // 3: 2 * height // 3, width // 3: 2 * width // 3]
    if frame.mean() > 170 and frame.mean() > centre.mean() + 40:
        found.append("looks inverted (bright surroundings, dark body): check the grey scale")
    return found


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given; folders recursively (hidden files skipped), sorted. Entries of a folder that are not
    folders are all listed, pipes and broken links too, so that reading them reports why they failed."""
    expanded = []
    for path in map(Path, paths):
        if path.is_dir():
            expanded += sorted(p for p in path.rglob("*") if not p.is_dir() and not any(
                part.startswith(".") for part in p.relative_to(path).parts))
        else:
            expanded.append(path)
    return expanded


def prepare_file(path: str | Path, preprocessing: Preprocessing, lungs: LungMasker | None = None) -> PreparedFile:
    """Decode one file and prepare it as the run's model expects; an unreadable file gets its reason."""
    try:
        gray = read_grayscale(path)
    except ImageReadError as error:
        return PreparedFile(os.fspath(path), error=error.problem)
    return PreparedFile(os.fspath(path), preprocess(gray, preprocessing, lungs)[0], image_warnings(gray))


def prepare_files(paths: Sequence[str | Path], preprocessing: Preprocessing,
                  lungs: LungMasker | None = None) -> list[PreparedFile]:
    return [prepare_file(path, preprocessing, lungs) for path in paths]


def prepared_in_order(paths: Sequence[str | Path], preprocessing: Preprocessing, lungs: LungMasker | None = None,
                      workers: int | None = None) -> Iterator[PreparedFile]:
    """`prepare_file` of every path, in input order. With many files, in `workers` processes (default: one
    per core) fed chunks of CHUNK files, with at most CHUNKS_IN_FLIGHT_PER_WORKER chunks per worker
    submitted ahead of the consumer, so a folder of any size holds a bounded number of images in memory."""
    workers = worker_count() if workers is None else workers
    if workers < 2 or len(paths) < PARALLEL_FROM:
        yield from (prepare_file(path, preprocessing, lungs) for path in paths)
        return
    chunks = [paths[start:start + CHUNK] for start in range(0, len(paths), CHUNK)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        pending: deque[Future[list[PreparedFile]]] = deque()
        for chunk in chunks:
            pending.append(pool.submit(prepare_files, chunk, preprocessing, lungs))
            if len(pending) >= workers * CHUNKS_IN_FLIGHT_PER_WORKER:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


class Predictor:
    """A run's model ready to classify images (arrays or files): ONNX Runtime when `RUN/model.onnx`
    records the weights hash of model.json, else PyTorch (model.safetensors, checked against that hash
    when it is loaded; with a matching model.onnx it is not read at all)."""

    def __init__(self, run: str | Path | RunDir):
        self.rundir = run if isinstance(run, RunDir) else RunDir(run)
        self.contract = self.rundir.read_contract()
        self.preprocessing = Preprocessing.from_recorded(self.contract.preprocessing)
        self.lungs: LungMasker | None = None
        if self.preprocessing.lungs != "none":
            from covidxr.lungs import lung_step  # lazy: only runs that crop or mask to the lungs need it

            self.preprocessing, self.lungs = lung_step(self.preprocessing)
        self.onnx = matching_onnx(self.rundir, self.contract)
        self._torch: RunModel | None = None
        self._torch_lock = threading.Lock()
        self._cam_lock = threading.Lock()

    @property
    def classes(self) -> list[str]:
        return self.contract.classes

    @property
    def threshold(self) -> float:
        return self.contract.threshold

    @property
    def torch_run(self) -> RunModel:
        """The run's PyTorch model, loaded on first use (importing PyTorch takes seconds and ~1 GB), after
        checking that model.safetensors is the file model.json describes."""
        with self._torch_lock:
            if self._torch is None:
                from covidxr.models.loading import load_run  # lazy: start-up speed of the ONNX path

                self._torch = load_run(self.rundir.root)
        return self._torch

    @property
    def info(self) -> dict:
        content = self.contract.content
        return {"run": str(self.rundir.root), "architecture": content["architecture"], "classes": self.classes,
                "threshold": self.threshold, "threshold_rule": self.contract.threshold_rule,
                "temperature": self.contract.temperature, "pretrained": content.get("pretrained"),
                "runtime": "onnxruntime" if self.onnx else "pytorch", "notice": NOT_FOR_CLINICAL_USE}

    def _pixels(self, gray: np.ndarray) -> np.ndarray:
        pixels, _ = preprocess(gray, self.preprocessing, self.lungs)
        return pixels

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Raw logits of (N, size, size) prepared pixels."""
        pixels = batch[:, None].astype(np.float32)
        if self.onnx is not None:
            return self.onnx.logits(pixels)
        import torch  # lazy: only without a matching model.onnx

        with torch.no_grad():
            return self.torch_run.model(torch.from_numpy(pixels)).numpy()

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Temperature-scaled class probabilities of (N, size, size) prepared pixels."""
        return softmax_with_temperature(self.logits(batch), self.contract.temperature)

    def _finish(self, predictions: list[Prediction], pixels: list[np.ndarray]) -> None:
        if not predictions:
            return
        probabilities = self.probabilities(np.stack(pixels))
        labels = predicted_classes(probabilities, self.classes, self.contract.positive_class, self.threshold)
        for prediction, row, label in zip(predictions, probabilities, labels):
            prediction.probabilities = {name: float(p) for name, p in zip(self.classes, row)}
            prediction.label = str(label)
            prediction.threshold = self.threshold

    def predict(self, item: str | Path | np.ndarray) -> dict:
        """One image (a path, or a 2-D grey uint8 array) -> a prediction dict."""
        if isinstance(item, np.ndarray):
            if item.ndim != 2 or item.dtype != np.uint8:
                raise UsageError(f"expected a 2-D uint8 grey array, got shape {item.shape} dtype {item.dtype}")
            prediction = Prediction(path="<array>", warnings=image_warnings(item))
            self._finish([prediction], [self._pixels(item)])
            return prediction.as_dict()
        return self.predict_files([item])[0].as_dict()

    def explain(self, item: str | Path | np.ndarray, out=None, method: str = "gradcam") -> dict:
        """Class activation map of the positive class for one image (path or 2-D grey uint8 array): the map,
        the share of its heat inside the lung mask, and, with `out` (a path or binary file), a PNG overlay with
        the lung outline."""
        import torch  # lazy: class activation maps need the PyTorch model

        from covidxr.explain.cam import heatmaps, lung_heat_share, save_overlay
        from covidxr.lungs import shipped_segmenter

        positive = self.contract.positive_index
        gray = item if isinstance(item, np.ndarray) else read_grayscale(item)
        pixels = self._pixels(gray)
        probability = float(self.probabilities(pixels[None])[0, positive])
        model = self.torch_run.model
        with self._cam_lock:
            heatmap = heatmaps(model, torch.from_numpy(pixels)[None, None].float(), positive, method)[0]
        lungs = shipped_segmenter().segment(pixels)
        share = lung_heat_share(heatmap, lungs.mask)
        if out is not None:
            name = "image" if isinstance(item, np.ndarray) else Path(item).name[:40]
            region = "the lung field rectangle (no plausible lung mask)" if lungs.fallback else "the lungs"
            title = (f"{name}\nP({self.contract.positive_class}) {probability:.2f} (threshold "
                     f"{self.threshold:.2f}), {method}, {share:.0%} of heat in {region}")
            save_overlay(pixels, heatmap, title, out, lungs)
        return {"probability_covid": probability, "lung_heat_share": share, "method": method, "heatmap": heatmap,
                "lungs": lungs}

    def predict_files(self, paths: Sequence[str | Path], workers: int | None = None) -> list[Prediction]:
        """Predictions for files in input order, batched, with a progress bar; unreadable ones get status
        'error'. Many files are decoded and prepared in `workers` processes (default: one per core) while
        the model runs batches here."""
        results, pending, pixels = [], [], []
        with progress_bar(disable=len(paths) < PARALLEL_FROM) as bar:
            task = bar.add_task("predicting", total=len(paths))
            for prepared in prepared_in_order(paths, self.preprocessing, self.lungs, workers):
                prediction = Prediction(path=prepared.path, warnings=prepared.warnings)
                results.append(prediction)
                if prepared.pixels is None:
                    prediction.status, prediction.error = "error", prepared.error
                    bar.advance(task)
                    continue
                pending.append(prediction)
                pixels.append(prepared.pixels)
                if len(pending) == BATCH:
                    self._finish(pending, pixels)
                    bar.advance(task, len(pending))
                    pending, pixels = [], []
            self._finish(pending, pixels)
            bar.advance(task, len(pending))
        return results


def load_model(run: str | Path | None = None) -> Predictor:
    """The model of run directory `run` (without one: the model shipped in the package)."""
    return Predictor(run if run is not None else shipped_run())
