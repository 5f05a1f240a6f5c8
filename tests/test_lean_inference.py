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


# --- one ONNX-else-PyTorch loader, the optimised-graph cache, batched steps --------------------------------------


def _doubling_graph(path, weights_sha256: str):
    """A tiny ONNX file: output = 2 * input (input `pixels`), its metadata recording `weights_sha256`."""
    import onnx
    from onnx import TensorProto, helper

    pixels = helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 4])
    doubled = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])
    graph = helper.make_graph([helper.make_node("Add", ["pixels", "pixels"], ["logits"])], "double", [pixels],
                              [doubled])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"weights_sha256": weights_sha256})
    onnx.save(model, str(path))
    return path


def test_sessions_start_from_a_cached_optimised_graph_and_a_corrupt_or_stale_one_is_rebuilt(tmp_path, monkeypatch):
    from covidxr.models import onnx_runtime

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    source = _doubling_graph(tmp_path / "model.onnx", "a" * 64)
    batch = np.arange(8, dtype=np.float32).reshape(2, 4)
    built = onnx_runtime.inference_session(source, 1, "a" * 64)
    cached = onnx_runtime.optimised_graph_path(source, "a" * 64)
    assert cached.is_file() and cached.parent == tmp_path / "cache" / "covidxr" / "onnxruntime"
    expected = built.run(None, {"pixels": batch})[0]
    assert np.array_equal(expected, 2 * batch)

    def no_rebuild(*args):
        raise AssertionError("the cached graph should have been used")
    with monkeypatch.context() as patch:
        patch.setattr(onnx_runtime, "_build_and_save", no_rebuild)
        assert np.array_equal(onnx_runtime.inference_session(source, 1, "a" * 64).run(None, {"pixels": batch})[0],
                              expected)
    cached.write_bytes(b"not an ONNX graph")  # corrupt: ignored, rebuilt
    assert np.array_equal(onnx_runtime.inference_session(source, 1, "a" * 64).run(None, {"pixels": batch})[0],
                          expected)
    assert cached.read_bytes() != b"not an ONNX graph"
    _doubling_graph(cached, "b" * 64)  # stale: records other weights than its source's
    session = onnx_runtime.inference_session(source, 1, "a" * 64)
    assert session.get_modelmeta().custom_metadata_map["weights_sha256"] == "a" * 64
    assert onnx_runtime.optimised_graph_path(_doubling_graph(tmp_path / "other.onnx", "a" * 64), "a" * 64) != cached
    monkeypatch.setenv("XDG_CACHE_HOME", str(source))  # a cache folder that cannot be made: no cache, same session
    assert np.array_equal(onnx_runtime.inference_session(source, 1, "a" * 64).run(None, {"pixels": batch})[0],
                          expected)


def test_the_runtime_is_onnx_when_its_hash_matches_else_pytorch_loaded_on_first_use(tmp_path, monkeypatch, caplog):
    from covidxr.models.onnx_runtime import ModelRuntime

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    source = _doubling_graph(tmp_path / "model.onnx", "a" * 64)
    loads = []

    def load_torch():
        loads.append(1)
        return lambda batch: 3 * batch
    batch = np.ones((1, 4), np.float32)
    matching = ModelRuntime(source, "a" * 64, load_torch, "pixels", threads=1)
    assert matching.name == "onnxruntime" and np.array_equal(matching(batch), 2 * batch) and loads == []
    for path, weights in ((source, "b" * 64), (tmp_path / "missing.onnx", "a" * 64)):
        loads.clear()
        other = ModelRuntime(path, weights, load_torch, "pixels", threads=1)
        assert other.name == "pytorch" and loads == []
        assert np.array_equal(other(batch), 3 * batch) and np.array_equal(other(batch), 3 * batch)
        assert loads == [1]
    assert "exported from other weights; using PyTorch" in caplog.text


def test_batched_steps_prepare_each_image_as_the_image_by_image_path_does():
    from covidxr.data.preprocess import preprocess
    from covidxr.lungs import shipped_segmenter

    predictor = load_model()
    steps, segmenter = predictor.steps, shipped_segmenter()
    grays = [lesion_image(900 + index, covid=index % 2 == 0, size=size) for index, size in enumerate((96, 300, 640))]
    grays[1] = np.pad(grays[1], 30)  # a black border: the lungs are segmented again on the trimmed image
    together = steps.run_many(grays, ["a", "b", "c"])
    unchecked = type(steps)(steps.preprocessor).run_many(grays, ["a", "b", "c"])
    for gray, prepared, plain in zip(grays, together, unchecked):
        result, _ = steps.checker.check(gray)
        assert prepared.input_check == result
        assert prepared.pixels is None if not result.accepted else np.array_equal(
            prepared.pixels, preprocess(gray, steps.preprocessor.settings, segmenter)[0])
        assert np.array_equal(plain.pixels, preprocess(gray, steps.preprocessor.settings, segmenter)[0])
