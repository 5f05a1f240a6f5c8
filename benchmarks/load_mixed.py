"""The mixed load of `load_api.py --mixed`: the service's memory budget measured, not asserted.

Goal (issue 33): peak resident memory <= 1.5 GB, back within 20% of warm after the load, no 5xx, no
traceback, no patient name in the server's log. Warm: after one predict, explain and dicom-sr each.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, RLELossless, generate_uid

from _common import DATA, machine
from load_api import free_port, wait_until_healthy

THREADS, SECRET = 8, "RaceSecret"
MIX = {"predict": 120, "explain": 30, "dicom-sr": 30, "bad": 20, "multiframe-predict": 6, "multiframe-explain": 2}


def status_kib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _dataset(rows: int, columns: int, bits: int, syntax: str, index: int) -> pydicom.Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ComputedRadiographyImageStorage, generate_uid()
    meta.TransferSyntaxUID = syntax
    dataset = pydicom.Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = ComputedRadiographyImageStorage, meta.MediaStorageSOPInstanceUID
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = generate_uid(), generate_uid()
    dataset.PatientName, dataset.PatientID = f"{SECRET}{index:03d}", f"MRN-{SECRET}-{index}"
    dataset.Modality, dataset.Rows, dataset.Columns = "CR", rows, columns
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = bits, bits, bits - 1, 0
    return dataset


def as_dicom(gray: np.ndarray, index: int) -> bytes:
    dataset = _dataset(*gray.shape, 8, ExplicitVRLittleEndian, index)
    dataset.PixelData = gray.tobytes()
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def rle_frame(rows: int, columns: int) -> bytes:
    """One 8-bit RLE frame, a grey ramp down the rows, written as PackBits runs of 128 (no encoder needed)."""
    segment = bytearray()
    for row in range(rows):
        value, left = row * 255 // rows, columns
        while left:
            run = min(128, left)
            segment += bytes((257 - run, value)) if run > 1 else bytes((0, value))
            left -= run
    header = np.zeros(16, dtype="<u4")
    header[0], header[1] = 1, 64
    return header.tobytes() + bytes(segment) + (b"\0" if len(segment) % 2 else b"")


def large_multiframe(frames: int = 24, side: int = 7000) -> bytes:
    dataset = _dataset(side, side, 8, RLELossless, 999)
    dataset.NumberOfFrames = frames
    dataset.PixelData = encapsulate([rle_frame(side, side)] * frames, has_bot=True)
    dataset["PixelData"].VR = "OB"
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def bad_inputs() -> list[tuple[str, bytes]]:
    png = io.BytesIO()
    Image.fromarray(np.zeros((64, 64), dtype=np.uint8)).save(png, format="PNG")
    return [("page.png", b"<html>not an image</html>"), ("cut.png", png.getvalue()[:60]), ("empty.jpg", b""),
            ("junk.dcm", b"\0" * 128 + b"DICM" + b"\x01" * 200)]


def mixed_load(run: str | None, explain: bool = True) -> None:
    """The mixed load; without `explain`, no /v1/explain request (PyTorch is then never loaded: the ONNX path)."""
    mix = MIX if explain else {kind: count for kind, count in MIX.items() if "explain" not in kind}
    images = sorted((DATA / "covid-chestxray-dataset" / "images").glob("*.jp*g"))[:20]
    if not images:
        sys.exit(f"shared data not found in {DATA}; set DATA=dir")
    payloads = [(path.name, path.read_bytes()) for path in images]
    dicoms = [(f"{index}.dcm", as_dicom(np.asarray(Image.open(path).convert("L")), index))
              for index, path in enumerate(images)]
    large = ("multiframe.dcm", large_multiframe())
    port, base = free_port(), ""
    log = tempfile.NamedTemporaryFile(prefix="covidxr-serve-", suffix=".log", delete=False)
    server = subprocess.Popen([sys.executable, "-m", "covidxr.cli", "serve", *(["--run", run] if run else []),
                               "--port", str(port)], stderr=log, stdout=log)
    base = f"http://127.0.0.1:{port}"
    jobs = ([("/v1/predict", payloads[i % len(payloads)]) for i in range(mix["predict"])]
            + [("/v1/explain", payloads[i % len(payloads)]) for i in range(mix.get("explain", 0))]
            + [("/v1/dicom-sr", dicoms[i % len(dicoms)]) for i in range(mix["dicom-sr"])]
            + [("/v1/predict", bad_inputs()[i % 4]) for i in range(mix["bad"])]
            + [("/v1/predict", large)] * mix["multiframe-predict"]
            + [("/v1/explain", large)] * mix.get("multiframe-explain", 0))
    kinds = [kind for kind, count in mix.items() for _ in range(count)]  # in the order of `jobs`
    order = np.random.default_rng(0).permutation(len(jobs))

    def call(job: tuple[str, tuple[str, bytes]]) -> int:
        route, (name, content) = job
        return httpx.post(base + route, files={"file": (name, content)}, timeout=600).status_code

    try:
        wait_until_healthy(base)
        start = status_kib(server.pid, "VmRSS")
        for route, payload in (("/v1/predict", payloads[0]), ("/v1/explain", payloads[0]),
                               ("/v1/dicom-sr", dicoms[0]))[:: 1 if explain else 2]:
            call((route, payload))
        warm = status_kib(server.pid, "VmRSS")
        began = time.time()
        with ThreadPoolExecutor(THREADS) as pool:
            statuses = list(pool.map(call, [jobs[i] for i in order]))
        wall = time.time() - began
        time.sleep(2)
        after, peak = status_kib(server.pid, "VmRSS"), status_kib(server.pid, "VmHWM")
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    text = Path(log.name).read_text(errors="replace")
    counts = {status: statuses.count(status) for status in sorted(set(statuses))}
    by_kind: dict[str, Counter] = {}
    for index, status in zip(order, statuses):
        by_kind.setdefault(kinds[index], Counter())[status] += 1
    names = text.count(SECRET)
    print(f"machine: {machine()}; mixed load on {THREADS} threads: {mix}; large file {len(large[1]) / 1e6:.1f} MB "
          f"(24 frames of 7000x7000, RLE); model: {run or 'shipped'}; {wall:.0f} s")
    print("statuses by kind: " + "; ".join(f"{kind} {dict(sorted(tally.items()))}" for kind, tally in by_kind.items()))
    print(f"statuses: {counts}; tracebacks in the log: {text.count('Traceback')}; patient names in the log: {names}")
    print(f"server memory: start {start:.0f} MiB, warm {warm:.0f} MiB, peak {peak:.0f} MiB, after {after:.0f} MiB "
          f"({after / warm:.2f}x warm)")
    errors_5xx = sum(n for s, n in counts.items() if s >= 500)
    print(f"mixed load: peak RSS {peak / 1024:.2f} GiB (goal <= 1.5 GB), after/warm {after / warm:.2f} (goal <= 1.2), "
          f"{errors_5xx} errors 5xx, {names} names in the log")
