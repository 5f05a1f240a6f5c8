"""The input check: is this a frontal chest radiograph? Refused inputs get a reason and no label or probability,
in the CLI, the Python API, the HTTP API, DICOM output and the page."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import covidxr
from conftest import shared_data_or_skip
from covidxr.cli import main
from covidxr.inputcheck import shipped_input_check
from covidxr.runs.inputcheck import InputCheckModel


def tiny_model(**changes) -> InputCheckModel:
    """Two features: the first votes for `lateral`, the second for `other`; frontal wins when both are low."""
    values = dict(name="tiny", features=["a", "b"], thumbnail=16, pca_mean=[], pca_components=[],
                  scaler_mean=[0.0, 0.0], scaler_scale=[1.0, 1.0], classes=["frontal", "lateral", "ct", "other"],
                  coef=[[0.0, 0.0], [4.0, 0.0], [0.0, 0.0], [0.0, 4.0]], intercept=[2.0, 0.0, -5.0, 0.0],
                  novelty_mean=[0.0, 0.0], novelty_precision=[[1.0, 0.0], [0.0, 1.0]], score_threshold=0.5,
                  novelty_threshold=3.0, min_side=64)
    return InputCheckModel(**{**values, **changes})


@pytest.mark.parametrize("raw, lungs, side, status, reason", [
    ([0.0, 0.0], True, 224, "accepted", None),
    ([2.0, 0.0], True, 224, "refused", "not-frontal"),
    ([0.0, 2.0], True, 224, "refused", "not-a-radiograph"),
    ([0.0, 0.0], True, 40, "refused", "too-small"),
    ([0.0, 0.0], False, 224, "refused", "no-lungs-found"),
    ([-3.0, -3.0], True, 224, "refused", "not-a-radiograph"),  # frontal-like scores, but far from anything seen
])
def test_the_decision_names_one_reason(raw, lungs, side, status, reason):
    result = tiny_model().decide(np.array(raw), lungs, side)
    assert (result.status, result.reason) == (status, reason)
    assert 0 <= result.score <= 1
    assert result.words().startswith("This does not look like a frontal chest X-ray") == (status == "refused")


def photo(name: str) -> np.ndarray:
    import skimage.data

    image = getattr(skimage.data, name)()
    return np.asarray(Image.fromarray(image).convert("L"))


@pytest.mark.parametrize("name", ["chelsea", "page", "camera"])
def test_the_shipped_check_refuses_photos_and_documents_it_never_trained_on(name):
    result, _ = shipped_input_check().check(photo(name))
    assert result.status == "refused" and result.reason == "not-a-radiograph"


def test_the_shipped_check_refuses_an_all_black_image_and_a_tiny_one():
    assert shipped_input_check().check(np.zeros((400, 400), np.uint8))[0].status == "refused"
    assert shipped_input_check().check(np.full((40, 40), 128, np.uint8))[0].reason == "too-small"


@pytest.fixture(scope="module")
def rsna_images() -> list[Path]:
    folder = shared_data_or_skip() / "rsna-normal-224" / "normal_dataset"
    return sorted(folder.glob("*.jpg"))[:6]


@pytest.mark.shared_data
def test_the_shipped_check_accepts_frontal_radiographs(rsna_images):
    from covidxr.data.imageio import read_grayscale

    results = [shipped_input_check().check(read_grayscale(path))[0] for path in rsna_images]
    assert [r.status for r in results] == ["accepted"] * len(rsna_images)


@pytest.mark.shared_data
def test_reusing_the_checks_lung_mask_gives_the_same_probabilities(rsna_images):
    checked = covidxr.load_model().predict_files(rsna_images[:3])
    unchecked = covidxr.load_model(input_check=False).predict_files(rsna_images[:3])
    for a, b in zip(checked, unchecked):
        assert a.input_check.status == "accepted" and b.input_check.status == "skipped"
        assert a.probability == pytest.approx(b.probability, abs=1e-6)


@pytest.fixture
def cat_png(tmp_path) -> Path:
    path = tmp_path / "cat.png"
    Image.fromarray(photo("chelsea")).save(path)
    return path


def test_predict_on_a_cat_exits_3_says_why_and_gives_no_label(cat_png, capsys):
    assert main(["predict", str(cat_png)]) == 3
    captured = capsys.readouterr()
    assert "refused (not-a-radiograph): This does not look like a frontal chest X-ray" in captured.out
    assert "covid" not in captured.out.split(":", 1)[1]
    assert "0 predicted, 1 refused by the input check (not-a-radiograph: 1), 0 failed" in captured.err
    assert main(["predict", str(cat_png), "--json"]) == 3
    prediction = json.loads(capsys.readouterr().out)["predictions"][0]
    assert prediction["label"] is None and prediction["probabilities"] is None and prediction["probability"] is None
    assert prediction["input_check"]["status"] == "refused" and prediction["input_check"]["score"] < 0.5


def test_no_input_check_predicts_anyway_and_records_it_was_skipped(cat_png, capsys):
    assert main(["predict", str(cat_png), "--json", "--no-input-check"]) == 0
    prediction = json.loads(capsys.readouterr().out)["predictions"][0]
    assert prediction["input_check"] == {"status": "skipped", "reason": None, "score": None}
    assert prediction["label"] in {"covid", "non-covid"}


def test_the_csv_has_the_refusal_and_empty_probabilities(cat_png, tmp_path):
    out = tmp_path / "predictions.csv"
    assert main(["predict", str(cat_png), "--csv", str(out)]) == 3
    import pandas as pd

    row = pd.read_csv(out).iloc[0]
    assert row["input_check"] == "refused" and row["input_check_reason"] == "not-a-radiograph"
    assert pd.isna(row["label"]) and pd.isna(row["probability"]) and pd.isna(row["p_covid"])


def test_explain_refuses_a_cat_without_writing_an_overlay(cat_png, tmp_path, capsys):
    out = tmp_path / "overlay.png"
    assert main(["explain", str(cat_png), "-o", str(out)]) == 3
    assert "refused (not-a-radiograph)" in capsys.readouterr().out and not out.exists()


def test_the_api_answers_a_refusal_with_200_and_explain_with_422(cat_png):
    from covidxr.serving.app import create_app

    client = TestClient(create_app(), base_url="http://127.0.0.1", raise_server_exceptions=False)
    with open(cat_png, "rb") as handle:
        content = handle.read()
    answer = client.post("/v1/predict", files={"file": ("cat.png", content)})
    assert answer.status_code == 200
    body = answer.json()
    assert body["input_check"]["reason"] == "not-a-radiograph" and body["label"] is None
    assert body["probabilities"] is None
    explained = client.post("/v1/explain", files={"file": ("cat.png", content)})
    assert explained.status_code == 422 and explained.json()["error"]["code"] == "input_refused"


def test_dicom_out_writes_nothing_for_a_refused_dicom_and_says_why(tmp_path, capsys):
    from conftest import write_radiograph

    source = write_radiograph(tmp_path / "in" / "cat.dcm", photo("chelsea"))
    out = tmp_path / "dicom-out"
    assert main(["predict", str(source), "--dicom-out", str(out)]) == 3
    assert not out.exists() or not list(out.iterdir())
    captured = capsys.readouterr()
    assert "cat.dcm: refused by the input check (not-a-radiograph): no DICOM output" in captured.out
    assert "0 written" in captured.err and "1 refused by the input check" in captured.err


def test_the_page_shows_the_refusal_in_words(cat_png):
    from playwright.sync_api import sync_playwright

    from conftest import CHROMIUM_FLAGS, chromium_or_skip, served_on_loopback
    from covidxr.serving.app import create_app

    chromium = chromium_or_skip()
    errors = []
    with served_on_loopback(create_app()) as port, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"http://127.0.0.1:{port}/")
        page.set_input_files("#file", str(cat_png))
        page.wait_for_selector("#decision.refused", timeout=60_000)
        decision, threshold, bars = (page.inner_text(s) for s in ("#decision", "#threshold", "#bars"))
        browser.close()
    assert errors == []
    assert decision.startswith("This does not look like a frontal chest X-ray: it does not look like a radiograph")
    assert "No label and no probability" in threshold and bars == ""
