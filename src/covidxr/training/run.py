"""`covidxr train`: from a manifest and a recipe to a self-describing run directory."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import lightning as L
import pandas as pd
import torch
import yaml
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import Dataset

from covidxr.config import TrainConfig, validated
from covidxr.data.labels import CLASSES
from covidxr.data.manifest import load_dropped, load_manifest, save_dropped, save_manifest
from covidxr.errors import UsageError
from covidxr.evaluation.calibration import fit_temperature, operating_threshold, softmax
from covidxr.models.classifier import Classifier, build_classifier
from covidxr.models.inference import predict_logits
from covidxr.training.callbacks import EpochCsv
from covidxr.training.data import class_weights, ensure_cache, loader, select_rows, split_datasets
from covidxr.training.features import backbone_features
from covidxr.training.module import LitClassifier
from covidxr.training.rundir import (
    environment,
    model_card,
    model_contract,
    plot_curves,
    random_frozen_backbone,
    write_json,
)

log = logging.getLogger("covidxr.train")


def default_cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "covidxr" / "pixels"


def is_main_process() -> bool:
    """False in the worker processes that DDP starts (they re-run the command)."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0


def _stages(config: TrainConfig) -> list[tuple[str, int]]:
    epochs = config.trainer.max_epochs
    if config.transfer.mode == "head":
        return [("head", epochs)]
    if config.transfer.mode == "two-stage":
        return [("head", config.transfer.head_epochs), ("full", epochs)]
    return [("full", epochs)]


def _trainer(
    config: TrainConfig, stage_dir: Path, epochs: int, metrics: EpochCsv
) -> tuple[L.Trainer, ModelCheckpoint]:
    settings = config.trainer
    best = ModelCheckpoint(dirpath=stage_dir, filename="best", monitor="val_auc", mode="max", save_top_k=1,
                           enable_version_counter=False)
    epoch_end = ModelCheckpoint(dirpath=stage_dir, filename="last", monitor=None, save_top_k=1,
                                save_on_train_epoch_end=True, enable_version_counter=False)
    steps = ModelCheckpoint(dirpath=stage_dir, filename="step", monitor=None, save_top_k=1,
                            every_n_train_steps=settings.checkpoint_every_n_steps, enable_version_counter=False)
    precision = settings.precision or ("16-mixed" if torch.cuda.is_available() else "32-true")
    trainer = L.Trainer(
        max_epochs=epochs, accelerator=settings.accelerator, devices=settings.devices, num_nodes=settings.num_nodes,
        strategy=settings.strategy, precision=precision, logger=False, default_root_dir=stage_dir,
        callbacks=[best, epoch_end, steps, EarlyStopping("val_auc", mode="max", patience=settings.patience), metrics],
        num_sanity_val_steps=0, deterministic="warn", enable_model_summary=False, log_every_n_steps=10,
    )
    return trainer, best


Calibration = tuple[nn.Module, Dataset]


def _run_stage(stage: str, epochs: int, model: Classifier, datasets: dict, config: TrainConfig, out: Path,
               offset: int, resume: bool) -> Calibration | None:
    """Train one stage. Returns what to fit temperature and threshold with (the head on cached validation
    features after head-only training, else the model on validation images); None in DDP workers."""
    stage_dir = out / "checkpoints" / stage
    finished = stage_dir / "final.safetensors"
    target = model.head if stage == "head" else model
    if resume and finished.is_file():
        target.load_state_dict(load_file(str(finished)))
        log.info("stage %s already finished: loaded %s", stage, finished)
        return model, datasets["val"]
    if stage == "head":
        model.backbone.requires_grad_(False)
        if random_frozen_backbone(config):
            log.warning("the frozen backbone has random weights (pretrained: none): this trains a head on random "
                        "features, which is not transfer learning")
        train_set, val_set = (backbone_features(model, datasets[s]) for s in ("train", "val"))
    else:
        model.backbone.requires_grad_(True)
        train_set, val_set = datasets["train"], datasets["val"]
    weights = class_weights(torch.as_tensor(datasets["train"].targets), len(CLASSES[config.task]))
    module = LitClassifier(
        target, len(CLASSES[config.task]), config.optimisation.lr, config.optimisation.weight_decay,
        config.optimisation.label_smoothing, weights if config.optimisation.class_balance == "weights" else None,
        config.transfer.backbone_lr_factor if config.transfer.mode == "two-stage" and stage == "full" else 1.0,
    )
    trainer, best = _trainer(config, stage_dir, epochs, EpochCsv(out / "metrics.csv", offset))
    last = stage_dir / "last.ckpt"  # written at each epoch end: resuming redoes the interrupted epoch
    trainer.fit(module, loader(train_set, config, True, config.seed), loader(val_set, config, False, config.seed),
                ckpt_path=str(last) if resume and last.is_file() else None)
    if not trainer.is_global_zero:
        return None
    if best.best_model_path:
        state = torch.load(best.best_model_path, map_location="cpu", weights_only=False)["state_dict"]
        module.load_state_dict(state)
    save_file({k: v.contiguous() for k, v in target.state_dict().items()}, str(finished))
    model.backbone.requires_grad_(True)
    return (model.head, val_set) if stage == "head" else (model, val_set)


def _prepare_run(config: TrainConfig, manifest_path: Path, out: Path, resume: bool) -> tuple[TrainConfig, pd.DataFrame]:
    config_path = out / "config.yaml"
    if resume:
        if not config_path.is_file():
            raise UsageError(f"--resume: {out} holds no run to continue (no config.yaml)")
        stored = validated(TrainConfig, yaml.safe_load(config_path.read_text()), str(config_path))
        if stored != config:
            log.warning("--resume continues with the run's own config.yaml; the given recipe/--set are ignored")
        return stored, load_manifest(out / "manifest.csv")
    if is_main_process() and (out / "config.yaml").exists():
        raise UsageError(f"{out} already holds a run; choose another -o, or --resume to continue it")
    manifest = select_rows(load_manifest(manifest_path), config)
    if is_main_process():
        out.mkdir(parents=True, exist_ok=True)
        config_path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
        save_manifest(manifest, out / "manifest.csv")
        save_dropped(load_dropped(manifest_path), out / "manifest.csv")
    return config, manifest


def train(config: TrainConfig, manifest_path: str | Path, out: str | Path, cache_root: str | Path | None = None,
          resume: bool = False) -> Path | None:
    """Train a recipe on a manifest into run directory `out`; returns it (None in DDP worker processes)."""
    out = Path(out)
    config, manifest = _prepare_run(config, Path(manifest_path), out, resume)
    L.seed_everything(config.seed, workers=True, verbose=False)
    cache = ensure_cache(manifest, cache_root or default_cache_root(), config)
    model, report = build_classifier(config.model, len(CLASSES[config.task]), config.preprocessing.size)
    if report is not None:
        for line in report.lines():
            log.info("weights %s: %s", config.model.weights, line)
    datasets = split_datasets(manifest, cache, config)
    offset, calibration = 0, None
    for stage, epochs in _stages(config):
        calibration = _run_stage(stage, epochs, model, datasets, config, out, offset, resume)
        if calibration is None:
            return None
        offset = int(pd.read_csv(out / "metrics.csv")["epoch"].max()) + 1 if (out / "metrics.csv").is_file() else 0
    return finish_run(model, calibration, manifest, config, out)


def finish_run(model: Classifier, calibration: Calibration, manifest: pd.DataFrame, config: TrainConfig,
               out: Path) -> Path:
    """Fit temperature and threshold on validation, write weights and the run's JSON files and plots."""
    classes = CLASSES[config.task]
    positive = classes.index("covid")
    logits, targets = predict_logits(*calibration)
    temperature = fit_temperature(logits, targets)
    probabilities = softmax(logits, temperature)
    threshold = operating_threshold(probabilities[:, positive], targets == positive, config.threshold.rule,
                                    config.threshold.target)
    weights = out / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    contract = model_contract(config, weights, temperature, threshold, manifest)
    write_json(out / "model.json", contract)
    write_json(out / "env.json", environment(config))
    from sklearn.metrics import roc_auc_score

    positives = targets == positive
    auc = float(roc_auc_score(positives, probabilities[:, positive])) if 0 < positives.sum() < len(positives) else None
    validation_figures = {"split": "val", "images": int(len(targets)), "auc_covid_vs_rest": auc,
                          "note": "validation figures chose the checkpoint and threshold: optimistic"}
    write_json(out / "model_card.json", model_card(config, contract, validation_figures))
    if (out / "metrics.csv").is_file():
        plot_curves(out / "metrics.csv", out / "curves.png")
    log.info("validation AUC (covid vs rest) %s; threshold %.3f (%s); temperature %.2f",
             "n/a" if auc is None else f"{auc:.3f}", threshold, contract["threshold_rule"], temperature)
    return out



