"""The model shipped inside the package (`covidxr/shipped/`), used when no `--run` is given.

`python -m covidxr.models.shipped RUN` packages a finished, evaluated and audited run: weights stored as
float16 safetensors (under 25 MB), `model.json` with the hash of that file, and the run's model card with
its evaluation and audit figures. `make default-model` trains, evaluates, audits and packages it.
"""

from __future__ import annotations

import json
import sys
from importlib import resources
from pathlib import Path

from safetensors.torch import load_file, save_file

from covidxr.errors import CovidxrError, UsageError
from covidxr.training.rundir import file_sha256

MAX_BYTES = 25 * 1024 * 1024


def shipped_dir() -> Path:
    return Path(str(resources.files("covidxr") / "shipped"))


def shipped_run() -> Path:
    """The shipped model's folder; a usage error when this installation has none."""
    folder = shipped_dir()
    if not (folder / "model.json").is_file() or not (folder / "model.safetensors").is_file():
        raise UsageError(f"no model is shipped in this installation ({folder}): pass --run RUN, or create it with "
                         "`make default-model`")
    return folder


def is_shipped(run: Path) -> bool:
    return Path(run).resolve() == shipped_dir().resolve()


def package_run(run: str | Path, target: Path | None = None) -> Path:
    """Copy a run into the package as the shipped model (float16 weights)."""
    run, target = Path(run), target or shipped_dir()
    card = json.loads((run / "model_card.json").read_text())
    missing = [key for key in ("evaluations", "audits") if key not in card]
    if missing:
        raise CovidxrError(f"{run}: run `covidxr evaluate` and `covidxr audit` first (model card lacks {missing})")
    full = load_file(str(run / "model.safetensors"))
    tensors = {key: value.half() if value.is_floating_point() else value for key, value in full.items()}
    target.mkdir(parents=True, exist_ok=True)
    weights = target / "model.safetensors"
    save_file(tensors, str(weights))
    if weights.stat().st_size > MAX_BYTES:
        raise CovidxrError(f"{weights}: {weights.stat().st_size:,} bytes is over the {MAX_BYTES:,}-byte limit")
    contract = json.loads((run / "model.json").read_text())
    contract.update(weights_sha256=file_sha256(weights), weights_dtype="float16", shipped_from=run.name)
    (target / "model.json").write_text(json.dumps(contract, indent=2) + "\n")
    (target / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
    return target


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m covidxr.models.shipped RUN")
    print(f"packaged {sys.argv[1]} into {package_run(sys.argv[1])}")
