"""Learning-rate range test (Lightning's tuner) with its plot."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.tuner import Tuner
from matplotlib.figure import Figure

from covidxr.config import TrainConfig
from covidxr.data.labels import CLASSES
from covidxr.data.manifest import load_manifest
from covidxr.models.classifier import create_model
from covidxr.runs import default_cache_root
from covidxr.training.data import ensure_cache, loader, select_rows, split_datasets
from covidxr.training.module import LitClassifier


def find_learning_rate(config: TrainConfig, manifest_path, out: Path, cache_root=None) -> tuple[float, Path]:
    L.seed_everything(config.seed, workers=True, verbose=False)
    manifest = select_rows(load_manifest(manifest_path), config)
    datasets = split_datasets(manifest, ensure_cache(manifest, cache_root or default_cache_root(), config), config)
    model, _ = create_model(config.model, len(CLASSES[config.task]), config.preprocessing.size)
    module = LitClassifier(model, len(CLASSES[config.task]), config.optimisation.lr, config.optimisation.weight_decay)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, accelerator=config.trainer.accelerator,
                        devices=1, enable_model_summary=False, default_root_dir=Path(out).parent)
    finder = Tuner(trainer).lr_find(module, loader(datasets["train"], config, True, config.seed),
                                    loader(datasets["val"], config, False, config.seed),
                                    min_lr=1e-6, max_lr=1.0, num_training=min(100, len(datasets["train"])),
                                    update_attr=False)
    suggestion = finder.suggestion()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    title = f"learning-rate range test: {config.model.name}, {config.preprocessing.size}px"
    plot_range_test(finder.results["lr"], finder.results["loss"], suggestion, title).savefig(out, dpi=100)
    return float(suggestion or config.optimisation.lr), out


def plot_range_test(rates: list[float], losses: list[float], suggestion: float | None, title: str) -> Figure:
    """Smoothed training loss against the learning rate (log scale), the suggestion marked, as Lightning draws it
    (its own `plot` draws through matplotlib's global figure manager)."""
    figure = Figure(figsize=(6, 4))
    axis = figure.subplots()
    axis.plot(rates, losses)
    axis.set_xscale("log")
    axis.set_xlabel("learning rate")
    axis.set_ylabel("loss (smoothed)")
    if suggestion is not None:
        at = rates.index(suggestion)
        axis.plot(rates[at], losses[at], marker="o", markersize=10, color="red", label=f"suggested {suggestion:.2e}")
        axis.legend()
    axis.set_title(title)
    figure.tight_layout()
    return figure
