"""Packaging a run as the model shipped inside the package (`covidxr/shipped/`, located by
`covidxr.runs.shipped_dir`), which predict, explain, serve and evaluate/audit with --data use without --run.

`python -m covidxr.models.shipped RUN` packages a finished, evaluated and audited run: weights stored as
float16 safetensors (under 25 MB), `model.json` with the hash of that file, and the run's model card with
its evaluation and audit figures. The previous model's `model.onnx` is removed; `covidxr export` of the
shipped folder writes the new one (`make default-model` trains, evaluates, audits, packages and exports).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

from covidxr.errors import CovidxrError
from covidxr.runs import RunDir, file_sha256, shipped_dir

MAX_BYTES = 25 * 1024 * 1024


def package_run(run: str | Path, target: Path | None = None) -> Path:
    """Copy a run into the package as the shipped model (float16 weights)."""
    source, shipped = RunDir(run), RunDir(target or shipped_dir())
    contract = source.read_contract().content
    card = source.read_card()
    missing = [key for key in ("evaluations", "audits") if key not in card]
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
    shipped.write_contract({**contract, "weights_sha256": file_sha256(shipped.weights), "weights_dtype": "float16",
                            "shipped_from": source.root.name})
    shipped.write_card(card)
    return shipped.root


def main(argv: list[str]) -> int:
    """`python -m covidxr.models.shipped RUN`: 0 packaged, 1 refused (the reason on stderr), 2 usage."""
    if len(argv) != 1:
        print("usage: python -m covidxr.models.shipped RUN", file=sys.stderr)
        return 2
    try:
        print(f"packaged {argv[0]} into {package_run(argv[0])}")
    except CovidxrError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
