"""Datasets: import published layouts into a manifest, build (label, dedup, balance, split), summarize.

    >>> from covidxr import data
    >>> cohen = data.import_cohen("covid-chestxray-dataset")          # ImportResult
    >>> rsna = data.import_csv("rsna-normal-224/normal_xray_dataset.csv", image_col="filename",
    ...                        label_col="finding", root="rsna-normal-224/normal_dataset", source="rsna")
    >>> built = data.build([cohen.manifest, rsna.manifest], task="binary")
    >>> data.summarize(built.manifest, built.dropped)["by_split"]
"""

from covidxr.data.build import BUILD_REASONS, BuildResult, LeakError, build
from covidxr.data.labels import CLASSES, DEFAULT_TABLE, TASKS, label_for, load_label_table
from covidxr.data.manifest import COLUMNS, ManifestError, load_dropped, load_manifest, save_manifest
from covidxr.data.sources import DEFAULT_VIEWS, ImportResult, SourceError, import_cohen, import_csv, import_folders
from covidxr.data.split import find_leaks
from covidxr.data.summary import summarize

__all__ = [
    "BUILD_REASONS", "BuildResult", "CLASSES", "COLUMNS", "DEFAULT_TABLE", "DEFAULT_VIEWS", "ImportResult",
    "LeakError", "ManifestError", "SourceError", "TASKS", "build", "find_leaks", "import_cohen", "import_csv",
    "import_folders", "label_for", "load_dropped", "load_label_table", "load_manifest", "save_manifest", "summarize",
]
