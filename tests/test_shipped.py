"""The model shipped inside the package: present, consistent with its metadata, usable without a run."""

import json

import numpy as np

import covidxr
from conftest import lesion_image
from covidxr.cli import main
from covidxr.models.shipped import MAX_BYTES
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
    model = covidxr.load_model()
    prediction = model.predict(lesion_image(1, covid=True, size=300))
    assert prediction["label"] in {"covid", "non-covid"}
    assert np.isclose(sum(prediction["probabilities"].values()), 1.0)
    image = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(lesion_image(2, covid=False, size=300)).save(image)
    assert main(["predict", str(image), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["predictions"][0]["status"] == "ok"


def test_shipped_lung_segmenter_is_small_consistent_and_evaluated():
    from covidxr.lungs import shipped_lung_model, shipped_segmenter
    from covidxr.runs import shipped_dir

    folder = shipped_lung_model()
    contract = json.loads((folder / "model.json").read_text())
    assert contract["weights_sha256"] == file_sha256(folder / "model.safetensors")
    assert contract["weights_dtype"] == "float16" and contract["pretrained"]["source"] == "imagenet"
    assert (folder / "model.safetensors").stat().st_size <= 10 * 1024 * 1024
    assert shipped_segmenter().backend_name == "onnxruntime"  # the ONNX file records the same weights hash
    assert sum(path.stat().st_size for path in shipped_dir().rglob("*") if path.is_file()) < 60 * 1024 * 1024
    held_out = json.loads((folder / "model_card.json").read_text())["evaluation"]["held_out"]
    assert held_out["dice_ci"][0] <= held_out["dice"] <= held_out["dice_ci"][1] and held_out["n_patients"] >= 20


def test_segment_lungs_returns_a_mask_at_the_input_size():
    image = lesion_image(3, covid=False, size=300)[:, 20:]
    mask = covidxr.segment_lungs(image)
    assert mask.shape == image.shape and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
