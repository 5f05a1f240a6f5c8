"""Prepared pixels on disk, read at memory speed: one memory-mapped uint8 array per preprocessing.

Layout of `CACHE/<size>px-<hash>/` (the folder name is `Preprocessing.key()`):
- `config.json`   the preprocessing settings
- `pixels.u8`     N x size x size uint8, appended entry by entry
- `index.csv`     sha256, slot, width, height and the border cut of each entry; replaced atomically
- `failures.csv`  files the last `prepare` could not use, with the problem

An entry is keyed by the sha256 of the file's bytes, so two rows of one file share it and a file whose
bytes changed is prepared again. The index is written after the pixels it points to (write, then
rename), and pixels past the index are cut off on open: a killed `prepare` leaves no half entry.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from covidxr.data.imageio import ImageReadError, read_grayscale
from covidxr.data.preprocess import LungMasker, Preprocessing, preprocess
from covidxr.errors import CovidxrError, UsageError
from covidxr.progress import map_with_progress

INDEX_COLUMNS = ["sha256", "slot", "width", "height", "top", "bottom", "left", "right"]
SAVE_EVERY = 256


class CacheMiss(CovidxrError, KeyError):
    """Images a cache does not hold; the message says how to prepare them."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Prepared:
    """One image made ready, or the problem that stopped it."""

    sha256: str
    pixels: np.ndarray | None = None
    width: int = 0
    height: int = 0
    top: int = 0
    bottom: int = 0
    left: int = 0
    right: int = 0
    problem: str = ""


def prepare_file(job: tuple[str, str, Preprocessing, LungMasker | None]) -> Prepared:
    """Check the file still has the manifest's bytes, decode and preprocess it."""
    path, expected_sha256, config, lungs = job
    try:
        content_sha256 = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        if content_sha256 != expected_sha256:
            return Prepared(expected_sha256, problem="file changed since import (sha256 differs): re-import it")
        image = read_grayscale(path)
        pixels, cut = preprocess(image, config, lungs)
    except ImageReadError as error:
        return Prepared(expected_sha256, problem=error.problem)
    except OSError as error:
        return Prepared(expected_sha256, problem=f"cannot read ({error.strerror})")
    return Prepared(expected_sha256, pixels, image.shape[1], image.shape[0], **asdict(cut))


class PixelCache:
    """The prepared pixels of one preprocessing configuration under a cache root."""

    def __init__(self, root: str | Path, config: Preprocessing):
        self.config = config
        self.folder = Path(root) / config.key()
        self.entry_bytes = config.size * config.size
        self.index = self._load_index()
        self._slots = dict(zip(self.index["sha256"], self.index["slot"]))
        self._pixels: np.memmap | None = None

    @property
    def data_path(self) -> Path:
        return self.folder / "pixels.u8"

    def _load_index(self) -> pd.DataFrame:
        path = self.folder / "index.csv"
        if not path.is_file():
            return pd.DataFrame({c: pd.Series(dtype=str if c == "sha256" else int) for c in INDEX_COLUMNS})
        index = pd.read_csv(path, dtype={"sha256": str})
        if self.data_path.is_file() and self.data_path.stat().st_size > len(index) * self.entry_bytes:
            os.truncate(self.data_path, len(index) * self.entry_bytes)
        return index

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, sha256: str) -> bool:
        return sha256 in self._slots

    def slots(self, sha256s: pd.Series | list[str]) -> np.ndarray:
        """The slot of each hash; raises CacheMiss naming how many are absent."""
        missing = [s for s in sha256s if s not in self._slots]
        if missing:
            raise CacheMiss(f"{self.folder}: {len(missing)} image(s) are not prepared "
                            f"(e.g. sha256 {missing[0][:12]}...); run `covidxr prepare MANIFEST -o CACHE`")
        return np.array([self._slots[s] for s in sha256s], dtype=np.int64)

    def pixels(self) -> np.ndarray:
        """All entries as a read-only (N, size, size) uint8 memory map."""
        if self._pixels is None or len(self._pixels) != len(self):
            shape = (len(self), self.config.size, self.config.size)
            empty = np.empty(shape, np.uint8)
            self._pixels = np.memmap(self.data_path, dtype=np.uint8, mode="r", shape=shape) if len(self) else empty
        return self._pixels

    def get(self, sha256: str) -> np.ndarray:
        return np.array(self.pixels()[self.slots([sha256])[0]])

    def add(self, results: list[Prepared]) -> None:
        """Append prepared entries: pixels first, then the index (atomically)."""
        fresh = [r for r in results if r.pixels is not None and r.sha256 not in self._slots]
        if not fresh:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.data_path, "ab") as handle:
            for result in fresh:
                handle.write(np.ascontiguousarray(result.pixels, dtype=np.uint8).tobytes())
            handle.flush()
            os.fsync(handle.fileno())
        start = len(self.index)
        rows = pd.DataFrame([{**asdict(r), "slot": start + i} for i, r in enumerate(fresh)])[INDEX_COLUMNS]
        self.index = pd.concat([self.index, rows], ignore_index=True) if start else rows
        self._slots.update(zip(rows["sha256"], rows["slot"]))
        self._write_atomically("index.csv", self.index.to_csv(index=False))
        self._write_atomically("config.json", json.dumps(self.config.model_dump(mode="json"), indent=2))

    def _write_atomically(self, name: str, text: str) -> None:
        temporary = self.folder / f".{name}.tmp"
        temporary.write_text(text)
        os.replace(temporary, self.folder / name)

    def write_failures(self, failures: pd.DataFrame) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._write_atomically("failures.csv", failures.to_csv(index=False))
        return self.folder / "failures.csv"


@dataclass
class PrepareReport:
    cache: PixelCache
    prepared: int
    reused: int
    failures: pd.DataFrame

    def lines(self) -> list[str]:
        lines = [f"prepared {self.prepared} image(s), reused {self.reused} from {self.cache.folder}"]
        if len(self.failures):
            lines.append(f"failed   {len(self.failures)} image(s) (listed in {self.cache.folder / 'failures.csv'}):")
            lines += [f"  {row.path}: {row.problem}" for row in self.failures.head(20).itertuples()]
        return lines


def prepare(manifest: pd.DataFrame, root: str | Path, config: Preprocessing = Preprocessing(),
            lungs: LungMasker | None = None) -> PrepareReport:
    """Decode and preprocess every manifest image the cache lacks, on all cores, with a progress bar.
    `lungs`: the lung masker a `config.lungs` other than "none" needs (a picklable callable)."""
    if config.lungs != "none" and lungs is None:
        raise UsageError("needs a lung masker: use covidxr.lungs.prepare_with_lungs (or pass lungs=)", "lungs",
                         config.lungs)
    cache = PixelCache(root, config)
    files = manifest.drop_duplicates("sha256")
    todo = files[~files["sha256"].map(cache.__contains__)]
    jobs = [(path, sha, config, lungs) for path, sha in zip(todo["path"], todo["sha256"])]
    batch: list[Prepared] = []
    problems: dict[str, str] = {}
    for result in map_with_progress(prepare_file, jobs, f"preparing {config.size}px"):
        if result.problem:
            problems[result.sha256] = result.problem
            continue
        batch.append(result)
        if len(batch) >= SAVE_EVERY:
            cache.add(batch)
            batch = []
    cache.add(batch)
    failed = manifest[manifest["sha256"].isin(problems)][["image_id", "path", "sha256"]]
    failed = failed.assign(problem=failed["sha256"].map(problems))
    cache.write_failures(failed)
    return PrepareReport(cache, prepared=len(todo) - len(problems), reused=len(files) - len(todo), failures=failed)
