"""The HTTP service: every endpoint, every bad input with the contract's status and JSON error, and the
web page driven in headless Chromium against a real server on a loopback port."""

import io
import json
import re
import struct
import threading
import time
import zlib

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from conftest import free_port, lesion_image, served_on_loopback, write_dicom
from covidxr.serving.app import create_app

LOOPBACK = "http://127.0.0.1"  # the service answers to its own names only (TestClient says "testserver")


@pytest.fixture(scope="module")
def client(trained_run):
    run, _ = trained_run
    return TestClient(create_app(run, max_upload=200_000), base_url=LOOPBACK, raise_server_exceptions=False)


def _png(size: int = 128) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(lesion_image(7, covid=True, size=size)).save(buffer, format="PNG")
    return buffer.getvalue()


def _bomb() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 90_000, 90_000, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def test_health_model_and_page(client):
    assert client.get("/health").json() == {"status": "ok"}
    card = client.get("/v1/model").json()
    assert card["not_for_clinical_use"] is True
    page = client.get("/")
    assert page.status_code == 200 and "Not for clinical use" in page.text
    assert client.get("/openapi.json").status_code == 200


def test_predict_returns_one_prediction_object(client):
    response = client.post("/v1/predict", files={"file": ("chest.png", _png(), "image/png")})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"filename", "status", "error", "input_check", "label", "threshold", "operating_point",
                         "prevalence", "probability", "probabilities", "warnings", "severity"}
    assert body["severity"] is None  # the tests' run has no severity head
    assert body["filename"] == "chest.png" and body["status"] == "ok"
    assert sum(body["probabilities"].values()) == pytest.approx(1.0)


def test_explain_returns_a_png(client):
    response = client.post("/v1/explain", files={"file": ("chest.png", _png(), "image/png")})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(response.content)).format == "PNG"
    assert 0 <= float(response.headers["x-lung-heat-share"]) <= 1 and "x-lung-warnings" in response.headers


@pytest.mark.parametrize("files, status, code", [
    ({"file": ("empty.png", b"", "image/png")}, 415, "unsupported_media"),
    ({"file": ("page.png", b"<html>hello</html>", "image/png")}, 415, "unsupported_media"),
    ({"file": ("cut.jpg", _png()[:0] + b"\xff\xd8\xff\xe0" + b"\0" * 100, "image/jpeg")}, 422, "unusable_image"),
    ({"file": ("bomb.png", _bomb(), "image/png")}, 422, "unusable_image"),
    ({"file": ("tiny.png", _png(size=16), "image/png")}, 422, "too_small"),
    ({"file": ("big.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 300_000, "image/png")}, 413, "too_large"),
    ({"other": ("chest.png", b"x", "image/png")}, 400, "bad_request"),
    (None, 400, "bad_request"),
])
def test_bad_inputs_get_the_contract_status_and_a_json_error(client, files, status, code):
    for path in ("/v1/predict", "/v1/explain"):
        response = client.post(path, files=files) if files else client.post(path, data={"x": "1"})
        assert response.status_code == status, (path, response.text)
        error = response.json()["error"]
        assert error["code"] == code and error["message"]
        assert error["request_id"] == response.headers["X-Request-ID"]


def test_a_server_failure_is_a_logged_500_with_the_request_id_and_bad_input_stays_4xx(trained_run, monkeypatch,
                                                                                      caplog):
    from covidxr.predict import load_model

    def broken(_gray):
        raise RuntimeError("a bug in the model code")

    predictor = load_model(trained_run[0])
    monkeypatch.setattr(predictor, "predict", broken)
    failing = TestClient(create_app(predictor=predictor), base_url=LOOPBACK, raise_server_exceptions=False)
    with caplog.at_level("ERROR", logger="covidxr.serve"):
        response = failing.post("/v1/predict", files={"file": ("chest.png", _png(), "image/png")})
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["code"] == "internal_error" and "RuntimeError" not in error["message"]
    assert error["request_id"] == response.headers["X-Request-ID"] and len(error["request_id"]) == 32
    assert error["request_id"] in caplog.text and "a bug in the model code" in caplog.text
    bad = failing.post("/v1/predict", files={"file": ("page.png", b"<html>", "image/png")})
    assert bad.status_code == 415 and bad.json()["error"]["request_id"] != error["request_id"]


def test_openapi_describes_what_each_route_returns(client):
    schema = client.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    answer = schema["paths"]["/v1/predict"]["post"]["responses"]
    assert answer["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/PredictionAnswer")
    assert set(components["PredictionAnswer"]["properties"]) == {
        "filename", "status", "error", "input_check", "label", "threshold", "operating_point", "prevalence",
        "probability", "probabilities", "warnings", "severity"}
    for status in ("400", "413", "415", "422", "500"):
        assert answer[status]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorAnswer")
    assert set(components["ErrorDetail"]["properties"]) == {"code", "message", "request_id"}
    assert "image/png" in schema["paths"]["/v1/explain"]["post"]["responses"]["200"]["content"]
    for path, model in (("/v1/model", "ModelCard"), ("/health", "Health")):
        assert schema["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"][
            "$ref"].endswith(f"/{model}")


def test_serve_without_a_run_uses_the_shipped_model(monkeypatch):
    import uvicorn

    from covidxr.cli import main
    from covidxr.runs import shipped_run

    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: served.update(app=app, **options))
    assert main(["serve", "--port", "8123"]) == 0
    assert served["port"] == 8123 and served["host"] == "127.0.0.1"
    client = TestClient(served["app"], base_url=LOOPBACK)
    card = client.get("/v1/model").json()
    shipped = json.loads((shipped_run() / "model_card.json").read_text())
    assert card == shipped and card["not_for_clinical_use"] is True
    response = client.post("/v1/predict", files={"file": ("chest.png", _png(size=160), "image/png")})
    body = response.json()
    assert response.status_code == 200 and body["input_check"]["status"] in {"accepted", "refused"}
    assert set(body["probabilities"] or {}) == ({"covid", "non-covid"} if body["input_check"]["status"] == "accepted"
                                                 else set())


def test_dicom_without_pixels_is_422_and_leaks_no_identifier(client, tmp_path):
    path = write_dicom(tmp_path / "empty.dcm", None, patient_id="MRN-12345")
    response = client.post("/v1/predict", files={"file": ("scan.dcm", path.read_bytes(), "application/dicom")})
    assert response.status_code == 422 and "no pixel data" in response.json()["error"]["message"]
    assert "MRN-12345" not in response.text


def test_dicom_with_pixels_is_predicted(client, tmp_path):
    path = write_dicom(tmp_path / "ok.dcm", lesion_image(3, covid=False, size=96))
    response = client.post("/v1/predict", files={"file": ("ok.dcm", path.read_bytes(), "application/dicom")})
    assert response.status_code == 200 and response.json()["status"] == "ok"


def test_concurrent_requests_all_succeed(client):
    results = []

    def call():
        results.append(client.post("/v1/predict", files={"file": ("c.png", _png(), "image/png")}).status_code)

    threads = [threading.Thread(target=call) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert results == [200] * 12


def test_the_web_page_uploads_an_image_and_shows_the_result(trained_run, tmp_path):
    from playwright.sync_api import sync_playwright

    from conftest import CHROMIUM_FLAGS, chromium_or_skip

    chromium = chromium_or_skip()
    image = tmp_path / "chest.png"
    image.write_bytes(_png(size=160))
    errors = []
    with served_on_loopback(create_app(trained_run[0])) as port, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"http://127.0.0.1:{port}/")
        assert "Not for clinical use" in page.inner_text(".notice")
        page.set_input_files("#file", str(image))
        page.wait_for_selector("#overlay:not([hidden])", timeout=60_000)
        decision = page.inner_text("#decision")
        covid = float(page.inner_text(".probability[data-class='covid']"))
        threshold, meaning = page.inner_text("#threshold"), page.inner_text("#meaning")
        overlay_loaded = page.evaluate("document.getElementById('overlay').naturalWidth > 0")
        lungs = page.inner_text("#lungs")
        browser.close()
    assert errors == []
    assert decision.startswith("Model output: ") and decision.split(": ")[1] in {"covid", "non-covid"}
    assert 0.0 <= covid <= 1.0 and overlay_loaded
    assert 'operating point "balanced"' in threshold
    assert re.match(r"At this operating point, of 100 people with COVID-19 like those in the (test|validation) set, "
                    r"about \d+ are flagged; of 100 without, about \d+ are flagged\.$", meaning)
    assert "White outline: the lungs" in lungs and "% of the heat lies inside them" in lungs


def test_the_serve_command_answers_on_loopback(trained_run):
    import subprocess
    import sys

    import httpx

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "covidxr.cli", "serve", "--run", str(trained_run[0]),
                               "--port", str(port)], stderr=subprocess.DEVNULL)
    try:
        deadline, answer = time.time() + 60, None
        while time.time() < deadline and answer is None:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).json()
            except httpx.HTTPError:
                time.sleep(0.3)
        response = httpx.post(f"http://127.0.0.1:{port}/v1/predict", files={"file": ("c.png", _png())}, timeout=30)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert answer == {"status": "ok"} and response.status_code == 200
