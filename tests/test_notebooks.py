"""The example notebooks (examples/*.py, jupytext percent scripts) run end to end, and say what they should.

Each script is converted with jupytext and executed with nbclient in a kernel of this Python, the four at once
(their kernels' start-up and waits overlap), on small subsets of the shared data: a cell that raises fails its
notebook's test. The notebooks read the data from $COVIDXR_DATA and write under the kernel's $TMPDIR. Orthanc
(Debian `orthanc`, `orthanc-dicomweb`) is needed by notebook 04: absent, that test skips, and fails under CI.
"""

from __future__ import annotations

import asyncio
import glob
import os
import re
import shutil
import time
from datetime import datetime
from pathlib import Path

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from conftest import required_under_ci, shared_data_or_skip

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NOTEBOOKS = ("01_writeup_redone", "02_find_the_shortcut", "03_your_own_data", "04_to_the_pacs")
CELL_TIMEOUT_S = 300
ESTIMATE = re.compile(r"\d\.\d{2,3} \[\d\.\d{2,3}, \d\.\d{2,3}\]")  # a figure with its 95% CI


def orthanc_ready() -> bool:
    """Whether notebook 04 can start its PACS here: Orthanc and its DICOMweb plugin."""
    binary = shutil.which("Orthanc", path=os.environ.get("PATH", "") + os.pathsep + "/usr/sbin")
    plugin = glob.glob("/usr/share/orthanc/plugins/libOrthancDicomWeb.so*") + glob.glob(
        "/usr/lib/orthanc/libOrthancDicomWeb.so*")
    return bool(binary and plugin)


class Executed:
    """One notebook after execution: its cells, the error that stopped it (if any) and its run time."""

    def __init__(self, notebook: nbformat.NotebookNode, error: Exception | None, seconds: float):
        self.notebook, self.error, self.seconds = notebook, error, seconds

    def outputs(self) -> list[dict]:
        return [output for cell in self.notebook.cells if cell.cell_type == "code" for output in cell.outputs]

    def text(self) -> str:
        """Everything the cells printed or returned, as plain text."""
        parts = []
        for output in self.outputs():
            parts.append(output.get("text", ""))
            parts.append(str(output.get("data", {}).get("text/plain", "")))
        return re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(parts))

    def images(self) -> int:
        return sum("image/png" in output.get("data", {}) for output in self.outputs())

    def slowest_cells(self, count: int = 3) -> str:
        """'12 s (cell 5), ...': where the time went, from the execution times nbclient records."""
        seconds = []
        for index, cell in enumerate(self.notebook.cells):
            timing = cell.get("metadata", {}).get("execution", {})
            if "iopub.execute_input" in timing and "shell.execute_reply" in timing:
                began, ended = (datetime.fromisoformat(timing[key].replace("Z", "+00:00"))
                                for key in ("iopub.execute_input", "shell.execute_reply"))
                seconds.append(((ended - began).total_seconds(), index))
        return ", ".join(f"{took:.0f} s (cell {index})" for took, index in sorted(seconds, reverse=True)[:count])


async def _execute(name: str, env: dict[str, str], out: Path) -> Executed:
    """Run examples/NAME.py as a notebook; the executed notebook is written to OUT/NAME.ipynb (to read a failure)."""
    notebook = jupytext.read(EXAMPLES / f"{name}.py")
    # coalesce_streams: a cell's stdout is one text. Under load the kernel's output thread can flush between the
    # arguments of one print, and two stream outputs joined line by line would split that printed line in two.
    client = NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3", coalesce_streams=True,
                            resources={"metadata": {"path": str(EXAMPLES)}})
    started, error = time.perf_counter(), None
    try:
        await client.async_execute(env=env)
    except CellExecutionError as failed:
        error = failed
    nbformat.write(notebook, out / f"{name}.ipynb")
    return Executed(notebook, error, time.perf_counter() - started)


@pytest.fixture(scope="module")
def executed(tmp_path_factory) -> dict[str, Executed]:
    """The four notebooks executed at once (04 left out where Orthanc is missing)."""
    data = shared_data_or_skip()
    work = tmp_path_factory.mktemp("notebooks")
    inline = "module://matplotlib_inline.backend_inline"  # figures inline, whatever MPLBACKEND the suite runs under
    # One thread per kernel: four kernels share the cores, and more threads only fight over them.
    env = {**os.environ, "COVIDXR_DATA": str(data), "TMPDIR": str(work), "MPLBACKEND": inline, "OMP_NUM_THREADS": "1"}
    names = [name for name in NOTEBOOKS if name != "04_to_the_pacs" or orthanc_ready()]

    async def all_of_them() -> list[Executed]:
        return await asyncio.gather(*(_execute(name, env, work) for name in names))

    started = time.perf_counter()
    results = dict(zip(names, asyncio.run(all_of_them())))
    print(f"notebooks: {time.perf_counter() - started:.0f} s in all (run at once), executed copies in {work}")
    for name, result in results.items():
        print(f"  {name}: {result.seconds:.0f} s; slowest cells {result.slowest_cells()}")
    return results


def ran(executed: dict[str, Executed], name: str) -> Executed:
    result = executed[name]
    if result.error is not None:
        pytest.fail(f"{name} failed:\n{result.error}")
    assert "not for clinical use" in result.text().lower()
    assert result.images() >= 1, f"{name} displayed no figure"
    return result


def test_the_writeup_redone_puts_the_headline_beside_the_source_and_within_cohen_figures(executed):
    result = ran(executed, "01_writeup_redone")
    text = result.text()
    assert re.search(r"image split: \d+ of \d+ test images belong to a patient", text)
    patient_row = next(line for line in text.splitlines() if line.startswith("split by patient (honest)"))
    assert len(ESTIMATE.findall(patient_row)) >= 3, patient_row  # accuracy, AUC, source-only: each with its CI
    assert "percentile bootstrap over patients" in text


def test_find_the_shortcut_audits_occludes_and_explains(executed):
    result = ran(executed, "02_find_the_shortcut")
    text = result.text()
    assert re.search(r"origin from embeddings: The embeddings .*AUC \d\.\d\d", text)
    assert "occlusion: " in text
    assert len(re.findall(r"\d+% of the heat inside the lungs", text)) == 2
    assert result.images() >= 3  # the audit's figure, the Grad-CAM overlays, the occlusions


def test_your_own_data_imports_trains_evaluates_and_calibrates(executed):
    result = ran(executed, "03_your_own_data")
    text = result.text()
    assert "$ covidxr data import folders" in text and "wrote run-site (weights unchanged)" in text
    assert re.search(r"auc +" + ESTIMATE.pattern, text)
    assert re.search(r"ECE out of fold: before " + ESTIMATE.pattern, text)


def test_to_the_pacs_stores_the_sr_in_orthanc_and_reads_it_back(executed):
    if "04_to_the_pacs" not in executed:
        required_under_ci("Orthanc with its DICOMweb plugin", "apt-get install orthanc orthanc-dicomweb; .ci/run "
                          "installs them")
    result = ran(executed, "04_to_the_pacs")
    text = result.text()
    read_back = [line for line in text.splitlines() if line.startswith("the SR read back is the SR written")]
    assert read_back == ["the SR read back is the SR written: True"], read_back or text[-3000:]
    assert re.search(r"^SR .*Comprehensive SR|^SR ", text, re.MULTILINE)
    assert "already holds this model's SR and SC" in text
