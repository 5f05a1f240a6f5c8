"""Training on tiny synthetic data: the run directory, each transfer mode, resume, DDP, lr-find."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import tiny_recipe_overrides
from covidxr.cli import main
from covidxr.config import load_recipe
from covidxr.runs import file_sha256
from covidxr.training import run as run_module
from covidxr.training.callbacks import METRIC_COLUMNS
from covidxr.training.run import train

MODEL_JSON_KEYS = {"format_version", "architecture", "classes", "preprocessing", "threshold", "threshold_rule",
                   "temperature", "weights_sha256", "data", "pretrained", "created"}


def _train(tmp_path, training_manifest, name="run", **extra):
    config = load_recipe("default", tiny_recipe_overrides(**extra))
    return train(config, training_manifest, tmp_path / name, cache_root=tmp_path / "cache")


def test_full_training_writes_the_contract_run_directory(tmp_path, training_manifest):
    run = _train(tmp_path, training_manifest)
    for name in ("config.yaml", "manifest.csv", "model.safetensors", "model.json", "metrics.csv", "curves.png",
                 "env.json", "model_card.json", "checkpoints"):
        assert (run / name).exists(), name
    contract = json.loads((run / "model.json").read_text())
    assert MODEL_JSON_KEYS <= set(contract)
    assert contract["weights_sha256"] == file_sha256(run / "model.safetensors")
    assert contract["classes"] == ["non-covid", "covid"] and contract["pretrained"] == {"source": "none"}
    assert 0 < contract["threshold"] <= 1 and contract["temperature"] > 0
    assert contract["preprocessing"]["size"] == 32 and contract["data"]["images"] == 72
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics.columns) == METRIC_COLUMNS and metrics["epoch"].tolist() == [0, 1]
    assert metrics["val_auc"].between(0, 1).all()
    card = json.loads((run / "model_card.json").read_text())
    assert card["not_for_clinical_use"] and "not for clinical use" in card["intended_use"].lower()
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["name"] == "covidxr_cnn"
    env = json.loads((run / "env.json").read_text())
    assert env["seed"] == 0 and env["versions"]["torch"].startswith("2.14")


def test_training_is_deterministic_with_a_seed(tmp_path, training_manifest):
    first = pd.read_csv(_train(tmp_path, training_manifest, "a", **{"trainer.max_epochs": "1"}) / "metrics.csv")
    second = pd.read_csv(_train(tmp_path, training_manifest, "b", **{"trainer.max_epochs": "1"}) / "metrics.csv")
    pd.testing.assert_frame_equal(first.drop(columns="seconds"), second.drop(columns="seconds"))


def test_head_mode_trains_only_the_head_on_features_computed_once(tmp_path, training_manifest, monkeypatch):
    calls, initial = [], []
    original = run_module.backbone_features
    monkeypatch.setattr(run_module, "backbone_features", lambda model, images: calls.append(len(images))
                        or original(model, images))
    build = run_module.create_model

    def recording_build(*args, **kwargs):
        model, report = build(*args, **kwargs)
        initial.append({key: value.clone() for key, value in model.state_dict().items()})
        return model, report

    monkeypatch.setattr(run_module, "create_model", recording_build)
    run = _train(tmp_path, training_manifest, **{"transfer.mode": "head", "trainer.max_epochs": "3"})
    assert len(calls) == 2
    trained, before = load_file(str(run / "model.safetensors")), initial[0]
    assert set(trained) == set(before)
    backbone = [key for key in before if key.startswith("backbone.")]
    head = [key for key in before if key.startswith("head.")]
    assert backbone and all(torch.equal(trained[key], before[key]) for key in backbone), \
        "weights and batch-norm statistics of the frozen backbone are unchanged"
    assert any(not torch.equal(trained[key], before[key]) for key in head)
    contract = json.loads((run / "model.json").read_text())
    assert "not transfer learning" in contract["transfer_note"]
    assert len(pd.read_csv(run / "metrics.csv")) == 3


def test_two_stage_numbers_epochs_across_stages_and_changes_the_backbone(tmp_path, training_manifest):
    run = _train(tmp_path, training_manifest, **{"transfer.mode": "two-stage", "transfer.head_epochs": "2",
                                                 "trainer.max_epochs": "2"})
    assert pd.read_csv(run / "metrics.csv")["epoch"].tolist() == [0, 1, 2, 3]
    head_stage = load_file(str(run / "checkpoints" / "head" / "final.safetensors"))
    final = load_file(str(run / "model.safetensors"))
    assert any(not torch.equal(final[f"head.{k}"], v) for k, v in head_stage.items())


def test_resume_redoes_the_interrupted_epoch(tmp_path, training_manifest, monkeypatch, capsys):
    import lightning as L

    class Killed(RuntimeError):
        pass

    class KillAtSecondEpoch(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.current_epoch == 1 and trainer.global_step >= trainer.num_training_batches + 2:
                raise Killed("simulated kill")

    make_trainer = run_module._trainer

    def killing_trainer(*args, **kwargs):
        trainer, best = make_trainer(*args, **kwargs)
        trainer.callbacks.append(KillAtSecondEpoch())
        return trainer, best

    monkeypatch.setattr(run_module, "_trainer", killing_trainer)
    with pytest.raises(Killed):
        _train(tmp_path, training_manifest, **{"trainer.max_epochs": "3"})
    run = tmp_path / "run"
    assert (run / "checkpoints" / "full" / "last.ckpt").is_file() and not (run / "model.json").exists()
    assert (run / "checkpoints" / "full" / "step.ckpt").is_file()
    assert pd.read_csv(run / "metrics.csv")["epoch"].tolist() == [0]
    monkeypatch.setattr(run_module, "_trainer", make_trainer)
    command = ["train", "--config", "default", "--data", str(training_manifest), "--cache", str(tmp_path / "cache"),
               "--resume"] + sum((["--set", s] for s in tiny_recipe_overrides(**{"trainer.max_epochs": "3"})), [])
    assert main(command + ["-o", str(tmp_path / "nothing")]) == 2
    assert f"--resume: {tmp_path / 'nothing'} holds no run to continue" in capsys.readouterr().err
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(command + ["-o", str(run)]) == 0
    assert not [w for w in caught if "ended before the epoch ended" in str(w.message)]
    assert f"wrote run {run}" in capsys.readouterr().out
    assert pd.read_csv(run / "metrics.csv")["epoch"].tolist() == [0, 1, 2]
    assert (run / "model.json").is_file()


def test_a_finished_run_is_not_overwritten_and_bad_keys_are_usage_errors(tmp_path, training_manifest, capsys):
    _train(tmp_path, training_manifest, **{"trainer.max_epochs": "1"})
    base = ["train", "--config", "default", "--data", str(training_manifest), "--cache", str(tmp_path / "cache")]
    assert main(base + ["-o", str(tmp_path / "run")]) == 2
    assert f"-o {tmp_path / 'run'}: already holds a run" in capsys.readouterr().err
    assert main(base + ["-o", str(tmp_path / "new"), "--set", "trainer.max_epoch=1"]) == 2
    assert "--set: unknown key trainer.max_epoch; valid: max_epochs" in capsys.readouterr().err
    assert main(base + ["-o", str(tmp_path / "new"), "--set", "model.head=mlp"]) == 2
    assert "--set: model.head: unknown head 'mlp'; registered: linear, pyimagesearch, hansen, zivkovic" \
        in capsys.readouterr().err
    assert main(["train", "--config", "nope", "--data", "x.csv", "-o", str(tmp_path / "n")]) == 2
    assert "shipped: default, demo" in capsys.readouterr().err


def test_lr_find_writes_a_plot(tmp_path, training_manifest):
    code = main(["lr-find", "--config", "default", "--data", str(training_manifest), "--cache", str(tmp_path / "c"),
                 "-o", str(tmp_path / "lr.png")] + sum((["--set", s] for s in tiny_recipe_overrides()), []))
    assert code == 0 and (tmp_path / "lr.png").stat().st_size > 1000


def test_ddp_with_two_cpu_processes(tmp_path, training_manifest):
    command = [sys.executable, "-m", "covidxr.cli", "train", "--config", "default", "--data", str(training_manifest),
               "-o", str(tmp_path / "ddp"), "--cache", str(tmp_path / "cache")]
    for setting in tiny_recipe_overrides(**{"trainer.devices": "2", "trainer.strategy": "ddp",
                                            "trainer.accelerator": "cpu"}):
        command += ["--set", setting]
    environment = {**os.environ, "PYTHONHASHSEED": "0"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "distributed_backend=gloo" in result.stderr or "Initializing distributed" in result.stderr
    assert "rank 0 of 2 reads" in result.stderr and "rank 1 of 2 reads" in result.stderr, "each rank its own rows"
    assert pd.read_csv(tmp_path / "ddp" / "metrics.csv")["epoch"].tolist() == [0, 1]
    assert (tmp_path / "ddp" / "model.json").is_file()


@pytest.mark.parametrize("name", ["default", "demo", "transfer-lite0", "seed000-fastai-resnet50",
                                  "seed001-pyimagesearch-vgg16", "seed002-hansen-vgg19", "seed003-zivkovic-mobilenet",
                                  "seed003-zivkovic-resnet", "seed003-zivkovic-densenet", "seed004-arshad-cnn"])
def test_every_shipped_recipe_loads(name):
    config = load_recipe(name)
    assert config.description
    if config.model.pretrained == "imagenet" and not config.model.name.startswith("efficientnet_lite"):
        assert "pretrained=none" in config.description, "weights from a hub: say how to run it offline"


def test_class_balance_weights_weighs_the_loss_instead_of_resampling(tmp_path, training_manifest, monkeypatch):
    from torch.utils.data import WeightedRandomSampler

    from covidxr.data import load_manifest, save_manifest

    manifest = load_manifest(training_manifest)
    covid_train = manifest.index[(manifest["split"] == "train") & (manifest["label"] == "covid")]
    imbalanced = manifest.drop(covid_train[: len(covid_train) // 2]).reset_index(drop=True)
    save_manifest(imbalanced, tmp_path / "imbalanced.csv")
    modules, loaders = [], []
    module_type, make_loader = run_module.LitClassifier, run_module.loader
    monkeypatch.setattr(run_module, "LitClassifier", lambda *a, **k: modules.append(module_type(*a, **k))
                        or modules[-1])
    monkeypatch.setattr(run_module, "loader", lambda *a, **k: loaders.append(make_loader(*a, **k)) or loaders[-1])
    config = load_recipe("default", tiny_recipe_overrides(**{"trainer.max_epochs": "1",
                                                             "optimisation.class_balance": "weights"}))
    train(config, tmp_path / "imbalanced.csv", tmp_path / "run", cache_root=tmp_path / "cache")
    counts = imbalanced[imbalanced["split"] == "train"]["label"].value_counts()
    expected = [counts.sum() / (2 * counts[label]) for label in ("non-covid", "covid")]
    assert counts["non-covid"] > counts["covid"] and expected[1] > 1 > expected[0]
    assert torch.allclose(modules[0].loss.weight, torch.tensor(expected, dtype=torch.float32))
    assert not isinstance(loaders[0].sampler, WeightedRandomSampler), "weights replace the sampler, not add to it"


def test_threshold_rule_sensitivity_takes_the_highest_threshold_reaching_the_target(tmp_path, training_manifest):
    import numpy as np

    from covidxr.evaluation.evaluate import evaluation_rows, model_probabilities
    from covidxr.models.loading import load_run

    run = _train(tmp_path, training_manifest, **{"trainer.max_epochs": "1", "threshold.rule": "sensitivity",
                                                 "threshold.target": "0.9"})
    contract = json.loads((run / "model.json").read_text())
    assert contract["threshold_rule"] == "sensitivity>=0.9"
    model = load_run(run)
    rows, _, _ = evaluation_rows(model, None, "val")
    rows, _, probabilities = model_probabilities(model, rows, tmp_path / "cache")
    scores = probabilities[rows["label"].to_numpy() == "covid", model.positive_index]
    threshold = contract["threshold"]
    assert np.mean(scores >= threshold - 1e-6) >= 0.9
    higher = scores[scores > threshold + 1e-6]
    if len(higher):
        assert np.mean(scores >= higher.min()) < 0.9, "the next higher cut loses the target sensitivity"


def test_three_class_train_and_evaluate_end_to_end(tmp_path):
    from conftest import lesion_image, save_image

    root = tmp_path / "data"
    for index in range(60):
        finding = ("covid", "normal", "pneumonia")[index % 3]
        pixels = lesion_image(index, covid=finding != "normal", marker=finding == "pneumonia")
        save_image(pixels, root / ("site-a" if index % 4 else "site-b") / finding / f"{index:03d}.png")
    for site in ("site-a", "site-b"):
        assert main(["data", "import", "folders", str(root / site), "-o", str(tmp_path / f"{site}.csv")]) == 0
    built = tmp_path / "three.csv"
    assert main(["data", "build", str(tmp_path / "site-a.csv"), str(tmp_path / "site-b.csv"), "--task", "three-class",
                 "-o", str(built)]) == 0
    settings = sum((["--set", s] for s in tiny_recipe_overrides(**{"trainer.max_epochs": "1", "task": "three-class"})),
                   [])
    run, cache = tmp_path / "run", tmp_path / "cache"
    assert main(["train", "--config", "default", "--data", str(built), "--cache", str(cache), "-o", str(run)]
                + settings) == 0
    assert json.loads((run / "model.json").read_text())["classes"] == ["normal", "pneumonia", "covid"]
    from covidxr.evaluation.evaluate import evaluate

    result = evaluate(run, cache_root=cache, resamples=50)  # the command's 1000 resamples take minutes on 2 cores
    assert json.loads((run / "evaluation" / "evaluate-internal-test.json").read_text()) == result
    assert set(result["per_class"]) == {"normal", "pneumonia", "covid"}
    assert set(result["macro"]) == {"auc", "sensitivity", "specificity", "f1"}
    test_rows = pd.read_csv(run / "manifest.csv").query("split == 'test'")
    assert result["n_images"] == len(test_rows)
    assert result["prevalence"] == pytest.approx((test_rows["label"] == "covid").mean())
    for figures in result["per_class"].values():
        assert figures["auc"] is None or figures["auc_ci"] is None or \
            figures["auc_ci"][0] <= figures["auc"] <= figures["auc_ci"][1]
