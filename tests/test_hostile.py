"""The service and the CLI tried as an attacker or a careless client would (issue: adversarial test):
hostile uploads, half-sent and oversized bodies, forged Host headers, concurrent uploads carrying patient
names with the log grepped for them, CLI usage errors, special files, and a fake DICOMweb server on
127.0.0.1 that answers garbage, ignores `offset` or trickles its bytes. Goals: no 5xx, no traceback, no
hang, no name in a log."""

from __future__ import annotations

import http.server
import io
import json
import logging
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from conftest import lesion_image, served_on_loopback, write_radiograph, xray_pixels
from covidxr.cli import main
from covidxr.serving.app import create_app
from hostile import (
    SECRET_NAMES,
    dicom_with,
    float_tiff,
    jpeg_claiming,
    nan_slope_dicom,
    rle_multiframe,
    special_files,
    with_patient,
)

LOOPBACK = "http://127.0.0.1"


def _png(size: int = 128) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(lesion_image(7, covid=True, size=size)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def app(trained_run):
    return create_app(trained_run[0], max_upload=2_000_000)


@pytest.fixture(scope="module")
def client(app):
    return TestClient(app, base_url=LOOPBACK, raise_server_exceptions=False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, tuple[bytes, int, str]]:
    """name -> (content, expected status, expected words in the message), each answered the same by predict,
    explain and dicom-sr where it applies."""
    folder = tmp_path_factory.mktemp("hostile")
    return {
        "huge-frames.dcm": (rle_multiframe(folder / "a.dcm", declared=100_000).read_bytes(), 422,
                            "frames exceeds the limit"),
        "rows-text.dcm": (dicom_with(folder / "b.dcm", Rows=("LO", "abc")).read_bytes(), 422,
                          "Rows is 'abc'"),
        "rows-pair.dcm": (dicom_with(folder / "c.dcm", Rows=("US", [96, 96])).read_bytes(), 422,
                          "expected one whole number"),
        "nan-slope.dcm": (nan_slope_dicom(folder / "d.dcm").read_bytes(), 422, "RescaleSlope is nan"),
        "nan.tif": (float_tiff(folder / "e.tif", float("nan")).read_bytes(), 422, "not finite"),
        "inf.tif": (float_tiff(folder / "f.tif", float("inf")).read_bytes(), 422, "not finite"),
        "forged.jpg": (jpeg_claiming(7000, 7000), 422, "claims 7000x7000 pixels"),
        "odd.bmp": (b"BM" + b"\x07" * 300, 422, "cannot decode image"),  # Pillow's message quotes the file's path
    }


def test_hostile_uploads_get_4xx_with_the_reason_and_no_temporary_path(client, corpus):
    for name, (content, status, words) in corpus.items():
        for route in ("/v1/predict", "/v1/explain") + (("/v1/dicom-sr",) if name.endswith(".dcm") else ()):
            response = client.post(route, files={"file": (name, content)})
            assert response.status_code == status, (route, name, response.text)
            message = response.json()["error"]["message"]
            assert message.startswith(name) and (words in message or route == "/v1/dicom-sr"), (route, message)
            assert "/tmp" not in message and "covidxr-upload" not in message


def test_two_files_in_field_file_are_a_bad_request(client):
    for route in ("/v1/predict", "/v1/explain"):
        response = client.post(route, files=[("file", ("a.png", _png())), ("file", ("b.png", _png()))])
        assert response.status_code == 400 and "2 files in field 'file'" in response.json()["error"]["message"]


def test_security_headers_and_trusted_hosts(client, app):
    for path in ("/", "/docs", "/redoc", "/health"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["x-content-type-options"] == "nosniff" and response.headers["x-frame-options"] == "DENY"
        policy = response.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in policy and "unsafe-eval" not in policy and "http" not in policy
    assert "script-src 'self' 'sha256-" in client.get("/").headers["content-security-policy"]
    forged = TestClient(app, base_url="http://attacker.example", raise_server_exceptions=False).get("/health")
    assert forged.status_code == 400 and forged.json()["error"]["code"] == "host_not_allowed"
    assert TestClient(app, base_url="http://localhost:8000").get("/health").status_code == 200


def test_allowed_hosts_are_loopback_the_bind_address_and_what_the_user_adds():
    from covidxr.serving.guard import allowed_hosts, host_allowed

    hosts = allowed_hosts("10.1.2.3", ["xray.hospital.example"])
    assert hosts == ["localhost", "127.0.0.1", "[::1]", "xray.hospital.example", "10.1.2.3"]
    assert host_allowed("XRAY.hospital.example:8000", hosts) and host_allowed("[::1]:8000", hosts)
    assert not host_allowed("attacker.example", hosts) and not host_allowed("", hosts)
    assert not host_allowed("localhost.attacker.example", hosts)


def _raw_request(port: int, head: bytes, body_chunks, pause: float = 0.0) -> tuple[bytes, int]:
    """Send a request by hand; returns (the answer's first bytes, body bytes the server let us send)."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(head)
        try:
            for chunk in body_chunks:
                connection.sendall(chunk)
                sent += len(chunk)
                time.sleep(pause)
                connection.setblocking(False)
                try:
                    if connection.recv(1, socket.MSG_PEEK):
                        break
                except BlockingIOError:
                    pass
                finally:
                    connection.setblocking(True)
        except (BrokenPipeError, ConnectionResetError):
            pass
        connection.settimeout(30)
        return connection.recv(4096), sent


@pytest.fixture(scope="module")
def live(app):
    with served_on_loopback(app) as port:
        yield port


def test_the_size_limit_holds_while_the_body_streams_in(live):
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
            f"Content-Length: {1_500_000_000}\r\n\r\n").encode()
    answer, sent = _raw_request(live, head, (b"\0" * 65536 for _ in range(100)))
    assert answer.startswith(b"HTTP/1.1 413") and sent < 3_000_000, (answer[:200], sent)
    chunked = (b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n")
    part = b'--x\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n\r\n' + b"\0" * 65536

    def chunks():
        yield b"%x\r\n%s\r\n" % (len(part), part)
        for _ in range(3000):
            yield b"10000\r\n" + b"\0" * 65536 + b"\r\n"

    answer, sent = _raw_request(live, chunked, chunks(), pause=0.001)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 20_000_000, f"{sent:,} bytes accepted before the 413 (limit 2 MB)"


def test_concurrent_dicom_uploads_keep_patient_names_out_of_the_log(client, tmp_path, capfd, caplog):
    uploads = [with_patient(write_radiograph(tmp_path / f"{index}.dcm", xray_pixels(index, 96)), index).read_bytes()
               for index in range(24)]
    caplog.set_level(logging.DEBUG)

    def send(index: int) -> int:
        route = ("/v1/dicom-sr", "/v1/predict")[index % 2]
        return client.post(route, files={"file": (f"{index}.dcm", uploads[index % len(uploads)])}).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(send, range(96)))
    assert set(statuses) == {200}
    captured = capfd.readouterr()
    everything = captured.out + captured.err + caplog.text
    assert not any(secret in everything for secret in SECRET_NAMES)


def test_cli_usage_errors_exit_2_before_any_work(tmp_path, capsys):
    image = tmp_path / "x.png"
    image.write_bytes(_png())
    existing = tmp_path / "taken.dcm"
    existing.write_bytes(b"")
    for argv, words in [
        (["serve", "--port", "99999"], "99999 is not a port"),
        (["serve", "--port", "-1"], "is not a port"),
        (["dicomweb", "--url", "http://127.0.0.1:99999/dicom-web"], "--url"),
        (["dicomweb", "--url", "ftp://pacs/dicom-web"], "expected http(s)://"),
        (["dicomweb", "--url", "http://127.0.0.1:1/dicom-web", "--study", "1.2.abc"], "--study '1.2.abc'"),
        (["predict", str(image), "--csv", str(tmp_path)], "is a folder"),
        (["predict", str(image), "--dicom-out", str(existing)], "is not a folder"),
    ]:
        assert _exit_code(argv) == 2, argv
        printed = capsys.readouterr()
        assert words in printed.err and "Traceback" not in printed.err, (argv, printed.err)


def _exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit:  # argparse's own usage errors
        return int(exit.code)


def test_special_files_in_a_folder_are_reported_not_skipped_and_never_block(tmp_path, capsys, trained_run):
    files = special_files(tmp_path / "inbox")
    code = main(["predict", str(tmp_path / "inbox"), "--run", str(trained_run[0])])
    printed = capsys.readouterr().out
    assert code == 3
    for kind, words in (("fifo", "named pipe"), ("loop", "symbolic link loop"), ("dangling", "dangling")):
        assert f"{files[kind]}: error: not a regular file" in printed or words in printed, printed
    assert f"{files['good']}: " in printed


def test_paths_and_data_are_printed_literally(tmp_path, capsys, trained_run):
    odd = tmp_path / "a:smile:b[bold]x.png"
    odd.write_bytes(_png())
    assert main(["predict", str(odd), "--run", str(trained_run[0])]) == 0
    assert f"{odd}: " in capsys.readouterr().out


def test_control_characters_in_names_are_printed_escaped(tmp_path, capsys):
    """A file name holding an escape sequence, a carriage return and a newline can neither recolour, overwrite nor
    forge a line on the terminal: predict's line and an error naming the file show them escaped."""
    odd = tmp_path / "a\x1b[31m\rb\nc.png"
    odd.write_bytes(_png())
    code = main(["predict", str(odd)])
    printed = capsys.readouterr()
    assert code in (0, 3), printed  # predicted, or refused by the shipped model's input check
    assert printed.out.startswith(f"{tmp_path}/a\\x1b[31m\\rb\\nc.png: ") and printed.out.count("\n") == 1
    assert not {"\x1b", "\r"} & set(printed.out + printed.err)
    assert main(["data", "summary", str(tmp_path / "gone\x1b[2J.csv")]) == 1
    error = capsys.readouterr().err
    assert "gone\\x1b[2J.csv: manifest file not found" in error and "\x1b" not in error

class _FakePacs(http.server.BaseHTTPRequestHandler):
    """A DICOMweb stand-in: `answer(path, query)` gives (body, seconds between bytes)."""

    requests: list[str] = []
    arrived: list[float] = []  # time.monotonic() of each request
    answer = staticmethod(lambda path, query: (b"[]", 0.0))
    header_pause = 0.0  # > 0: the headers themselves trickle, one byte per pause, 15 bytes, then the answer
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 (the http.server API)
        type(self).requests.append(self.path)
        type(self).arrived.append(time.monotonic())
        path, _, query = self.path.partition("?")
        body, pause = type(self).answer(path, query)
        if self.header_pause:
            try:
                self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                for byte in b"X-Slow: 1234567":
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(self.header_pause)
                self.wfile.write(b"\r\n")
            except OSError:  # the client gave up
                return
        else:
            self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        for index in range(len(body)) if pause else ():
            self.wfile.write(body[index:index + 1])
            self.wfile.flush()
            time.sleep(pause)
        if not pause:
            self.wfile.write(body)

    def log_message(self, *args):
        pass


def _pacs(answer, header_pause: float = 0.0) -> tuple[http.server.ThreadingHTTPServer, type]:
    handler = type("Pacs", (_FakePacs,), {"requests": [], "arrived": [], "answer": staticmethod(answer),
                                          "header_pause": header_pause})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.handle_error = lambda request, address: None  # a client giving up mid-answer is expected, not news
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, handler


STUDY = {"0020000D": {"vr": "UI", "Value": ["1.2.826.0.1.3680043.8.498.1"]}}


@pytest.mark.parametrize("answer, code, words", [
    (b"<html>gateway error</html>", 1, "is not JSON"),
    (b'{"status": "ok"}', 1, "not valid DICOM JSON"),
    (b"[1, 2, 3]", 1, "not a list of DICOM JSON objects"),
    (json.dumps([{"00100010": {"vr": "PN", "Value": [{"Alphabetic": "RaceSecret001"}]}}]).encode(), 3,
     "without a valid StudyInstanceUID"),
    (json.dumps([{"0020000D": {"vr": "UI", "Value": ["1.2.abc"]}}]).encode(), 3, "without a valid StudyInstanceUID"),
])
def test_dicomweb_garbage_answers_are_named_not_tracebacks(answer, code, words, capsys):
    server, _ = _pacs(lambda path, query: (answer, 0.0))
    try:
        result = main(["dicomweb", "--url", f"http://127.0.0.1:{server.server_port}/dicom-web", "--attempts", "1"])
    finally:
        server.shutdown()
    printed = capsys.readouterr()
    assert result == code, printed
    assert words in printed.out + printed.err and "Traceback" not in printed.err
    assert "usage error" not in printed.err and "RaceSecret" not in printed.out + printed.err


def test_dicomweb_stops_paging_a_server_that_ignores_offset(capsys):
    server, handler = _pacs(lambda path, query: (json.dumps([STUDY]).encode() if path.endswith("/studies")
                                                 else b"[]", 0.0))
    try:
        started = time.time()
        result = main(["dicomweb", "--url", f"http://127.0.0.1:{server.server_port}/dicom-web", "--attempts", "1"])
    finally:
        server.shutdown()
    assert result == 3 and time.time() - started < 60
    assert len(handler.requests) < 10, handler.requests
    assert "no instance found in this study" in capsys.readouterr().out


def test_dicomweb_gives_up_on_a_trickling_server_at_the_deadline():
    from covidxr.dicom.dicomweb import DicomWebError, connect, find_studies

    server, _ = _pacs(lambda path, query: (json.dumps([STUDY] * 50).encode(), 0.05))
    try:
        started = time.time()
        with pytest.raises(DicomWebError, match="no whole answer within 1 s"):
            find_studies(connect(f"http://127.0.0.1:{server.server_port}/dicom-web", attempts=1, deadline=1.0), None)
        assert time.time() - started < 20
    finally:
        server.shutdown()


def test_dicomweb_deadline_bounds_a_server_trickling_its_headers(monkeypatch, capsys):
    """Each read gets a byte within the per-read timeout, so only an overall deadline ends the request."""
    import covidxr.dicom.dicomweb as dicomweb

    monkeypatch.setattr(dicomweb, "DEFAULT_DEADLINE", 2.0)
    server, handler = _pacs(lambda path, query: (json.dumps([STUDY]).encode(), 0.0), header_pause=1.0)
    try:
        result = main(["dicomweb", "--url", f"http://127.0.0.1:{server.server_port}/dicom-web", "--attempts", "1"])
        elapsed = time.monotonic() - handler.arrived[0]  # from the request (loading the model comes before it)
    finally:
        server.shutdown()
    printed = capsys.readouterr()
    assert elapsed < 2.0 + 1.5, f"{elapsed:.1f} s for a 2 s deadline"
    assert result == 1 and "no whole answer within 2 s" in printed.out + printed.err, printed
    assert "Traceback" not in printed.err


def test_dicom_results_of_a_multiframe_file_do_not_stop_a_folder(tmp_path, capsys, trained_run):
    inbox = tmp_path / "inbox"
    rle_multiframe(inbox / "01-huge.dcm", declared=100_000)
    Image.fromarray(lesion_image(3, covid=False, size=96)).save(inbox / "02-fine.png")
    code = main(["predict", str(inbox), "--run", str(trained_run[0]), "--json"])
    predictions = json.loads(capsys.readouterr().out)["predictions"]
    assert code == 3 and [p["status"] for p in predictions] == ["error", "ok"]
    assert "frames exceeds the limit" in predictions[0]["error"]
    assert Path(predictions[1]["path"]).name == "02-fine.png"


def test_the_api_docs_render_offline_in_chromium(live):
    from playwright.sync_api import sync_playwright

    from conftest import CHROMIUM_FLAGS, chromium_or_skip

    chromium = chromium_or_skip()
    elsewhere, problems, rendered = [], [], {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page()
        page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(f"http://127.0.0.1:{live}/")
                   else (elsewhere.append(route.request.url), route.abort()))
        page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.goto(f"http://127.0.0.1:{live}/docs")
        page.wait_for_selector(".swagger-ui .opblock", timeout=30_000)
        rendered["docs"] = page.inner_text(".swagger-ui")
        page.goto(f"http://127.0.0.1:{live}/redoc")
        page.wait_for_selector("redoc h1, [role=main] h1, h1", timeout=30_000)
        page.wait_for_function("document.body.innerText.includes('/v1/predict')", timeout=30_000)
        rendered["redoc"] = page.inner_text("body")
        browser.close()
    # ReDoc's sidebar shows its maker's logo from cdn.redoc.ly: the page's policy blocks it, nothing else is missing
    logo = "Loading the image 'https://cdn.redoc.ly/redoc/logo-mini.svg' violates the following Content Security"
    assert elsewhere == [] and [text for text in problems if not text.startswith(logo)] == [], (elsewhere, problems)
    assert "/v1/predict" in rendered["docs"] and "/v1/explain" in rendered["docs"]
    assert "covidxr" in rendered["redoc"]


def _random_classifier(name: str, head: str = "linear"):
    """A classifier from scratch whose batch norms have non-trivial statistics (as after training) and whose
    two classes' dense weights are opposite."""
    import torch

    from covidxr.config import ModelSpec
    from covidxr.models.classifier import create_model

    torch.manual_seed(0)
    model, _ = create_model(ModelSpec(name=name, head=head), num_classes=2, image_size=64)
    for norm in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        norm.running_mean.uniform_(-0.2, 0.2)
        norm.running_var.uniform_(0.5, 2.0)
        norm.bias.data.uniform_(-0.5, 1.5)
    dense = model.head[-1]
    dense.weight.data[1] = -dense.weight.data[0]  # one of the two maps is positive somewhere in every image
    return model.eval()


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18"])
def test_gradcam_in_closed_form_equals_pytorch_grad_cam(name):
    """EfficientNet's conv_head + BN + ReLU6 tail and ResNet's bare last stage, both with the linear head."""
    import torch

    from covidxr.explain.cam import heatmaps, scaled_like_pytorch_grad_cam
    from covidxr.models.gradcam import analytic_gradcam

    model = _random_classifier(name)
    pixels = torch.from_numpy(np.stack([lesion_image(seed, covid=seed % 2 == 0) for seed in range(2)])[:, None])
    module = analytic_gradcam(model, 64)
    assert module is not None and (module.tail is not None) == (name == "efficientnet_lite0")
    with torch.no_grad():
        logits, _, maps = module(pixels.float())
        assert torch.equal(logits, model(pixels.float()))
    expected = np.stack([heatmaps(model, pixels.float(), class_index) for class_index in (0, 1)], axis=1)
    got = np.stack([scaled_like_pytorch_grad_cam(maps[:, index].numpy(), 64, 64) for index in (0, 1)], axis=1)
    assert (expected.max(axis=(2, 3)) > 0.99).sum() >= 2  # real maps, not all zeros (ReLU of a negative map)
    assert np.abs(got - expected).max() < 1e-4


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18"])
def test_an_exported_classifier_with_gradcam_takes_any_batch_size(name, tmp_path):
    """The export traces a batch of 2: a batch size read as a Python int (`len`) would fix the file's batch to 2,
    and predict's batches of 32 would fail."""
    import torch

    from covidxr.export import write_onnx
    from covidxr.models.gradcam import analytic_gradcam
    from covidxr.models.onnx_runtime import OnnxModel

    model = _random_classifier(name)
    onnx_model = OnnxModel(write_onnx(model, 64, tmp_path / "model.onnx"))
    for count in (1, 3, 5):
        pixels = np.stack([lesion_image(seed, covid=seed % 2 == 0) for seed in range(count)])[:, None]
        pixels = pixels.astype(np.float32)
        with torch.no_grad():
            expected_logits, _, expected_maps = analytic_gradcam(model, 64)(torch.from_numpy(pixels))
        logits, maps = onnx_model.session.run(["logits", "gradcam"], {"pixels": pixels})
        assert logits.shape == (count, 2) and maps.shape[:2] == (count, 2)
        assert np.abs(logits - expected_logits.numpy()).max() < 1e-3
        assert np.abs(maps - expected_maps.numpy()).max() < 1e-3


def test_heads_and_tails_without_a_closed_form_keep_the_pytorch_path():
    from covidxr.models.gradcam import analytic_gradcam

    assert analytic_gradcam(_random_classifier("resnet18", head="zivkovic"), 64) is None
    assert analytic_gradcam(_random_classifier("covidxr_cnn"), 64) is None  # BN, ReLU and max-pool after its layer


def test_the_shipped_onnx_gradcam_equals_pytorch_grad_cam():
    import torch

    from covidxr.explain.cam import heatmaps, onnx_gradcam
    from covidxr.models.loading import load_run
    from covidxr.predict import load_model

    predictor = load_model(input_check=False)
    size = predictor.preprocessing.size
    pixels = np.stack([lesion_image(seed, covid=seed % 2 == 0, size=size) for seed in range(3)])
    positive = predictor.contract.positive_index
    got = onnx_gradcam(predictor.onnx, pixels, positive)
    expected = heatmaps(load_run(predictor.rundir.root).model, torch.from_numpy(pixels)[:, None].float(), positive)
    assert got is not None and np.abs(got - expected).max() < 1e-4


def test_the_service_explains_without_importing_torch(tmp_path):
    image = tmp_path / "chest.png"
    Image.fromarray(lesion_image(4, covid=True, size=256)).save(image)
    code = f"""
import json, sys
from fastapi.testclient import TestClient
from covidxr.predict import load_model
from covidxr.serving.app import create_app
client = TestClient(create_app(predictor=load_model(input_check=False)), base_url="http://127.0.0.1")
with open({str(image)!r}, "rb") as file:
    answer = client.post("/v1/explain", files={{"file": ("chest.png", file.read(), "image/png")}})
print(json.dumps({{"status": answer.status_code, "type": answer.headers["content-type"],
                  "torch": "torch" in sys.modules}}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"status": 200, "type": "image/png", "torch": False}
