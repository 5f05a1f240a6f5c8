"""Shared by the benchmark scripts: where the shared data is, the machine, and manifests of it."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import pandas as pd

DATA = Path(os.environ.get("DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
RECIPE = Path(__file__).resolve().parent / "ablation" / "0-resnet18-scratch.yaml"
"""The speed benchmarks' recipe: the first wave's default (ResNet-18 from scratch, 128 px, whole image), kept
fixed so their figures stay comparable when the shipped default changes."""


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cores} cores ({cpu}), Python {sys.version.split()[0]}, {platform.system()}"


def shared_manifests() -> tuple[pd.DataFrame, pd.DataFrame]:
    """(Cohen frontal X-rays, RSNA normals) as imported manifests."""
    from covidxr.data import import_cohen, import_csv

    if not (DATA / "covid-chestxray-dataset" / "metadata.csv").is_file():
        sys.exit(f"shared data not found in {DATA}; set DATA=dir")
    cohen = import_cohen(DATA / "covid-chestxray-dataset").manifest
    rsna = import_csv(DATA / "rsna-normal-224" / "normal_xray_dataset.csv", image_col="filename",
                      label_col="finding", root=DATA / "rsna-normal-224" / "normal_dataset", source="rsna").manifest
    return cohen, rsna
