"""`data download` against a local HTTP server (loopback only) serving a tiny fake layout."""

import hashlib
import io
import json
import re
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import free_port, save_image, xray_pixels
from covidxr.cli import main
from covidxr.data.download import SOURCES, download, verified_sha256
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
    url, payload, _ = server
    digest = hashlib.sha256(payload).hexdigest()
    folder = download("cohen", tmp_path / "data", url=url, sha256=digest)
    assert (folder / "metadata.csv").is_file() and (folder / "images" / "one.png").is_file()
    assert not (folder / "README.md").exists() and not list((tmp_path / "data").glob(".*.part"))
    record = json.loads((folder / ".covidxr-download.json").read_text())
    assert record["url"] == url and record["sha256"] == digest
    from covidxr.data import import_cohen

    assert len(import_cohen(folder).manifest) == 1


def test_an_interrupted_download_resumes_with_a_range_request(server, tmp_path):
    url, payload, ranges = server
    target = tmp_path / "data"
    target.mkdir()
    (target / ".cohen.zip.part").write_bytes(payload[:500])
    download("cohen", target, url=url, sha256=hashlib.sha256(payload).hexdigest())
    assert ranges == [500]
    assert (target / "covid-chestxray-dataset" / "metadata.csv").is_file()


def test_an_archive_with_another_sha256_is_refused_naming_the_url_and_both_hashes(server, tmp_path):
    url, payload, _ = server
    expected = "0" * 64
    message = rf"^{re.escape(url)}: the archive's sha256 is {hashlib.sha256(payload).hexdigest()}, expected {expected};"
    with pytest.raises(CovidxrError, match=message):
        download("cohen", tmp_path, url=url, sha256=expected)
    assert not (tmp_path / ".cohen.zip.part").exists() and not (tmp_path / "covid-chestxray-dataset").exists()


def test_the_cohen_archive_is_pinned_to_a_commit():
    assert re.fullmatch(r"https://github.com/ieee8023/covid-chestxray-dataset/archive/[0-9a-f]{40}\.zip",
                        SOURCES["cohen"].url)


def test_an_archive_without_a_recorded_hash_is_unpacked_with_a_warning_naming_its_hash(tmp_path, caplog):
    archive = tmp_path / "a.zip"
    archive.write_bytes(b"archive bytes")
    digest = hashlib.sha256(b"archive bytes").hexdigest()
    assert verified_sha256(archive, "https://example.org/a.zip", None) == digest
    assert f"https://example.org/a.zip: no sha256 is recorded for this archive, so it is not verified; its sha256 " \
           f"is {digest}" in caplog.text
    assert verified_sha256(archive, "https://example.org/a.zip", digest.upper()) == digest and archive.is_file()


def test_offline_fails_fast_naming_the_url(tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}/x.zip"  # nothing listens there
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
            download("cohen", tmp_path, url=f"http://127.0.0.1:{httpd.server_address[1]}/a.zip",
                     sha256=hashlib.sha256(buffer.getvalue()).hexdigest())
    finally:
        httpd.shutdown()
