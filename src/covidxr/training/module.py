"""LightningModule for any `module` that maps a batch to logits: a whole Classifier, or a head alone
trained on cached backbone features."""

from __future__ import annotations

import lightning as L
import torch
from torch import nn
from torchmetrics.classification import BinaryAUROC, MulticlassAccuracy, MulticlassAUROC

from covidxr.models.classifier import Classifier


class LitClassifier(L.LightningModule):
    def __init__(self, module: nn.Module, num_classes: int, lr: float, weight_decay: float,
                 label_smoothing: float = 0.0, class_weights: torch.Tensor | None = None,
                 backbone_lr_factor: float = 1.0):
        super().__init__()
        self.module = module
        self.lr, self.weight_decay, self.backbone_lr_factor = lr, weight_decay, backbone_lr_factor
        self.loss = nn.CrossEntropyLoss(weight=class_weights, label_smoothing=label_smoothing)
        self.train_accuracy = MulticlassAccuracy(num_classes, average="micro")
        self.val_accuracy = MulticlassAccuracy(num_classes, average="micro")
        self.val_auc = BinaryAUROC() if num_classes == 2 else MulticlassAUROC(num_classes)
        self.binary = num_classes == 2

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.module(batch.float())

    def training_step(self, batch, _index):
        inputs, targets = batch
        logits = self(inputs)
        loss = self.loss(logits, targets)
        self.train_accuracy.update(logits, targets)
        self.log("train_loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=len(targets))
        self.log("train_accuracy", self.train_accuracy, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, _index):
        inputs, targets = batch
        logits = self(inputs)
        self.log("val_loss", nn.functional.cross_entropy(logits, targets), on_epoch=True, sync_dist=True,
                 batch_size=len(targets))
        self.val_accuracy.update(logits, targets)
        probabilities = logits.softmax(dim=1)
        self.val_auc.update(probabilities[:, 1] if self.binary else probabilities, targets)
        self.log("val_accuracy", self.val_accuracy, on_epoch=True)
        self.log("val_auc", self.val_auc, on_epoch=True, prog_bar=True)

    def parameter_groups(self) -> list[dict]:
        """Discriminative learning rates: the backbone at lr x backbone_lr_factor, the head at lr."""
        trainable = [p for p in self.module.parameters() if p.requires_grad]
        if not isinstance(self.module, Classifier) or self.backbone_lr_factor == 1.0:
            return [{"params": trainable, "lr": self.lr}]
        head = {id(p) for p in self.module.head.parameters()}
        return [
            {"params": [p for p in trainable if id(p) not in head], "lr": self.lr * self.backbone_lr_factor},
            {"params": [p for p in trainable if id(p) in head], "lr": self.lr},
        ]

    def configure_optimizers(self):
        groups = self.parameter_groups()
        optimizer = torch.optim.AdamW(groups, weight_decay=self.weight_decay)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in groups],
            total_steps=max(2, int(self.trainer.estimated_stepping_batches)),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
