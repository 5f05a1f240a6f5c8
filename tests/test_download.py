"""`data download` against a local HTTP server (loopback only) serving a tiny fake layout."""

import io
import json
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import save_image, xray_pixels
from covidxr.cli import main
from covidxr.data.download import download
from covidxr.errors import CovidxrError


def _cohen_zip(tmp_path) -> bytes:
    image = save_image(xray_pixels(1), tmp_path / "one.png")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        bundle.writestr("covid-chestxray-dataset-master/metadata.csv", "patientid,finding,view,modality,folder,"
                        "filename\n1,COVID-19,PA,X-ray,images,one.png\n")
        bundle.write(image, "covid-chestxray-dataset-master/images/one.png")
        bundle.writestr("covid-chestxray-dataset-master/README.md", "fake")
    return buffer.getvalue()


@pytest.fixture
def server(tmp_path):
    payload = _cohen_zip(tmp_path)
    ranges = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            start = 0
            if self.headers.get("Range"):
                start = int(self.headers["Range"].split("=")[1].rstrip("-"))
                ranges.append(start)
            body = payload[start:]
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/archive.zip", payload, ranges
    httpd.shutdown()


def test_download_verifies_and_unpacks_the_layout(server, tmp_path):
    url, _, _ = server
    folder = download("cohen", tmp_path / "data", url=url)
    assert (folder / "metadata.csv").is_file() and (folder / "images" / "one.png").is_file()
    assert not (folder / "README.md").exists() and not list((tmp_path / "data").glob(".*.part"))
    assert json.loads((folder / ".covidxr-download.json").read_text())["url"] == url
    from covidxr.data import import_cohen

    assert len(import_cohen(folder).manifest) == 1


def test_an_interrupted_download_resumes_with_a_range_request(server, tmp_path):
    url, payload, ranges = server
    target = tmp_path / "data"
    target.mkdir()
    (target / ".cohen.zip.part").write_bytes(payload[:500])
    download("cohen", target, url=url)
    assert ranges == [500]
    assert (target / "covid-chestxray-dataset" / "metadata.csv").is_file()


def test_offline_fails_fast_naming_the_url(tmp_path, capsys):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    url = f"http://127.0.0.1:{closed}/x.zip"
    with pytest.raises(CovidxrError, match="cannot download http://127.0.0.1"):
        download("rsna-normal", tmp_path, url=url)
    assert main(["data", "download", "cohen", "--to", str(tmp_path), "--url", url]) == 1
    assert "DATA=DIR" in capsys.readouterr().err


def test_a_wrong_archive_is_refused(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        bundle.writestr("something-master/readme.txt", "x")
    (tmp_path / ".cohen.zip.part").write_bytes(buffer.getvalue())

    class Done(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(416)
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Done)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with pytest.raises(CovidxrError, match="lacks metadata.csv, images"):
            download("cohen", tmp_path, url=f"http://127.0.0.1:{httpd.server_address[1]}/a.zip")
    finally:
        httpd.shutdown()
