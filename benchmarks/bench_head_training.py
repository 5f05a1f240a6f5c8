"""Head-only training: covidxr's cached backbone features vs re-running the frozen backbone every epoch
(the Keras way), same data, same head, same optimiser, same seed, in one run.

resnet18 at 224 px, a balanced 400-image subset of the shared data (200 COVID-19, 200 others), 25
epochs. Ours is the real `covidxr train` path (transfer.mode: head). The baseline is a plain loop that
feeds every image through the frozen backbone each epoch. No augmentation in either (cached features
cannot carry it), so both heads see the same inputs and their validation AUCs should agree within noise.
Both timers cover the same span: from the first backbone pass to the last head epoch (the baseline's
timer starts after its data and model are ready; ours times `covidxr train`'s training stage, and the
whole command's time is printed too). Prints both and the AUCs; the last line is the speed-up."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader

from _common import machine, shared_manifests
from covidxr.config import load_recipe
from covidxr.data import build, save_manifest
from covidxr.models.classifier import build_classifier
from covidxr.training import run as run_module
from covidxr.training.data import ensure_cache, split_datasets

EPOCHS, SIZE = 25, 224
SETTINGS = [f"preprocessing.size={SIZE}", "model.name=resnet18", "transfer.mode=head", f"trainer.max_epochs={EPOCHS}",
            f"trainer.patience={EPOCHS}", "optimisation.class_balance=none", "optimisation.lr=0.001",
            "optimisation.batch_size=32", "optimisation.label_smoothing=0"]


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
    model, _ = build_classifier(config.model, 2, SIZE)
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


def main() -> None:
    torch.set_num_threads(torch.get_num_threads())
    manifest = subset()
    config = load_recipe("default", SETTINGS)
    counts = manifest.groupby("split")["label"].value_counts().to_dict()
    print(f"machine: {machine()}; resnet18 {SIZE}px, {EPOCHS} epochs, {len(manifest)} images {counts}")
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        save_manifest(manifest, folder / "subset.csv")
        ensure_cache(manifest, folder / "cache", config)
        stage_seconds = []
        run_stage = run_module._run_stage

        def timed_stage(*args, **kwargs):
            start = time.perf_counter()
            outcome = run_stage(*args, **kwargs)
            stage_seconds.append(time.perf_counter() - start)
            return outcome

        run_module._run_stage = timed_stage
        start = time.perf_counter()
        run = run_module.train(config, folder / "subset.csv", folder / "run", cache_root=folder / "cache")
        command_seconds = time.perf_counter() - start
        ours_seconds = sum(stage_seconds)
        ours_auc = float(pd.read_csv(run / "metrics.csv")["val_auc"].iloc[-1])
        theirs_seconds, theirs_auc = keras_way(config, manifest, folder / "cache")
    print(f"ours (features cached once, `covidxr train`): training {ours_seconds:.1f} s (features + 25 head epochs; "
          f"the whole command with data checks, calibration and run files {command_seconds:.1f} s), "
          f"last-epoch val AUC {ours_auc:.3f}")
    print(f"keras way (backbone every epoch): {theirs_seconds:.1f} s, last-epoch val AUC {theirs_auc:.3f}")
    print(f"head training: cached features {theirs_seconds / ours_seconds:.1f}x faster (target >= 20x); "
          f"val AUC {ours_auc:.3f} vs {theirs_auc:.3f} (difference {abs(ours_auc - theirs_auc):.3f})")


if __name__ == "__main__":
    main()
