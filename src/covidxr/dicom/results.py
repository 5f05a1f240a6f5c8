"""From a source DICOM instance to its results (the SR, and the SC of the Grad-CAM overlay), and
`covidxr predict --dicom-out DIR`: `DIR/<source SOPInstanceUID>.sr.dcm` and `.sc.dcm` per input DICOM."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom import Dataset

from covidxr.data.imageio import ImageReadError, dicom_grayscale, file_format, malformed_dicom_errors
from covidxr.data.privacy import describe_error, keep_header_values_out_of_logs
from covidxr.dicom.source import evidence_header, skip_reason
from covidxr.dicom.sr import Classification, ModelIdentity, build_sc, build_sr
from covidxr.errors import CovidxrError
from covidxr.predict import Prediction, Predictor
from covidxr.progress import progress_bar


class DicomResultError(CovidxrError):
    """An instance that gets no DICOM result; the message names it and the reason."""

    def __init__(self, name: str, problem: str):
        self.name, self.problem = name, problem
        super().__init__(f"{name}: {problem}")


class InputRefused(DicomResultError):
    """An instance the input check refused: an answer, not a failure."""


@dataclass
class ResultObjects:
    sr: Dataset
    sc: Dataset
    classification: Classification


def model_identity(predictor: Predictor) -> ModelIdentity:
    return ModelIdentity.from_contract(predictor.contract)


def _grayscale(dataset: Dataset, name: str) -> np.ndarray:
    if "PixelData" not in dataset:
        raise DicomResultError(name, "no pixel data")
    try:
        return dicom_grayscale(dataset, name)
    except ImageReadError as error:
        raise DicomResultError(name, error.problem) from None


def _classification(predictor: Predictor, gray: np.ndarray, prediction: dict | None, name: str) -> Classification:
    prediction = prediction if prediction is not None else predictor.predict(gray)
    checked = prediction["input_check"]
    if checked["status"] == "refused":
        raise InputRefused(name, f"refused by the input check ({checked['reason']}): no DICOM result")
    return Classification.from_prediction(prediction, predictor.contract.positive_class)


def overlay_title(result: Classification, model: ModelIdentity) -> str:
    return (f"P(COVID-19) {result.probability:.3f}, threshold {result.threshold:.3f}: {result.label}\n"
            f"{result.assumptions()}\n"
            f"Grad-CAM of {model.name}\nResearch and teaching only; not for clinical use")


def _built(name: str, source: Dataset, build):
    """highdicom checks what it writes and raises ValueError or TypeError for a source it cannot use; the error
    gives its message, without the source's identifying values."""
    try:
        built = build()
    except (ValueError, TypeError, AttributeError, KeyError) as error:
        raise DicomResultError(name, f"cannot build the DICOM result ({describe_error(error, source)})") from None
    for result in (built.sr, built.sc) if isinstance(built, ResultObjects) else (built,):
        _same_names(result, source)
    return built


def _same_names(result: Dataset, source: Dataset) -> None:
    """The source's person names exactly as it wrote them (evidence_header gave one-part names a caret)."""
    for element in source:
        if element.VR == "PN" and element.keyword in result:
            result[element.keyword].value = element.value


def sr_of(predictor: Predictor, dataset: Dataset, name: str, radiographs_only: bool = False) -> Dataset:
    """The SR alone (no Grad-CAM) of one source instance; DicomResultError when it gets none."""
    keep_header_values_out_of_logs()
    reason = skip_reason(dataset, radiographs_only)
    if reason:
        raise DicomResultError(name, reason)
    result = _classification(predictor, _grayscale(dataset, name), None, name)
    return _built(name, dataset, lambda: build_sr(evidence_header(dataset), result, model_identity(predictor)))


def results_of(predictor: Predictor, dataset: Dataset, name: str, prediction: dict | None = None,
               radiographs_only: bool = False) -> ResultObjects:
    """The SR and the SC of one source instance (`prediction`, when given, is reused); DicomResultError when
    it gets none. The overlay outlines the lungs as the lung segmenter draws them."""
    from covidxr.explain.cam import overlay_rgb  # lazy: PyTorch; `sr_of` (predict, serve) runs without it

    keep_header_values_out_of_logs()
    reason = skip_reason(dataset, radiographs_only)
    if reason:
        raise DicomResultError(name, reason)
    gray = _grayscale(dataset, name)
    result, model = _classification(predictor, gray, prediction, name), model_identity(predictor)
    explained = predictor.explain(gray)
    overlay = overlay_rgb(explained["pixels"], explained["heatmap"], overlay_title(result, model), explained["lungs"])
    header = evidence_header(dataset)
    return _built(name, dataset, lambda: ResultObjects(build_sr(header, result, model),
                                                       build_sc(header, overlay, model), result))


@dataclass
class DicomOutput:
    """What `--dicom-out` did for one input: `written` (both files), `not-dicom` or `refused` (a note) or
    `failed`."""

    path: str
    status: str
    note: str = ""
    sr: Path | None = None
    sc: Path | None = None


def _read_dicom_file(path: Path) -> Dataset | None:
    """The parsed file; None when it is not a DICOM file; DicomResultError when it cannot be parsed."""
    try:
        if file_format(path) != "dicom":
            return None
    except ImageReadError:
        return None
    keep_header_values_out_of_logs()
    try:
        return pydicom.dcmread(path)
    except malformed_dicom_errors() as error:
        raise DicomResultError(os.fspath(path), f"cannot parse DICOM ({describe_error(error)})") from None


def write_dicom_outputs(predictor: Predictor, predictions: Sequence[Prediction], out: str | Path) -> list[DicomOutput]:
    """For each predicted input DICOM: `out/<SOPInstanceUID>.sr.dcm` and `.sc.dcm` (both, or neither)."""
    out = Path(out)
    outputs = []
    with progress_bar() as bar:
        task = bar.add_task("DICOM results", total=len(predictions))
        for prediction in predictions:
            outputs.append(_write_one(predictor, prediction, out))
            bar.advance(task)
    return outputs


def _write_one(predictor: Predictor, prediction: Prediction, out: Path) -> DicomOutput:
    path = Path(prediction.path)
    try:
        dataset = _read_dicom_file(path)
        if dataset is None:
            return DicomOutput(prediction.path, "not-dicom", "not a DICOM file: no DICOM output")
        if prediction.status != "ok":
            raise DicomResultError(prediction.path, prediction.error)
        if prediction.refused:
            return DicomOutput(prediction.path, "refused", f"refused by the input check "
                                                           f"({prediction.input_check.reason}): no DICOM output")
        objects = results_of(predictor, dataset, prediction.path, prediction.as_dict())
    except DicomResultError as error:
        return DicomOutput(prediction.path, "failed", error.problem)
    out.mkdir(parents=True, exist_ok=True)
    sr, sc = (out / f"{dataset.SOPInstanceUID}.{kind}.dcm" for kind in ("sr", "sc"))
    objects.sc.save_as(sc, enforce_file_format=True)
    objects.sr.save_as(sr, enforce_file_format=True)
    return DicomOutput(prediction.path, "written", sr=sr, sc=sc)
