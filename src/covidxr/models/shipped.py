"""Packaging a run as the model shipped inside the package (`covidxr/shipped/`, located by
`covidxr.runs.shipped_dir`), which predict, explain, serve and evaluate/audit with --data use without --run.

`python -m covidxr.models.shipped RUN` packages a finished, evaluated and audited run: weights stored as
float16 safetensors (under 25 MB), `model.json` with the hash of that file, and the run's model card with
its evaluation and audit figures. The previous model's `model.onnx` is removed; `covidxr export` of the
shipped folder writes the new one (`make default-model` trains, evaluates, audits, packages and exports).

`python -m covidxr.models.shipped --calibration RUN EVALUATION.json` gives the shipped model the calibration,
operating points and input check of RUN (the shipped model recalibrated on its own validation split by
`covidxr calibrate`; its weights must be the shipped ones) and puts EVALUATION.json (`covidxr evaluate` of RUN on
the shipped model's test split) in its card as its internal test figures (`make shipped-calibration`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

from covidxr.errors import CovidxrError
from covidxr.runs import (
    CardCalibration,
    CardEvaluation,
    CardInputCheck,
    CardOperatingPoint,
    RunDir,
    file_sha256,
    read_json,
    shipped_dir,
)

CARD_KEYS = ("n_images", "n_patients", "prevalence", "auc", "auc_ci", "sensitivity", "sensitivity_ci", "specificity",
             "specificity_ci", "ece", "ece_ci", "ece_before_calibration", "ece_before_calibration_ci", "brier",
             "operating_point", "operating_points", "calibration")

MAX_BYTES = 25 * 1024 * 1024


def package_run(run: str | Path, target: Path | None = None) -> Path:
    """Copy a run into the package as the shipped model (float16 weights)."""
    source, shipped = RunDir(run), RunDir(target or shipped_dir())
    contract = source.read_contract()
    card = source.read_card()
    missing = [key for key in ("evaluations", "audits") if getattr(card, key) is None]
    if missing:
        raise CovidxrError(f"{source.root}: run `covidxr evaluate` and `covidxr audit` first (model card lacks "
                           f"{missing})")
    full = load_file(str(source.weights))
    tensors = {key: value.half() if value.is_floating_point() else value for key, value in full.items()}
    shipped.root.mkdir(parents=True, exist_ok=True)
    candidate = shipped.weights.with_name(f".{shipped.weights.name}.tmp")
    save_file(tensors, str(candidate))
    size = candidate.stat().st_size
    if size > MAX_BYTES:
        candidate.unlink()
        raise CovidxrError(f"{source.weights}: {size:,} bytes as float16 is over the {MAX_BYTES:,}-byte limit of a "
                           "shipped model; the shipped model was left as it was")
    shipped.onnx.unlink(missing_ok=True)
    os.replace(candidate, shipped.weights)
    shipped.write_contract(contract.updated(weights_sha256=file_sha256(shipped.weights), weights_dtype="float16",
                                            shipped_from=source.root.name))
    shipped.write_card(card)
    return shipped.root


INPUT_CHECK = "input_check.json"  # fitted by `make input-check`
CALIBRATION_KEYS = ("calibration", "operating_points", "default_operating_point", "temperature", "threshold",
                    "threshold_rule", "input_check")


def package_calibration(run: str | Path, evaluation: str | Path, target: Path | None = None) -> Path:
    """Copy RUN's calibration keys into the shipped model.json and the test evaluation into its card."""
    source, shipped = RunDir(run), RunDir(target or shipped_dir())
    contract, recalibrated = shipped.read_contract(), source.read_contract()
    if recalibrated.weights_sha256 != file_sha256(shipped.weights):
        raise CovidxrError(f"{source.root}: its weights are not the shipped model's; calibrate the shipped model")
    figures = read_json(evaluation)
    test_images = sum((contract.data or {}).get("by_split", {}).get("test", {}).values())
    if figures.get("split") != "test" or figures.get("n_images") != test_images:
        raise CovidxrError(f"{evaluation}: not an evaluation of the shipped model's test split")
    recalibration = (recalibrated.model_extra or {}).get("recalibration")
    if not isinstance(recalibration, dict):
        raise CovidxrError(f"{source.model_json}: records no recalibration; make it with `covidxr calibrate`")
    changes = {key: value for key, value in recalibrated.content.items() if key in CALIBRATION_KEYS}
    fitted_on = {**changes["calibration"].get("fitted_on", {}), "data": "validation split (covidxr calibrate)"}
    if (shipped.root / INPUT_CHECK).is_file():
        changes["input_check"] = read_json(shipped.root / INPUT_CHECK)
    changes["calibration"] = {**changes["calibration"], "fitted_on": fitted_on}
    contract = contract.updated(**changes, calibration_figures_out_of_fold=recalibration["figures_out_of_fold"])
    shipped.write_contract(contract)
    card = shipped.read_card()
    tested = CardEvaluation.model_validate({key: figures[key] for key in CARD_KEYS if key in figures})
    evaluations = card.evaluations or {}
    sections = {
        "evaluations": {**evaluations,
                        "internal-test": evaluations.get("internal-test", CardEvaluation()).merged(tested)},
        "operating_point": CardOperatingPoint(threshold=contract.threshold, rule=contract.threshold_rule,
                                              name=contract.default_operating_point, fitted_on=fitted_on["data"]),
        "calibration": CardCalibration(
            method=contract.calibration.method, fitted_on=fitted_on, prevalence=contract.calibration.prevalence,
            compared=contract.calibration.compared, operating_points=contract.content["operating_points"],
            default_operating_point=contract.default_operating_point,
            why_this_default=why_default(figures["operating_points"], contract.default_operating_point))}
    if contract.input_check:
        check = contract.input_check
        sections["input_check"] = CardInputCheck.model_validate({"name": check.name, "fitted_on": check.fitted_on,
                                                                "figures": check.figures})
    shipped.write_card(card.updated(**sections))
    return shipped.root


def why_default(points: dict, default: str) -> str:
    """The card's argument for the default point, from the test-split figures of every point."""
    others = [f"{name} has test sensitivity {point['sensitivity']:.2f} and specificity {point['specificity']:.2f}"
              for name, point in points.items() if name != default]
    chosen = points[default]
    return (f"{default} (test sensitivity {chosen['sensitivity']:.2f}, specificity {chosen['specificity']:.2f}) is the "
            f"default because the alternatives trade far more of one figure than they gain of the other: "
            f"{'; '.join(others)}. Choose another with --operating-point when a site's costs differ.")


def main(argv: list[str]) -> int:
    """`python -m covidxr.models.shipped RUN` or `--calibration RUN EVALUATION.json`: 0 packaged, 1 refused (the
    reason on stderr), 2 usage."""
    if not (len(argv) == 1 or (len(argv) == 3 and argv[0] == "--calibration")):
        print("usage: python -m covidxr.models.shipped RUN | --calibration RUN EVALUATION.json", file=sys.stderr)
        return 2
    try:
        if argv[0] == "--calibration":
            print(f"packaged the calibration of {argv[1]} into {package_calibration(argv[1], argv[2])}")
            return 0
        print(f"packaged {argv[0]} into {package_run(argv[0])}")
    except CovidxrError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
