"""External validation hygiene: test-only builds, overlap with a training set, the overlap in `evaluate`."""

import json
import shutil

import pytest
from PIL import Image

from conftest import lesion_image, save_image
from covidxr.cli import main
from covidxr.data import import_folders, load_manifest, save_manifest
from covidxr.data.overlap import overlap_with_training, training_part


def _external(tmp_path, training_manifest) -> tuple:
    """An 'external' manifest: a copy of a training file, a re-encoded training image, a fresh image given a
    training patient's id, a copy of a training-manifest *test* file, and two fresh images."""
    training = load_manifest(training_manifest)
    train_rows = training[training["split"] == "train"]
    covid_train = train_rows[train_rows["label"] == "covid"]
    test_row = training[training["split"] == "test"].iloc[0]
    root = tmp_path / "external"
    (root / "covid").mkdir(parents=True)
    (root / "normal").mkdir(parents=True)
    shutil.copy(covid_train["path"].iloc[0], root / "covid" / "copy.png")
    Image.open(covid_train["path"].iloc[1]).save(root / "covid" / "near.jpg", quality=90)
    shutil.copy(test_row["path"], root / test_row["path"].split("/")[-2] / "copy-of-test.png")
    save_image(lesion_image(900, True), root / "covid" / "same-patient.png")
    save_image(lesion_image(901, True), root / "covid" / "fresh.png")
    save_image(lesion_image(902, False), root / "normal" / "fresh.png")
    manifest = import_folders(root, source="external").manifest
    same_patient = manifest["path"].str.endswith("same-patient.png")
    manifest.loc[same_patient, "patient_id"] = covid_train["patient_id"].iloc[2]
    return save_manifest(manifest, tmp_path / "external.csv"), covid_train


def test_overlap_names_shared_files_near_duplicates_and_patients_with_train_and_val_only(tmp_path, training_manifest):
    external, covid_train = _external(tmp_path, training_manifest)
    training, described = training_part(load_manifest(training_manifest))
    assert set(training["split"]) == {"train", "val"} and "train and val rows" in described
    report = overlap_with_training(load_manifest(external), training, described)
    found = {(row.path.split("/")[-1], row.kind) for row in report.rows.itertuples()}
    assert found == {("copy.png", "same file"), ("near.jpg", "near-duplicate"), ("same-patient.png", "same patient")}
    assert report.counts() == {"same_file": 1, "near_duplicate": 1, "same_patient": 1, "rows": 3}
    example = report.rows.set_index("kind").loc["same file", "training_example"]
    assert example == covid_train["path"].iloc[0]


def test_data_check_against_exits_1_on_overlap_and_0_on_a_clean_set(tmp_path, training_manifest, capsys):
    external, _ = _external(tmp_path, training_manifest)
    assert main(["data", "check", str(external), "--against", str(training_manifest)]) == 1
    out = capsys.readouterr().out
    assert "3 evaluation row(s)" in out and "same file 1, near-duplicate 1, same patient 1" in out
    assert "near.jpg" in out and "copy-of-test" not in out
    clean = load_manifest(external)
    clean = clean[clean["path"].str.contains("fresh|copy-of-test")]
    save_manifest(clean, tmp_path / "clean.csv")
    assert main(["data", "check", str(tmp_path / "clean.csv"), "--against", str(training_manifest)]) == 0
    assert ": none" in capsys.readouterr().out


def test_build_a_test_only_set_and_refuse_folds_on_it(tmp_path, training_manifest, capsys):
    external, _ = _external(tmp_path, training_manifest)
    out = tmp_path / "external-built.csv"
    assert main(["data", "build", str(external), "--task", "binary", "--split", "0,0,1", "-o", str(out)]) == 0
    built = load_manifest(out)
    assert len(built) == 6 and set(built["split"]) == {"test"} and built["fold"].isna().all()
    assert set(built["label"]) == {"covid", "non-covid"} and (built["dup_group"] != "").all()
    capsys.readouterr()
    assert main(["data", "build", str(external), "--task", "binary", "--split", "0,0,1", "--folds", "2",
                 "-o", str(tmp_path / "x.csv")]) == 2
    assert "test-only" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:
        main(["data", "build", str(external), "--task", "binary", "--split", "0,0.5,0.5", "-o", str(tmp_path / "x")])
    assert refused.value.code == 2 and "0,0,1: a test-only set" in capsys.readouterr().err


@pytest.mark.parametrize("as_json", [False, True])
def test_evaluate_on_other_data_reports_the_overlap_before_any_figure(trained_run, tmp_path, training_manifest,
                                                                      capsys, as_json):
    run, cache = trained_run
    external, _ = _external(tmp_path, training_manifest)
    argv = ["evaluate", "--run", str(run), "--data", str(external), "--cache", str(cache)]
    assert main(argv + (["--json"] if as_json else [])) == 0
    out = capsys.readouterr().out
    if as_json:
        overlap = json.loads(out)["overlap_with_training"]
        assert overlap["rows"] == 3 and overlap["same_file"] == 1 and len(overlap["examples"]) == 3
    else:
        lines = out.splitlines()
        assert lines[0].startswith("OVERLAP with training (the run's train and val rows")
        assert "near-duplicate 1" in lines[0] and "model AUC" in lines[2]
