"""Using a model: predict on files, folders and arrays (CLI and Python API), with bad files in the batch."""

import json

import numpy as np
import pandas as pd
import pytest

import covidxr
from conftest import lesion_image, save_image
from covidxr.cli import main
from covidxr.errors import UsageError
from covidxr.predict import PARALLEL_FROM


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "inbox"
    for index in range(5):
        save_image(lesion_image(500 + index, covid=index % 2 == 0), root / "sub" / f"x{index}.png")
    save_image(lesion_image(600, covid=True, size=300), root / "large.png")
    (root / "notes.txt").write_text("not an image")
    (root / "cut.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 40)
    return root


def test_predict_csv_has_the_contract_columns_and_reports_bad_files(trained_run, folder, tmp_path):
    run, _ = trained_run
    assert main(["predict", str(folder), "--run", str(run), "--csv", str(tmp_path / "out.csv")]) == 3
    table = pd.read_csv(tmp_path / "out.csv")
    table[["error", "warnings"]] = table[["error", "warnings"]].fillna("")
    assert list(table.columns) == ["path", "status", "error", "label", "threshold", "operating_point", "prevalence",
                                   "probability", "p_non-covid", "p_covid", "input_check", "input_check_reason",
                                   "input_check_score", "warnings"]
    assert len(table) == 8
    errors = table[table["status"] == "error"]
    assert sorted(errors["path"].str.rsplit("/", n=1).str[-1]) == ["cut.jpg", "notes.txt"]
    assert errors["error"].str.len().gt(0).all()
    ok = table[table["status"] == "ok"]
    assert np.allclose(ok["p_covid"] + ok["p_non-covid"], 1.0)
    assert set(ok["label"]) <= {"covid", "non-covid"}
    assert ok["warnings"].str.contains("very low resolution").sum() == 5
    contract = json.loads((run / "model.json").read_text())
    assert np.allclose(ok["threshold"], contract["threshold"])
    assert (ok["label"] == np.where(ok["p_covid"] >= contract["threshold"], "covid", "non-covid")).all()


def test_predict_json_prints_model_and_predictions(trained_run, folder, capsys):
    run, _ = trained_run
    assert main(["predict", str(folder / "large.png"), "--run", str(run), "--json"]) == 0
    output = json.loads(capsys.readouterr().out)
    assert set(output) == {"model", "predictions"} and "not for clinical use" in output["model"]["notice"].lower()
    prediction = output["predictions"][0]
    assert set(prediction) == {"path", "status", "error", "input_check", "label", "threshold", "operating_point",
                               "prevalence", "probability", "probabilities", "warnings"}
    assert prediction["status"] == "ok" and prediction["warnings"] == []


def test_python_api_predicts_paths_and_arrays_the_same(trained_run, folder):
    run, _ = trained_run
    model = covidxr.load_model(run)
    from_path = model.predict(folder / "large.png")
    from_array = model.predict(np.asarray(lesion_image(600, covid=True, size=300)))
    assert from_path["probabilities"] == pytest.approx(from_array["probabilities"])
    with pytest.raises(UsageError, match="2-D uint8"):
        model.predict(np.zeros((4, 4, 3), dtype=np.uint8))
    assert covidxr.load_model().info["run"].endswith("shipped")


def test_inverted_images_are_warned_about(trained_run):
    model = covidxr.load_model(trained_run[0])
    image = np.full((400, 400), 230, dtype=np.uint8)
    image[100:300, 100:300] = 60
    assert any("inverted" in w for w in model.predict(image)["warnings"])


def test_export_onnx_matches_pytorch_and_predict_uses_it(trained_run, folder, tmp_path, capsys):
    import shutil

    from covidxr.models.onnx_runtime import OnnxModel

    source, _ = trained_run
    run = tmp_path / "run"
    shutil.copytree(source, run)
    before = covidxr.load_model(run).predict(folder / "large.png")
    assert main(["export", "--run", str(run), "--format", "onnx"]) == 0
    assert "parity with PyTorch" in capsys.readouterr().out
    metadata = OnnxModel(run / "model.onnx").metadata
    assert json.loads(metadata["covidxr_model_json"])["weights_sha256"] == metadata["weights_sha256"]
    assert json.loads(metadata["preprocessing"])["size"] == 32
    predictor = covidxr.load_model(run)
    assert predictor.info["runtime"] == "onnxruntime"
    after = predictor.predict(folder / "large.png")
    assert after["probabilities"]["covid"] == pytest.approx(before["probabilities"]["covid"], abs=1e-5)
    import onnx

    stale = onnx.load(str(run / "model.onnx"))
    next(p for p in stale.metadata_props if p.key == "weights_sha256").value = "0" * 64
    onnx.save(stale, str(run / "model.onnx"))
    assert covidxr.load_model(run).info["runtime"] == "pytorch"
    assert main(["export", "--run", str(tmp_path / "nothing"), "--format", "onnx"]) == 2


def test_explain_command_and_api(trained_run, folder, tmp_path, capsys):
    run, _ = trained_run
    assert main(["explain", str(folder / "large.png"), "--run", str(run), "-o", str(tmp_path / "o.png"),
                 "--method", "gradcam++"]) == 0
    assert "heat inside the lungs" in capsys.readouterr().out
    from PIL import Image

    assert Image.open(tmp_path / "o.png").format == "PNG"
    result = covidxr.load_model(run).explain(folder / "large.png")
    assert result["heatmap"].shape == result["lungs"].mask.shape == (32, 32) and 0 <= result["lung_heat_share"] <= 1
    assert main(["explain", str(folder / "notes.txt"), "--run", str(run), "-o", str(tmp_path / "x.png")]) == 3


def test_explaining_a_lung_masked_model_outlines_the_lungs_it_was_shown():
    """The shipped model masks to the lungs: its explanation's lungs are the region the model saw, not a second
    segmentation of an image that is only lungs."""
    from covidxr.lungs.geometry import largest_regions
    from covidxr.lungs.segment import DARK_FILL

    model = covidxr.load_model(input_check=False)
    assert model.preprocessing.lungs == "mask"
    result = model.explain(lesion_image(2, covid=True, size=256))
    shown, _ = largest_regions(result["pixels"] > DARK_FILL)
    assert np.array_equal(result["lungs"].mask, shown) and not result["lungs"].fallback
    assert 0.05 < result["lungs"].mask.mean() < 0.95  # the lungs, not the whole square


def test_a_lung_cropping_run_is_applied_alike_by_eager_onnx_and_serve(trained_run, folder, tmp_path):
    import shutil

    from fastapi.testclient import TestClient

    from covidxr.data.imageio import read_grayscale
    from covidxr.data.preprocess import preprocess
    from covidxr.lungs import preprocessor, shipped_segmenter
    from covidxr.serving.app import create_app

    run = tmp_path / "run"
    shutil.copytree(trained_run[0], run)
    contract = json.loads((run / "model.json").read_text())
    cropping = preprocessor(covidxr.load_model(run).preprocessing.model_copy(update={"lungs": "crop"})).settings
    contract["preprocessing"].update(cropping.model_dump(mode="json"))
    (run / "model.json").write_text(json.dumps(contract))
    eager = covidxr.load_model(run)
    assert eager.preprocessing.lung_model.weights_sha256 == shipped_segmenter().weights_sha256
    gray = read_grayscale(folder / "large.png")
    assert np.array_equal(eager.steps.run(gray, "large.png").pixels,
                          preprocess(gray, eager.preprocessing, shipped_segmenter())[0])
    before = eager.predict(folder / "large.png")["probabilities"]["covid"]
    many = [folder / "large.png"] * PARALLEL_FROM
    in_workers = eager.predict_files(many, workers=2)
    assert [p.probabilities["covid"] for p in in_workers] == pytest.approx([before] * len(many), abs=1e-6)
    assert main(["export", "--run", str(run), "--format", "onnx"]) == 0
    onnx_path = covidxr.load_model(run)
    assert onnx_path.info["runtime"] == "onnxruntime"
    assert onnx_path.predict(folder / "large.png")["probabilities"]["covid"] == pytest.approx(before, abs=1e-5)
    upload = {"file": ("x.png", (folder / "large.png").read_bytes())}
    served = TestClient(create_app(run), base_url="http://127.0.0.1").post("/v1/predict", files=upload)
    assert served.json()["probabilities"]["covid"] == pytest.approx(before, abs=1e-5)
