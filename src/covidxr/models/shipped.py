"""Packaging a run as the model shipped inside the package (`covidxr/shipped/`, located by
`covidxr.runs.shipped_dir`), which predict, explain, serve and evaluate/audit with --data use without --run.

`python -m covidxr.models.shipped RUN` packages a finished, evaluated and audited run: weights stored as
float16 safetensors (under 25 MB), `model.json` with the hash of that file, and the run's model card with
its evaluation and audit figures. The previous model's `model.onnx` is removed; `covidxr export` of the
shipped folder writes the new one (`make default-model` trains, evaluates, audits, packages and exports).
"""

from __future__ import annotations

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
    shipped.onnx.unlink(missing_ok=True)
    save_file(tensors, str(shipped.weights))
    size = shipped.weights.stat().st_size
    if size > MAX_BYTES:
        raise CovidxrError(f"{shipped.weights}: {size:,} bytes is over the {MAX_BYTES:,}-byte limit")
    shipped.write_contract({**contract, "weights_sha256": file_sha256(shipped.weights), "weights_dtype": "float16",
                            "shipped_from": source.root.name})
    shipped.write_card(card)
    return shipped.root


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m covidxr.models.shipped RUN")
    print(f"packaged {sys.argv[1]} into {package_run(sys.argv[1])}")
