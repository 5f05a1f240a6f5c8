"""`covidxr serve`: the REST API and the web page (docs/reference.md, "HTTP service").

The model is loaded once. Uploads are read with a size limit, written only to a private temporary
folder for decoding, and deleted before the answer is sent. Every bad request gets a 4xx JSON error
`{"error": {"code", "message"}}`; no input produces a 5xx.
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
from pathlib import Path

import numpy as np
from fastapi import FastAPI, File, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.exceptions import HTTPException

from covidxr.data.imageio import DEFAULT_MAX_PIXELS, ImageReadError, file_format, read_grayscale
from covidxr.predict import Predictor, image_warnings, load_model

log = logging.getLogger("covidxr.serve")
DEFAULT_MAX_UPLOAD = 20 * 1024 * 1024
MIN_SIDE = 32
STATIC = Path(__file__).parent / "static"


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


async def _read_upload(upload: UploadFile, limit: int) -> bytes:
    content = await upload.read(limit + 1)
    if len(content) > limit:
        raise ApiError(413, "too_large", f"upload over the limit of {limit:,} bytes")
    return content


def decode_upload(content: bytes, name: str, max_pixels: int) -> np.ndarray:
    """Decode uploaded bytes (in a private temporary folder, removed at once) to grey pixels."""
    with tempfile.TemporaryDirectory(prefix="covidxr-upload-") as folder:
        path = Path(folder) / "upload"
        path.write_bytes(content)
        try:
            file_format(path)
        except ImageReadError as error:
            raise ApiError(415, "unsupported_media", f"{name}: {error.problem}") from None
        try:
            gray = read_grayscale(path, max_pixels=max_pixels)
        except ImageReadError as error:
            raise ApiError(422, "unusable_image", f"{name}: {error.problem}") from None
    if min(gray.shape) < MIN_SIDE:
        raise ApiError(422, "too_small", f"{name}: {gray.shape[1]}x{gray.shape[0]} is below {MIN_SIDE} pixels a side")
    return gray


def create_app(run: str | Path | None = None, max_upload: int = DEFAULT_MAX_UPLOAD,
               max_pixels: int = DEFAULT_MAX_PIXELS, predictor: Predictor | None = None) -> FastAPI:
    predictor = predictor or load_model(run)
    card_path = predictor.run.run / "model_card.json"
    app = FastAPI(title="covidxr", description="Chest X-ray COVID-19 classifier for research and teaching. "
                                                "Not for clinical use.", version="1")

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, error: ApiError) -> JSONResponse:
        return _error(error.status, error.code, error.message)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_request: Request, error: RequestValidationError) -> JSONResponse:
        fields = ", ".join(".".join(map(str, e["loc"][1:])) or "body" for e in error.errors())
        return _error(400, "bad_request", f"malformed request: expected multipart field 'file' (problem: {fields})")

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, error: HTTPException) -> JSONResponse:
        return _error(error.status_code, "http_error", str(error.detail))

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error while answering a request")
        return _error(422, "unprocessable", f"the input could not be processed ({type(error).__name__})")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/model")
    def model_card() -> dict:
        return json.loads(card_path.read_text()) if card_path.is_file() else {"model": predictor.info}

    @app.post("/v1/predict")
    async def predict(file: UploadFile = File(...)) -> dict:
        content = await _read_upload(file, max_upload)
        gray = decode_upload(content, file.filename or "upload", max_pixels)
        prediction = predictor.predict(gray)
        prediction.pop("path")
        prediction["warnings"] = image_warnings(gray)
        return {"filename": file.filename, **prediction}

    @app.post("/v1/explain")
    async def explain(file: UploadFile = File(...)) -> Response:
        content = await _read_upload(file, max_upload)
        gray = decode_upload(content, file.filename or "upload", max_pixels)
        buffer = io.BytesIO()
        result = predictor.explain(gray, buffer)
        headers = {"X-Lung-Heat-Share": f"{result['lung_heat_share']:.4f}",
                   "X-Lung-Warnings": "; ".join(result["lung_warnings"])}
        return Response(buffer.getvalue(), media_type="image/png", headers=headers)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    return app
