"""The finding -> label table, in one place (docs/reference.md, "Labels").

Matching is case-insensitive on the whole (stripped) finding, except that any finding containing
`COVID-19` takes the label of `COVID-19`. A finding the table does not list is never guessed: it has no
label and `data build` drops it as `finding unmapped`, naming the string.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from covidxr.errors import UsageError

if TYPE_CHECKING:
    import pandas as pd

TASKS = ("binary", "three-class")
POSITIVE_CLASS = "covid"
CLASSES = {"binary": ("non-covid", POSITIVE_CLASS), "three-class": ("normal", "pneumonia", POSITIVE_CLASS)}
COVID = "COVID-19"
_PNEUMONIA = (
    "SARS", "MERS", "Pneumocystis", "Pneumonia", "Streptococcus", "Mycoplasma Bacterial Pneumonia", "Legionella",
    "Varicella", "E.Coli", "Bacterial", "Klebsiella", "Chlamydophila", "Influenza", "Viral", "Fungal",
)
_NORMAL = ("No Finding", "Normal")
_NOT_PNEUMONIA = ("ARDS", "Lipoid")

DEFAULT_TABLE: dict[str, dict[str, str]] = {
    "binary": {COVID: POSITIVE_CLASS} | {f: "non-covid" for f in _PNEUMONIA + _NORMAL + _NOT_PNEUMONIA},
    "three-class": {COVID: POSITIVE_CLASS} | {f: "pneumonia" for f in _PNEUMONIA} | {f: "normal" for f in _NORMAL},
}

LabelTable = dict[str, dict[str, str]]


class LabelTableError(UsageError):
    """A --labels file that is not {task: {finding: label}}."""


def known_findings(table: LabelTable = DEFAULT_TABLE) -> list[str]:
    return sorted({finding for mapping in table.values() for finding in mapping})


def check_task(task: str) -> str:
    if task not in TASKS:
        raise UsageError(f"unknown task {task!r}; accepted: {', '.join(TASKS)}")
    return task


def label_for(finding: str, task: str, table: LabelTable = DEFAULT_TABLE) -> str | None:
    """The label of `finding` for `task`, or None when the table does not map it."""
    mapping = {f.strip().lower(): label for f, label in table[check_task(task)].items()}
    key = str(finding).strip().lower()
    if key in mapping:
        return mapping[key]
    if COVID.lower() in key and COVID.lower() in mapping:
        return mapping[COVID.lower()]
    return None


def labels_for(findings: pd.Series, task: str, table: LabelTable = DEFAULT_TABLE) -> pd.Series:
    """`label_for` of every finding ("" where the table does not map it), looked up once per distinct finding."""
    labels = {finding: label_for(finding, task, table) or "" for finding in findings.unique()}
    return findings.map(labels)


def load_label_table(path: str | Path) -> LabelTable:
    """Read a --labels YAML file: {binary: {finding: label}, three-class: {finding: label}}."""
    path = Path(path)
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise LabelTableError(f"{path}: cannot read label table ({error})") from None
    if not isinstance(content, dict) or not content:
        raise LabelTableError(f"{path}: expected a mapping {{task: {{finding: label}}}} with tasks {', '.join(TASKS)}")
    unknown = [t for t in content if t not in TASKS]
    if unknown:
        raise LabelTableError(f"{path}: unknown task(s) {unknown}; accepted: {', '.join(TASKS)}")
    for task, mapping in content.items():
        if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
            raise LabelTableError(f"{path}: '{task}' must map finding strings to label strings")
    return {task: {str(f): label for f, label in mapping.items()} for task, mapping in content.items()}
