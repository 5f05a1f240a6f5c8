"""Datasets: import published layouts into a manifest, build (label, dedup, balance, split), summarize.

    >>> from covidxr import data
    >>> cohen = data.import_cohen("covid-chestxray-dataset")          # ImportResult
    >>> rsna = data.import_csv("rsna-normal-224/normal_xray_dataset.csv", image_col="filename",
    ...                        label_col="finding", root="rsna-normal-224/normal_dataset", source="rsna")
    >>> built = data.build([cohen.manifest, rsna.manifest], task="binary")
    >>> data.summarize(built.manifest, built.dropped)["by_split"]

The names below are imported on first use (PEP 562), so that decoding and preparing an image
(`covidxr.data.imageio`, `covidxr.data.preprocess`) does not load pandas, SciPy or scikit-learn: the lean
inference path of `covidxr predict` and `covidxr serve` imports only those two modules.
"""

from __future__ import annotations

import sys
from importlib import import_module
from types import ModuleType

_HOMES = {
    "covidxr.data.build": ("BUILD_REASONS", "BuildResult", "LeakError", "build"),
    "covidxr.data.labels": ("CLASSES", "DEFAULT_TABLE", "TASKS", "label_for", "load_label_table"),
    "covidxr.data.manifest": ("COLUMNS", "ManifestError", "load_dropped", "load_manifest", "save_manifest"),
    "covidxr.data.sources": ("DEFAULT_VIEWS", "ImportResult", "SourceError", "import_cohen", "import_csv",
                             "import_folders", "import_severity"),
    "covidxr.data.split": ("find_leaks",),
    "covidxr.data.summary": ("summarize",),
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'covidxr.data' has no attribute {name!r}")
    value = getattr(import_module(_MODULE_OF[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(ModuleType):
    """Keeps `covidxr.data.build` the function: importing the submodule of the same name (as training does)
    would otherwise set the package attribute to the module, and `data.build(...)` would fail."""

    def __setattr__(self, name: str, value: object) -> None:
        if isinstance(value, ModuleType) and name in _MODULE_OF:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
