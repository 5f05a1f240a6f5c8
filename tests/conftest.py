"""Synthetic chest-X-ray-like images and dataset layouts, made by the tests themselves."""

from __future__ import annotations

import csv
import importlib
import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
COHEN_HEADER = (
    "patientid,offset,sex,age,finding,survival,intubated,intubation_present,went_icu,in_icu,"
    "needed_supplemental_O2,extubated,temperature,pO2_saturation,leukocyte_count,neutrophil_count,"
    "lymphocyte_count,view,modality,date,location,folder,filename,doi,url,license,clinical_notes,"
    "other_notes,Unnamed: 28"
).split(",")


def xray_pixels(seed: int, size: int = 96) -> np.ndarray:
    """A smooth random 'radiograph': distinct seeds give unrelated images (and pHashes)."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray((rng.random((6, 6)) * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(coarse, dtype=np.uint8)


def save_image(pixels: np.ndarray, path: Path, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **options)
    return path


@pytest.fixture
def make_image(tmp_path):
    def make(name: str, seed: int, size: int = 96, **options) -> Path:
        return save_image(xray_pixels(seed, size), tmp_path / name, **options)
    return make


def write_dicom(
    path: Path,
    pixels: np.ndarray | None,
    patient_id: str = "SECRET-ID",
    photometric: str = "MONOCHROME2",
    modality: str = "DX",
    window: tuple[float, float] | None = None,
    slope: float = 1.0,
    intercept: float = 0.0,
) -> Path:
    """A DICOM file made with pydicom: 12-bit pixels in 16, identifying tags set (to prove they never leak)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = pydicom.Dataset()
    dataset.file_meta = meta
    dataset.PatientID, dataset.PatientName, dataset.PatientBirthDate = patient_id, "Doe^Jane", "19700101"
    dataset.PatientSex, dataset.PatientAge, dataset.Modality, dataset.ViewPosition = "F", "045Y", modality, "PA"
    if pixels is not None:
        values = pixels.astype(np.uint16) * 16
        dataset.Rows, dataset.Columns = values.shape
        dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, photometric
        dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 12, 11, 0
        dataset.RescaleSlope, dataset.RescaleIntercept = slope, intercept
        if window:
            dataset.WindowCenter, dataset.WindowWidth = window
        dataset.PixelData = values.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path, enforce_file_format=True)
    return path


def write_cohen(root: Path, rows: list[dict]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "metadata.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COHEN_HEADER)
        writer.writeheader()
        for row in rows:
            writer.writerow({"view": "PA", "modality": "X-ray", "folder": "images", "license": "CC BY"} | row)
    return root


@pytest.fixture
def cohen_dir(tmp_path) -> Path:
    """A small Cohen layout with the real mess: CT, lateral, absent file, double-listed file, junk."""
    root = tmp_path / "cohen"
    for index in range(12):
        save_image(xray_pixels(index), root / "images" / f"img{index}.jpg")
    (root / "images" / "broken.png").write_text("<html>not an image</html>")
    save_image(xray_pixels(99), root / "images" / "unlisted.png")
    rows = [
        {"patientid": "1", "finding": "COVID-19", "filename": "img0.jpg", "location": "Hospital A, Milan, Italy"},
        {"patientid": "1", "finding": "COVID-19", "filename": "img1.jpg", "location": "Hospital A, Milan, Italy"},
        {"patientid": "2", "finding": "COVID-19, ARDS", "filename": "img2.jpg", "url": "https://example.org/case/2"},
        {"patientid": "3", "finding": "Streptococcus", "filename": "img3.jpg", "view": "AP Supine", "license": ""},
        {"patientid": "4", "finding": "No Finding", "filename": "img4.jpg", "view": "AP"},
        {"patientid": "5", "finding": "SARS", "filename": "img5.jpg", "modality": "CT", "view": "Axial"},
        {"patientid": "6", "finding": "COVID-19", "filename": "img6.jpg", "view": "L"},
        {"patientid": "7", "finding": "COVID-19", "filename": "absent.jpg"},
        {"patientid": "8", "finding": "Pneumonia", "filename": "broken.png"},
        {"patientid": "9", "finding": "COVID-19", "filename": "img9.jpg", "sex": "M", "age": "65"},
        {"patientid": "10", "finding": "COVID-19", "filename": "img9.jpg", "sex": "M", "age": "65"},
        {"patientid": "11", "finding": "todo", "filename": "img10.jpg"},
        {"patientid": "12", "finding": "Lipoid", "filename": "img11.jpg"},
        {"patientid": "13", "finding": "COVID-19", "filename": "volume.nii.gz", "folder": "volumes", "modality": "CT"},
    ]
    return write_cohen(root, rows)


@pytest.fixture
def normals_csv(tmp_path) -> Path:
    """The RSNA-normals layout: header `,filename,finding` and images in a sibling folder."""
    root = tmp_path / "normals"
    names = []
    for index in range(20):
        name = f"n{index:03d}.jpg"
        save_image(xray_pixels(1000 + index), root / "normal_dataset" / name)
        names.append(name)
    table = root / "normal_xray_dataset.csv"
    table.write_text(",filename,finding\n" + "".join(f"{i},{n},Normal\n" for i, n in enumerate(names)))
    return table


def under_ci() -> bool:
    """Whether the environment says CI (`CI=true`, as CI services and .ci/run set it)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def required_under_ci(what: str, how: str) -> NoReturn:
    """The one skip policy: a test whose requirement `what` is absent fails under CI, where everything is
    installed, and skips elsewhere; both say what is missing and `how` to get it."""
    if under_ci():
        pytest.fail(f"CI is set but {what} is missing ({how})", pytrace=False)
    pytest.skip(f"{what} is missing ({how})", allow_module_level=True)


def import_or_required_under_ci(module: str, how: str) -> ModuleType:
    """`import module`, or `required_under_ci` naming the module (usable at a test module's top)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        required_under_ci(f"the Python package {module}", how)


def shared_data_or_skip() -> Path:
    """The shared real data (required under CI)."""
    if (SHARED_DATA / "covid-chestxray-dataset" / "metadata.csv").is_file():
        return SHARED_DATA
    required_under_ci(f"the shared data at {SHARED_DATA}", "see its README")


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def system_tool(name: str, package: str) -> str:
    """The path of a tool from a Debian package (required under CI: .ci/run installs it)."""
    found = shutil.which(name, path=os.environ.get("PATH", "") + os.pathsep + "/usr/sbin")
    if found:
        return found
    required_under_ci(name, f"apt-get install {package}; .ci/run installs it")


def chromium_or_skip() -> str:
    """Debian's chromium, which opens the HTML pages headless (required under CI)."""
    return system_tool("chromium", "chromium")


def free_port() -> int:
    """A loopback port free at the time of asking."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def lesion_image(seed: int, covid: bool, size: int = 64, marker: bool = False) -> np.ndarray:
    """A synthetic radiograph. 'covid' ones carry a bright patch inside the lung field, or, with `marker`,
    only a bright square in the top-left corner (a shortcut outside the lungs, like a hospital's label)."""
    pixels = xray_pixels(seed, size).astype(np.int16) // 2 + 40
    if covid and marker:
        pixels[: size // 8, : size // 8] = 255
    elif covid:
        rng = np.random.default_rng(seed)
        top, left = rng.integers(size // 4, size // 2, size=2)
        pixels[top:top + size // 4, left:left + size // 4] += 120
    return np.clip(pixels, 0, 255).astype(np.uint8)


def synthetic_training_manifest(root: Path, marker: bool = False) -> Path:
    """A built binary manifest of 72 synthetic images (two sources, one patient each) with splits."""
    from covidxr.data import build, import_folders

    for index in range(72):
        covid = index % 2 == 0
        folder = root / ("site-a" if index % 3 else "site-b") / ("covid" if covid else "normal")
        save_image(lesion_image(index, covid, marker=marker), folder / f"{index:03d}.png")
    imported = [import_folders(root / site, source=site) for site in ("site-a", "site-b")]
    return build(imported, task="binary", seed=0).save(root / "built.csv")


@pytest.fixture(scope="session")
def training_manifest(tmp_path_factory) -> Path:
    return synthetic_training_manifest(tmp_path_factory.mktemp("training-data"))


@pytest.fixture(scope="session")
def shortcut_manifest(tmp_path_factory) -> Path:
    return synthetic_training_manifest(tmp_path_factory.mktemp("shortcut-data"), marker=True)


PLAIN_TRAINING = {"model.pretrained": "none", "transfer.mode": "full", "preprocessing.lungs": "none",
                  "preprocessing.clahe": "false", "optimisation.class_balance": "sampler", "adversarial.weight": "0",
                  **{f"harmonisation.{name}_p": "0" for name in ("rescale", "jpeg", "blur", "noise", "gamma")}}
"""Whatever the `default` recipe mitigates, the tests' runs start plain and add what they test."""


def tiny_recipe_overrides(plain: bool = True, **extra: str) -> list[str]:
    """--set values for a seconds-long run on the synthetic data (from scratch, the whole image, no input check:
    the synthetic images are not radiographs; with `plain`, also without the default recipe's mitigations)."""
    settings = {"preprocessing.size": "32", "model.name": "covidxr_cnn", "trainer.max_epochs": "2",
                "optimisation.batch_size": "8", "trainer.checkpoint_every_n_steps": "3", "model.pretrained": "none",
                "transfer.mode": "full", "preprocessing.lungs": "none", "input_check": "none",
                **(PLAIN_TRAINING if plain else {}), **extra}
    return [f"{key}={value}" for key, value in settings.items()]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, training_manifest) -> tuple[Path, Path]:
    """(run directory, pixel cache) of a 4-epoch covidxr_cnn on the synthetic lesion data."""
    from covidxr.config import load_recipe
    from covidxr.training.run import train

    folder = tmp_path_factory.mktemp("trained")
    config = load_recipe("default", tiny_recipe_overrides(**{"trainer.max_epochs": "4"}))
    return train(config, training_manifest, folder / "run", cache_root=folder / "cache"), folder / "cache"


def write_radiograph(path: Path, pixels: np.ndarray, modality: str = "CR", photometric: str = "MONOCHROME2",
                     study_uid: str | None = None, patient_id: str = "SECRET-ID", frames: int = 1) -> Path:
    """A CR or DX image as a modality would store it: UIDs, patient and study modules (identifying values, to
    prove they never leak), 12-bit pixels in 16, stored inverted when MONOCHROME1 (so it decodes as `pixels`)."""
    from pydicom.uid import ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation

    sop_class = ComputedRadiographyImageStorage if modality == "CR" else DigitalXRayImageStorageForPresentation
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = pydicom.Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study_uid or generate_uid(), generate_uid()
    dataset.PatientID, dataset.PatientName, dataset.PatientBirthDate, dataset.PatientSex = (
        patient_id, "Doe^Jane", "19700101", "F")
    dataset.StudyDate, dataset.StudyTime, dataset.AccessionNumber, dataset.StudyID = "20200401", "101500", "ACC-77", "7"
    dataset.ReferringPhysicianName, dataset.Modality, dataset.SeriesNumber, dataset.InstanceNumber = "", modality, 1, 1
    dataset.ViewPosition, dataset.PatientOrientation = "PA", ["L", "F"]
    stored = (255 - pixels if photometric == "MONOCHROME1" else pixels).astype(np.uint16) * 16
    dataset.Rows, dataset.Columns = stored.shape
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, photometric
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 12, 11, 0
    if frames > 1:
        dataset.NumberOfFrames = frames
        stored = np.stack([stored] * frames)
    dataset.PixelData = stored.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path, enforce_file_format=True)
    return path


@contextmanager
def served_on_loopback(app) -> Iterator[int]:
    """Run an ASGI app with uvicorn in a thread on a free loopback port; yields the port, stops the server after."""
    import threading
    import time

    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.1)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)
