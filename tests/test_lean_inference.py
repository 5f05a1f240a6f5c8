"""The lean inference path: with a matching model.onnx, predicting loads neither PyTorch nor Lightning nor
scikit-learn; folders are prepared in worker processes, in input order, with per-file errors kept."""

import json
import subprocess
import sys
from concurrent.futures import Future

import numpy as np
import pytest

from conftest import lesion_image, save_image
from covidxr import predict
from covidxr.cli import INFERENCE_COMMANDS, parser
from covidxr.predict import load_model, prepared_in_order

HEAVY = ("torch", "lightning", "sklearn")


@pytest.fixture
def inbox(tmp_path):
    root = tmp_path / "inbox"
    for index in range(18):
        save_image(lesion_image(700 + index, covid=index % 3 == 0, size=64 + 8 * index), root / f"x{index:02d}.png")
    (root / "x05-notes.txt").write_text("not an image")
    (root / "x11-cut.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 40)
    return root


def _run_python(code: str) -> dict:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_predicting_with_a_matching_onnx_imports_neither_torch_nor_lightning_nor_sklearn(inbox):
    image = inbox / "x03.png"
    result = _run_python(f"""
import json, sys
import covidxr.predict
predictor = covidxr.predict.load_model(input_check=False)
prediction = predictor.predict({str(image)!r})
print(json.dumps({{"runtime": predictor.info["runtime"], "status": prediction["status"],
                  "loaded": [name for name in {HEAVY!r} if name in sys.modules]}}))
""")
    assert result == {"runtime": "onnxruntime", "status": "ok", "loaded": []}


def test_the_predict_command_on_a_folder_imports_neither_torch_nor_lightning_nor_sklearn(inbox, tmp_path):
    out = tmp_path / "out.csv"
    result = _run_python(f"""
import json, sys
from covidxr.cli import main
code = main(["predict", {str(inbox)!r}, "--csv", {str(out)!r}])
print(json.dumps({{"code": code, "loaded": [name for name in {HEAVY!r} if name in sys.modules]}}))
""")
    assert result == {"code": 3, "loaded": []}
    assert len(out.read_text().splitlines()) == 1 + 20


def test_the_service_with_a_matching_onnx_imports_neither_torch_nor_lightning_nor_sklearn(inbox):
    result = _run_python(f"""
import json, sys
from fastapi.testclient import TestClient
from covidxr.serving.app import create_app
client = TestClient(create_app(), base_url="http://127.0.0.1")
with open({str(inbox / "x04.png")!r}, "rb") as image:
    status = client.post("/v1/predict", files={{"file": ("x.png", image.read(), "image/png")}}).status_code
print(json.dumps({{"status": status, "loaded": [name for name in {HEAVY!r} if name in sys.modules]}}))
""")
    assert result == {"status": 200, "loaded": []}


def test_folder_predictions_keep_input_order_and_errors_whether_parallel_or_not(inbox):
    predictor = load_model()
    paths = sorted(inbox.iterdir())
    parallel = predictor.predict_files(paths, workers=2)
    serial = predictor.predict_files(paths, workers=1)
    assert [p.path for p in parallel] == [str(path) for path in paths] == [p.path for p in serial]
    assert [p.status for p in parallel] == [p.status for p in serial]
    assert {p.path.rsplit("/", 1)[-1]: p.error for p in parallel if p.status == "error"}.keys() == {
        "x05-notes.txt", "x11-cut.jpg"}
    for one, other in zip(parallel, serial):
        assert one.probabilities == pytest.approx(other.probabilities) and one.warnings == other.warnings


class _RecordingPool:
    """A stand-in for ProcessPoolExecutor that runs at once and records how far submitting runs ahead."""

    submitted = consumed = ahead = 0

    def __init__(self, max_workers):
        self.workers = max_workers

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def submit(self, function, *args):
        type(self).submitted += 1
        type(self).ahead = max(type(self).ahead, type(self).submitted - type(self).consumed)
        future = Future()
        future.set_result(function(*args))
        return future


def test_folder_preparation_holds_a_bounded_number_of_chunks_in_flight(inbox, monkeypatch):
    monkeypatch.setattr(predict, "ProcessPoolExecutor", _RecordingPool)
    monkeypatch.setattr(predict, "CHUNK", 1)
    paths = [inbox / "x00.png"] * 40
    predictor = load_model(input_check=False)
    preprocessing = predictor.preprocessing
    for index, prepared in enumerate(prepared_in_order(paths, predictor.steps, workers=2)):
        _RecordingPool.consumed = index + 1
        assert prepared.pixels is not None and prepared.pixels.shape == (preprocessing.size,) * 2
    assert _RecordingPool.submitted == 40
    assert _RecordingPool.ahead <= 2 * predict.CHUNKS_IN_FLIGHT_PER_WORKER + 1


def test_predicting_arrays_and_files_agree_on_the_onnx_path(inbox):
    from PIL import Image

    predictor = load_model()
    pixels = np.asarray(Image.open(inbox / "x07.png"))
    assert predictor.predict(pixels)["probabilities"] == pytest.approx(
        predictor.predict(inbox / "x07.png")["probabilities"])


def test_the_inference_commands_parse_without_the_dataset_and_training_commands():
    lean = parser("predict")._subparsers._group_actions[0].choices
    full = parser()._subparsers._group_actions[0].choices
    assert set(lean) == set(INFERENCE_COMMANDS) and set(INFERENCE_COMMANDS) < set(full)
    assert parser("predict").parse_args(["predict", "a.png", "--json"]).json is True
