"""`covidxr data download`: the public sources from their GitHub repositories, resumable, verified.

- `cohen`: ieee8023/covid-chestxray-dataset at commit 6a42423 -> DIR/covid-chestxray-dataset/
  (metadata.csv, images/)
- `rsna-normal`: casper-hansen/COVID-19-Detection -> DIR/rsna-normal-224/ (normal_xray_dataset.csv,
  normal_dataset/)

The archive is fetched to `DIR/.<name>.zip.part` (an interrupted download resumes with an HTTP Range
request), its sha256 compared with the one recorded for the source (a mismatch names the URL and both
hashes, and deletes the file), checked (zip integrity, the expected files), unpacked, and the parts covidxr
reads are moved into place. The sha256 is recorded in `.covidxr-download.json`. Offline, it fails at once
naming the URL and how to point covidxr at a copy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from covidxr.errors import CovidxrError, UsageError
from covidxr.progress import stderr


@dataclass(frozen=True)
class Source:
    url: str
    folder: str
    keep: tuple[str, ...]
    sha256: str | None = None
    """The archive's sha256; None: not recorded yet (the download warns and records the hash it got)."""


COHEN_COMMIT = "6a4242344473ccb5ed0d2148d8c7bfb1691e4ed8"
"""A fixed commit of ieee8023/covid-chestxray-dataset (a GitHub archive of a commit does not move)."""
SOURCES = {
    "cohen": Source(f"https://github.com/ieee8023/covid-chestxray-dataset/archive/{COHEN_COMMIT}.zip",
                    "covid-chestxray-dataset", ("metadata.csv", "images")),
    "rsna-normal": Source("https://github.com/casper-hansen/COVID-19-Detection/archive/refs/heads/master.zip",
                          "rsna-normal-224", ("normal_xray_dataset.csv", "normal_dataset")),
}
CHUNK = 1 << 16
log = logging.getLogger("covidxr.data")


def _fetch(url: str, part: Path) -> None:
    """Download `url` into `part`, resuming from its current size when the server allows ranges."""
    done = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={done}-"} if done else {})
    try:
        response = urllib.request.urlopen(request, timeout=20)
    except urllib.error.HTTPError as error:
        if error.code == 416 and done:
            return
        raise CovidxrError(f"{url}: the server answered {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise CovidxrError(
            f"cannot download {url} ({reason}). Offline? Fetch that archive on a machine with internet, unpack "
            "it, and give covidxr the folder (`covidxr data import ... DIR`, or `make demo DATA=DIR` with "
            "DIR/covid-chestxray-dataset and DIR/rsna-normal-224), or download a reachable copy of the same archive "
            "(a mirror or a local file)."
        ) from None
    with response:
        resumed = response.status == 206
        total = response.headers.get("Content-Length")
        total = int(total) + (done if resumed else 0) if total else None
        columns = (TextColumn("downloading"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
        with open(part, "ab" if resumed else "wb") as handle, Progress(*columns, console=stderr) as bar:
            task = bar.add_task("download", total=total, completed=done if resumed else 0)
            while chunk := response.read(CHUNK):
                handle.write(chunk)
                bar.advance(task, len(chunk))


def _unpack(archive: Path, source: Source, target: Path) -> int:
    try:
        with zipfile.ZipFile(archive) as bundle:
            broken = bundle.testzip()
            if broken:
                raise CovidxrError(f"{archive}: corrupt member {broken}; delete it and download again")
            with tempfile.TemporaryDirectory(dir=target.parent) as folder:
                bundle.extractall(folder)
                tops = [p for p in Path(folder).iterdir() if p.is_dir()]
                root = tops[0] if len(tops) == 1 else Path(folder)
                missing = [name for name in source.keep if not (root / name).exists()]
                if missing:
                    raise CovidxrError(f"{archive}: the archive lacks {', '.join(missing)}; not the expected layout")
                target.mkdir(parents=True, exist_ok=True)
                for name in source.keep:
                    destination = target / name
                    if destination.exists():
                        shutil.rmtree(destination) if destination.is_dir() else destination.unlink()
                    shutil.move(str(root / name), destination)
    except zipfile.BadZipFile:
        raise CovidxrError(f"{archive}: not a zip archive; delete it and download again") from None
    return sum(1 for p in target.rglob("*") if p.is_file())


def verified_sha256(archive: Path, url: str, expected: str | None) -> str:
    """The archive's sha256, checked against `expected`: a mismatch deletes the archive (the next download starts
    afresh) and names the URL and both hashes; no expected hash is a warning."""
    with open(archive, "rb") as handle:
        actual = hashlib.file_digest(handle, "sha256").hexdigest()
    if expected is None:
        log.warning("%s: no sha256 is recorded for this archive, so it is not verified; its sha256 is %s", url, actual)
    elif actual != expected.lower():
        archive.unlink()
        raise CovidxrError(f"{url}: the archive's sha256 is {actual}, expected {expected}; not the pinned archive "
                           "(changed, or damaged in transit). It was deleted: download again, or use another copy")
    return actual


def download(name: str, to: str | Path, url: str | None = None, sha256: str | None = None) -> Path:
    """Fetch, verify and unpack source `name` into `to` (from `url`, e.g. a mirror, in place of the source's;
    `sha256` in place of the source's recorded hash); returns the dataset folder."""
    if name not in SOURCES:
        raise UsageError(f"unknown source {name!r}; accepted: {', '.join(SOURCES)}")
    source = SOURCES[name]
    to = Path(to)
    to.mkdir(parents=True, exist_ok=True)
    part = to / f".{name}.zip.part"
    address = url or source.url
    _fetch(address, part)
    digest = verified_sha256(part, address, sha256 or source.sha256)
    files = _unpack(part, source, to / source.folder)
    (to / source.folder / ".covidxr-download.json").write_text(json.dumps(
        {"source": name, "url": address, "sha256": digest, "archive_bytes": part.stat().st_size, "files": files},
        indent=2))
    part.unlink()
    return to / source.folder
