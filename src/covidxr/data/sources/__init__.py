"""One importer per published layout; each returns an ImportResult (manifest + dropped rows)."""

from covidxr.data.sources.base import DEFAULT_VIEWS, ImportResult, SourceError
from covidxr.data.sources.cohen import import_cohen
from covidxr.data.sources.csvtable import import_csv
from covidxr.data.sources.folders import import_folders
from covidxr.data.sources.severity import import_severity

__all__ = ["DEFAULT_VIEWS", "ImportResult", "SourceError", "import_cohen", "import_csv", "import_folders",
           "import_severity"]
