"""`covidxr compare` on tiny synthetic data: one split for every recipe, out-of-fold figures over all patients."""

import json

import numpy as np
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from conftest import tiny_recipe_overrides
from covidxr.cli import main
from covidxr.data import load_manifest
from covidxr.errors import UsageError
from covidxr.evaluation import compare as compare_module
from covidxr.evaluation.compare import compare, load_recipes, within_source_name
from covidxr.metrics import PatientBootstrap, auc_or_none
from covidxr.reporting.comparison import write_comparison

FAST = tiny_recipe_overrides(plain=False, **{"trainer.max_epochs": "1"})  # each recipe keeps its mitigations


@pytest.fixture(scope="module")
def compared(tmp_path_factory, training_manifest):
    folder = tmp_path_factory.mktemp("compare")
    variant = folder / "harmonised.yaml"
    variant.write_text(yaml.safe_dump({"model": {"name": "covidxr_cnn"},
                                       "harmonisation": {"jpeg_p": 0.5, "rescale_p": 0.5},
                                       "optimisation": {"class_balance": "source-label"}}))
    entries = compare(["default", variant], training_manifest, folder / "out", FAST, folds=2,
                      cache_root=folder / "cache", bootstrap=PatientBootstrap(200))
    write_comparison(entries, folder / "out")
    argv = ["compare", "default", str(variant), "--data", str(training_manifest), "--folds", "2",
            "--cache", str(folder / "cache"), "-o", str(folder / "out")] + sum((["--set", s] for s in FAST), [])
    return folder / "out", argv


def test_compare_writes_one_entry_per_recipe_with_every_figure_and_its_ci(compared, training_manifest, capsys):
    out, _ = compared
    entries = json.loads((out / "compare.json").read_text())
    assert [e["recipe"] for e in entries] == ["default", "harmonised"]
    manifest = load_manifest(training_manifest)
    site_a_patients = manifest.loc[manifest["source"] == "site-a", "patient_id"].nunique()
    for entry in entries:
        assert {"recipe", "auc", "auc_ci", "within_source", "oof_within_source_auc", "oof_within_source_auc_ci",
                "lungs_hidden_auc", "origin_auc", "train_seconds"} <= set(entry)
        assert entry["test_images"] == int((manifest["split"] == "test").sum())
        assert entry["oof_source"] == "site-a" and entry["oof_patients"] == site_a_patients
        for key in ("auc", "oof_within_source_auc", "lungs_hidden_auc", "origin_auc"):
            low, high = entry[f"{key}_ci"]
            assert 0 <= low <= entry[key] <= high <= 1, key
        assert set(entry["within_source"]) == {"site-a", "site-b"} and entry["train_seconds"] > 0
        cv = json.loads((out / entry["recipe"] / "run" / "evaluation" / "cv.json").read_text())
        assert cv["n_images"] == len(manifest) and cv["splits"] == "train, val and test"
        assert cv["pooled_out_of_fold_within_source"]["site-a"]["auc"] == entry["oof_within_source_auc"]
    contract = json.loads((out / "harmonised" / "run" / "model.json").read_text())
    assert contract["training"]["harmonisation"]["jpeg_p"] == 0.5
    page = (out / "compare.html").read_text()
    assert "not for clinical use" in page.lower() and "data:image/png;base64" in page
    assert "pooled out-of-fold within site-a" in page and "harmonised" in page


def test_a_finished_recipe_is_not_trained_again(compared, monkeypatch, capsys):
    out, argv = compared
    monkeypatch.setattr(compare_module, "train", lambda *a, **k: pytest.fail("trained again"))
    before = (out / "compare.json").read_text()
    assert main(argv) == 0
    assert (out / "compare.json").read_text() == before
    assert "harmonised" in capsys.readouterr().out


def test_recipes_that_cannot_share_a_split_are_usage_errors(tmp_path, training_manifest):
    with pytest.raises(UsageError, match="given twice"):
        load_recipes(["default", "default"], [])
    with pytest.raises(UsageError, match="data.balance"):
        load_recipes(["default", "demo"], [])
    other_task = tmp_path / "three.yaml"
    other_task.write_text("task: three-class\n")
    with pytest.raises(UsageError, match="different tasks"):
        load_recipes(["default", other_task], [])
    manifest = load_manifest(training_manifest)
    assert within_source_name(manifest, "binary", None) == "site-a"
    with pytest.raises(UsageError, match="site-a, site-b"):
        within_source_name(manifest, "binary", "cohen")
    with pytest.raises(UsageError, match="unfinished"):
        (tmp_path / "out" / "default").mkdir(parents=True)
        (tmp_path / "out" / "default" / "partial").write_text("")
        compare(["default"], training_manifest, tmp_path / "out", FAST, folds=2, cache_root=tmp_path / "cache")


def test_the_rank_auc_equals_scikit_learn_with_ties():
    rng = np.random.default_rng(1)
    truth, scores = rng.random(400) < 0.3, np.round(rng.random(400), 1)
    assert auc_or_none(truth, scores) == pytest.approx(roc_auc_score(truth, scores))
    assert auc_or_none(np.zeros(5, bool), scores[:5]) is None


def test_evaluate_and_the_report_show_within_source_figures_and_the_out_of_fold_one(compared, tmp_path, capsys):
    from covidxr.reporting.report import write_report

    out, argv = compared
    run, cache = out / "default" / "run", argv[argv.index("--cache") + 1]
    assert main(["evaluate", "--run", str(run), "--cache", cache]) == 0
    lines = capsys.readouterr().out.splitlines()
    headline = next(i for i, line in enumerate(lines) if line.startswith("model AUC"))
    assert lines[headline + 1].startswith("within site-a (test):")
    assert any(line.startswith("within site-a, pooled out of fold (2-fold cross-validation over train, val and test")
               for line in lines[headline + 1:headline + 5])
    page = write_report(run, tmp_path / "report.html", cache).read_text()
    top = page[:page.index("<h2>Data</h2>")]
    assert "within site-b (test)" in top and "within site-a, pooled out of fold" in top


def test_within_source_lines_say_when_no_source_holds_both_classes():
    from covidxr.evaluation.metrics import within_source_lines

    assert "cannot be measured" in within_source_lines({"split": "test", "within_source": {}})[0]
