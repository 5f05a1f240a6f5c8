"""`covidxr serve`: the REST API and the web page (docs/reference.md, "HTTP service").

The model is loaded once. Uploads are read with a size limit enforced while they stream in, decoded in
memory (never written anywhere by covidxr) and dropped before the answer is sent; the service's guards
(trusted hosts, security headers, offline API docs, a memory budget) are in covidxr.serving.guard. Routes
that decode or run the model are plain functions, which FastAPI runs in its thread pool: the event loop
keeps answering while images are being predicted. Every bad request gets a 4xx JSON error `{"error":
{"code", "message", "request_id"}}`; a failure of the server itself gets a 500 in the same form, logged with
its request id (also sent as the `X-Request-ID` header of every answer).
"""

from __future__ import annotations

import io
import logging
import threading
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import numpy as np
import pydicom
from fastapi import Depends, FastAPI, File, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field
from pydicom import Dataset
from starlette.exceptions import HTTPException

from covidxr.data.imageio import (
    DEFAULT_MAX_PIXELS,
    ImageReadError,
    declared_pixels,
    decode_bytes,
    dicom_geometry,
    format_of,
    malformed_dicom_errors,
    sniff_format,
)
from covidxr.data.privacy import describe_error
from covidxr.inputcheck import InputCheckResult
from covidxr.predict import Predictor, load_model
from covidxr.progress import worker_count
from covidxr.runs import ModelCard
from covidxr.serving.guard import (
    PixelBudget,
    add_offline_docs,
    allowed_hosts,
    body_limit,
    html_page,
    install_guards,
    return_large_blocks_to_the_system,
)

log = logging.getLogger("covidxr.serve")
DEFAULT_MAX_UPLOAD = 20 * 1024 * 1024
MIN_SIDE = 32
STATIC = Path(__file__).parent / "static"
REQUEST_ID_HEADER = "X-Request-ID"
SLOTS_PER_CORE = 2  # uploads decoded and predicted at once, per core; the others wait their turn
PIXEL_BUDGET = 60_000_000  # decoded pixels in flight: one image at the pixel limit, or many ordinary ones


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class Severity(BaseModel):
    """COVID-19 pneumonia severity as Cohen et al.'s radiologists scored it, with the cross-validated mean absolute
    error as its stated uncertainty."""

    extent: float = Field(description="geographic extent, 0 (none) to 8 (both lungs fully involved)")
    opacity: float = Field(description="opacity, 0 (none) to 6 (dense opacity in both lungs)")
    mae: dict[str, float] = Field(description="cross-validated mean absolute error of each score, in score points")


class PredictionAnswer(BaseModel):
    """One prediction, as `covidxr predict --json` gives it, with `filename` instead of `path`. An upload the input
    check refuses is an answer too (200): `input_check.status` "refused" with its reason, and no label or
    probability."""

    filename: str | None = Field(description="the uploaded file's name")
    status: str = Field(description="'ok' (files that cannot be used get a 4xx error instead)")
    error: str | None = None
    input_check: InputCheckResult = Field(description="is this a frontal chest radiograph? accepted, refused (with "
                                                      "its reason) or skipped")
    label: str | None = Field(description="the class called at the operating point; null when refused")
    threshold: float | None = Field(description="the operating point's threshold on `probability`")
    operating_point: str | None = Field(description="the named operating point the label was called at")
    prevalence: float | None = Field(description="the share of positives `probability` assumes")
    probability: float | None = Field(description="calibrated probability of the model's positive class")
    probabilities: dict[str, float] | None = Field(description="calibrated probability of each class")
    warnings: list[str] = Field(description="what is evident from the pixels (low resolution, inverted grey)")
    severity: Severity | None = Field(None, description="for models with a severity head and accepted inputs: "
                                                        "predicted extent (0-8) and opacity (0-6) scores")


class ErrorDetail(BaseModel):
    code: str = Field(examples=["unusable_image"])
    message: str = Field(description="what was wrong, naming the upload")
    request_id: str = Field(description=f"also in the {REQUEST_ID_HEADER} header and in the server's log")


class ErrorAnswer(BaseModel):
    error: ErrorDetail


ERRORS = {
    400: "malformed request (missing or wrong multipart field `file`)",
    413: "upload over the size limit",
    415: "neither an image nor a DICOM file",
    422: "an image that cannot be used (truncated, too many pixels, no pixel data, too small; explain and dicom-sr: "
         "refused by the input check)",
    500: "a failure of the server, logged with the request id",
}
UPLOAD_ERRORS = {status: {"model": ErrorAnswer, "description": text} for status, text in ERRORS.items()}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _error(request: Request, status: int, code: str, message: str) -> JSONResponse:
    detail = ErrorDetail(code=code, message=message, request_id=request.state.request_id)
    return JSONResponse(ErrorAnswer(error=detail).model_dump(), status_code=status)


def _read_upload(upload: UploadFile, limit: int) -> bytes:
    content = upload.file.read(limit + 1)
    if len(content) > limit:
        raise ApiError(413, "too_large", f"upload over the limit of {limit:,} bytes")
    return content


async def one_file(request: Request) -> None:
    """Two files in field `file` would silently use the last one: refused instead."""
    count = len((await request.form()).getlist("file"))
    if count > 1:
        raise ApiError(400, "bad_request", f"malformed request: {count} files in field 'file'; send one")


def decode_upload(content: bytes, name: str, max_pixels: int) -> np.ndarray:
    """Decode uploaded bytes (in memory) to grey pixels."""
    try:
        format_of(content[:132], name)
    except ImageReadError as error:
        raise ApiError(415, "unsupported_media", f"{name}: {error.problem}") from None
    try:
        gray = decode_bytes(content, name, max_pixels=max_pixels)
    except ImageReadError as error:
        raise ApiError(422, "unusable_image", f"{name}: {error.problem}") from None
    if min(gray.shape) < MIN_SIDE:
        raise ApiError(422, "too_small", f"{name}: {gray.shape[1]}x{gray.shape[0]} is below {MIN_SIDE} pixels a side")
    return gray


def _parse_dicom(content: bytes, name: str) -> Dataset:
    if sniff_format(content[:132]) != "dicom":
        raise ApiError(415, "unsupported_media", f"{name}: not a DICOM file; a DICOM SR needs the source's patient, "
                                                 "study and image UIDs")
    try:
        return pydicom.dcmread(io.BytesIO(content))
    except malformed_dicom_errors() as error:
        raise ApiError(422, "unusable_dicom", f"{name}: cannot parse DICOM ({describe_error(error)})") from None


def dicom_sr_of(content: bytes, name: str, predictor: Predictor, max_pixels: int) -> tuple[bytes, str]:
    """The SR of an uploaded DICOM image as DICOM file bytes, and the file name to give it (parsed in memory;
    nothing is written)."""
    from covidxr.dicom.results import DicomResultError, InputRefused, sr_of  # lazy: highdicom takes a second to import

    dataset = _parse_dicom(content, name)
    if "PixelData" in dataset:
        try:
            geometry = dicom_geometry(dataset, name, max_pixels)
        except ImageReadError as error:
            raise ApiError(422, "unusable_image", f"{name}: {error.problem}") from None
        if min(geometry.rows, geometry.columns) < MIN_SIDE:
            raise ApiError(422, "too_small", f"{name}: {geometry.columns}x{geometry.rows} is below {MIN_SIDE} pixels "
                                             "a side")
    try:
        sr = sr_of(predictor, dataset, name)
    except InputRefused as error:
        raise ApiError(422, "input_refused", f"{name}: {error.problem}") from None
    except DicomResultError as error:
        raise ApiError(422, "unusable_dicom", f"{name}: {error.problem}") from None
    buffer = io.BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue(), f"{dataset.SOPInstanceUID}.sr.dcm"


def create_app(run: str | Path | None = None, operating_point: str | None = None, prevalence: float | None = None,
               max_upload: int = DEFAULT_MAX_UPLOAD, max_pixels: int = DEFAULT_MAX_PIXELS,
               predictor: Predictor | None = None, hosts: Sequence[str] | None = None) -> FastAPI:
    """The service for run directory `run` (without one: the model shipped in the package), calling labels at
    `operating_point` with probabilities at `prevalence` (defaults: the model's), answering to the Host names
    `hosts` (default: guard.allowed_hosts(), the loopback names)."""
    predictor = predictor or load_model(run, operating_point, prevalence)
    if predictor.onnx is None:
        predictor.torch_run  # without a matching model.onnx, PyTorch loads now, not during the first request
    # More uploads at once than the cores can work on would only hold more decoded images in memory and
    # starve the event loop of the interpreter.
    slots = threading.BoundedSemaphore(SLOTS_PER_CORE * worker_count())
    budget = PixelBudget(PIXEL_BUDGET)
    return_large_blocks_to_the_system()
    app = FastAPI(title="covidxr", description="Chest X-ray COVID-19 classifier for research and teaching. "
                                                "Not for clinical use.", version="1", docs_url=None, redoc_url=None)
    limit = body_limit(max_upload)  # per upload route: FastAPI's app-wide limit answers in plain text
    install_guards(app, hosts or allowed_hosts(), max_upload, _error)
    add_offline_docs(app)

    def reserved(content: bytes):
        """The upload's share of the pixel budget (none for an image over the limit: it is refused undecoded)."""
        pixels = declared_pixels(content)
        return budget.reserve(pixels if pixels <= max_pixels else 0)

    @app.middleware("http")
    async def request_id(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        request.state.request_id = uuid.uuid4().hex
        try:
            response = await call_next(request)
        except Exception:
            log.exception("request %s (%s %s) failed", request.state.request_id, request.method, request.url.path)
            response = _error(request, 500, "internal_error", "the server failed to answer this request; its log "
                                                              "names the request id")
        response.headers[REQUEST_ID_HEADER] = request.state.request_id
        return response

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return _error(request, error.status, error.code, error.message)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, error: RequestValidationError) -> JSONResponse:
        fields = ", ".join(".".join(map(str, e["loc"][1:])) or "body" for e in error.errors())
        return _error(request, 400, "bad_request",
                      f"malformed request: expected multipart field 'file' (problem: {fields})")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        if error.status_code == 413:  # FastAPI's max_body_size, while the body streams in
            return _error(request, 413, "too_large", f"upload over the limit of {max_upload:,} bytes")
        return _error(request, error.status_code, "http_error", str(error.detail))

    @app.get("/health", response_model=Health)
    def health() -> Health:
        return Health(status="ok")

    @app.get("/v1/model", response_model=ModelCard, response_model_exclude_unset=True)
    def model_card() -> ModelCard | JSONResponse:
        """The run's model_card.json (the shipped model's for `serve` without --run), as written; a run without
        one answers `{"model": ...}`, the loaded model's description."""
        if predictor.rundir.model_card.is_file():
            return predictor.rundir.read_card()
        return JSONResponse({"model": predictor.info})

    @app.post("/v1/predict", response_model=PredictionAnswer, responses=UPLOAD_ERRORS, max_body_size=limit)
    def predict(file: UploadFile = File(...), _: None = Depends(one_file)) -> dict:
        content = _read_upload(file, max_upload)
        with slots, reserved(content):
            prediction = predictor.predict(decode_upload(content, file.filename or "upload", max_pixels))
        prediction.pop("path")
        return {"filename": file.filename, **prediction}

    @app.post("/v1/explain", response_class=Response, max_body_size=limit, responses={
        200: {"content": {"image/png": {}}, "description": "the class activation overlay (PNG) with the lung outline; "
              "headers X-Lung-Heat-Share (share of the heat inside the lungs) and X-Lung-Warnings"},
        **UPLOAD_ERRORS})
    def explain(file: UploadFile = File(...), _: None = Depends(one_file)) -> Response:
        content, buffer = _read_upload(file, max_upload), io.BytesIO()
        with slots, reserved(content):
            result = predictor.explain(decode_upload(content, file.filename or "upload", max_pixels), buffer)
        if result["probability"] is None:
            raise ApiError(422, "input_refused", f"{file.filename or 'upload'}: {result['input_check'].words()}")
        headers = {"X-Lung-Heat-Share": f"{result['lung_heat_share']:.4f}",
                   "X-Lung-Warnings": "; ".join(result["lungs"].warnings)}
        return Response(buffer.getvalue(), media_type="image/png", headers=headers)

    @app.post("/v1/dicom-sr", response_class=Response, max_body_size=limit, responses={
        200: {"content": {"application/dicom": {}}, "description": "the DICOM Comprehensive SR"}, **UPLOAD_ERRORS})
    def dicom_sr(file: UploadFile = File(...), _: None = Depends(one_file)) -> Response:
        """The DICOM Comprehensive SR of an uploaded DICOM image (same patient and study, a new series)."""
        content = _read_upload(file, max_upload)
        with slots, reserved(content):
            sr, filename = dicom_sr_of(content, file.filename or "upload", predictor, max_pixels)
        return Response(sr, media_type="application/dicom",
                        headers={"Content-Disposition": f'attachment; filename="{filename}"'})

    @app.get("/", include_in_schema=False)
    def page() -> HTMLResponse:
        return html_page((STATIC / "index.html").read_text(encoding="utf-8"))  # its inline scripts allowed by hash

    return app
