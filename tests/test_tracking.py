"""MLflow tracking (`--tracking URI`): runs read back with mlflow.search_runs from a temporary SQLite store."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from conftest import tiny_recipe_overrides
from covidxr.cli import EXIT_OK, EXIT_USAGE, main
from covidxr.training.tracking import flat_metrics


def _overrides(epochs: int = 2) -> list[str]:
    return [part for value in tiny_recipe_overrides(**{"trainer.max_epochs": str(epochs)}) for part in ("--set", value)]


def _train_args(manifest: Path, out: Path, cache: Path, epochs: int = 2) -> list[str]:
    overrides = _overrides(epochs)
    return ["train", "--config", "default", "--data", str(manifest), "--cache", str(cache), "-o", str(out), *overrides]


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, training_manifest) -> tuple[str, Path]:
    folder = tmp_path_factory.mktemp("tracked")
    uri = f"sqlite:///{folder / 'mlruns.db'}"
    assert main([*_train_args(training_manifest, folder / "run", folder / "cache"), "--tracking", uri]) == EXIT_OK
    return uri, folder


def test_flat_metrics_splits_intervals_and_drops_text():
    result = {"auc": 0.8, "auc_ci": [0.7, 0.9], "note": "x", "ppv": None, "within": {"a": {"auc": 0.6}},
              "operating_points": {"balanced": {"ci": {"sensitivity": [0.5, 0.75]}}}, "flag": True}
    assert flat_metrics(result) == {"auc": 0.8, "auc_ci_low": 0.7, "auc_ci_high": 0.9, "within.a.auc": 0.6,
                                    "operating_points.balanced.ci.sensitivity_low": 0.5,
                                    "operating_points.balanced.ci.sensitivity_high": 0.75}


def test_train_logs_config_epochs_final_metrics_artifacts_and_model(tracked):
    uri, folder = tracked
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["covidxr"], filter_string="tags.mlflow.runName = 'run'")
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["status"] == "FINISHED" and run["tags.mlflow.runName"] == "run"
    assert run["params.model.name"] == "covidxr_cnn" and run["params.preprocessing.size"] == "32"
    assert 0 <= run["metrics.val_auc"] <= 1 and "metrics.validation.auc_covid_vs_rest" in runs
    assert any(name.endswith("sensitivity_low") for name in runs.columns)
    client = mlflow.tracking.MlflowClient(tracking_uri=uri, registry_uri=uri)
    history = client.get_metric_history(run["run_id"], "val_auc")
    assert len(history) == 2  # one value per epoch of the two-epoch recipe
    artifacts = {item.path for item in client.list_artifacts(run["run_id"])}
    assert {"model.json", "model_card.json", "metrics.csv", "config.yaml"} <= artifacts
    assert "checkpoints" not in artifacts
    assert (folder / "mlartifacts").is_dir()  # beside the database, not in the working directory
    versions = client.search_model_versions("name = 'default'")
    assert len(versions) == 1 and versions[0].run_id == run["run_id"]
    assert "not_for_clinical_use" in versions[0].description
    assert (folder / "run" / "metrics.csv").read_text().splitlines()[0].startswith("epoch,train_loss")


def test_evaluate_logs_metrics_with_intervals(tracked, training_manifest):
    uri, folder = tracked
    assert main(["evaluate", "--run", str(folder / "run"), "--cache", str(folder / "cache"),
                 "--tracking", uri]) == EXIT_OK
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["covidxr"], filter_string="tags.mlflow.runName = 'evaluate run'")
    assert len(runs) == 1
    assert runs.iloc[0]["metrics.auc_ci_low"] <= runs.iloc[0]["metrics.auc"] <= runs.iloc[0]["metrics.auc_ci_high"]


def test_cv_logs_one_run_with_a_child_per_fold_and_registers_no_fold_model(tracked, training_manifest):
    uri, folder = tracked
    assert main(["cv", "--config", "default", "--data", str(training_manifest), "--folds", "2", "--cache",
                 str(folder / "cache"), "-o", str(folder / "cv"), "--tracking", uri, *_overrides(1)]) == EXIT_OK
    mlflow.set_tracking_uri(uri)
    parent = mlflow.search_runs(experiment_names=["covidxr"], filter_string="tags.mlflow.runName = 'cv cv'")
    assert len(parent) == 1 and parent.iloc[0]["params.model.name"] == "covidxr_cnn"
    row = parent.iloc[0]
    assert row["metrics.pooled_out_of_fold_auc_ci_low"] <= row["metrics.pooled_out_of_fold_auc"]
    children = mlflow.search_runs(experiment_names=["covidxr"],
                                  filter_string=f"tags.mlflow.parentRunId = '{row['run_id']}'")
    assert sorted(children["tags.mlflow.runName"]) == ["fold-0", "fold-1"]
    client = mlflow.tracking.MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert {v.run_id for v in client.search_model_versions("name = 'default'")}.isdisjoint(children["run_id"])


def test_file_store_is_refused_before_anything_runs(tmp_path, training_manifest, capsys):
    for uri in ("mlruns", f"file://{tmp_path}/mlruns"):
        code = main([*_train_args(training_manifest, tmp_path / "run", tmp_path / "cache", 1), "--tracking", uri])
        assert code == EXIT_USAGE
        assert "sqlite:///" in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and not (tmp_path / "mlruns").exists()


def test_without_tracking_nothing_is_logged(tracked, tmp_path, monkeypatch):
    uri, folder = tracked
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mlflow.set_tracking_uri(uri)
    before = len(mlflow.search_runs(search_all_experiments=True))
    assert main(["evaluate", "--run", str(folder / "run"), "--cache", str(folder / "cache")]) == EXIT_OK
    assert list(tmp_path.iterdir()) == []  # no mlruns folder, no database where it ran
    assert len(mlflow.search_runs(search_all_experiments=True)) == before
