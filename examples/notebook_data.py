"""Small subsets of the shared data for the example notebooks, and `covidxr` commands run in the notebook.

The notebooks must run in a minute or two on 2 CPU cores, so they import a few dozen images rather than the
whole collections: `small_cohen` writes a copy of Cohen's `metadata.csv` restricted to a few whole patients, with
links to their images, laid out as the collection publishes it (so `covidxr data import cohen` reads it as is);
`small_rsna` writes the first rows of the RSNA normals' table. Nothing is copied from the data's pixels.
Research and teaching software; not for clinical use.
"""

from __future__ import annotations

import os
import shlex
import warnings
from pathlib import Path

import pandas as pd

# Progress bars print as text in a notebook: no widget library is needed (nor asked for).
warnings.filterwarnings("ignore", message='install "ipywidgets"')
warnings.filterwarnings("ignore", message="IProgress not found")

from covidxr.cli import main  # noqa: E402  (after the filters: importing it sets up the progress bars)

FRONTAL_VIEWS = ("PA", "AP", "AP Supine")


def data_dir() -> Path:
    """`$COVIDXR_DATA`, else `../shared/data` beside the repository (the layout of the shared data's README)."""
    configured = os.environ.get("COVIDXR_DATA")
    if configured:
        return Path(configured).expanduser().resolve()
    return (Path(__file__).resolve().parents[1].parent / "shared" / "data").resolve()


def require_data(root: Path) -> None:
    """Stop the notebook with a clear message when the two collections are not at `root`."""
    needed = [root / "covid-chestxray-dataset" / "metadata.csv", root / "rsna-normal-224" / "normal_xray_dataset.csv"]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"missing {', '.join(missing)}: set COVIDXR_DATA to a folder laid out like "
                                "../shared/data, or run `covidxr data download cohen|rsna-normal --to DIR`")


def _frontal_xrays(metadata: pd.DataFrame, images: Path) -> pd.DataFrame:
    present = metadata["filename"].map(lambda name: (images / str(name)).is_file())
    return metadata[(metadata["modality"] == "X-ray") & metadata["view"].isin(FRONTAL_VIEWS)
                    & (metadata["folder"] == "images") & present]


def _whole_patients(rows: pd.DataFrame, images: int, seed: int) -> pd.DataFrame:
    """Whole patients drawn at random until about `images` images are taken."""
    patients = rows["patientid"].drop_duplicates().sample(frac=1.0, random_state=seed)
    counts = rows.groupby("patientid").size()
    taken = patients[counts.loc[patients].cumsum().to_numpy() <= images]
    return rows[rows["patientid"].isin(taken)]


def cohen_rows(root: Path, covid: int, other: int, seed: int = 0, exclude: frozenset[str] = frozenset()
               ) -> pd.DataFrame:
    """Rows of Cohen's `metadata.csv` for about `covid` COVID-19 and `other` other frontal X-rays of whole patients
    (none of the `exclude` patient ids), with the image's absolute `path`."""
    source = root / "covid-chestxray-dataset"
    metadata = pd.read_csv(source / "metadata.csv", dtype=str, keep_default_na=False)
    frontal = _frontal_xrays(metadata, source / "images")
    frontal = frontal[~frontal["patientid"].isin(exclude) & (frontal["finding"] != "")]
    is_covid = frontal["finding"].str.contains("COVID-19")
    chosen = pd.concat([_whole_patients(frontal[is_covid], covid, seed),
                        _whole_patients(frontal[~is_covid], other, seed)])
    return chosen.assign(path=[str(source / "images" / name) for name in chosen["filename"]])


def small_cohen(root: Path, out: Path, covid: int, other: int, seed: int = 0) -> Path:
    """Cohen's collection cut to about `covid` COVID-19 and `other` other frontal X-rays of whole patients."""
    chosen = cohen_rows(root, covid, other, seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    chosen.drop(columns="path").to_csv(out / "metadata.csv", index=False)
    for name, path in zip(chosen["filename"], chosen["path"]):
        link = out / "images" / name
        if not link.exists():
            link.symlink_to(path)
    return out


def link_images(paths: list[str], folder: Path) -> None:
    """Links to `paths` in `folder` (created): a folder of images without copying any."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in paths:
        link = folder / Path(path).name
        if not link.exists():
            link.symlink_to(path)


def small_rsna(root: Path, out: Path, count: int) -> Path:
    """The RSNA normals' table cut to its first `count` rows (the images stay where they are)."""
    table = pd.read_csv(root / "rsna-normal-224" / "normal_xray_dataset.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    table.head(count).to_csv(out, index=False)
    return out


def rsna_paths(root: Path, count: int, skip: int = 0) -> list[str]:
    """Paths of `count` RSNA normals, after the first `skip` rows of their table."""
    table = pd.read_csv(root / "rsna-normal-224" / "normal_xray_dataset.csv")
    return [str(root / "rsna-normal-224" / "normal_dataset" / name) for name in table["filename"][skip:skip + count]]


def covidxr(command: str) -> None:
    """Run `covidxr COMMAND` in this Python process (as the console script would, without starting a new one);
    raises when it exits other than 0, so a failing step stops the notebook."""
    print(f"$ covidxr {command}", flush=True)
    try:
        code = main(shlex.split(command))
    except SystemExit as stop:  # argparse's usage errors
        code = int(stop.code or 0)
    if code != 0:
        raise RuntimeError(f"`covidxr {command}` exited {code}")
