"""The run directory and the inference contract: the bottom layer every model-using stage reads.

    >>> from covidxr.runs import RunDir
    >>> contract = RunDir("out/run").read_contract()
    >>> contract.positive_class, contract.threshold, contract.temperature
"""

from covidxr.runs.calibration import (
    OPERATING_POINT_NAMES,
    Calibration,
    FittedOn,
    OperatingPoint,
    Scorer,
    log_odds,
    shift_prevalence,
    sigmoid,
)
from covidxr.runs.inference import predicted_classes, softmax_with_temperature
from covidxr.runs.rundir import (
    FORMAT_VERSION,
    NOT_FOR_CLINICAL_USE,
    InferenceContract,
    RunDir,
    default_cache_root,
    file_sha256,
    is_shipped,
    read_json,
    shipped_dir,
    shipped_run,
    write_json,
)

__all__ = [
    "FORMAT_VERSION", "NOT_FOR_CLINICAL_USE", "OPERATING_POINT_NAMES", "Calibration", "FittedOn", "InferenceContract",
    "OperatingPoint", "RunDir", "Scorer", "default_cache_root", "file_sha256", "is_shipped", "log_odds",
    "predicted_classes", "read_json", "shift_prevalence", "shipped_dir", "shipped_run", "sigmoid",
    "softmax_with_temperature", "write_json",
]
