"""The model shipped inside the package: present, consistent with its metadata, usable without a run."""

import json

import numpy as np
import pytest

import covidxr
from conftest import lesion_image
from covidxr.cli import main
from covidxr.models.shipped import MAX_BYTES, package_run
from covidxr.runs import file_sha256, shipped_run


def test_shipped_weights_match_their_metadata():
    folder = shipped_run()
    contract = json.loads((folder / "model.json").read_text())
    assert contract["weights_sha256"] == file_sha256(folder / "model.safetensors")
    assert contract["weights_dtype"] == "float16"
    assert (folder / "model.safetensors").stat().st_size <= MAX_BYTES


def test_shipped_model_card_carries_its_figures_and_the_notice():
    card = json.loads((shipped_run() / "model_card.json").read_text())
    assert card["not_for_clinical_use"] is True
    test = card["evaluations"]["internal-test"]
    assert test["auc_ci"][0] <= test["auc"] <= test["auc_ci"][1]
    assert "cohen" in test["within_source"] and test["source_only_auc"] is not None
    assert set(card["audits"]["internal"]) == {"source_predictability", "occlusion", "leave_one_site_out"}
    assert any("NC" in licence for licence in card["licences"])


def test_shipped_model_predicts_without_a_run(tmp_path, capsys):
    model = covidxr.load_model(input_check=False)  # synthetic images: the input check would refuse them
    prediction = model.predict(lesion_image(1, covid=True, size=300))
    assert prediction["label"] in {"covid", "non-covid"}
    assert np.isclose(sum(prediction["probabilities"].values()), 1.0)
    image = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(lesion_image(2, covid=False, size=300)).save(image)
    assert main(["predict", str(image), "--json", "--no-input-check"]) == 0
    assert json.loads(capsys.readouterr().out)["predictions"][0]["status"] == "ok"


def test_shipped_onnx_matches_the_weights_and_the_folder_stays_small():
    import torch

    from covidxr.models.loading import load_run
    from covidxr.models.onnx_runtime import OnnxModel
    from covidxr.predict import load_model

    folder = shipped_run()
    contract = json.loads((folder / "model.json").read_text())
    onnx_model = OnnxModel(folder / "model.onnx")
    assert onnx_model.metadata["weights_sha256"] == contract["weights_sha256"]
    assert load_model().info["runtime"] == "onnxruntime"
    assert sum(path.stat().st_size for path in folder.iterdir()) < 60 * 1024 * 1024
    size = contract["preprocessing"]["size"]
    pixels = np.stack([np.asarray(lesion_image(seed, covid=seed % 2 == 0, size=size)) for seed in range(4)])
    pixels = pixels[:, None].astype(np.float32)
    with torch.no_grad():
        expected = load_run(folder).model(torch.from_numpy(pixels)).numpy()
    assert np.abs(onnx_model.logits(pixels) - expected).max() < 1e-4


def test_packaging_a_run_stores_float16_weights_and_drops_the_previous_onnx(trained_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run[0], run)
    card = json.loads((run / "model_card.json").read_text())
    (run / "model_card.json").write_text(json.dumps({**card, "evaluations": {}, "audits": {}}))
    target = tmp_path / "shipped"
    target.mkdir()
    (target / "model.onnx").write_bytes(b"the previous model")
    package_run(run, target)
    contract = json.loads((target / "model.json").read_text())
    assert not (target / "model.onnx").exists() and contract["weights_dtype"] == "float16"
    assert contract["weights_sha256"] == file_sha256(target / "model.safetensors")
    assert covidxr.load_model(target).info["runtime"] == "pytorch"


def test_python_m_shipped_packages_an_evaluated_run_and_keeps_the_size_limit(trained_run, tmp_path, monkeypatch,
                                                                             capsys):
    import runpy
    import shutil
    import sys
    import warnings

    import pytest

    import covidxr.runs
    from covidxr.models import shipped as shipped_module
    from covidxr.runs import AuditVerdicts, CardEvaluation, RunDir

    run = tmp_path / "run"
    shutil.copytree(trained_run[0], run, ignore=shutil.ignore_patterns("checkpoints", "evaluation"))
    RunDir(run).write_card(RunDir(run).read_card().updated(evaluations=None, audits=None))
    target = tmp_path / "shipped"
    monkeypatch.setattr(covidxr.runs, "shipped_dir", lambda: target)

    def python_m(*argv: str) -> int:
        monkeypatch.setattr(sys, "argv", ["shipped.py", *argv])
        with warnings.catch_warnings(), pytest.raises(SystemExit) as exit_:
            warnings.simplefilter("ignore", RuntimeWarning)  # runpy: the module is also imported by this test
            runpy.run_module("covidxr.models.shipped", run_name="__main__")
        return exit_.value.code

    assert python_m() == 2 and "usage: python -m covidxr.models.shipped RUN" in capsys.readouterr().err
    assert python_m(str(run)) == 1
    assert "run `covidxr evaluate` and `covidxr audit` first" in capsys.readouterr().err and not target.exists()

    verdicts = AuditVerdicts(source_predictability="origin", occlusion="verdict", leave_one_site_out="sites")
    RunDir(run).update_card("evaluations", "internal-test", CardEvaluation(auc=0.9))
    RunDir(run).update_card("audits", "internal", verdicts)
    assert python_m(str(run)) == 0 and f"into {target}" in capsys.readouterr().out
    contract = json.loads((target / "model.json").read_text())
    assert contract["weights_dtype"] == "float16" and contract["shipped_from"] == "run"
    assert contract["weights_sha256"] == file_sha256(target / "model.safetensors")
    assert json.loads((target / "model_card.json").read_text())["audits"] == {"internal": verdicts.model_dump()}
    assert covidxr.load_model(target).predict(lesion_image(3, covid=True, size=64))["label"] in {"covid", "non-covid"}

    shipped_bytes = (target / "model.safetensors").read_bytes()
    from safetensors.torch import load_file, save_file

    retrained = {key: value + 1 if value.is_floating_point() else value
                 for key, value in load_file(str(run / "model.safetensors")).items()}
    save_file(retrained, str(run / "model.safetensors"))
    monkeypatch.setattr(shipped_module, "MAX_BYTES", 1000)
    assert shipped_module.main([str(run)]) == 1
    assert "bytes as float16 is over the 1,000-byte limit" in capsys.readouterr().err
    assert (target / "model.safetensors").read_bytes() == shipped_bytes, "a refused package leaves the old one"
    assert sorted(p.name for p in target.iterdir()) == ["model.json", "model.safetensors", "model_card.json"]


def test_shipped_lung_segmenter_is_small_consistent_and_evaluated():
    from covidxr.lungs import shipped_lung_model, shipped_segmenter
    from covidxr.runs import shipped_dir

    folder = shipped_lung_model()
    contract = json.loads((folder / "model.json").read_text())
    assert contract["weights_sha256"] == file_sha256(folder / "model.safetensors")
    assert contract["weights_dtype"] == "float16" and contract["input"]["size"] == 128
    teacher = contract["data"]["pseudo_labels"]["teacher"]  # distilled from a named teacher
    assert teacher["name"] != contract["name"] and len(teacher["weights_sha256"]) == 64
    assert (folder / "model.safetensors").stat().st_size <= 10 * 1024 * 1024
    assert shipped_segmenter().backend_name == "onnxruntime"  # the ONNX file records the same weights hash
    assert sum(path.stat().st_size for path in shipped_dir().rglob("*") if path.is_file()) < 60 * 1024 * 1024
    evaluation = json.loads((folder / "model_card.json").read_text())["evaluation"]
    held_out, speed = evaluation["held_out"], evaluation["speed"]
    assert held_out["dice_ci"][0] <= held_out["dice"] <= held_out["dice_ci"][1] and held_out["n_patients"] >= 20
    assert speed["input_size"] == 128 and speed["network_ms_batch_1"] > 0 and speed["n_images"] == held_out["n_images"]


def test_segment_lungs_returns_a_mask_at_the_input_size():
    image = lesion_image(3, covid=False, size=300)[:, 20:]
    mask = covidxr.segment_lungs(image)
    assert mask.shape == image.shape and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}


def test_the_shipped_model_carries_calibration_operating_points_and_its_input_check():
    from covidxr.runs import RunDir

    contract = RunDir(shipped_run()).read_contract()
    content = contract.content
    assert contract.calibration.method != "temperature" and 0 < contract.calibration.prevalence < 0.2
    assert set(contract.operating_points) == {"balanced", "high-sensitivity", "high-specificity"}
    assert content["input_check"]["figures"]["test"]["by_kind"]["other"]["rate"] >= 0.95
    card = json.loads((shipped_run() / "model_card.json").read_text())
    tested = card["evaluations"]["internal-test"]
    assert tested["ece"] <= 0.05 and tested["ece_ci"][0] <= tested["ece"] <= tested["ece_ci"][1]
    assert set(tested["operating_points"]) == set(contract.operating_points)
    assert card["calibration"]["why_this_default"].startswith(contract.default_operating_point)


def test_packaging_a_calibration_refuses_another_models_run(tmp_path):
    import shutil

    from covidxr.errors import CovidxrError
    from covidxr.models.shipped import package_calibration
    from covidxr.runs import write_json

    target = shutil.copytree(shipped_run(), tmp_path / "shipped", ignore=shutil.ignore_patterns("lungs"))
    other = shutil.copytree(shipped_run(), tmp_path / "other", ignore=shutil.ignore_patterns("lungs"))
    content = json.loads((other / "model.json").read_text())
    write_json(other / "model.json", {**content, "weights_sha256": "0" * 64})
    evaluation = tmp_path / "evaluate.json"
    write_json(evaluation, {"split": "test", "n_images": 823})
    with pytest.raises(CovidxrError, match="not the shipped model's"):
        package_calibration(other, evaluation, target)
    write_json(evaluation, {"split": "val", "n_images": 820})
    with pytest.raises(CovidxrError, match="not an evaluation of the shipped model's test split"):
        package_calibration(target, evaluation, target)


@pytest.mark.shared_data
def test_the_shipped_model_gives_severity_with_its_stated_error_for_accepted_images_only(tmp_path, capsys):
    from PIL import Image

    from conftest import shared_data_or_skip

    image = shared_data_or_skip() / "covid-chestxray-dataset" / "images" / "000001-24.jpg"
    assert main(["predict", str(image), "--json"]) == 0
    prediction = json.loads(capsys.readouterr().out)["predictions"][0]
    severity = prediction["severity"]
    assert 0 <= severity["extent"] <= 8 and 0 <= severity["opacity"] <= 6
    head = json.loads((shipped_run() / "severity.json").read_text())
    assert severity["mae"] == {"extent": round(head["extent"]["mae"], 2), "opacity": round(head["opacity"]["mae"], 2)}
    blank = tmp_path / "blank.png"
    Image.fromarray(np.zeros((300, 300), np.uint8)).save(blank)
    assert main(["predict", str(blank), "--json"]) == 3
    assert "severity" not in json.loads(capsys.readouterr().out)["predictions"][0]
