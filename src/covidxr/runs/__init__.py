"""The run directory, the inference contract and the schema of every file a stage writes: the bottom layer every
model-using stage reads.

    >>> from covidxr.runs import RunDir
    >>> contract = RunDir("out/run").read_contract()          # an InferenceContract (model.json, checked)
    >>> contract.positive_class, contract.threshold, contract.calibration.method
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
from covidxr.runs.cards import (
    AuditVerdicts,
    CardCalibration,
    CardEvaluation,
    CardInputCheck,
    CardOperatingPoint,
    CardSeverity,
    CardValidation,
    LungEvaluation,
    LungModelCard,
    ModelCard,
    Recalibration,
)
from covidxr.runs.contract import (
    FORMAT_VERSION,
    LUNG_FORMAT_VERSION,
    ContractBase,
    InferenceContract,
    LungModelContract,
    migrate_contract,
)
from covidxr.runs.inference import predicted_classes, softmax_with_temperature
from covidxr.runs.results import (
    AuditResult,
    CompareEntry,
    CrossValidationResult,
    EvaluationResult,
    OperatingPointFigures,
    SubgroupFigures,
    WrittenFile,
)
from covidxr.runs.rundir import (
    NOT_FOR_CLINICAL_USE,
    RunDir,
    default_cache_root,
    file_sha256,
    is_shipped,
    read_json,
    shipped_dir,
    shipped_run,
    write_json,
)

SCHEMAS: dict[str, type[WrittenFile]] = {
    "model": InferenceContract, "lung-model": LungModelContract, "evaluation": EvaluationResult,
    "audit": AuditResult, "compare-entry": CompareEntry, "cv": CrossValidationResult, "model-card": ModelCard,
    "lung-model-card": LungModelCard,
}
"""Each file's schema by the name of its JSON Schema in docs/schemas/ (`NAME.json`)."""

__all__ = [
    "FORMAT_VERSION", "LUNG_FORMAT_VERSION", "NOT_FOR_CLINICAL_USE", "OPERATING_POINT_NAMES", "SCHEMAS", "AuditResult",
    "AuditVerdicts", "Calibration", "CardCalibration", "CardEvaluation", "CardInputCheck", "CardOperatingPoint",
    "CardSeverity", "CardValidation", "CompareEntry", "ContractBase", "CrossValidationResult", "EvaluationResult",
    "FittedOn", "InferenceContract", "LungEvaluation", "LungModelCard", "LungModelContract", "ModelCard",
    "OperatingPoint", "OperatingPointFigures", "Recalibration", "RunDir", "Scorer", "SubgroupFigures",
    "WrittenFile", "migrate_contract", "default_cache_root", "file_sha256", "is_shipped", "log_odds",
    "predicted_classes", "read_json", "shift_prevalence", "shipped_dir", "shipped_run", "sigmoid",
    "softmax_with_temperature", "write_json",
]
