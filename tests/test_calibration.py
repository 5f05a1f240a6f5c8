"""Calibration that survives a change of prevalence, named operating points, and `covidxr calibrate`."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from covidxr.cli import main
from covidxr.data.manifest import load_manifest, save_manifest
from covidxr.errors import UsageError
from covidxr.metrics import expected_calibration_error
from covidxr.runs import Calibration, OperatingPoint, RunDir, Scorer, log_odds, shift_prevalence
from covidxr.training.calibration import (
    calibration_contract,
    fit_calibration,
    fit_operating_points,
    operating_threshold,
)


def balanced_batch_logits(n: int, prevalence: float, seed: int) -> tuple[np.ndarray, np.ndarray, pd.Series]:
    """Two-class logits of a model that learned at 50% prevalence (its intercept assumes balanced data) applied
    where `prevalence` of the rows are positive; targets and one patient per row."""
    rng = np.random.default_rng(seed)
    truth = rng.random(n) < prevalence
    score = rng.normal(np.where(truth, 1.5, -1.5), 1.0)  # the log-odds a balanced-data model would give
    logits = np.column_stack([-score / 2, score / 2])
    return logits, truth.astype(int), pd.Series([f"p{i}" for i in range(n)])


def test_moving_the_prevalence_changes_the_odds_by_bayes_rule_and_keeps_every_call():
    calibration = Calibration(method="platt", slope=1.0, intercept=-1.0, prevalence=0.1)
    point = OperatingPoint(threshold=0.3, rule="test")
    logits = np.column_stack([np.zeros(7), np.linspace(-4, 4, 7)])
    fitted = Scorer(calibration, ("neg", "pos"), "pos", "balanced", point)
    moved = Scorer(calibration, ("neg", "pos"), "pos", "balanced", point, prevalence=0.5)
    p_fitted, p_moved = fitted.probabilities(logits)[:, 1], moved.probabilities(logits)[:, 1]
    odds_ratio = np.exp(log_odds(p_moved) - log_odds(p_fitted))
    np.testing.assert_allclose(odds_ratio, (0.5 / 0.5) / (0.1 / 0.9), rtol=1e-9)
    np.testing.assert_allclose(fitted.probabilities(logits).sum(axis=1), 1.0)
    assert list(fitted.labels(fitted.probabilities(logits))) == list(moved.labels(moved.probabilities(logits)))
    assert moved.threshold == pytest.approx(float(shift_prevalence(np.array([0.3]), 0.1, 0.5)[0]))


def test_platt_fixes_what_a_temperature_cannot_a_prior_learned_at_fifty_percent():
    logits, targets, patients = balanced_batch_logits(3000, 0.07, seed=0)
    calibration = fit_calibration(logits, targets, patients, 1, "synthetic")
    assert calibration.method in ("platt", "isotonic")
    compared = calibration.compared  # out of fold: a temperature can only flatten, not move the 50% prior
    assert compared["temperature"]["ece"] > 0.05 and compared["temperature"]["ece"] > 3 * compared["platt"]["ece"]
    assert calibration.prevalence == pytest.approx(targets.mean())
    new_logits, new_targets, _ = balanced_batch_logits(3000, 0.07, seed=1)
    calibrated = calibration.positive_probability(new_logits, 1)
    assert expected_calibration_error(new_targets == 1, calibrated) < 0.03
    assert calibration.fitted_on.positives == int(targets.sum())


def test_operating_points_keep_their_targets_on_the_rows_they_were_chosen_on():
    logits, targets, patients = balanced_batch_logits(2000, 0.2, seed=2)
    scores = Calibration(method="temperature").positive_probability(logits, 1)
    truth = targets == 1
    points = fit_operating_points(scores, truth, patients)
    assert set(points) == {"balanced", "high-sensitivity", "high-specificity"}
    sensitive, specific = points["high-sensitivity"], points["high-specificity"]
    assert (scores[truth] >= sensitive.threshold).mean() >= 0.95
    assert (scores[~truth] < specific.threshold).mean() >= 0.95
    assert sensitive.threshold <= points["balanced"].threshold <= specific.threshold
    low, high = sensitive.ci["sensitivity"]
    assert low <= sensitive.sensitivity <= high
    with pytest.raises(Exception, match="single class"):
        operating_threshold(scores, np.ones_like(truth), "youden")


def test_the_contract_keys_calibration_writes_are_read_back_by_a_scorer(tmp_path):
    logits, targets, patients = balanced_batch_logits(1000, 0.1, seed=3)
    keys = calibration_contract(logits, targets, patients, 1, "validation split", "high-sensitivity")
    assert keys["default_operating_point"] == "high-sensitivity"
    assert keys["threshold"] == keys["operating_points"]["high-sensitivity"]["threshold"]
    assert keys["threshold_rule"] == "sensitivity>=0.95"
    recorded = Calibration.model_validate(json.loads(json.dumps(keys["calibration"])))
    assert recorded.prevalence == pytest.approx(targets.mean())


def test_a_legacy_model_json_has_one_recorded_point_and_no_prevalence(trained_run, tmp_path):
    run, _ = trained_run
    content = json.loads((run / "model.json").read_text())
    for key in ("calibration", "operating_points", "default_operating_point"):
        content.pop(key)
    contract = RunDir(run).read_contract().parse(content, "legacy")
    scorer = contract.scorer()
    assert scorer.operating_point == "recorded" and scorer.threshold == content["threshold"]
    with pytest.raises(UsageError, match="records no calibration prevalence"):
        contract.scorer(prevalence=0.2)
    with pytest.raises(UsageError, match="accepted: recorded"):
        contract.scorer("balanced")


def test_train_records_calibration_and_points_fitted_on_validation(trained_run):
    content = json.loads((trained_run[0] / "model.json").read_text())
    assert content["calibration"]["fitted_on"]["data"] == "validation split"
    assert set(content["operating_points"]) == {"balanced", "high-sensitivity", "high-specificity"}
    assert content["default_operating_point"] == "balanced"
    assert content["threshold"] == content["operating_points"]["balanced"]["threshold"]
    assert content["input_check"] is None  # the tests' recipe: synthetic images are no radiographs


def test_predict_reports_the_operating_point_and_prevalence_asked_for(trained_run, tmp_path, make_image, capsys):
    run, _ = trained_run
    image = make_image("x.png", seed=5, size=64)
    assert main(["predict", str(image), "--run", str(run), "--json", "--operating-point", "high-specificity",
                 "--prevalence", "0.3"]) == 0
    prediction = json.loads(capsys.readouterr().out)["predictions"][0]
    assert prediction["operating_point"] == "high-specificity" and prediction["prevalence"] == 0.3
    assert prediction["probability"] == prediction["probabilities"]["covid"]
    assert prediction["input_check"] == {"status": "skipped", "reason": None, "score": None}
    assert main(["predict", str(image), "--run", str(run), "--operating-point", "nope"]) == 2
    assert "accepted: balanced, high-sensitivity, high-specificity" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["predict", str(image), "--run", str(run), "--prevalence", "1.5"])
    assert exited.value.code == 2 and "strictly between 0 and 1" in capsys.readouterr().err


def test_calibrate_refits_on_a_site_sample_and_reports_out_of_fold_figures(trained_run, tmp_path, capsys):
    run, cache = trained_run
    site = tmp_path / "site.csv"
    manifest = load_manifest(run / "manifest.csv")
    save_manifest(manifest[manifest["split"] != "train"], site)
    out = tmp_path / "recalibrated"
    assert main(["calibrate", "--run", str(run), "--data", str(site), "-o", str(out), "--cache", str(cache),
                 "--prevalence", "0.05", "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert "below 30 of either" in captured.err  # the synthetic site sample is small: it says so
    assert result["weights_changed"] is False and result["images"] == int((manifest["split"] != "train").sum())
    assert {"ece", "ece_ci", "operating_points"} <= set(result["figures_out_of_fold"]["after"])
    original, refitted = (json.loads((folder / "model.json").read_text()) for folder in (run, out))
    assert refitted["weights_sha256"] == original["weights_sha256"]
    assert refitted["recalibration"]["manifest_sha256"] and refitted["recalibration"]["positives"] > 0
    assert refitted["calibration"]["deployment_prevalence"] == 0.05
    assert RunDir(out).read_contract().scorer().reported_prevalence == 0.05
    assert main(["calibrate", "--run", str(run), "--data", str(site), "-o", str(out)]) == 2  # exists already


def test_evaluate_gives_every_operating_point_and_the_ece_with_its_interval(trained_run, capsys):
    run, cache = trained_run
    assert main(["evaluate", "--run", str(run), "--cache", str(cache), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["operating_points"]) == {"balanced", "high-sensitivity", "high-specificity"}
    for point in result["operating_points"].values():
        assert {"sensitivity", "sensitivity_ci", "specificity_ci", "ppv", "validation"} <= set(point)
    assert result["ece_ci"] is None or result["ece_ci"][0] <= result["ece"] <= result["ece_ci"][1]
    assert result["operating_point"] == "balanced" and "ece_before_calibration" in result
