"""Using a trained model: `covidxr.load_model(run).predict(path_or_array)` and `covidxr predict`.

Per image: class probabilities (temperature-scaled), the label at the run's operating threshold, and
warnings where something is evident (very low resolution, inverted grey scale, a colour image).
Unreadable files get `status="error"` with the reason; the others are still predicted.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from covidxr.data.imageio import ImageReadError, read_grayscale
from covidxr.data.preprocess import preprocess
from covidxr.errors import UsageError
from covidxr.lungs import lung_step, shipped_segmenter
from covidxr.models.loading import RunModel, load_run
from covidxr.progress import progress_bar
from covidxr.runs import NOT_FOR_CLINICAL_USE, predicted_classes, shipped_run, softmax_with_temperature

LOW_RESOLUTION = 256
BATCH = 32


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
    """Files as given; folders recursively (hidden files skipped), sorted."""
    expanded = []
    for path in map(Path, paths):
        if path.is_dir():
            expanded += sorted(p for p in path.rglob("*") if p.is_file() and not any(
                part.startswith(".") for part in p.relative_to(path).parts))
        else:
            expanded.append(path)
    return expanded


class Predictor:
    """A run's model ready to classify images (arrays or files)."""

    def __init__(self, run: RunModel):
        from covidxr.export import matching_onnx

        self.run = run
        self.positive = run.positive_index
        self.onnx = matching_onnx(run)
        self.preprocessing, self.lungs = lung_step(run.preprocessing)
        self._cam_lock = threading.Lock()

    @property
    def info(self) -> dict:
        contract = self.run.contract
        return {"run": str(self.run.run), "architecture": contract["architecture"], "classes": self.run.classes,
                "threshold": self.run.threshold, "threshold_rule": contract["threshold_rule"],
                "temperature": self.run.temperature, "pretrained": contract["pretrained"],
                "runtime": "onnxruntime" if self.onnx else "pytorch", "notice": NOT_FOR_CLINICAL_USE}

    def _pixels(self, gray: np.ndarray) -> np.ndarray:
        pixels, _ = preprocess(gray, self.preprocessing, self.lungs)
        return pixels

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Temperature-scaled class probabilities of (N, size, size) prepared pixels."""
        pixels = batch[:, None].astype(np.float32)
        if self.onnx is not None:
            logits = self.onnx.logits(pixels)
        else:
            with torch.no_grad():
                logits = self.run.model(torch.from_numpy(pixels)).numpy()
        return softmax_with_temperature(logits, self.run.temperature)

    def _finish(self, predictions: list[Prediction], pixels: list[np.ndarray]) -> None:
        if not predictions:
            return
        probabilities = self.probabilities(np.stack(pixels))
        labels = predicted_classes(probabilities, self.run.classes, self.run.positive_class, self.run.threshold)
        for prediction, row, label in zip(predictions, probabilities, labels):
            prediction.probabilities = {name: float(p) for name, p in zip(self.run.classes, row)}
            prediction.label = str(label)
            prediction.threshold = self.run.threshold

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
        """Class activation map of P(covid) for one image (path or 2-D grey uint8 array): the map, the
        share of its heat inside the lung mask, and, with `out` (a path or binary file), a PNG overlay with the
        lung outline."""
        from covidxr.explain.cam import heatmaps, lung_heat_share, save_overlay

        gray = item if isinstance(item, np.ndarray) else read_grayscale(item)
        pixels = self._pixels(gray)
        probability = float(self.probabilities(pixels[None])[0, self.positive])
        with self._cam_lock:
            heatmap = heatmaps(self.run.model, torch.from_numpy(pixels)[None, None].float(), self.positive, method)[0]
        lungs = shipped_segmenter().segment(pixels)
        share = lung_heat_share(heatmap, lungs.mask)
        if out is not None:
            name = "image" if isinstance(item, np.ndarray) else Path(item).name[:40]
            region = "the lung field rectangle (no plausible lung mask)" if lungs.fallback else "the lungs"
            title = (f"{name}\nP(covid) {probability:.2f} (threshold {self.run.threshold:.2f}), {method}, "
                     f"{share:.0%} of heat in {region}")
            save_overlay(pixels, heatmap, title, out, lungs)
        return {"probability_covid": probability, "lung_heat_share": share, "method": method, "heatmap": heatmap,
                "lung_mask": lungs.mask, "lung_warnings": list(lungs.warnings)}

    def predict_files(self, paths: Sequence[str | Path]) -> list[Prediction]:
        """Predictions for files, batched, with a progress bar; unreadable ones get status 'error'."""
        results, pending, pixels = [], [], []
        with progress_bar() as bar:
            task = bar.add_task("predicting", total=len(paths))
            for path in paths:
                prediction = Prediction(path=os.fspath(path))
                results.append(prediction)
                try:
                    gray = read_grayscale(path)
                except ImageReadError as error:
                    prediction.status, prediction.error = "error", error.problem
                    bar.advance(task)
                    continue
                prediction.warnings = image_warnings(gray)
                pending.append(prediction)
                pixels.append(self._pixels(gray))
                if len(pending) == BATCH:
                    self._finish(pending, pixels)
                    bar.advance(task, len(pending))
                    pending, pixels = [], []
            self._finish(pending, pixels)
            bar.advance(task, len(pending))
        return results


def load_model(run: str | Path | None = None) -> Predictor:
    """The model of run directory `run` (without one: the model shipped in the package)."""
    return Predictor(load_run(run if run is not None else shipped_run()))
