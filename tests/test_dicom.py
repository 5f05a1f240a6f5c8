"""DICOM results (SR and Secondary Capture) and the DICOMweb round trip, checked against a real Orthanc.

Orthanc (Debian `orthanc`, `orthanc-dicomweb`) is started per module with a temporary configuration on a
free loopback port; the SR is validated with dcmtk's `dsrdump`. Under CI (where .ci/run installs them)
their absence fails; elsewhere it skips. Source images: shared Cohen images converted to DICOM when the
shared data is present, else synthetic radiographs.
"""

from __future__ import annotations

import glob
import http.server
import io
import json
import subprocess
import threading
import time
from pathlib import Path

import highdicom as hd
import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import BasicTextSRStorage, ExplicitVRLittleEndian, generate_uid

from conftest import (
    SHARED_DATA,
    free_port,
    required_under_ci,
    save_image,
    served_on_loopback,
    system_tool,
    write_dicom,
    write_radiograph,
    xray_pixels,
)
from covidxr.cli import main
from covidxr.data.imageio import read_grayscale
from covidxr.dicom.dicomweb import DicomWebError, Server, classify_studies
from covidxr.dicom.results import model_identity
from covidxr.dicom.source import skip_reason
from covidxr.dicom.sr import LABEL, THRESHOLD, Classification, ModelIdentity, ResultUIDs, build_sr
from covidxr.predict import load_model
from covidxr.runs import NOT_FOR_CLINICAL_USE

FINDING_COVID = Code("840539006", "SCT", "COVID-19")

LOOPBACK = "http://127.0.0.1"  # the service answers to its own names only (TestClient says "testserver")
IDENTIFYING = ("SECRET-ID", "Doe^Jane", "Doe", "19700101", "ACC-77")
ALGORITHM_PARAMETERS = hd.sr.CodedConcept("111002", "DCM", "Algorithm Parameters")


def dicomweb_plugin() -> str:
    found = sorted(glob.glob("/usr/share/orthanc/plugins/libOrthancDicomWeb.so*")
                   + glob.glob("/usr/lib/orthanc/libOrthancDicomWeb.so*"))
    if found:
        return found[0]
    required_under_ci("Orthanc's DICOMweb plugin", "apt-get install orthanc-dicomweb; .ci/run installs it")


@pytest.fixture(scope="module")
def predictor():
    """The shipped model without its input check: these tests' synthetic radiographs are no chest X-rays."""
    return load_model(input_check=False)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    """A fresh Orthanc with DICOMweb on a free loopback port: (its REST root, its DICOMweb root)."""
    binary, plugin = system_tool("Orthanc", "orthanc"), dicomweb_plugin()
    folder = tmp_path_factory.mktemp("orthanc")
    port = free_port()
    config = {"Name": "covidxr-test", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
              "HttpPort": port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
              # No DICOM (DIMSE) listener: the tests speak DICOMweb only, and nothing else binds a port.
              "DicomServerEnabled": False, "DicomPort": free_port(), "SaveJobs": False, "Plugins": [plugin],
              "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False}}
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = open(folder / "orthanc.log", "wb")
    process = subprocess.Popen([binary, str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    rest = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(f"{rest}/plugins/dicom-web", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.time() > deadline:
                pytest.fail(f"Orthanc did not start: {(folder / 'orthanc.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield rest, f"{rest}/dicom-web"
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def source_pixels(count: int) -> list[np.ndarray]:
    """Grey radiographs: shared Cohen images (first COVID-19 PA ones by name) when present, else synthetic."""
    images = SHARED_DATA / "covid-chestxray-dataset" / "images"
    if images.is_dir():
        names = sorted(p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:count]
        return [np.asarray(Image.open(name).convert("L")) for name in names]
    return [xray_pixels(seed, size=320) for seed in range(count)]


def write_text_sr(path: Path, study_uid: str) -> Path:
    """A Basic Text SR in the study (a report a radiologist wrote): not an image, to be skipped."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = BasicTextSRStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = pydicom.Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = BasicTextSRStorage, meta.MediaStorageSOPInstanceUID
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.Modality = study_uid, generate_uid(), "SR"
    dataset.PatientID, dataset.PatientName = "SECRET-ID", "Doe^Jane"
    dataset.ValueType, dataset.ContinuityOfContent = "CONTAINER", "SEPARATE"
    dataset.save_as(path, enforce_file_format=True)
    return path


def test_skip_reasons_name_what_is_not_a_single_frame_radiograph(tmp_path):
    pixels = xray_pixels(1, size=64)
    header = pydicom.dcmread(write_radiograph(tmp_path / "cr.dcm", pixels))
    assert skip_reason(header, radiographs_only=True) is None
    sr = pydicom.dcmread(write_text_sr(tmp_path / "sr.dcm", header.StudyInstanceUID))
    assert skip_reason(sr, radiographs_only=True) == "not an image (Basic Text SR Storage)"
    multi = pydicom.dcmread(write_radiograph(tmp_path / "multi.dcm", pixels, "DX", frames=3))
    assert skip_reason(multi, radiographs_only=True) == "multi-frame (3 frames)"
    header.Modality = "CT"
    assert "modality CT" in skip_reason(header, radiographs_only=True)
    assert skip_reason(header, radiographs_only=False) is None
    header.SOPClassUID = "1.2.840.10008.5.1.4.1.1.104.1"
    assert skip_reason(header, radiographs_only=False) == "not an image (Encapsulated PDF Storage)"
    header.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1.1"
    assert "for-processing" in skip_reason(header, radiographs_only=False)
    del header.StudyInstanceUID
    assert skip_reason(header, radiographs_only=False).startswith("lacks StudyInstanceUID")


def check_sr(path_or_dataset, source: pydicom.Dataset, predictor) -> hd.sr.ComprehensiveSR:
    """The SR holds the prediction on the source, references it, and files under its patient and study."""
    dataset = path_or_dataset if isinstance(path_or_dataset, pydicom.Dataset) else pydicom.dcmread(path_or_dataset)
    sr = hd.sr.ComprehensiveSR.from_dataset(dataset)
    expected = predictor.predict(read_grayscale(source.filename))
    (group,) = sr.content.get_image_measurement_groups()
    probability = model_identity(predictor).probability_code
    assert probability.meaning == "Probability of COVID-19 (model output)" and group.finding_type == FINDING_COVID
    assert group.get_measurements(name=probability)[0].value == pytest.approx(expected["probabilities"]["covid"],
                                                                              abs=1e-6)
    assert group.get_measurements(name=THRESHOLD)[0].value == pytest.approx(predictor.threshold, abs=1e-9)
    assert group.get_qualitative_evaluations(name=LABEL)[0].value.value == expected["label"]
    parameters = [item.TextValue for item in hd.sr.utils.find_content_items(sr, ALGORITHM_PARAMETERS, recursive=True)]
    assert f"weights sha256 {predictor.contract.weights_sha256}" in parameters
    comments = [item.TextValue for item in hd.sr.utils.find_content_items(sr, codes.DCM.Comment, recursive=True)]
    assert comments == [NOT_FOR_CLINICAL_USE]
    assert sr.get_evidence() == [(source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID,
                                  source.SOPClassUID)]
    assert group.source_images[0].referenced_sop_instance_uid == source.SOPInstanceUID
    for keyword in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                    "AccessionNumber", "StudyDate", "StudyID"):
        assert dataset.get(keyword) == source.get(keyword), keyword
    assert dataset.SeriesInstanceUID != source.SeriesInstanceUID and dataset.Modality == "SR"
    assert dataset.ContentQualification == "RESEARCH" and dataset.VerificationFlag == "UNVERIFIED"
    return sr


def check_sc(path_or_dataset, source: pydicom.Dataset, sr: pydicom.Dataset) -> None:
    dataset = path_or_dataset if isinstance(path_or_dataset, pydicom.Dataset) else pydicom.dcmread(path_or_dataset)
    assert dataset.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and dataset.PhotometricInterpretation == "RGB"
    assert dataset.pixel_array.ndim == 3 and dataset.pixel_array.std() > 10
    assert dataset.StudyInstanceUID == source.StudyInstanceUID and dataset.PatientID == source.PatientID
    assert dataset.SeriesInstanceUID not in (source.SeriesInstanceUID, sr.SeriesInstanceUID)
    assert dataset.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert dataset.ImageComments == NOT_FOR_CLINICAL_USE and dataset.ContentQualification == "RESEARCH"


def dsrdump_is_clean(path: Path) -> str:
    result = subprocess.run([system_tool("dsrdump", "dcmtk"), str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr
    assert "Probability of COVID-19" in result.stdout and "Class at the operating threshold" in result.stdout
    return result.stdout


def test_predict_dicom_out_writes_sr_and_sc_per_dicom_and_a_note_for_the_rest(tmp_path, capsys, predictor):
    inputs = tmp_path / "inputs"
    first, second = source_pixels(2)
    cr = write_radiograph(inputs / "cr.dcm", first, "CR", "MONOCHROME2")
    dx = write_radiograph(inputs / "dx.dcm", second, "DX", "MONOCHROME1")
    save_image(xray_pixels(3, size=300), inputs / "plain.png")
    write_dicom(inputs / "no-uids.dcm", xray_pixels(4, size=300))
    out = tmp_path / "dicom-out"

    code = main(["predict", str(inputs), "--dicom-out", str(out), "--no-input-check"])

    printed = capsys.readouterr()
    assert code == 3  # no-uids.dcm is a DICOM input that could not get a result
    assert "plain.png: not a DICOM file: no DICOM output" in printed.out
    assert "no-uids.dcm: lacks StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID" in printed.out
    assert not any(value in printed.out + printed.err for value in IDENTIFYING)
    written = sorted(path.name for path in out.iterdir())
    sources = [pydicom.dcmread(path) for path in (cr, dx)]
    assert written == sorted(f"{s.SOPInstanceUID}.{kind}.dcm" for s in sources for kind in ("sr", "sc"))
    for source in sources:
        sr = check_sr(out / f"{source.SOPInstanceUID}.sr.dcm", source, predictor)
        check_sc(out / f"{source.SOPInstanceUID}.sc.dcm", source, sr)
    dsrdump_is_clean(out / f"{sources[0].SOPInstanceUID}.sr.dcm")


@pytest.mark.parametrize("positive, finding", [
    ("pneumonia", ("233604007", "SCT", "Pneumonia")), ("effusion", ("CLASS-EFFUSION", "99COVIDXR", "effusion"))])
def test_the_srs_finding_and_probability_name_the_contracts_positive_class(tmp_path, positive, finding):
    source = pydicom.dcmread(write_radiograph(tmp_path / "cr.dcm", xray_pixels(1, size=64)))
    model = ModelIdentity(name="covidxr test", version="1", weights_sha256="0" * 64, threshold=0.5,
                          threshold_rule="test", temperature=1.0, positive_class=positive)
    sr = hd.sr.ComprehensiveSR.from_dataset(build_sr(source, Classification(0.7, positive, 0.5), model))
    (group,) = sr.content.get_image_measurement_groups()
    assert (group.finding_type.value, group.finding_type.scheme_designator, group.finding_type.meaning) == finding
    assert group.get_measurements(name=model.probability_code)[0].value == pytest.approx(0.7)
    assert f"P-{positive.upper()}" == model.probability_code.value and "COVID" not in sr.SeriesDescription


def test_result_uids_are_the_same_for_the_same_model_and_image_only(tmp_path, predictor):
    source = pydicom.dcmread(write_radiograph(tmp_path / "cr.dcm", xray_pixels(1, size=64)))
    other = pydicom.dcmread(write_radiograph(tmp_path / "other.dcm", xray_pixels(1, size=64),
                                             study_uid=source.StudyInstanceUID))
    model = model_identity(predictor)
    first, again = ResultUIDs.derive(source, model), ResultUIDs.derive(source, model)
    assert first == again and len(set(vars(first).values())) == 5
    assert all(pydicom.uid.UID(uid).is_valid for uid in vars(first).values())
    neighbour = ResultUIDs.derive(other, model)
    assert neighbour.sr_series == first.sr_series and neighbour.sr_instance != first.sr_instance
    retrained = ResultUIDs.derive(source, type(model)(**{**vars(model), "weights_sha256": "0" * 64}))
    assert retrained.sr_instance != first.sr_instance and retrained.sr_series != first.sr_series


def upload(rest: str, path: Path) -> None:
    response = httpx.post(f"{rest}/instances", content=path.read_bytes(), timeout=30)
    assert response.status_code == 200, response.text


def study_instances(rest: str, study_uid: str) -> dict[str, pydicom.Dataset]:
    """Every instance Orthanc holds in a study, read through its own REST API (not DICOMweb)."""
    (found,) = httpx.post(f"{rest}/tools/lookup", content=study_uid, timeout=30).json()
    instances = httpx.get(f"{rest}/studies/{found['ID']}/instances", timeout=30).json()
    datasets = [pydicom.dcmread(io.BytesIO(httpx.get(f"{rest}/instances/{i['ID']}/file",
                                                                        timeout=30).content)) for i in instances]
    return {str(dataset.SOPInstanceUID): dataset for dataset in datasets}


def test_dicomweb_round_trip_with_orthanc(orthanc, tmp_path, capsys, predictor):
    rest, url = orthanc
    first, second, third = source_pixels(3)
    study_a, study_b = generate_uid(), generate_uid()
    cr = write_radiograph(tmp_path / "a-cr.dcm", first, "CR", "MONOCHROME2", study_uid=study_a)
    dx = write_radiograph(tmp_path / "a-dx.dcm", second, "DX", "MONOCHROME1", study_uid=study_a)
    multi = write_radiograph(tmp_path / "a-multi.dcm", second, "DX", frames=2, study_uid=study_a)
    report = write_text_sr(tmp_path / "a-report.dcm", study_a)
    other = write_radiograph(tmp_path / "b-dx.dcm", third, "DX", "MONOCHROME2", study_uid=study_b)
    for path in (cr, dx, multi, report, other):
        upload(rest, path)

    code = main(["dicomweb", "--no-input-check", "--url", url, "--study", study_a])

    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert not any(value in printed.out + printed.err for value in IDENTIFYING)
    assert "2 stored, 2 skipped, 0 failed" in printed.out
    assert "skipped 1: multi-frame (2 frames)" in printed.out
    assert "skipped 1: not an image (Basic Text SR Storage)" in printed.out
    held = study_instances(rest, study_a)
    model = model_identity(predictor)
    for path in (cr, dx):
        source = pydicom.dcmread(path)
        uids = ResultUIDs.derive(source, model)
        sr = check_sr(held[uids.sr_instance], source, predictor)
        check_sc(held[uids.sc_instance], source, held[uids.sr_instance])
        assert sr.SeriesInstanceUID == uids.sr_series
    assert len(held) == 4 + 2 * 2
    stored_sr = tmp_path / "stored.sr.dcm"
    held[ResultUIDs.derive(pydicom.dcmread(cr), model).sr_instance].save_as(stored_sr)
    dsrdump_is_clean(stored_sr)
    assert len(study_instances(rest, study_b)) == 1  # not named, untouched

    # Every study, again: study A already holds its results (nothing is stored twice); B gets its own.
    code = main(["dicomweb", "--no-input-check", "--url", url])

    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "1 stored, 8 skipped, 0 failed" in printed.out
    assert "skipped 2: already holds this model's SR and SC" in printed.out
    assert "skipped 4: a covidxr result of this model" in printed.out
    assert len(study_instances(rest, study_a)) == 8 and len(study_instances(rest, study_b)) == 3

    # A study the server does not hold is a named input that failed (exit 3), not a reason to stop.
    unknown = generate_uid()
    code = main(["dicomweb", "--no-input-check", "--url", url, "--study", unknown])
    printed = capsys.readouterr()
    assert code == 3 and f"study {unknown} instance -: failed" in printed.out


def test_a_server_that_is_down_gives_one_clear_error_after_bounded_retries(capsys):
    started = time.time()
    code = main(["dicomweb", "--url", f"http://127.0.0.1:{free_port()}/dicom-web", "--attempts", "2"])
    printed = capsys.readouterr()
    assert code == 1 and time.time() - started < 30
    assert printed.err.strip().endswith("(2 attempts): connection refused")
    assert printed.err.count("covidxr: error:") == 1


class _Answering(http.server.BaseHTTPRequestHandler):
    """A stand-in server that answers every request with one status and records the requests."""

    status = 503
    requests: list[dict] = []

    def do_GET(self):  # noqa: N802 (the http.server API)
        type(self).requests.append(dict(self.headers))
        self.send_response(self.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("status, attempts_seen, message", [
    (503, 2, "kept answering HTTP 503 Service Unavailable to list its studies (2 attempts)"),
    (401, 1, "refused to list its studies (HTTP 401 Unauthorized); set COVIDXR_DICOMWEB_TOKEN"),
])
def test_a_busy_or_refusing_server_stops_the_run_with_one_error(status, attempts_seen, message, capsys,
                                                                 monkeypatch):
    handler = type("Handler", (_Answering,), {"status": status, "requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("COVIDXR_DICOMWEB_TOKEN", "token-123")
    try:
        code = main(["dicomweb", "--url", f"http://127.0.0.1:{server.server_port}/dicom-web", "--attempts", "2"])
    finally:
        server.shutdown()
    printed = capsys.readouterr()
    assert code == 1 and message in printed.err
    assert len(handler.requests) == attempts_seen
    assert all(request["Authorization"] == "Bearer token-123" for request in handler.requests)


class _FakeClient:
    """A DICOMweb client over datasets in memory whose STOW-RS rejects the named kinds of object."""

    def __init__(self, datasets: list[pydicom.Dataset], reject: tuple[str, ...] = (), unreachable: bool = False):
        self.datasets, self.reject, self.unreachable = datasets, reject, unreachable
        self.stored: list[pydicom.Dataset] = []

    def search_for_instances(self, study_instance_uid, fields, get_remaining, offset=0, limit=None):
        found = [d.to_json_dict() for d in self.datasets if d.StudyInstanceUID == study_instance_uid]
        return found[offset:offset + limit if limit else None]

    def retrieve_instance(self, study, series, instance):
        return next(d for d in self.datasets if d.SOPInstanceUID == instance)

    def store_instances(self, datasets, study_instance_uid):
        import requests

        (dataset,) = datasets
        answer = pydicom.Dataset()
        if dataset.Modality in self.reject:
            failed = pydicom.Dataset()
            failed.ReferencedSOPInstanceUID, failed.FailureReason = dataset.SOPInstanceUID, 0xC000
            answer.FailedSOPSequence = [failed]
        elif dataset.Modality == "SR" and self.unreachable:
            raise requests.ConnectionError("[Errno 111] Connection refused")
        else:
            self.stored.append(dataset)
        return answer


@pytest.mark.parametrize("reject, unreachable, stored, reason", [
    (("OT",), False, [], "SC not stored (the server rejected it (failure reason 0xC000)), so the SR was not stored"),
    (("SR",), False, ["OT"], "SR not stored (the server rejected it (failure reason 0xC000)); its SC"),
    ((), True, ["OT"], "SR not stored (cannot reach the DICOMweb server"),
])
def test_an_sr_is_never_stored_without_its_sc_and_a_failure_says_which_is_missing(
        tmp_path, predictor, reject, unreachable, stored, reason):
    source = pydicom.dcmread(write_radiograph(tmp_path / "cr.dcm", xray_pixels(5, size=128)))
    client = _FakeClient([source], reject, unreachable)
    server = Server("http://pacs.example/dicom-web", client, attempts=1)
    if unreachable:
        with pytest.raises(DicomWebError) as raised:
            classify_studies(server, predictor, [source.StudyInstanceUID])
        reports = raised.value.reports
    else:
        reports = classify_studies(server, predictor, [source.StudyInstanceUID])
    assert [d.Modality for d in client.stored] == stored
    (report,) = reports
    assert report.status == "failed" and report.instance == source.SOPInstanceUID and reason in report.reason


def test_the_service_returns_the_sr_of_a_dicom_upload(tmp_path, predictor):
    from fastapi.testclient import TestClient

    from covidxr.serving.app import create_app

    client = TestClient(create_app(predictor=predictor), base_url=LOOPBACK, raise_server_exceptions=False)
    path = write_radiograph(tmp_path / "cr.dcm", xray_pixels(6, size=200), "CR", "MONOCHROME1")
    source = pydicom.dcmread(path)
    response = client.post("/v1/dicom-sr", files={"file": ("cr.dcm", path.read_bytes())})
    assert response.status_code == 200 and response.headers["content-type"] == "application/dicom"
    assert f'filename="{source.SOPInstanceUID}.sr.dcm"' in response.headers["content-disposition"]
    check_sr(pydicom.dcmread(io.BytesIO(response.content)), source, predictor)

    png = tmp_path / "plain.png"
    save_image(xray_pixels(6, size=200), png)
    no_pixels = write_dicom(tmp_path / "empty.dcm", None)
    report = write_text_sr(tmp_path / "report.dcm", source.StudyInstanceUID)
    for name, content, status in [("plain.png", png.read_bytes(), 415), ("empty.dcm", no_pixels.read_bytes(), 422),
                                  ("report.dcm", report.read_bytes(), 422), ("junk.dcm", b"\0" * 128 + b"DICM", 422)]:
        answer = client.post("/v1/dicom-sr", files={"file": (name, content)})
        assert answer.status_code == status, (name, answer.text)
        assert answer.json()["error"]["message"].startswith(name)
        assert not any(value in answer.text for value in IDENTIFYING)


def test_the_web_page_offers_the_dicom_sr_of_a_dicom_upload_only(tmp_path, predictor):
    from playwright.sync_api import sync_playwright

    from conftest import CHROMIUM_FLAGS, chromium_or_skip
    from covidxr.serving.app import create_app

    chromium = chromium_or_skip()
    path = write_radiograph(tmp_path / "chest.dcm", xray_pixels(8, size=200), "DX", "MONOCHROME2")
    png = save_image(xray_pixels(8, size=200), tmp_path / "chest.png")
    errors = []
    with served_on_loopback(create_app(predictor=predictor)) as port, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page(accept_downloads=True)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"http://127.0.0.1:{port}/")
        page.set_input_files("#file", str(path))
        page.wait_for_selector("#dicom-sr:not([hidden])", timeout=60_000)
        with page.expect_download(timeout=60_000) as download:
            page.click("#dicom-sr")
        saved = tmp_path / download.value.suggested_filename
        download.value.save_as(saved)
        page.set_input_files("#file", str(png))
        page.wait_for_selector("#overlay:not([hidden])", timeout=60_000)  # shown after the button's check
        button_hidden_for_png = page.evaluate("document.getElementById('dicom-sr').hidden")
        browser.close()
    assert errors == []
    source = pydicom.dcmread(path)
    assert saved.name == f"{source.SOPInstanceUID}.sr.dcm"
    check_sr(saved, source, predictor)
    assert button_hidden_for_png


def test_the_overlay_is_an_rgb_array_and_outlines_the_lung_mask():
    from covidxr.explain.cam import overlay_rgb
    from covidxr.lungs import LungMask

    pixels, heatmap = xray_pixels(9, size=64), np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    mask = np.zeros((64, 64), dtype=bool)
    mask[16:48, 8:28] = True
    no_lungs = LungMask(np.zeros((64, 64), dtype=bool), lungs=0)
    plain, outlined = overlay_rgb(pixels, heatmap, "title", no_lungs), overlay_rgb(pixels, heatmap, "title",
                                                                                   LungMask(mask, lungs=1))
    assert plain.dtype == np.uint8 and plain.ndim == 3 and plain.shape[2] == 3 and plain.shape == outlined.shape
    changed = np.argwhere((plain != outlined).any(axis=2))
    assert len(changed) > 0
    # Only the outline's neighbourhood changes: the left half of the image (the mask lies in columns 8..28 of 64).
    assert changed[:, 1].max() < plain.shape[1] * 0.6


def test_no_header_value_reaches_a_warning_while_results_are_built(tmp_path, predictor):
    import warnings

    from covidxr.dicom.results import results_of

    path = write_radiograph(tmp_path / "cr.dcm", xray_pixels(10, size=96))
    source = pydicom.dcmread(path)
    source.PatientName = "SECRETNAME"  # one component: highdicom warns quoting it unless covidxr silences it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = results_of(predictor, source, "cr.dcm")
    assert str(results.sr.PatientName) == "SECRETNAME"
    assert not [w for w in caught if "SECRETNAME" in str(w.message)]


TYPE_2_AS_HOSPITALS_SEND_THEM = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                                 "StudyTime", "AccessionNumber", "ReferringPhysicianName", "StudyID",
                                 "PatientOrientation", "ViewPosition", "SeriesNumber", "InstanceNumber", "Laterality")


def minimal_radiograph(path: Path, modality: str, seed: int) -> Path:
    """A CR or DX image whose type 2 attributes are all present and empty (as many modalities send them)."""
    dataset = pydicom.dcmread(write_radiograph(path, xray_pixels(seed, size=256), modality))
    for keyword in TYPE_2_AS_HOSPITALS_SEND_THEM:
        setattr(dataset, keyword, None)
    dataset.save_as(path, enforce_file_format=True)
    return path


def test_minimal_cr_and_dx_headers_get_their_sr_and_sc(tmp_path, capsys, predictor):
    inputs = tmp_path / "inputs"
    sources = [minimal_radiograph(inputs / f"{modality}.dcm", modality, seed)
               for seed, modality in enumerate(("CR", "DX"))]
    written = write_radiograph(inputs / "full.dcm", xray_pixels(7, size=256), "DX")  # the headers tests write
    out = tmp_path / "out"
    # synthetic pixels: the input check would refuse them; this test is about the headers
    assert main(["predict", str(inputs), "--dicom-out", str(out), "--no-input-check"]) == 0, capsys.readouterr()
    for path in (*sources, written):
        source = pydicom.dcmread(path)
        sr_path, sc_path = (out / f"{source.SOPInstanceUID}.{kind}.dcm" for kind in ("sr", "sc"))
        sr = check_sr(sr_path, source, predictor)
        check_sc(sc_path, source, pydicom.dcmread(sr_path))
        dsrdump_is_clean(sr_path)
        sc = pydicom.dcmread(sc_path)
        expected = list(source.PatientOrientation) if source.PatientOrientation else None
        assert (list(sc.PatientOrientation) if sc.PatientOrientation else None) == expected
        assert str(sr.PatientName) == str(source.PatientName or "")


def test_a_dicom_result_error_names_the_cause_without_identifying_values(tmp_path, predictor, monkeypatch):
    from covidxr.dicom import results
    from covidxr.dicom.results import DicomResultError, sr_of

    source = pydicom.dcmread(write_radiograph(tmp_path / "cr.dcm", xray_pixels(11, size=96)))

    def refuses(header, *_):
        raise ValueError(f"'{header.PatientID}' of '{header.PatientName}' is not a valid PatientOrientationValues")

    monkeypatch.setattr(results, "build_sr", refuses)
    with pytest.raises(DicomResultError) as raised:
        sr_of(predictor, source, "cr.dcm")
    message = str(raised.value)
    assert "ValueError: '<redacted>' of '<redacted>' is not a valid PatientOrientationValues" in message
    assert not any(value in message for value in IDENTIFYING)


@pytest.mark.shared_data
def test_the_sr_of_a_real_radiograph_carries_severity_as_num_items(tmp_path, capsys):
    from conftest import shared_data_or_skip

    pixels = read_grayscale(shared_data_or_skip() / "covid-chestxray-dataset" / "images" / "000001-24.jpg")
    source = write_radiograph(tmp_path / "in" / "cr.dcm", pixels, "CR", "MONOCHROME2")
    out = tmp_path / "out"
    assert main(["predict", str(source), "--dicom-out", str(out)]) == 0  # the shipped model, input check on
    sr = next(out.glob("*.sr.dcm"))
    dumped = dsrdump_is_clean(sr)
    for text in ("COVID-19 geographic extent score", "COVID-19 opacity score",
                 "Cross-validated mean absolute error of the extent score"):
        assert text in dumped
    assert '"{score}"' in dumped or "{score}" in dumped
