"""Using a trained model: `covidxr.load_model(run).predict(path_or_array)` and `covidxr predict`.

Per image, first the input check ("is this a frontal chest radiograph?"): a refused image gets its reason and
no label or probability. Then calibrated class probabilities (at the calibration's prevalence, or at a deployment
prevalence given), the label at a named operating point, and warnings where something is evident (very low
resolution, inverted grey scale). Unreadable files get `status="error"` with the reason; the others are still
predicted.

The lean path: when `RUN/model.onnx` matches the run's weights, predicting imports ONNX Runtime, NumPy,
OpenCV, Pillow (and pydicom for DICOM files) but never PyTorch, Lightning or scikit-learn; PyTorch is
loaded on first use only when there is no matching ONNX file, or to explain (class activation maps).
Folders are decoded and prepared in worker processes while the model runs batches in this one.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from covidxr.data.imageio import Decoded, decoded_file, read_grayscale
from covidxr.data.preprocess import Preprocessing, Preprocessor
from covidxr.errors import UsageError
from covidxr.inputcheck import SKIPPED, InputChecker, InputCheckResult, shipped_input_check
from covidxr.lungs import lungs_of_prepared, preprocessor
from covidxr.models.onnx_runtime import ModelRuntime, OnnxModel
from covidxr.progress import progress_bar, worker_count
from covidxr.runs import NOT_FOR_CLINICAL_USE, InferenceContract, RunDir, shipped_run
from covidxr.runs.severity import SeverityHead, read_severity_head, severity_features_file, severity_from_embedding

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
    operating_point: str | None = None
    prevalence: float | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    positive_class: str = ""
    input_check: InputCheckResult = SKIPPED
    warnings: list[str] = field(default_factory=list)
    severity: dict | None = None

    @property
    def refused(self) -> bool:
        return self.input_check.status == "refused"

    @property
    def probability(self) -> float | None:
        """P(positive class), None where nothing was predicted."""
        return self.probabilities.get(self.positive_class)

    @classmethod
    def from_dict(cls, row: dict, positive_class: str) -> Prediction:
        """The prediction `as_dict` wrote (a JSON round trip keeps every value)."""
        return cls(path=row["path"], status=row["status"], error=row["error"] or "", label=row["label"] or "",
                   threshold=row["threshold"], operating_point=row["operating_point"], prevalence=row["prevalence"],
                   probabilities=row["probabilities"] or {}, positive_class=positive_class,
                   input_check=InputCheckResult(**row["input_check"]), warnings=list(row["warnings"]),
                   severity=row.get("severity"))

    def as_dict(self) -> dict:
        return {"path": self.path, "status": self.status, "error": self.error or None, "label": self.label or None,
                "threshold": self.threshold, "operating_point": self.operating_point, "prevalence": self.prevalence,
                "probability": self.probability, "probabilities": self.probabilities or None,
                "input_check": self.input_check.model_dump(), "warnings": self.warnings,
                **({"severity": self.severity} if self.severity is not None else {})}


@dataclass
class PreparedFile:
    """A file decoded and prepared for the model (`pixels`), refused by the input check (`input_check`), or the
    reason it could not be read (`error`)."""

    path: str
    pixels: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)
    error: str = ""
    input_check: InputCheckResult = SKIPPED


@dataclass(frozen=True)
class ImageSteps:
    """What happens to decoded images before the model: the input check (None: skipped), then preprocessing with
    its lung segmenter, each network run once per batch of images. Picklable: worker processes receive it."""

    preprocessor: Preprocessor
    checker: InputChecker | None = None

    def run(self, gray: np.ndarray, name: str) -> PreparedFile:
        return self.run_many([gray], [name])[0]

    def run_many(self, grays: Sequence[np.ndarray], names: Sequence[str]) -> list[PreparedFile]:
        """Each image checked and prepared, in order. The lungs are segmented once per image: an image the
        check segmented whole (no border cut, at most the check's working size) reuses the check's mask."""
        checked = self.checker.check_many(grays) if self.checker is not None else [(SKIPPED, None)] * len(grays)
        accepted = [index for index, (result, _) in enumerate(checked) if result.accepted]
        trimmed = {index: self.preprocessor.border_trimmed(grays[index])[0] for index in accepted}
        masks: dict[int, np.ndarray | None] = dict.fromkeys(accepted)
        segmenter = self.preprocessor.masker
        if segmenter is not None:
            known = {index: checked[index][1].mask for index in accepted
                     if checked[index][1] is not None and trimmed[index].shape == grays[index].shape
                     == checked[index][1].mask.shape}
            unknown = [index for index in accepted if index not in known]
            found = segmenter.segment_many([trimmed[index] for index in unknown])
            masks |= known | {index: lungs.mask for index, lungs in zip(unknown, found)}
        prepared = [PreparedFile(name, warnings=image_warnings(gray), input_check=result)
                    for gray, name, (result, _) in zip(grays, names, checked)]
        for index in accepted:
            prepared[index].pixels = self.preprocessor.model_pixels(trimmed[index], masks[index])
        return prepared

    def on_threads(self, threads: int | None) -> ImageSteps:
        """These steps with their segmenters on `threads` threads (1 in worker processes, one per core)."""
        return ImageSteps(self.preprocessor.on_threads(threads),
                          None if self.checker is None else self.checker.on_threads(threads))


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


def prepared_from(decoded: Sequence[Decoded], steps: ImageSteps) -> list[PreparedFile]:
    """Decoded files (see `decoded_file`) checked and prepared as the run's model expects, the readable ones
    together (one batch through each network); an unreadable file gets its reason."""
    readable = [index for index, (_, gray, _) in enumerate(decoded) if gray is not None]
    prepared = [PreparedFile(name, error=error) for name, _, error in decoded]
    done = steps.run_many([decoded[index][1] for index in readable], [decoded[index][0] for index in readable])
    for index, item in zip(readable, done):
        prepared[index] = item
    return prepared


def prepare_files(paths: Sequence[str | Path], steps: ImageSteps) -> list[PreparedFile]:
    """Each file decoded, checked and prepared (`prepared_from`)."""
    return prepared_from([decoded_file(path) for path in paths], steps)


def prepared_in_order(paths: Sequence[str | Path], steps: ImageSteps, workers: int | None = None
                      ) -> Iterator[PreparedFile]:
    """`prepare_files` of every path, in input order, CHUNK files at a time. With many files, in `workers`
    processes (default: one per core, their networks on one thread each), with at most
    CHUNKS_IN_FLIGHT_PER_WORKER chunks per worker submitted ahead of the consumer, so a folder of any size holds
    a bounded number of images in memory."""
    workers = worker_count() if workers is None else workers
    chunks = [paths[start:start + CHUNK] for start in range(0, len(paths), CHUNK)]
    if workers < 2 or len(paths) < PARALLEL_FROM:
        for chunk in chunks:
            yield from prepare_files(chunk, steps)
        return
    steps = steps.on_threads(1)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        pending: deque[Future[list[PreparedFile]]] = deque()
        for chunk in chunks:
            pending.append(pool.submit(prepare_files, chunk, steps))
            if len(pending) >= workers * CHUNKS_IN_FLIGHT_PER_WORKER:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


def input_checker(contract: InferenceContract, source: Path) -> InputChecker | None:
    """The run's own input check (model.json's `input_check`); None where the run was trained without one
    (`input_check: null`); the one shipped in the package for a model.json from before input checks."""
    if not contract.records_input_check:
        return shipped_input_check()
    return InputChecker.from_recorded(contract.input_check, source) if contract.input_check is not None else None


@dataclass(frozen=True)
class ModelRequest:
    """What a model was loaded with (`load_model`'s arguments), so that any process (a Ray actor on another node
    too) loads the same model."""

    run: Path
    operating_point: str | None = None
    prevalence: float | None = None
    input_check: bool = True

    def load(self, threads: int | None = None) -> Predictor:
        return Predictor(self, threads)


class Predictor:
    """A run's model ready to classify images (arrays or files): ONNX Runtime when `RUN/model.onnx`
    records the weights hash of model.json, else PyTorch (model.safetensors, checked against that hash
    when it is loaded; with a matching model.onnx it is not read at all). `request`: what it was loaded with."""

    def __init__(self, request: ModelRequest, threads: int | None = None):
        self.request = request
        self.rundir = RunDir(request.run)
        self.contract = self.rundir.read_contract()
        self.scorer = self.contract.scorer(request.operating_point, request.prevalence)
        steps = preprocessor(Preprocessing.from_recorded(self.contract.preprocessing))
        checker = input_checker(self.contract, self.rundir.model_json) if request.input_check else None
        self.steps = ImageSteps(steps, checker)
        self.runtime: ModelRuntime[RunModel] = ModelRuntime(self.rundir.onnx, self.contract.weights_sha256,
                                                            partial(load_torch_run, self.rundir), "pixels", threads,
                                                            output_name="logits")
        self.onnx = OnnxModel(self.runtime.session) if self.runtime.session is not None else None
        self.severity_head, self.severity_net = severity_reader(self.rundir, self.contract, steps.settings, self.onnx,
                                                                threads)
        self._cam_lock = threading.Lock()

    @property
    def classes(self) -> list[str]:
        return self.contract.classes

    @property
    def threshold(self) -> float:
        """The operating point's threshold on the probability predictions report."""
        return self.scorer.threshold

    @property
    def preprocessing(self) -> Preprocessing:
        return self.steps.preprocessor.settings

    @property
    def torch_run(self) -> RunModel:
        """The run's PyTorch model, loaded on first use by the runtime (`load_torch_run`): once, whether its forward
        pass or the model itself (to explain) is wanted first."""
        return self.runtime.torch_forward()

    @property
    def info(self) -> dict:
        return {"run": str(self.rundir.root), "architecture": self.contract.architecture, "classes": self.classes,
                "positive_class": self.contract.positive_class, "threshold": self.threshold,
                "operating_point": self.scorer.operating_point,
                "operating_points": list(self.contract.operating_points),
                "prevalence": self.scorer.reported_prevalence, "calibration": self.scorer.calibration.method,
                "input_check": "skipped" if self.steps.checker is None else self.steps.checker.model.name,
                "pretrained": self.contract.pretrained,
                "runtime": self.runtime.name, "notice": NOT_FOR_CLINICAL_USE}

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Raw logits of (N, size, size) prepared pixels."""
        return self.runtime(batch[:, None].astype(np.float32))

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities of (N, size, size) prepared pixels, at the scorer's prevalence."""
        return self.scorer.probabilities(self.logits(batch))

    def _new(self, prepared: PreparedFile) -> Prediction:
        return Prediction(path=prepared.path, status="error" if prepared.error else "ok", error=prepared.error,
                          operating_point=self.scorer.operating_point, prevalence=self.scorer.reported_prevalence,
                          positive_class=self.contract.positive_class, input_check=prepared.input_check,
                          warnings=prepared.warnings)

    def _finish(self, predictions: list[Prediction], pixels: list[np.ndarray]) -> None:
        if not predictions:
            return
        batch = np.stack(pixels)
        probabilities = self.probabilities(batch)
        labels = self.scorer.labels(probabilities)
        severities = self.severities(batch)
        for index, (prediction, row, label) in enumerate(zip(predictions, probabilities, labels)):
            prediction.probabilities = {name: float(p) for name, p in zip(self.classes, row)}
            prediction.label = str(label)
            prediction.threshold = self.threshold
            prediction.severity = severities[index] if severities else None

    def predict_prepared(self, prepared: Sequence[PreparedFile]) -> list[Prediction]:
        """Predictions for files already decoded and prepared (one batch: the model sees all of them at once),
        in their order; the unreadable and refused ones get their reason and nothing else."""
        predictions = [self._new(item) for item in prepared]
        ready = [(prediction, item.pixels) for prediction, item in zip(predictions, prepared)
                 if item.pixels is not None]
        self._finish([prediction for prediction, _ in ready], [pixels for _, pixels in ready])
        return predictions

    def severities(self, batch: np.ndarray) -> list[dict] | None:
        """The `severity` object of each of (N, size, size) prepared pixels; None for a model without severity."""
        if self.severity_head is None:
            return None
        embeddings = self.severity_net.embedding(batch[:, None].astype(np.float32))
        return [severity_from_embedding(embedding, self.severity_head) for embedding in embeddings]

    def predict(self, item: str | Path | np.ndarray) -> dict:
        """One image (a path, or a 2-D grey uint8 array) -> a prediction dict."""
        if isinstance(item, np.ndarray):
            if item.ndim != 2 or item.dtype != np.uint8:
                raise UsageError(f"expected a 2-D uint8 grey array, got shape {item.shape} dtype {item.dtype}")
            return self.predict_prepared([self.steps.run(item, "<array>")])[0].as_dict()
        return self.predict_files([item])[0].as_dict()

    def explain(self, item: str | Path | np.ndarray, out=None, method: str = "gradcam") -> dict:
        """Class activation map of the positive class for one image (path or 2-D grey uint8 array): the map,
        the share of its heat inside the lung mask, and, with `out` (a path or binary file), a PNG overlay with
        the lung outline; also the prepared `pixels` the model saw. An image the input check refuses gets its
        `input_check` and nothing else (no file). Grad-CAM comes from model.onnx when it has the maps (no PyTorch
        then), else from the PyTorch model."""
        from covidxr.explain.cam import heatmaps, lung_heat_share, onnx_gradcam, save_overlay

        positive = self.contract.positive_index
        gray = item if isinstance(item, np.ndarray) else read_grayscale(item)
        prepared = self.steps.run(gray, "<explained>")
        if prepared.pixels is None:
            return {"probability": None, "input_check": prepared.input_check, "lung_heat_share": None,
                    "method": method, "heatmap": None, "lungs": None, "pixels": None}
        pixels = prepared.pixels
        probability = float(self.probabilities(pixels[None])[0, positive])
        maps = onnx_gradcam(self.onnx, pixels[None], positive) if method == "gradcam" else None
        if maps is None:
            import torch  # lazy: other methods, and models without Grad-CAM in model.onnx, need the PyTorch model

            with self._cam_lock:
                maps = heatmaps(self.torch_run.model, torch.from_numpy(pixels)[None, None].float(), positive, method)
        heatmap = maps[0]
        lungs = lungs_of_prepared([pixels], self.preprocessing)[0]
        share = lung_heat_share(heatmap, lungs.mask)
        if out is not None:
            name = "image" if isinstance(item, np.ndarray) else Path(item).name[:40]
            region = "the lung field rectangle (no plausible lung mask)" if lungs.fallback else "the lungs"
            title = (f"{name}\nP({self.contract.positive_class}) {probability:.2f} at prevalence "
                     f"{self.scorer.reported_prevalence or float('nan'):.3g} ({self.scorer.operating_point} threshold "
                     f"{self.threshold:.2f}), {method}, {share:.0%} of heat in {region}")
            save_overlay(pixels, heatmap, title, out, lungs)
        return {"probability": probability, "input_check": prepared.input_check, "lung_heat_share": share,
                "method": method, "heatmap": heatmap, "lungs": lungs, "pixels": pixels}

    def predict_files(self, paths: Sequence[str | Path], workers: int | None = None) -> list[Prediction]:
        """Predictions for files in input order, batched, with a progress bar; unreadable ones get status
        'error'. Many files are decoded and prepared in `workers` processes (default: one per core) while
        the model runs batches here."""
        results, batch, ready = [], [], 0
        with progress_bar(disable=len(paths) < PARALLEL_FROM) as bar:
            task = bar.add_task("predicting", total=len(paths))
            for prepared in prepared_in_order(paths, self.steps, workers):
                batch.append(prepared)
                ready += prepared.pixels is not None
                if ready == BATCH:
                    results += self.predict_prepared(batch)
                    bar.advance(task, len(batch))
                    batch, ready = [], 0
            results += self.predict_prepared(batch)
            bar.advance(task, len(batch))
        return results


def load_torch_run(rundir: RunDir) -> RunModel:
    """The run's PyTorch model (importing PyTorch takes seconds and ~1 GB: only without a matching model.onnx, or
    to explain), after checking that model.safetensors is the file model.json describes."""
    from covidxr.models.loading import load_run  # lazy: start-up speed of the ONNX path

    return load_run(rundir.root)


def severity_reader(rundir: RunDir, contract: InferenceContract, preprocessing: Preprocessing,
                    classifier: OnnxModel | None, threads: int | None = None
                    ) -> tuple[SeverityHead | None, OnnxModel | None]:
    """The run's severity head (RUN/severity.json) and the ONNX network whose `embedding` it reads (its own feature
    network, else the classifier's); (None, None) for a model without severity, or one whose head was fitted on
    other pixels or needs an embedding this model.onnx lacks."""
    head = read_severity_head(rundir, contract.weights_sha256)
    if head is None or head.preprocessing != preprocessing.key():
        return None, None
    path = severity_features_file(rundir, head)
    network = OnnxModel(path, threads) if path is not None else classifier
    if network is None or not network.has_embedding:
        return None, None
    return head, network


def load_model(run: str | Path | None = None, operating_point: str | None = None, prevalence: float | None = None,
               input_check: bool = True, threads: int | None = None) -> Predictor:
    """The model of run directory `run` (without one: the model shipped in the package), calling labels at
    `operating_point` (default: the model's), with probabilities at a deployment `prevalence` (default: the one
    its calibration was fitted at), checking each input first unless `input_check` is False; `threads`: ONNX
    Runtime's intra-op threads (default: one per core)."""
    return ModelRequest(Path(run if run is not None else shipped_run()), operating_point, prevalence,
                        input_check).load(threads)
