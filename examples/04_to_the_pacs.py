# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # To the PACS
#
# A hospital's images live in a PACS and speak DICOM. This notebook takes one chest radiograph stored as a
# DICOM file (as a modality would send it), and:
#
# 1. predicts it with the shipped model, writing the result as a **DICOM Structured Report** (SR) and a
#    Secondary Capture (SC) with the Grad-CAM overlay: `covidxr predict chest.dcm --dicom-out results/`;
# 2. stores the image and its results in a local **Orthanc** PACS over DICOMweb (STOW-RS);
# 3. reads them back (QIDO-RS, WADO-RS) and shows what a viewer would find there;
# 4. runs `covidxr dicomweb`, the one command that does 1-2 for every new study on a server.
#
# The PACS is `$COVIDXR_DICOMWEB_URL` when set (its DICOMweb root), else an Orthanc this notebook starts on a
# free loopback port with a temporary configuration and stops at the end (Debian's `orthanc` and
# `orthanc-dicomweb`).
#
# **What it shows:** the round trip, and that the results carry their caveats and no identifying data of the
# patient beyond what the source study already holds. **What it does not prove:** anything about the
# prediction itself, nor conformance with your PACS (each vendor has its own habits; try a test server
# first). Research and teaching only: **not for clinical use**.

# %%
import atexit
import glob
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pydicom
import requests
from dicomweb_client import DICOMwebClient
from notebook_data import cohen_rows, covidxr, data_dir, require_data
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

WORK = Path(tempfile.mkdtemp(prefix="covidxr-04-"))
os.chdir(WORK)
print("work:", WORK)

# %% [markdown]
# ## A radiograph as a modality stores it
# One COVID-19 image of Cohen's collection, wrapped as a DX image with 12-bit pixels and a made-up patient
# (name, id, birth date): the kind of file a PACS holds.

# %%
DATA = data_dir()
require_data(DATA)
image = cohen_rows(DATA, covid=5, other=0).query("view == 'PA'")["path"].iloc[0]
pixels = np.asarray(Image.open(image).convert("L"))


def radiograph(pixels: np.ndarray, path: Path) -> Path:
    """A DX image for presentation: UIDs, patient and study modules, 12-bit pixels in 16 bits."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "PAT-0001", "Example^Patient", "19600101", "F"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20200401", "101500", "ACC-1", "1"
    ds.ReferringPhysicianName, ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "", "DX", 1, 1
    ds.ViewPosition, ds.PatientOrientation = "PA", ["L", "F"]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (pixels.astype(np.uint16) * 16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


source = pydicom.dcmread(radiograph(pixels, WORK / "chest.dcm"))
print(source.Modality, source.Rows, "x", source.Columns, "study", source.StudyInstanceUID)

# %% [markdown]
# ## Predict, and write the DICOM results
# `--dicom-out` writes `<SOPInstanceUID>.sr.dcm` (the structured report: label, probability, threshold,
# operating point, the model's identity and its caveats) and `.sc.dcm` (the overlay as an image a viewer
# shows) beside each other, in the source's study.

# %%
covidxr("predict chest.dcm --dicom-out results")
sr_path, = Path("results").glob("*.sr.dcm")
sc_path, = Path("results").glob("*.sc.dcm")
sr = pydicom.dcmread(sr_path)


def content_lines(items, depth: int = 0) -> list[str]:
    """The SR's content tree as text: concept name, then its value."""
    lines = []
    for item in items:
        name = item.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in item else ""
        if "TextValue" in item:
            value = item.TextValue
        elif "ConceptCodeSequence" in item:
            value = item.ConceptCodeSequence[0].CodeMeaning
        elif "MeasuredValueSequence" in item and item.MeasuredValueSequence:
            value = item.MeasuredValueSequence[0].NumericValue
        else:
            value = ""
        lines.append(f"{'  ' * depth}{name}: {value}")
        lines += content_lines(item.get("ContentSequence", []), depth + 1)
    return lines


print(sr.SOPClassUID.name, "| series:", sr.SeriesDescription)
print("\n".join(content_lines(sr.ContentSequence)))

# %% [markdown]
# ## A local PACS
# Orthanc with its DICOMweb plugin, started here with a temporary configuration on a free loopback port
# (nothing outside this machine can reach it), unless `$COVIDXR_DICOMWEB_URL` names one.

# %%
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_orthanc(folder: Path) -> tuple[str, subprocess.Popen]:
    """A fresh Orthanc with DICOMweb on a free loopback port; stopped when this kernel exits."""
    binary = shutil.which("Orthanc", path=os.environ.get("PATH", "") + os.pathsep + "/usr/sbin")
    plugins = glob.glob("/usr/share/orthanc/plugins/libOrthancDicomWeb.so*") + glob.glob(
        "/usr/lib/orthanc/libOrthancDicomWeb.so*")
    if not binary or not plugins:
        raise RuntimeError("Orthanc and its DICOMweb plugin are needed (apt-get install orthanc orthanc-dicomweb), "
                           "or set COVIDXR_DICOMWEB_URL to a DICOMweb server")
    port = free_port()
    config = {"Name": "covidxr-notebook", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
              "HttpPort": port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
              "DicomServerEnabled": False, "DicomPort": free_port(), "SaveJobs": False, "Plugins": [plugins[0]],
              "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "orthanc.json").write_text(json.dumps(config))
    process = subprocess.Popen([binary, str(folder / "orthanc.json")], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    atexit.register(process.terminate)
    rest = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while process.poll() is None and time.time() < deadline:
        try:
            if requests.get(f"{rest}/plugins/dicom-web", timeout=2).status_code == 200:
                return f"{rest}/dicom-web", process
        except requests.ConnectionError:
            time.sleep(0.2)
    process.terminate()
    raise RuntimeError("Orthanc did not start")


orthanc = None
URL = os.environ.get("COVIDXR_DICOMWEB_URL")
if not URL:
    URL, orthanc = start_orthanc(WORK / "orthanc")
print("DICOMweb root:", URL)

# %% [markdown]
# ## Store the image and its results (STOW-RS), then read them back

# %%
pacs = DICOMwebClient(URL)
pacs.store_instances([source, sr, pydicom.dcmread(sc_path)])
held = pacs.search_for_instances(study_instance_uid=source.StudyInstanceUID)
for found in held:
    header = pydicom.Dataset.from_json(found)
    print(header.Modality, header.SOPClassUID.name, header.SOPInstanceUID)

# %%
def read_back(modality: str) -> pydicom.Dataset:
    """The study's instance of `modality`, retrieved whole (WADO-RS)."""
    header = next(h for h in map(pydicom.Dataset.from_json, held) if h.Modality == modality)
    return pacs.retrieve_instance(source.StudyInstanceUID, header.SeriesInstanceUID, header.SOPInstanceUID)


stored_sr, stored_sc = read_back("SR"), read_back("OT")
print("the SR read back is the SR written:", stored_sr.ContentSequence == sr.ContentSequence)
print("\n".join(line for line in content_lines(stored_sr.ContentSequence) if "clinical" in line.lower()))
fig, axes = plt.subplots(1, 2, figsize=(10, 5))
axes[0].imshow(pixels, cmap="gray")
axes[0].set_title("the source image (DX)", fontsize=9)
axes[1].imshow(stored_sc.pixel_array, cmap="gray" if stored_sc.SamplesPerPixel == 1 else None)
axes[1].set_title("the Secondary Capture read back from the PACS: not for clinical use", fontsize=9)
for ax in axes:
    ax.axis("off")
plt.show()

# %% [markdown]
# ## The same for every new study: `covidxr dicomweb`
# It searches the server, retrieves each study's images, predicts them and stores the SR and SC back, skipping
# what already holds this model's results: run again here, it finds the study done.

# %%
covidxr(f"dicomweb --url {URL} --study {source.StudyInstanceUID}")

# %%
if orthanc is not None:
    orthanc.terminate()
    orthanc.wait(timeout=30)

# %% [markdown]
# What this notebook does not prove: that the probability in the SR means anything for this patient (the
# image may be in the shipped model's training split, and the model's limits are on the home page), nor that
# a given PACS or viewer shows SRs as Orthanc does. **Not for clinical use.**
