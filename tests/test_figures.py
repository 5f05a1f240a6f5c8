"""Figures are drawn on `matplotlib.figure.Figure` objects: importing covidxr never switches the caller's
matplotlib backend, and no figure goes through pyplot's global state."""

import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "covidxr"
DRAWING_MODULES = ("covidxr.evaluation.plots", "covidxr.explain.cam", "covidxr.reporting.preview",
                   "covidxr.reporting.report", "covidxr.training.rundir", "covidxr.training.lr_find")


def test_importing_covidxr_keeps_the_callers_matplotlib_backend():
    code = ("import matplotlib; matplotlib.use('svg'); "
            + "; ".join(f"import {name}" for name in DRAWING_MODULES)
            + "; print(matplotlib.get_backend())")
    backend = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert backend.strip() == "svg"


def test_no_source_switches_the_backend_or_draws_through_pyplot():
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        for forbidden in ("matplotlib.use(", "import matplotlib.pyplot", "from matplotlib import pyplot", "plt."):
            assert forbidden not in text, f"{path.name}: {forbidden}"
