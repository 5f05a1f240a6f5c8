"""Metrics against scikit-learn, the patient-level bootstrap, calibration, thresholds, the source-only
baseline and within-source figures, and `evaluate` on a tiny trained run."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

from conftest import CHROMIUM_FLAGS, chromium_or_skip, tiny_recipe_overrides
from covidxr.cli import main
from covidxr.evaluation.evaluate import source_only
from covidxr.metrics import (
    PatientBootstrap,
    at_prevalence,
    binary_metrics,
    confusion,
    expected_calibration_error,
    metrics_with_intervals,
)
from covidxr.runs import softmax_with_temperature
from covidxr.training.calibration import fit_temperature, operating_threshold

RNG = np.random.default_rng(0)
TRUTH = RNG.random(300) < 0.3
SCORES = np.clip(TRUTH * 0.3 + RNG.random(300) * 0.7, 0, 1)


def test_binary_metrics_match_scikit_learn():
    figures = binary_metrics(TRUTH, SCORES, 0.5)
    called = SCORES >= 0.5
    assert figures["auc"] == pytest.approx(roc_auc_score(TRUTH, SCORES))
    assert figures["accuracy"] == pytest.approx(accuracy_score(TRUTH, called))
    assert figures["sensitivity"] == pytest.approx(recall_score(TRUTH, called))
    assert figures["specificity"] == pytest.approx(recall_score(~TRUTH, ~called))
    assert figures["ppv"] == pytest.approx(precision_score(TRUTH, called))
    assert figures["f1"] == pytest.approx(f1_score(TRUTH, called))
    (tn, fp), (fn, tp) = confusion(TRUTH, SCORES, 0.5)
    assert tp == np.sum(called & TRUTH) and tn == np.sum(~called & ~TRUTH) and fp + fn + tp + tn == 300


def test_undefined_metrics_are_none_and_json_has_null():
    figures = binary_metrics(np.zeros(10, bool), np.linspace(0, 1, 10), 2.0)
    assert figures["auc"] is None and figures["sensitivity"] is None and figures["ppv"] is None
    assert figures["specificity"] == 1.0
    assert "NaN" not in json.dumps(figures) and "null" in json.dumps(figures)


def test_bootstrap_moves_a_patients_images_together():
    patients = pd.Series(["a"] * 5 + ["b"] * 3 + ["c"])
    for rows in PatientBootstrap(resamples=50, seed=1).rows(patients):
        counts = pd.Series(patients[rows]).value_counts()
        assert all(counts.get(p, 0) % n == 0 for p, n in (("a", 5), ("b", 3)))


def test_intervals_cover_the_point_and_widen_when_images_cluster_in_patients():
    per_image = pd.Series(range(300))
    clustered = pd.Series(np.repeat(np.arange(30), 10))
    truth = np.repeat(RNG.random(30) < 0.4, 10)
    scores = np.clip(truth * 0.25 + np.repeat(RNG.random(30), 10) * 0.75, 0, 1)
    wide = metrics_with_intervals(truth, scores, clustered, 0.5, PatientBootstrap(300))
    narrow = metrics_with_intervals(truth, scores, per_image, 0.5, PatientBootstrap(300))
    assert wide["auc_ci"][0] <= wide["auc"] <= wide["auc_ci"][1]
    assert wide["auc_ci"][1] - wide["auc_ci"][0] > 1.5 * (narrow["auc_ci"][1] - narrow["auc_ci"][0])


def test_an_interval_undefined_in_most_resamples_is_null():
    truth = np.zeros(51, dtype=bool)
    truth[0] = True
    scores = np.linspace(0, 1, 51)
    intervals = PatientBootstrap(200).intervals(lambda r: binary_metrics(truth[r], scores[r], 0.5),
                                                pd.Series(range(51)))
    assert intervals["auc"] is not None, "one positive patient: defined in about 64% of resamples"
    negatives_only = PatientBootstrap(50).intervals(lambda r: binary_metrics(~truth[r] & False, scores[r], 0.5),
                                                    pd.Series(range(51)))
    assert negatives_only["auc"] is None and negatives_only["sensitivity"] is None
    assert negatives_only["specificity"] is not None


def test_temperature_scaling_lowers_the_ece_of_an_overconfident_model():
    truth = RNG.integers(0, 2, 2000)
    logits = np.stack([np.zeros(2000), (truth * 2 - 1) * 1.0 + RNG.normal(0, 1.5, 2000)], axis=1) * 6
    temperature = fit_temperature(logits, truth)
    assert temperature > 2
    assert expected_calibration_error(truth, softmax_with_temperature(logits, temperature)[:, 1]) < \
        0.5 * expected_calibration_error(truth, softmax_with_temperature(logits, 1.0)[:, 1])


def test_thresholds_by_rule():
    youden = operating_threshold(SCORES, TRUTH, "youden")
    strict = operating_threshold(SCORES, TRUTH, "sensitivity", 0.95)
    assert binary_metrics(TRUTH, SCORES, strict)["sensitivity"] >= 0.95
    assert strict <= youden


def test_ppv_npv_at_another_prevalence():
    figures = at_prevalence(0.9, 0.8, 0.1)
    assert figures["ppv_at_prevalence"] == pytest.approx(0.09 / (0.09 + 0.18))
    assert figures["npv_at_prevalence"] == pytest.approx(0.72 / (0.72 + 0.01))


@pytest.mark.parametrize("value", ["1.5", "0", "abc"])
def test_evaluate_refuses_a_prevalence_outside_0_1_as_predict_does(value, capsys):
    from covidxr.errors import UsageError
    from covidxr.evaluation.evaluate import evaluate_run

    with pytest.raises(SystemExit) as exited:
        main(["evaluate", "--prevalence", value])
    assert exited.value.code == 2 and f"'{value}': a share of positives strictly between 0 and 1" in \
        capsys.readouterr().err
    with pytest.raises(UsageError, match="strictly between 0 and 1"):  # the Python API, before any model loads
        evaluate_run("no-such-run", prevalence=1.5)


def test_source_only_baseline_and_within_source_on_a_two_source_table():
    rows = pd.DataFrame({"source": ["a"] * 60 + ["b"] * 140, "patient_id": [f"p{i}" for i in range(200)]})
    truth = np.array([True] * 50 + [False] * 10 + [False] * 140)
    auc, interval = source_only(rows, truth, "source", PatientBootstrap(200))
    assert auc == pytest.approx(roc_auc_score(truth, np.r_[np.full(60, 50 / 60), np.zeros(140)]))
    assert auc > 0.9 and interval[0] <= auc <= interval[1]
    from covidxr.evaluation.evaluate import _subgroups

    groups = _subgroups(rows, truth, np.r_[np.linspace(0, 1, 60), np.zeros(140)], 0.5, "source", PatientBootstrap(100))
    assert set(groups) == {"a"} and groups["a"].n_images == 60


def test_pooled_out_of_fold_figures_set_the_source_only_baseline_beside_the_model():
    from covidxr.evaluation.crossval import pooled_figures

    # source a: 50 of 60 positive, b: none; the model ranks perfectly only inside a
    rows = pd.DataFrame({"source": ["a"] * 60 + ["b"] * 140, "patient_id": [f"p{i // 2}" for i in range(200)],
                         "truth": [True] * 50 + [False] * 10 + [False] * 140,
                         "score": np.r_[np.linspace(1, 0.5, 50), np.linspace(0.4, 0.3, 10), np.full(140, 0.45)]})
    figures = pooled_figures(rows, PatientBootstrap(100))
    baseline, interval = source_only(rows, rows["truth"].to_numpy(), "source", PatientBootstrap(100))
    assert figures["source_only_auc"] == baseline and figures["source_only_auc_ci"] == interval
    assert figures["source_only_auc"] == pytest.approx(roc_auc_score(rows["truth"], np.r_[np.full(60, 5 / 6),
                                                                                          np.zeros(140)]))
    assert figures["pooled_out_of_fold_auc"] == pytest.approx(roc_auc_score(rows["truth"], rows["score"]))
    assert set(figures["pooled_out_of_fold_within_source"]) == {"a"}
    assert figures["pooled_out_of_fold_within_source"]["a"]["auc"] == 1.0
    assert (figures["n_images"], figures["n_patients"]) == (200, 100)
    one_source = pooled_figures(rows.assign(source="a"), PatientBootstrap(100))
    assert one_source["source_only_auc"] == 0.5  # one source: origin tells nothing


def test_evaluate_writes_the_contract_json_and_extends_the_model_card(trained_run, capsys):
    run, cache = trained_run
    assert main(["evaluate", "--run", str(run), "--cache", str(cache), "--json", "--prevalence", "0.05"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("run", "data", "split", "n_images", "n_patients", "prevalence", "auc", "auc_ci", "pr_auc",
                "pr_auc_ci", "accuracy", "sensitivity", "specificity", "ppv", "npv", "f1", "f1_ci", "threshold",
                "threshold_rule", "confusion_matrix", "ece", "brier", "within_source", "within_site",
                "source_only_auc", "source_only_auc_ci", "ci_method", "ppv_at_prevalence", "npv_at_prevalence"):
        assert key in result, key
    assert result["data"] == "internal" and result["split"] == "test"
    contract = json.loads((run / "model.json").read_text())
    assert result["threshold"] == contract["threshold"]
    assert set(result["operating_points"]) == {"balanced", "high-sensitivity", "high-specificity"}
    assert (run / "evaluation" / "evaluate-internal-test.json").is_file()
    assert (run / "evaluation" / "evaluate-internal-test-curves.png").is_file()
    card = json.loads((run / "model_card.json").read_text())
    assert card["evaluations"]["internal-test"]["n_images"] == result["n_images"]
    assert not any(isinstance(v, float) and math.isnan(v) for v in result.values())


def test_evaluate_on_another_manifest_and_usage_errors(trained_run, training_manifest, tmp_path, capsys,
                                                       monkeypatch):
    run, cache = trained_run
    from covidxr.data import load_manifest, save_manifest

    external = load_manifest(training_manifest).assign(split="", label="")
    save_manifest(external, tmp_path / "other-hospital.csv")
    assert main(["evaluate", "--run", str(run), "--data", str(tmp_path / "other-hospital.csv"),
                 "--cache", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "other-hospital / all" in out and "source-only baseline" in out
    assert (run / "evaluation" / "evaluate-other-hospital-all.json").is_file()
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "--data", str(tmp_path / "other-hospital.csv"), "--cache", str(cache)]) == 0
    assert (tmp_path / "evaluation-shipped-model" / "evaluate-other-hospital-all.json").is_file()
    assert main(["evaluate"]) == 2
    assert main(["evaluate", "--run", str(run), "--split", "holdout", "--cache", str(cache)]) == 2


def _audited(tmp_path, manifest):
    from covidxr.config import load_recipe
    from covidxr.evaluation.audit import audit
    from covidxr.training.run import train

    config = load_recipe("default", tiny_recipe_overrides(**{"trainer.max_epochs": "6", "optimisation.lr": "0.01",
                                                             "augmentation.rotation": "0",
                                                             "augmentation.translate": "0"}))
    run = train(config, manifest, tmp_path / "run", cache_root=tmp_path / "cache")
    return audit(run, cache_root=tmp_path / "cache"), run


def test_audit_flags_a_corner_marker_shortcut(tmp_path, shortcut_manifest):
    result, run = _audited(tmp_path, shortcut_manifest)
    occlusion = result["occlusion"]
    assert occlusion["auc"] > 0.9
    assert occlusion["shortcut_suspected"] and "shortcuts" in occlusion["verdict"]
    assert (run / "evaluation" / "audit-internal.json").is_file()
    assert "occlusion" in json.loads((run / "model_card.json").read_text())["audits"]["internal"]


def test_audit_does_not_flag_a_model_that_looks_at_the_lungs(tmp_path, training_manifest):
    result, _ = _audited(tmp_path, training_manifest)
    occlusion = result["occlusion"]
    assert occlusion["auc"] > 0.8
    assert not occlusion["shortcut_suspected"], occlusion
    assert result["source_predictability"]["verdict"]
    assert result["leave_one_site_out"]["verdict"]


def test_the_audit_hides_all_a_lung_masked_model_sees_and_names_the_silhouette():
    from covidxr.data.preprocess import Preprocessing
    from covidxr.evaluation.audit import occlusion_results
    from covidxr.lungs import lungs_of_prepared
    from covidxr.metrics import PatientBootstrap

    prepared = np.zeros((64, 64), np.uint8)
    prepared[8:56, 6:28] = 120
    prepared[8:56, 36:58] = 140
    prepared[30, 10] = 1  # a black pixel inside a lung stays lung

    class Segmenter:
        def segment_many(self, images):
            return ["segmented"] * len(images)

    masked = Preprocessing(lungs="mask")
    assert lungs_of_prepared([prepared], Preprocessing(lungs="crop"), Segmenter()) == ["segmented"]
    assert lungs_of_prepared([prepared], masked.model_copy(update={"lung_fill": 128}), Segmenter()) == ["segmented"]
    prepared[prepared == 0] = 3  # the contrast step after masking turns the black fill into 2-3
    lungs = lungs_of_prepared([prepared], masked, Segmenter())[0]
    expected = np.zeros((64, 64), bool)
    expected[8:56, 6:28] = expected[8:56, 36:58] = True
    assert lungs.lungs == 2 and np.array_equal(lungs.mask, expected)
    truth = np.array([0, 1] * 20, bool)
    scores = truth + np.linspace(0, 0.5, 40)
    hidden = np.full(40, 0.3)
    patients = pd.Series(range(40))
    bootstrap = PatientBootstrap(resamples=20)
    silhouette = occlusion_results(truth, scores, hidden, scores, hidden, patients, bootstrap, only_lungs_shown=True)
    assert not silhouette["shortcut_suspected"] and "silhouette" in silhouette["verdict"]
    read_shape = occlusion_results(truth, scores, scores, scores, hidden, patients, bootstrap, only_lungs_shown=True)
    assert read_shape["shortcut_suspected"] and "mask's shape" in read_shape["verdict"]
    plain = occlusion_results(truth, scores, hidden, scores, hidden, patients, bootstrap)
    assert "silhouette" not in plain["verdict"]


def test_cross_validation_holds_out_each_fold_once(tmp_path, training_manifest, capsys):
    from covidxr.data import load_manifest

    settings = sum((["--set", s] for s in tiny_recipe_overrides(**{"trainer.max_epochs": "1"})), [])
    code = main(["cv", "--config", "default", "--data", str(training_manifest), "--folds", "3",
                 "--cache", str(tmp_path / "cache"), "-o", str(tmp_path / "cv")] + settings)
    assert code == 0
    result = json.loads((tmp_path / "cv" / "cv.json").read_text())
    development = load_manifest(training_manifest).query("split != 'test'")
    assert [f["fold"] for f in result["folds"]] == [0, 1, 2]
    assert sum(f["n_images"] for f in result["folds"]) == len(development) == result["n_images"]
    held_out = [set(load_manifest(tmp_path / "cv" / f"fold-{k}.csv").query("split == 'val'")["patient_id"])
                for k in range(3)]
    assert not (held_out[0] & held_out[1]) and not (held_out[1] & held_out[2])
    assert set(result["mean"]) >= {"auc", "sensitivity"} and (tmp_path / "cv" / "fold-2" / "model.json").is_file()
    printed = capsys.readouterr().out
    assert "pooled out-of-fold AUC" in printed and result["format_version"] == 1
    assert f"vs  source-only baseline AUC {result['source_only_auc']:.3f}" in printed
    within = result["pooled_out_of_fold_within_source"]
    assert all(f"within {source}, pooled out of fold" in printed for source in within)
    assert within or "within-source skill cannot be measured" in printed
    assert main(["cv", "--config", "default", "--data", str(training_manifest), "-o", str(tmp_path / "x")]) == 2


def test_report_is_self_contained_and_opens_cleanly_in_headless_chromium(trained_run, tmp_path):
    from playwright.sync_api import sync_playwright

    run, cache = trained_run
    assert main(["report", "--run", str(run), "--cache", str(cache), "-o", str(tmp_path / "report.html")]) == 0
    document = (tmp_path / "report.html").read_text()
    assert "src=\"http" not in document and "src='http" not in document
    chromium = chromium_or_skip()
    errors = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page()
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto((tmp_path / "report.html").as_uri())
        images = page.evaluate("Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
        text = page.inner_text("body")
        browser.close()
    assert errors == []
    assert len(images) >= 4 and all(images)
    for phrase in ("not for clinical use", "source-only baseline", "shortcut audit", "model card", "top losses"):
        assert phrase in text.lower(), phrase


def test_the_source_warning_fires_only_when_the_source_baseline_is_informative():
    from covidxr.evaluation.metrics import source_baseline_informative, source_explains_result

    truth = np.arange(200) < 60
    patients = [f"p{i}" for i in range(200)]
    weak_model = np.clip(truth * 0.1 + RNG.random(200), 0, 1)
    strong_model = np.clip(truth * 0.6 + RNG.random(200) * 0.5, 0, 1)

    def result(sources, scores) -> dict:
        rows = pd.DataFrame({"source": sources, "patient_id": patients})
        auc, interval = source_only(rows, truth, "source", PatientBootstrap(100))
        return {"auc": roc_auc_score(truth, scores), "source_only_auc": auc, "source_only_auc_ci": interval}

    single_source = result(["only"] * 200, weak_model)
    assert single_source["source_only_auc"] == 0.5 and single_source["source_only_auc_ci"] == [0.5, 0.5]
    assert single_source["auc"] < 0.6, "a weak model: within the margin of the uninformative 0.5"
    assert not source_baseline_informative(single_source) and not source_explains_result(single_source)

    by_label = np.where(truth, "covid-archive", "normals-archive")
    confounded = result(by_label, strong_model)
    assert confounded["source_only_auc"] == 1.0 and source_explains_result(confounded)
    mixed = np.where(np.arange(200) % 3 == 0, "a", by_label)
    partly = result(mixed, strong_model)
    assert source_baseline_informative(partly) and partly["source_only_auc"] < partly["auc"] - 0.05
    assert not source_explains_result(partly)


def test_ece_and_the_reliability_diagram_share_scikit_learns_bins():
    from sklearn.calibration import calibration_curve

    from covidxr.metrics import reliability

    scores = np.r_[SCORES, [0.1, 0.5, 0.9, 1.0, 0.0]]
    truth = np.r_[TRUTH, [False, True, True, True, False]]
    bins = reliability(truth, scores)
    observed, predicted = calibration_curve(truth, scores, n_bins=10)
    assert np.array_equal(bins.observed, observed) and np.array_equal(bins.predicted, predicted)
    assert bins.images.sum() == len(scores) and len(bins.images) == len(observed)
    by_hand = sum(n / len(scores) * abs(o - p) for n, o, p in zip(bins.images, observed, predicted))
    assert expected_calibration_error(truth, scores) == pytest.approx(by_hand)
    assert expected_calibration_error(np.array([0, 1, 0, 1]), np.array([0.0, 1.0, 0.0, 1.0])) == 0.0


def test_every_interval_and_band_of_an_evaluation_comes_from_one_bootstrap(trained_run, monkeypatch):
    from covidxr.evaluation.evaluate import evaluate

    used = []
    rows = PatientBootstrap.rows

    def recording(self, patients):
        used.append((self.resamples, self.seed))
        return rows(self, patients)

    monkeypatch.setattr(PatientBootstrap, "rows", recording)
    run, cache = trained_run
    result = evaluate(run, cache_root=cache, resamples=40, seed=7)
    assert set(used) == {(40, 7)} and len(used) >= 4, "CIs, subgroups, source-only and the curve bands"
    assert result["ci_method"].startswith("percentile bootstrap over patients, 40 resamples (seed 7), 95%")


def test_audit_command_prints_the_three_verdicts_and_json(trained_run, capsys):
    run, cache = trained_run
    assert main(["audit", "--run", str(run), "--cache", str(cache)]) == 0
    lines = capsys.readouterr().out.splitlines()
    saved = json.loads((run / "evaluation" / "audit-internal.json").read_text())
    occlusion = saved["occlusion"]
    assert lines[0] == f"audit of internal: {saved['n_images']} images, {saved['n_patients']} patients"
    assert lines[1] == f"1. origin: {saved['source_predictability']['verdict']}"
    assert lines[2].startswith(f"2. occlusion: {occlusion['verdict']} (AUC all ")
    assert f"lungs hidden {occlusion['lungs_hidden']['auc']:.3f}" in lines[2] and "borders only" in lines[2]
    assert lines[3] == f"3. leave-one-site-out: {saved['leave_one_site_out']['verdict']}"
    assert saved["n_images"] == 72 and len(lines) == 4
    assert main(["audit", "--run", str(run), "--cache", str(cache), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == saved
    card = json.loads((run / "model_card.json").read_text())
    assert card["audits"]["internal"]["occlusion"] == occlusion["verdict"]
