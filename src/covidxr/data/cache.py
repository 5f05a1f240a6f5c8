"""Prepared pixels on disk, read at memory speed: memory-mapped uint8 arrays per preprocessing.

Layout of `CACHE/<size>px-<hash>/` (the folder name is `Preprocessing.key()`):
- `config.json`   the preprocessing settings
- `pixels.u8`     N x size x size uint8, appended entry by entry (the main shard)
- `index.csv`     sha256, slot, width, height and the border cut of each entry; replaced atomically
- `shards/<id>.u8` and `shards/<id>.csv`   more shards, each written whole by one process (a worker of a large
                  `prepare`, or a task of another engine) and never changed after: many writers, no lock
- `failures.csv`  files the last `prepare` could not use, with the problem

An entry is keyed by the sha256 of the file's bytes, so two rows of one file share it and a file whose
bytes changed is prepared again. An index is written after the pixels it points to (write, then
rename): pixels past the main index are cut off on open, and a shard without its index is not read, so a
killed `prepare` leaves no half entry. Raw uint8 memory maps rather than WebDataset, LitData or zarr: training
samples rows at random (weighted) from local disk, where a memory map reads an image with no decoding, no
library and no per-read overhead; tar-based shards stream in order (made for object stores), and zarr's
resizable arrays need one writer or a lock to grow. Sharding gives what they add here: parallel writers and
shards a DDP rank can read alone (`rank_rows`).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from covidxr.data.imageio import ImageReadError, read_grayscale
from covidxr.data.preprocess import Preprocessing, Preprocessor
from covidxr.errors import CovidxrError, UsageError
from covidxr.progress import map_with_progress, progress_bar, worker_count

INDEX_COLUMNS = ["sha256", "slot", "width", "height", "top", "bottom", "left", "right"]
SAVE_EVERY = 256
SHARD_FILES = 1024
"""A `prepare` with more files to do than this writes shards of up to this many files, one per worker task."""
SHARD_BITS = 32
"""A slot is `shard << 32 | offset`; the main shard is 0, so its slots are its offsets."""


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


def read_checked(path: str, expected_sha256: str) -> tuple[np.ndarray | None, str]:
    """The file's grey pixels once its bytes are checked against the manifest's sha256, else (None, the problem)."""
    try:
        content_sha256 = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        if content_sha256 != expected_sha256:
            return None, "file changed since import (sha256 differs): re-import it"
        return read_grayscale(path), ""
    except ImageReadError as error:
        return None, error.problem
    except OSError as error:
        return None, f"cannot read ({error.strerror})"


def prepare_decoded(image: np.ndarray | None, problem: str, sha256: str, preprocessor: Preprocessor) -> Prepared:
    """Preprocess a file `read_checked` decoded (or carry its problem): the work of one row, wherever it runs."""
    if image is None:
        return Prepared(sha256, problem=problem)
    try:
        pixels, cut = preprocessor.pixels(image)
    except ImageReadError as error:
        return Prepared(sha256, problem=error.problem)
    return Prepared(sha256, pixels, image.shape[1], image.shape[0], **asdict(cut))


def prepare_file(job: tuple[str, str, Preprocessor]) -> Prepared:
    """Check the file still has the manifest's bytes, decode and preprocess it."""
    path, expected_sha256, preprocessor = job
    return prepare_decoded(*read_checked(path, expected_sha256), expected_sha256, preprocessor)


class PixelCache:
    """The prepared pixels of one preprocessing configuration under a cache root (all its shards)."""

    def __init__(self, root: str | Path, config: Preprocessing):
        self.config = config
        self.folder = Path(root) / config.key()
        self.entry_bytes = config.size * config.size
        self._main = self._load_index()
        self._shard_paths = [self.data_path]
        self.index = self._main
        self._slots = dict(zip(self._main["sha256"], self._main["slot"]))
        self._pixels: np.memmap | ShardedPixels | None = None
        self._attach(sorted((self.folder / "shards").glob("*.csv")))

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

    def _attach(self, index_paths: list[Path]) -> None:
        """Add complete shards (by their index files); entries an earlier shard holds keep their first place."""
        frames = [self.index]
        for index_path in index_paths:
            shard = pd.read_csv(index_path, dtype={"sha256": str})
            frames.append(shard.assign(slot=(len(self._shard_paths) << SHARD_BITS) + shard["slot"])[INDEX_COLUMNS])
            self._shard_paths.append(index_path.with_suffix(".u8"))
        if len(frames) > 1:
            self.index = pd.concat(frames, ignore_index=True).drop_duplicates("sha256").reset_index(drop=True)
            self._slots = dict(zip(self.index["sha256"], self.index["slot"]))
            self._pixels = None

    @property
    def shard_count(self) -> int:
        return len(self._shard_paths)

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

    def pixels(self) -> np.ndarray | ShardedPixels:
        """All entries, read-only, indexed by slot: one (N, size, size) uint8 memory map while the cache has one
        shard, else a ShardedPixels over the memory maps of all shards."""
        if self._pixels is None or len(self._pixels) != len(self):
            main = self._memmap(self.data_path, len(self._main))
            shards = [main] + [self._memmap(path, None) for path in self._shard_paths[1:]]
            self._pixels = main if len(shards) == 1 else ShardedPixels(shards, len(self))
        return self._pixels

    def _memmap(self, path: Path, entries: int | None) -> np.ndarray:
        size = self.config.size
        count = path.stat().st_size // self.entry_bytes if entries is None and path.is_file() else entries or 0
        if not count:
            return np.empty((0, size, size), np.uint8)
        return np.memmap(path, dtype=np.uint8, mode="r", shape=(count, size, size))

    def get(self, sha256: str) -> np.ndarray:
        return np.array(self.pixels()[self.slots([sha256])[0]])

    def add(self, results: list[Prepared]) -> None:
        """Append prepared entries to the main shard: pixels first, then the index (atomically)."""
        fresh = [r for r in results if r.pixels is not None and r.sha256 not in self._slots]
        if not fresh:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        _append_pixels(self.data_path, fresh)
        start = len(self._main)
        rows = pd.DataFrame([{**asdict(r), "slot": start + i} for i, r in enumerate(fresh)])[INDEX_COLUMNS]
        self._main = pd.concat([self._main, rows], ignore_index=True) if start else rows
        self.index = pd.concat([self.index, rows], ignore_index=True) if len(self.index) else rows
        self._slots.update(zip(rows["sha256"], rows["slot"]))
        self._write_atomically("index.csv", self._main.to_csv(index=False))
        self.write_config()

    def add_shard(self, results: list[Prepared]) -> Path | None:
        """Write prepared entries as a new shard (`write_shard`) and read it from now on."""
        index_path = write_shard(self.folder, self.config, results)
        self._attach([index_path] if index_path is not None else [])
        return index_path

    def write_config(self) -> None:
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


def _append_pixels(path: Path, results: list[Prepared]) -> None:
    with open(path, "ab") as handle:
        for result in results:
            handle.write(np.ascontiguousarray(result.pixels, dtype=np.uint8).tobytes())
        handle.flush()
        os.fsync(handle.fileno())


def write_shard(folder: str | Path, config: Preprocessing, results: list[Prepared]) -> Path | None:
    """Write prepared entries as a new shard of the cache folder, in any process, beside any other writer:
    `shards/<random id>.u8` (synced), then its index `shards/<id>.csv` (atomically). Returns the index path
    (None when no entry holds pixels)."""
    fresh = [r for r in results if r.pixels is not None]
    if not fresh:
        return None
    shards = Path(folder) / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    name = uuid.uuid4().hex
    _append_pixels(shards / f"{name}.u8", fresh)
    rows = pd.DataFrame([{**asdict(r), "slot": i} for i, r in enumerate(fresh)])[INDEX_COLUMNS]
    temporary = shards / f".{name}.csv.tmp"
    rows.to_csv(temporary, index=False)
    os.replace(temporary, shards / f"{name}.csv")
    config_temporary = Path(folder) / f".config.json.{name}.tmp"
    config_temporary.write_text(json.dumps(config.model_dump(mode="json"), indent=2))
    os.replace(config_temporary, Path(folder) / "config.json")
    return shards / f"{name}.csv"


def prepare_shard(job: tuple[str, list[tuple[str, str]], Preprocessor]) -> dict[str, str]:
    """One worker's task: prepare these (path, sha256) files and write them as one shard; the problems by sha256."""
    folder, files, preprocessor = job
    results = [prepare_file((path, sha256, preprocessor)) for path, sha256 in files]
    write_shard(folder, preprocessor.settings, results)
    return {result.sha256: result.problem for result in results if result.problem}


def _prepare_in_shards(cache: PixelCache, files: list[tuple[str, str]], preprocessor: Preprocessor) -> dict[str, str]:
    """Workers that decode and write their own shards (no pixels cross processes); the problems by sha256."""
    tasks = [(str(cache.folder), files[start:start + SHARD_FILES], preprocessor)
             for start in range(0, len(files), SHARD_FILES)]
    problems: dict[str, str] = {}
    with progress_bar() as bar, ProcessPoolExecutor(max_workers=worker_count()) as pool:
        task = bar.add_task(f"preparing {preprocessor.settings.size}px in {len(tasks)} shards", total=len(files))
        for (_, chunk, _), found in zip(tasks, pool.map(prepare_shard, tasks)):
            problems.update(found)
            bar.advance(task, len(chunk))
    return problems


def _prepare_in_main(cache: PixelCache, files: list[tuple[str, str]], preprocessor: Preprocessor) -> dict[str, str]:
    """Workers decode, this process appends to the main shard every SAVE_EVERY entries; the problems by sha256."""
    batch: list[Prepared] = []
    problems: dict[str, str] = {}
    jobs = [(path, sha256, preprocessor) for path, sha256 in files]
    for result in map_with_progress(prepare_file, jobs, f"preparing {preprocessor.settings.size}px"):
        if result.problem:
            problems[result.sha256] = result.problem
            continue
        batch.append(result)
        if len(batch) >= SAVE_EVERY:
            cache.add(batch)
            batch = []
    cache.add(batch)
    return problems


def prepare_here(cache: PixelCache, files: list[tuple[str, str]], preprocessor: Preprocessor) -> dict[str, str]:
    """The local way to prepare (path, sha256) files into `cache`, on all cores (one worker process per core, its
    lung masker on one thread): up to SHARD_FILES files are appended to the main shard, more are written as shards
    by the workers; the problems by sha256."""
    if worker_count() > 1:
        preprocessor = preprocessor.on_threads(1)
    if len(files) > SHARD_FILES:
        return _prepare_in_shards(cache, files, preprocessor)
    return _prepare_in_main(cache, files, preprocessor)


FilePreparer = Callable[[PixelCache, list[tuple[str, str]], Preprocessor], dict[str, str]]
"""Prepares (path, sha256) files into a cache (its main shard or new shards); answers the problems by sha256."""


def prepare(manifest: pd.DataFrame, root: str | Path, preprocessor: Preprocessor = Preprocessor(Preprocessing()),
            prepare_files: FilePreparer = prepare_here) -> PrepareReport:
    """Decode and preprocess every manifest image the cache lacks, with a progress bar, by `prepare_files`
    (default: `prepare_here`, all cores of this machine; an engine passes its own).
    `preprocessor`: its settings and the lung masker a `lungs` other than "none" needs (see
    `covidxr.lungs.preprocessor`)."""
    config = preprocessor.settings
    if config.lungs != "none" and preprocessor.masker is None:
        raise UsageError("needs a lung masker: build the preprocessor with covidxr.lungs.preprocessor", "lungs",
                         config.lungs)
    cache = PixelCache(root, config)
    files = manifest.drop_duplicates("sha256")
    todo = files[~files["sha256"].map(cache.__contains__)]
    problems = prepare_files(cache, list(zip(todo["path"], todo["sha256"])), preprocessor)
    cache = PixelCache(root, config)
    failed = manifest[manifest["sha256"].isin(problems)][["image_id", "path", "sha256"]]
    failed = failed.assign(problem=failed["sha256"].map(problems))
    cache.write_failures(failed)
    return PrepareReport(cache, prepared=len(todo) - len(problems), reused=len(files) - len(todo), failures=failed)


class ShardedPixels:
    """Read-only pixels of several shards, indexed by slot (`shard << 32 | offset`), like one memory map."""

    def __init__(self, shards: list[np.ndarray], entries: int):
        self.shards = shards
        self.shape = (entries, *shards[0].shape[1:]) if shards else (entries, 0, 0)
        self.dtype = np.uint8

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, slot: int | np.integer | np.ndarray) -> np.ndarray:
        if np.ndim(slot) == 0:
            return self.shards[int(slot) >> SHARD_BITS][int(slot) & ((1 << SHARD_BITS) - 1)]
        slots = np.asarray(slot, dtype=np.int64)
        out = np.empty((len(slots), *self.shape[1:]), dtype=np.uint8)
        for number in np.unique(slots >> SHARD_BITS).tolist():
            rows = np.flatnonzero(slots >> SHARD_BITS == number)
            out[rows] = self.shards[number][slots[rows] & ((1 << SHARD_BITS) - 1)]
        return out


def rank_rows(slots: np.ndarray, rank: int, world_size: int, block: int = SHARD_FILES) -> np.ndarray:
    """The rows (positions in `slots`) a DDP rank reads: whole blocks of `block` consecutive entries of one shard
    (a written shard is at most one block), dealt to ranks largest first so each reads about as many rows, and
    only its own part of the cache files."""
    if not 0 <= rank < world_size:
        raise UsageError(f"must be in 0..{world_size - 1}", "rank", rank)
    slots = np.asarray(slots, dtype=np.int64)
    blocks = (slots >> SHARD_BITS) * (1 << SHARD_BITS) + (slots & ((1 << SHARD_BITS) - 1)) // block
    names, block_of_row, sizes = np.unique(blocks, return_inverse=True, return_counts=True)
    load = np.zeros(world_size, dtype=np.int64)
    owner = np.empty(len(names), dtype=np.int64)
    for number in np.argsort(-sizes, kind="stable").tolist():
        owner[number] = int(load.argmin())
        load[owner[number]] += sizes[number]
    return np.flatnonzero(owner[block_of_row] == rank)
