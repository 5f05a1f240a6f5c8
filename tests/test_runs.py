"""The run directory and the inference contract (covidxr.runs) and the fixed image regions."""

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy.special import softmax

from covidxr.data.regions import border_mask, lung_field_box
from covidxr.errors import CovidxrError, UsageError
from covidxr.runs import (
    FORMAT_VERSION,
    SCHEMAS,
    AuditVerdicts,
    CardEvaluation,
    CrossValidationResult,
    LungModelCard,
    LungModelContract,
    ModelCard,
    RunDir,
    default_cache_root,
    file_sha256,
    predicted_classes,
    shipped_dir,
    shipped_run,
    softmax_with_temperature,
    write_json,
)
from covidxr.runs import rundir as rundir_module

CONTRACT = {"architecture": {"name": "resnet18", "kwargs": {}}, "classes": ["non-covid", "covid"],
            "positive_class": "covid", "preprocessing": {"size": 32}, "threshold": 0.4, "threshold_rule": "youden",
            "temperature": 1.5, "weights_sha256": "0" * 64}


def finished_run(root, **changes):
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.safetensors").write_bytes(b"weights")
    write_json(root / "model.json", {**CONTRACT, "weights_sha256": file_sha256(root / "model.safetensors"),
                                     **changes})
    return RunDir(root)


def test_softmax_with_temperature_matches_scipy_and_flattens_with_a_higher_temperature():
    logits = np.array([[2.0, -1.0, 0.5], [1000.0, 999.0, -1000.0]])
    for temperature in (0.5, 1.0, 3.0):
        assert np.allclose(softmax_with_temperature(logits, temperature), softmax(logits / temperature, axis=1))
    assert softmax_with_temperature(logits, 3.0)[0].max() < softmax_with_temperature(logits, 1.0)[0].max()
    with pytest.raises(UsageError, match="temperature 0"):
        softmax_with_temperature(logits, 0)


def test_predicted_classes_binary_follow_the_threshold_on_the_positive_class():
    probabilities = np.array([[0.7, 0.3], [0.6, 0.4], [0.2, 0.8]])
    labels = predicted_classes(probabilities, ["non-covid", "covid"], "covid", 0.4)
    assert labels.tolist() == ["non-covid", "covid", "covid"]
    flipped = predicted_classes(probabilities, ["non-covid", "covid"], "non-covid", 0.65)
    assert flipped.tolist() == ["non-covid", "covid", "covid"]


def test_predicted_classes_three_class_call_the_positive_class_at_the_threshold_else_the_likeliest_other():
    classes = ["normal", "pneumonia", "covid"]
    probabilities = np.array([[0.5, 0.2, 0.3], [0.1, 0.45, 0.45], [0.2, 0.3, 0.5], [0.05, 0.15, 0.8]])
    assert predicted_classes(probabilities, classes, "covid", 0.6).tolist() == \
        ["normal", "pneumonia", "pneumonia", "covid"]
    assert predicted_classes(probabilities, classes, "covid", 0.25).tolist() == ["covid", "covid", "covid", "covid"]


def test_predicted_classes_reject_a_positive_class_or_a_shape_that_does_not_fit():
    with pytest.raises(UsageError, match="'covid'.*'normal', 'other'"):
        predicted_classes(np.full((1, 2), 0.5), ["normal", "other"], "covid", 0.5)
    with pytest.raises(UsageError, match=r"\(images, 3\)"):
        predicted_classes(np.full((2, 2), 0.5), ["normal", "pneumonia", "covid"], "covid", 0.5)


def test_a_run_directory_names_its_files(tmp_path):
    run = RunDir(str(tmp_path))
    assert run.model_json == tmp_path / "model.json" and run.weights == tmp_path / "model.safetensors"
    assert run.model_card.name == "model_card.json" and run.onnx.name == "model.onnx"
    assert run.manifest.name == "manifest.csv" and run.config.name == "config.yaml"
    assert run.checkpoints == tmp_path / "checkpoints" and run.evaluation == tmp_path / "evaluation"
    assert not run.is_finished() and not run.is_shipped


def test_the_contract_is_read_with_its_positive_class_and_checked(tmp_path):
    run = finished_run(tmp_path / "run", classes=["normal", "pneumonia", "covid"], positive_class="pneumonia")
    contract = run.read_contract()
    assert (contract.positive_class, contract.positive_index) == ("pneumonia", 1)
    assert contract.threshold == 0.4 and contract.temperature == 1.5 and contract.image_size == 32
    run.check_weights(contract)
    (run.weights).write_bytes(b"other weights")
    with pytest.raises(CovidxrError, match="model.safetensors: its sha256 differs"):
        run.check_weights(contract)


@pytest.mark.parametrize("content, message", [
    ("{not json", "model.json: not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    (json.dumps({k: v for k, v in CONTRACT.items() if k != "positive_class"}), "lacks positive_class"),
    (json.dumps({**CONTRACT, "positive_class": "flu"}), "positive_class 'flu' is not one of the classes"),
    (json.dumps({**CONTRACT, "threshold": "high"}), r"wrong type for threshold \(str\)"),
    (json.dumps({**CONTRACT, "temperature": 0}), "temperature 0 must be above 0"),
    (json.dumps({**CONTRACT, "threshold": 1.5}), r"threshold 1.5 is not a probability"),
])
def test_a_malformed_model_json_is_an_error_naming_the_file_and_the_problem(tmp_path, content, message):
    run = finished_run(tmp_path / "run")
    run.model_json.write_text(content)
    with pytest.raises(CovidxrError, match=message) as caught:
        run.read_contract()
    assert str(run.model_json) in str(caught.value)


def test_an_unfinished_run_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="not a finished run"):
        RunDir(tmp_path).read_contract()


def test_update_card_changes_one_entry_and_keeps_the_rest(tmp_path):
    run = finished_run(tmp_path / "run")
    shutil.copy(shipped_dir() / "model_card.json", run.model_card)
    before = run.read_card()
    verdicts = AuditVerdicts(source_predictability="origin", occlusion="fine", leave_one_site_out="n/a")
    assert run.update_card("evaluations", "other-all", CardEvaluation(auc=0.7, n_images=12))
    assert run.update_card("audits", "external", verdicts)
    written = json.loads(run.model_card.read_text())
    assert list(written)[0] == "format_version" and written["format_version"] == 1
    assert written["evaluations"] == {**before.to_json()["evaluations"], "other-all": {"n_images": 12, "auc": 0.7}}
    assert written["audits"] == {**before.to_json()["audits"], "external": verdicts.model_dump()}
    assert {k: v for k, v in written.items() if k not in ("evaluations", "audits")} == \
        {k: v for k, v in before.to_json().items() if k not in ("evaluations", "audits")}
    assert not RunDir(tmp_path / "no-card").update_card("audits", "internal", verdicts)


def test_the_shipped_model_is_not_written_to_and_evaluates_into_the_working_folder(tmp_path, monkeypatch):
    shipped = tmp_path / "package" / "shipped"
    finished_run(shipped)
    shutil.copy(shipped_dir() / "model_card.json", shipped / "model_card.json")
    monkeypatch.setattr(rundir_module, "shipped_dir", lambda: shipped)
    monkeypatch.chdir(tmp_path)
    run = RunDir(shipped_run())
    assert run.is_shipped and run.evaluation == tmp_path / "evaluation-shipped-model"
    assert not run.update_card("evaluations", "x-all", CardEvaluation(auc=0.5))
    assert run.model_card.read_bytes() == (shipped_dir() / "model_card.json").read_bytes()
    shutil.rmtree(shipped)
    with pytest.raises(UsageError, match="run: no model is shipped.*give a run directory"):
        shipped_run()


def test_the_package_ships_a_model_whose_contract_reads(tmp_path):
    contract = RunDir(shipped_dir()).read_contract()
    assert contract.positive_class == "covid" and contract.classes == ["non-covid", "covid"]


def test_file_sha256_and_the_default_cache_root(tmp_path, monkeypatch):
    path = tmp_path / "blob"
    path.write_bytes(b"x" * 3_000_000)
    assert file_sha256(path) == hashlib.sha256(b"x" * 3_000_000).hexdigest()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache-home"))
    assert default_cache_root() == tmp_path / "cache-home" / "covidxr" / "pixels"


def test_the_lung_field_and_border_regions():
    assert lung_field_box(100) == (12, 82, 12, 88) and lung_field_box(50) == (6, 41, 6, 44)
    border = border_mask(100)
    assert border[0, 50] and border[99, 99] and not border[50, 50] and border.sum() == 100 * 100 - 80 * 80
    assert border_mask(4).sum() == 12


def test_predictions_follow_the_positive_class_model_json_names(trained_run, tmp_path):
    import covidxr
    from conftest import lesion_image

    run, _ = trained_run
    images = [lesion_image(700 + index, covid=index % 2 == 0, size=64) for index in range(8)]

    def temperature_only(positive_class: str, threshold: float) -> Path:
        """A copy of the run calibrated by its temperature alone (a Platt intercept belongs to the class it was
        fitted for), naming `positive_class` with `threshold`."""
        copy = shutil.copytree(run, tmp_path / positive_class, ignore=shutil.ignore_patterns("checkpoints"))
        content = json.loads((copy / "model.json").read_text())
        temperature = RunDir(run).read_contract().calibration.temperature
        for key in ("calibration", "operating_points", "default_operating_point"):
            content.pop(key)
        write_json(copy / "model.json", {**content, "temperature": temperature, "positive_class": positive_class,
                                         "threshold": threshold})
        return copy

    covid_model = covidxr.load_model(temperature_only("covid", 0.5))
    before = [covid_model.predict(image) for image in images]
    negative = np.array([p["probabilities"]["non-covid"] for p in before])
    threshold = float(np.median(negative))
    flipped = covidxr.load_model(temperature_only("non-covid", threshold))
    after = [flipped.predict(image) for image in images]
    for flipped_prediction, prediction in zip(after, before):
        assert flipped_prediction["probabilities"] == pytest.approx(prediction["probabilities"], abs=1e-12)
    assert [p["probability"] for p in after] == pytest.approx(negative.tolist(), abs=1e-12)
    expected = np.where(negative >= threshold, "non-covid", "covid").tolist()
    assert [p["label"] for p in after] == expected and set(expected) == {"covid", "non-covid"}


def test_a_model_json_of_the_previous_format_loads_and_predicts(tmp_path):
    """tests/data/model-format-1.json is the shipped model.json as written before calibrations were recorded
    (git a99759f): format 1; its weights and lung segmenter are replaced by today's shipped ones."""
    import covidxr
    from conftest import lesion_image

    old = json.loads((Path(__file__).parent / "data" / "model-format-1.json").read_text())
    assert old["format_version"] == 1 and "calibration" not in old and "operating_points" not in old
    today = RunDir(shipped_dir()).read_contract()
    old = {**old, "weights_sha256": today.weights_sha256,
           "preprocessing": {**old["preprocessing"], "lung_model": today.preprocessing["lung_model"]}}
    run = RunDir(shutil.copytree(shipped_dir(), tmp_path / "old", ignore=shutil.ignore_patterns("lungs", "severity*")))
    write_json(run.model_json, old)
    contract = run.read_contract()
    run.check_weights(contract)
    assert contract.format_version == FORMAT_VERSION == 2 and contract.default_operating_point == "recorded"
    assert contract.calibration.method == "temperature" and contract.calibration.temperature == old["temperature"]
    assert contract.operating_points["recorded"].threshold == old["threshold"]
    assert contract.content == {**old, "format_version": 2, "calibration": {"method": "temperature",
                                "temperature": old["temperature"]}, "default_operating_point": "recorded",
                                "operating_points": {"recorded": {"threshold": old["threshold"],
                                                                  "rule": old["threshold_rule"]}}}
    prediction = covidxr.load_model(run.root, input_check=False).predict(lesion_image(1, covid=True, size=96))
    probability = prediction["probabilities"]["covid"]
    assert prediction["operating_point"] == "recorded" and prediction["threshold"] == old["threshold"]
    assert prediction["label"] == ("covid" if probability >= old["threshold"] else "non-covid")


def test_the_shipped_contracts_round_trip_through_their_schemas():
    shipped = json.loads((shipped_dir() / "model.json").read_text())
    assert RunDir(shipped_dir()).read_contract().content == {**shipped, "format_version": FORMAT_VERSION}
    lungs = json.loads((shipped_dir() / "lungs" / "model.json").read_text())
    contract = LungModelContract.parse(lungs, "lungs")
    assert contract.content == lungs and contract.size == lungs["input"]["size"]
    with pytest.raises(CovidxrError, match=r"^lungs/model.json: lacks input \(LungModelContract needs"):
        LungModelContract.parse({k: v for k, v in lungs.items() if k != "input"}, "lungs/model.json")


def test_an_updated_contract_keeps_the_rest_and_is_checked_as_a_reader_would():
    contract = RunDir(shipped_dir()).read_contract()
    updated = contract.updated(threshold=0.25, shipped_from="elsewhere")
    assert updated.threshold == 0.25 and updated.content["shipped_from"] == "elsewhere"
    assert updated.content == {**contract.content, "threshold": 0.25, "shipped_from": "elsewhere"}
    assert contract.threshold != 0.25  # the original is unchanged
    with pytest.raises(CovidxrError, match="model.json with new threshold: threshold 2 is not a probability"):
        contract.updated(threshold=2.0)


WRITTEN_FILES = [  # (schema, file): the shipped cards as committed before format_version existed (git c9a5b4a), the
    # shipped card before calibrations were recorded (its operating point carries a temperature) and a cv.json of
    # `covidxr compare` on the tests' data, all written before format_version existed
    (ModelCard, Path(__file__).parent / "data" / "model-card-before-format-version.json"),
    (LungModelCard, Path(__file__).parent / "data" / "lung-model-card-before-format-version.json"),
    (ModelCard, Path(__file__).parent / "data" / "model-card-before-calibration.json"),
    (CrossValidationResult, Path(__file__).parent / "data" / "cv-before-format-version.json"),
]


@pytest.mark.parametrize(("schema", "path"), WRITTEN_FILES,
                         ids=[str(path.relative_to(path.parents[1])) for _, path in WRITTEN_FILES])
def test_cards_and_cv_written_before_format_version_round_trip_through_their_schemas(schema, path):
    content = json.loads(path.read_text())
    assert "format_version" not in content
    parsed = schema.parse(content, path)
    assert parsed.format_version == 1  # a file without one reads as format 1
    assert parsed.to_json() == {"format_version": 1, **content} and list(parsed.to_json())[0] == "format_version"
    assert schema.parse(parsed.to_json(), path) == parsed
    assert schema.parse(content, path).model_dump(mode="json", exclude_unset=True) == content


def test_a_shipped_card_states_it_is_not_for_clinical_use():
    for card in (RunDir(shipped_dir()).read_card(),
                 LungModelCard.parse(json.loads((shipped_dir() / "lungs" / "model_card.json").read_text()), "lungs")):
        assert card.not_for_clinical_use is True and "not for clinical use" in card.intended_use.lower()


@pytest.mark.parametrize(("change", "problem"), [
    ({"evaluation": {}}, r"evaluation: Extra inputs are not permitted"),
    ({"not_for_clinical_use": False}, r"not_for_clinical_use: Input should be True"),
    ({"format_version": 2}, r"format_version: Input should be 1"),
    ({"validation": {"split": "val", "images": "many", "auc_covid_vs_rest": 0.8, "note": ""}},
     r"wrong type for validation.images \(str\)"),
    ({"model": None}, r"wrong type for model \(NoneType\)"),
])
def test_a_malformed_model_card_names_the_file_and_the_bad_key(tmp_path, change, problem):
    run = finished_run(tmp_path / "run")
    write_json(run.model_card, {**json.loads((shipped_dir() / "model_card.json").read_text()), **change})
    with pytest.raises(CovidxrError, match=rf"^{re.escape(str(run.model_card))}: {problem}"):
        run.read_card()


def test_a_card_without_a_section_names_it_and_a_malformed_cv_json_names_the_file_and_key(tmp_path):
    from covidxr.evaluation.crossval import read_cv

    card = json.loads((shipped_dir() / "lungs" / "model_card.json").read_text())
    with pytest.raises(CovidxrError, match=r"^lungs/model_card.json: lacks evaluation \(LungModelCard needs"):
        LungModelCard.parse({k: v for k, v in card.items() if k != "evaluation"}, "lungs/model_card.json")
    cv = json.loads((Path(__file__).parent / "data" / "cv-before-format-version.json").read_text())
    assert read_cv(tmp_path) is None
    write_json(tmp_path / "cv.json", {**cv, "pooled_out_of_fold_auc": "high"})
    with pytest.raises(CovidxrError, match=rf"^{re.escape(str(tmp_path / 'cv.json'))}: wrong type for "
                                           r"pooled_out_of_fold_auc \(str\)"):
        read_cv(tmp_path)
    write_json(tmp_path / "cv.json", {**cv, "folds": [{**cv["folds"][0], "aucc": 1.0}]})
    with pytest.raises(CovidxrError, match=r"cv.json: folds.0.aucc: Extra inputs are not permitted"):
        read_cv(tmp_path)
    write_json(tmp_path / "cv.json", cv)
    assert read_cv(tmp_path).pooled_out_of_fold_within_source["site-a"].n_images == 48


def test_the_json_schemas_in_the_docs_are_the_ones_the_code_checks():
    """docs/schemas/*.json are generated (`python docs/schemas/generate.py`); they may not drift from the classes."""
    folder = Path(__file__).parents[1] / "docs" / "schemas"
    assert {path.stem for path in folder.glob("*.json")} == set(SCHEMAS)
    for name, schema in SCHEMAS.items():
        assert json.loads((folder / f"{name}.json").read_text()) == schema.model_json_schema(), \
            f"docs/schemas/{name}.json differs from {schema.__name__}: run python docs/schemas/generate.py"
