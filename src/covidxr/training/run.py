"""`covidxr train`: from a manifest and a recipe to a self-describing run directory."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import pandas as pd
import torch
import yaml
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import Logger
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import Dataset

from covidxr.config import TrainConfig, validated
from covidxr.data.labels import CLASSES, POSITIVE_CLASS
from covidxr.data.manifest import load_dropped, load_manifest, save_dropped, save_manifest
from covidxr.errors import UsageError
from covidxr.lungs import preprocessor
from covidxr.metrics import auc_or_none
from covidxr.models.classifier import Classifier, create_model, pretrained_provenance
from covidxr.models.heads import DomainHead
from covidxr.models.inference import predict_logits
from covidxr.runs import CardValidation, RunDir, default_cache_root, write_json
from covidxr.training.calibration import calibration_contract
from covidxr.training.callbacks import EpochCsv
from covidxr.training.data import by_cache_shard, class_weights, ensure_cache, loader, select_rows, split_datasets
from covidxr.training.features import backbone_features
from covidxr.training.module import LitClassifier
from covidxr.training.rundir import environment, model_card, model_contract, plot_curves, random_frozen_backbone
from covidxr.training.tracking import epoch_logger, log_result, register_model, tracked_run

log = logging.getLogger("covidxr.train")


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
    config: TrainConfig, stage_dir: Path, epochs: int, metrics: EpochCsv, own_sampler: bool = False,
    logger: Logger | None = None,
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
        strategy=settings.strategy, precision=precision, logger=logger or False, default_root_dir=stage_dir,
        callbacks=[best, epoch_end, steps, EarlyStopping("val_auc", mode="max", patience=settings.patience), metrics],
        num_sanity_val_steps=0, deterministic="warn", enable_model_summary=False, log_every_n_steps=10,
        use_distributed_sampler=not own_sampler,
    )
    return trainer, best


@dataclass(frozen=True)
class StageResult:
    """A finished stage: `scorer` applied to `validation` gives the validation logits that the temperature and
    threshold are fitted on (the head on cached backbone features after head-only training, else the whole
    model on validation images). `main_process` is False in DDP worker processes, which stop there."""

    scorer: nn.Module
    validation: Dataset
    main_process: bool = True


def domain_head(model: Classifier, train_set: Dataset, config: TrainConfig) -> DomainHead:
    """The adversary's head, sized for the backbone's embedding and the training rows' domains."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        size = config.preprocessing.size
        channels = model.features(torch.zeros(1, 1, size, size)).shape[1]
    model.train(was_training)
    return DomainHead(channels, int(train_set.domains.max()) + 1, config.adversarial.hidden)


def _run_stage(stage: str, epochs: int, model: Classifier, datasets: dict, config: TrainConfig, run: RunDir,
               offset: int, resume: bool, logger: Logger | None = None) -> StageResult:
    """Train one stage (`head`: the head on frozen backbone features; `full`: the whole model)."""
    stage_dir = run.checkpoints / stage
    finished = stage_dir / "final.safetensors"
    target = model.head if stage == "head" else model
    if resume and finished.is_file():
        target.load_state_dict(load_file(str(finished)))
        log.info("stage %s already finished: loaded %s", stage, finished)
        return StageResult(model, datasets["val"])
    if stage == "head":
        model.backbone.requires_grad_(False)
        if random_frozen_backbone(config, pretrained_provenance(config.model)):
            log.warning("the frozen backbone has random weights (pretrained: none): this trains a head on random "
                        "features, which is not transfer learning")
        train_set, val_set = (backbone_features(model, datasets[s]) for s in ("train", "val"))
    else:
        model.backbone.requires_grad_(True)
        train_set, val_set = datasets["train"], datasets["val"]
    weights = class_weights(torch.as_tensor(datasets["train"].targets), len(CLASSES[config.task]))
    adversary = config.adversarial
    module = LitClassifier(
        target, len(CLASSES[config.task]), config.optimisation.lr, config.optimisation.weight_decay,
        config.optimisation.label_smoothing, weights if config.optimisation.class_balance == "weights" else None,
        config.transfer.backbone_lr_factor if config.transfer.mode == "two-stage" and stage == "full" else 1.0,
        domain_head(model, datasets["train"], config) if stage == "full" and adversary.weight > 0 else None,
        adversary.weight, adversary.warmup,
    )
    metrics = EpochCsv(run.metrics, offset)
    trainer, best = _trainer(config, stage_dir, epochs, metrics, own_sampler=by_cache_shard(config, train_set),
                             logger=logger)
    last = stage_dir / "last.ckpt"  # written at each epoch end: resuming redoes the interrupted epoch
    trainer.fit(module, loader(train_set, config, True, config.seed), loader(val_set, config, False, config.seed),
                ckpt_path=str(last) if resume and last.is_file() else None, weights_only=True)
    if not trainer.is_global_zero:
        return StageResult(target, val_set, main_process=False)
    if best.best_model_path:
        state = torch.load(best.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
    save_file({k: v.contiguous() for k, v in target.state_dict().items()}, str(finished))
    model.backbone.requires_grad_(True)
    return StageResult(target, val_set)


def _prepare_run(config: TrainConfig, manifest_path: Path, run: RunDir,
                 resume: bool) -> tuple[TrainConfig, pd.DataFrame]:
    if resume:
        if not run.config.is_file():
            raise UsageError(f"{run.root} holds no run to continue (no config.yaml)", "resume")
        stored = validated(TrainConfig, yaml.safe_load(run.config.read_text()), str(run.config))
        if stored != config:
            log.warning("resuming with the run's own config.yaml; the recipe and overrides given now are ignored")
        return stored, load_manifest(run.manifest)
    if is_main_process() and run.config.exists():
        raise UsageError("already holds a run; write to another folder, or resume this one", "out", run.root)
    manifest = select_rows(load_manifest(manifest_path), config)
    named = preprocessor(config.preprocessing).settings  # names the lung model
    config = config.model_copy(update={"preprocessing": named})
    if is_main_process():
        run.root.mkdir(parents=True, exist_ok=True)
        run.config.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
        save_manifest(manifest, run.manifest)
        save_dropped(load_dropped(manifest_path), run.manifest)
    return config, manifest


def train(config: TrainConfig, manifest_path: str | Path, out: str | Path, cache_root: str | Path | None = None,
          resume: bool = False) -> Path | None:
    """Train a recipe on a manifest into run directory `out`; returns it (None in DDP worker processes)."""
    run = RunDir(out)
    config, manifest = _prepare_run(config, Path(manifest_path), run, resume)
    with tracked_run(run.root.name) as run_id:
        L.seed_everything(config.seed, workers=True, verbose=False)
        cache = ensure_cache(manifest, cache_root or default_cache_root(), config)
        model, report = create_model(config.model, len(CLASSES[config.task]), config.preprocessing.size)
        if report is not None:
            for line in report.lines():
                log.info("weights %s: %s", config.model.weights, line)
        datasets = split_datasets(manifest, cache, config)
        offset, result = 0, None
        for stage, epochs in _stages(config):
            result = _run_stage(stage, epochs, model, datasets, config, run, offset, resume, epoch_logger(run_id))
            if not result.main_process:
                return None
            offset = int(pd.read_csv(run.metrics)["epoch"].max()) + 1 if run.metrics.is_file() else 0
        finish_run(model, result, manifest, config, run)
        card = run.read_card()
        final = {"validation": card.validation.model_dump(mode="json", exclude_unset=True),
                 "operating_points": run.read_contract().content["operating_points"]}
        log_result(run_id, final, config.model_dump(mode="json"), run.root)
        register_model(run_id, card.to_json())
    return run.root


def finish_run(model: Classifier, stage: StageResult, manifest: pd.DataFrame, config: TrainConfig,
               run: RunDir) -> Path:
    """Fit calibration and operating points on validation, write weights and the run's JSON files and plots."""
    positive = CLASSES[config.task].index(POSITIVE_CLASS)
    logits, targets = predict_logits(stage.scorer, stage.validation)
    patients = manifest.loc[manifest["split"] == "val", "patient_id"].reset_index(drop=True)
    default_point = "balanced" if config.threshold.rule == "youden" else "high-sensitivity"
    calibrated = calibration_contract(logits, targets, patients, positive, "validation split", default_point,
                                      config.threshold.target)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(run.weights))
    contract = run.write_contract(model_contract(config, run.weights, calibrated, manifest))
    write_json(run.env, environment(config))
    probabilities = contract.scorer().probabilities(logits)
    positives = targets == positive
    auc = auc_or_none(positives, probabilities[:, positive])
    validation_figures = CardValidation(
        split="val", images=int(len(targets)), auc_covid_vs_rest=auc,
        note="validation figures chose the checkpoint, calibration and thresholds: optimistic")
    run.write_card(model_card(config, contract.content, validation_figures))
    if run.metrics.is_file():
        plot_curves(run.metrics, run.curves)
    log.info("validation AUC (%s vs rest) %s; calibration %s; threshold %.3f (%s)", POSITIVE_CLASS,
             "n/a" if auc is None else f"{auc:.3f}", contract.calibration.method, contract.threshold,
             contract.default_operating_point)
    return run.root
