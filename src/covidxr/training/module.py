"""LightningModule for any `module` that maps a batch to logits: a whole Classifier, or a head alone
trained on cached backbone features. With a `domain_head` (a whole Classifier only), training batches
carry each image's domain and the loss adds the adversary's (domain-adversarial training)."""

from __future__ import annotations

import math

import lightning as L
import torch
from torch import nn
from torchmetrics.classification import BinaryAUROC, MulticlassAccuracy, MulticlassAUROC

from covidxr.models.classifier import Classifier
from covidxr.models.heads import DomainHead


class LitClassifier(L.LightningModule):
    def __init__(self, module: nn.Module, num_classes: int, lr: float, weight_decay: float,
                 label_smoothing: float = 0.0, class_weights: torch.Tensor | None = None,
                 backbone_lr_factor: float = 1.0, domain_head: DomainHead | None = None,
                 adversarial_weight: float = 0.0, adversarial_warmup: bool = True):
        super().__init__()
        if domain_head is not None and not isinstance(module, Classifier):
            raise TypeError("a domain head needs the whole Classifier (its backbone features), not a head alone")
        self.module = module
        self.domain_head = domain_head
        self.adversarial_weight, self.adversarial_warmup = adversarial_weight, adversarial_warmup
        self.lr, self.weight_decay, self.backbone_lr_factor = lr, weight_decay, backbone_lr_factor
        self.loss = nn.CrossEntropyLoss(weight=class_weights, label_smoothing=label_smoothing)
        self.train_accuracy = MulticlassAccuracy(num_classes, average="micro")
        self.val_accuracy = MulticlassAccuracy(num_classes, average="micro")
        self.val_auc = BinaryAUROC() if num_classes == 2 else MulticlassAUROC(num_classes)
        self.binary = num_classes == 2

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.module(batch.float())

    def adversarial_coefficient(self) -> float:
        """The gradient-reversal strength now: the weight, ramped up from 0 by Ganin's schedule when warming up."""
        if not self.adversarial_warmup:
            return self.adversarial_weight
        progress = min(1.0, self.global_step / max(1, int(self.trainer.estimated_stepping_batches)))
        return self.adversarial_weight * (2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0)

    def training_step(self, batch, _index):
        inputs, targets, *domains = batch
        if self.domain_head is None:
            logits = self(inputs)
            loss = self.loss(logits, targets)
        else:
            features = self.module.features(inputs.float())
            logits = self.module.head(features)
            domain_loss = nn.functional.cross_entropy(self.domain_head(features, self.adversarial_coefficient()),
                                                      domains[0])
            loss = self.loss(logits, targets) + domain_loss
            self.log("train_domain_loss", domain_loss, on_step=False, on_epoch=True, sync_dist=True,
                     batch_size=len(targets))
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
        """Discriminative learning rates: the backbone at lr x backbone_lr_factor, the heads (the domain head
        too) at lr."""
        trainable = [p for p in self.module.parameters() if p.requires_grad]
        adversary = list(self.domain_head.parameters()) if self.domain_head is not None else []
        if not isinstance(self.module, Classifier) or self.backbone_lr_factor == 1.0:
            return [{"params": trainable + adversary, "lr": self.lr}]
        head = {id(p) for p in self.module.head.parameters()}
        return [
            {"params": [p for p in trainable if id(p) not in head], "lr": self.lr * self.backbone_lr_factor},
            {"params": [p for p in trainable if id(p) in head] + adversary, "lr": self.lr},
        ]

    def configure_optimizers(self):
        groups = self.parameter_groups()
        optimizer = torch.optim.AdamW(groups, weight_decay=self.weight_decay)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in groups],
            total_steps=max(2, int(self.trainer.estimated_stepping_batches)),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
