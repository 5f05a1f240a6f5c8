"""Callbacks: one row per epoch in RUN/metrics.csv, whatever logger runs inside."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import lightning as L
import pandas as pd

METRIC_COLUMNS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_auc", "lr", "seconds"]


class EpochCsv(L.Callback):
    """Appends `metrics.csv` rows; `epoch_offset` numbers epochs on across training stages. On resume,
    rows of the epoch being redone (and later) are removed first."""

    def __init__(self, path: Path, epoch_offset: int = 0):
        self.path, self.epoch_offset = Path(path), epoch_offset
        self.started = time.perf_counter()

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.is_global_zero and self.path.is_file():
            rows = pd.read_csv(self.path)
            rows[rows["epoch"] < self.epoch_offset + trainer.current_epoch].to_csv(self.path, index=False)

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        row = {"epoch": self.epoch_offset + trainer.current_epoch,
               **{key: metrics.get(key, float("nan")) for key in METRIC_COLUMNS[1:6]},
               "lr": trainer.optimizers[0].param_groups[-1]["lr"], "seconds": time.perf_counter() - self.started}
        new = not self.path.is_file()
        with open(self.path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=METRIC_COLUMNS)
            if new:
                writer.writeheader()
            writer.writerow(row)
