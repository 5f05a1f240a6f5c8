"""How the data stages grow with the number of rows: import -> build (labels, dedup, split) -> write -> check.

Synthetic manifests of 10k, 100k and 1M rows with a realistic structure: three sources (an archive with several
images for some patients, one image per patient, a small COVID collection), findings that map, drop or are
unmapped, 64-bit pHashes with 32 bits set (as pHash makes them), look-alike families of hashes, files listed under
two patients (exact duplicates: same sha256), re-encoded copies 2 or 4 bits away with agreeing pixels (joined) and
close hashes with different pixels (rejected by the 64x64 Pearson check). The rows have no image files, so the
build's pixel check reads synthetic thumbnails through its `thumbnails` seam; everything else is the project's code.

Each size runs in a fresh process (its peak RSS is that size's own); generation is not timed. Goals: growth
exponent <= 1.2, 1M rows in <= 10 minutes and <= 4 GB on 2 cores. The last line prints the fitted exponent.

    python benchmarks/bench_scale.py [--sizes 10000,100000,1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd

from _common import machine

SIZES = (10_000, 100_000, 1_000_000)
TASK, FOLDS = "three-class", 5
STAGES = ("import", "build", "write", "check")
T = TypeVar("T")
SHARES = {"exact": 0.01, "near": 0.01, "decoy": 0.04, "family": 0.10}
"""Shares of rows planted as: the same file under another patient; a copy 2 or 4 bits away with agreeing pixels;
a hash 4 bits away with different pixels; a member of a look-alike family (8 bits from its prototype)."""
SOURCES = {  # name: share of rows, (images per patient, probabilities), (findings, probabilities)
    "archive": (0.6, ([1, 2, 3, 4, 6, 10], [0.45, 0.25, 0.12, 0.08, 0.06, 0.04]),
                (["No Finding", "Pneumonia", "COVID-19", "Bacterial", "Lipoid", "todo"],
                 [0.55, 0.2, 0.15, 0.08, 0.01, 0.01])),
    "rsna": (0.3, ([1], [1.0]), (["Normal"], [1.0])),
    "cohen": (0.1, ([1, 2, 3, 5], [0.4, 0.3, 0.2, 0.1]),
              (["COVID-19", "Pneumonia", "SARS", "ARDS", "No Finding"], [0.6, 0.15, 0.1, 0.05, 0.1])),
}
PATH = re.compile(r"img(\d+)-v(\d+)\.png$")
_NOISE = np.random.default_rng(0).normal(0, 6, (1021, 4096)).astype(np.float32)
"""Pixel noise fields that tell a copy (variant) from its original; picked by (base, variant)."""


def _hex(values: np.ndarray, digits: int) -> np.ndarray:
    """Rows of uint64 words (shape (n,) or (n, k)) as hex strings of `digits` characters."""
    text = np.ascontiguousarray(values.astype(">u8")).tobytes().hex().encode("ascii")
    return np.frombuffer(text, dtype=f"S{digits}").astype(f"U{digits}")


def _mixed(rows: np.ndarray, salt: int) -> np.ndarray:
    """Distinct rows -> distinct random-looking 64-bit words (an odd multiplier is a bijection mod 2**64)."""
    return (rows.astype(np.uint64) + np.uint64(salt)) * np.uint64(0x9E3779B97F4A7C15)


def _half_set_hashes(count: int, rng: np.random.Generator) -> np.ndarray:
    """Random 64-bit hashes with exactly 32 bits set."""
    parts = []
    for start in range(0, count, 100_000):
        size = min(100_000, count - start)
        bits = np.argsort(rng.random((size, 64)), axis=1)[:, :32]
        parts.append(np.bitwise_or.reduce(np.left_shift(np.uint64(1), bits.astype(np.uint64)), axis=1))
    return np.concatenate(parts)


def _swapped(hashes: np.ndarray, swaps: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each hash with `swaps` set bits cleared and as many clear bits set: 2 * swaps bits away, still 32 set."""
    bits = (hashes[:, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)
    noise = rng.random(bits.shape)
    ones = np.argsort(np.where(bits == 1, noise, 2.0), axis=1)
    zeros = np.argsort(np.where(bits == 0, noise, 2.0), axis=1)
    flip = np.zeros(bits.shape, dtype=bool)
    for swap in range(int(swaps.max(initial=0))):
        rows = np.flatnonzero(swaps > swap)
        flip[rows, ones[rows, swap]] = flip[rows, zeros[rows, swap]] = True
    masks = np.bitwise_or.reduce(np.where(flip, np.uint64(1) << np.arange(64, dtype=np.uint64), np.uint64(0)), axis=1)
    return hashes ^ masks


def _patients(rows: int, sizes: tuple[list[int], list[float]], rng: np.random.Generator) -> np.ndarray:
    """Patient number of each of `rows` rows, patients holding 1..N images each."""
    counts = rng.choice(sizes[0], size=rows, p=sizes[1])
    patients = np.repeat(np.arange(rows), counts)[:rows]
    return patients


def synthetic_manifest(rows: int, seed: int = 0) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """One table of `rows` imported rows (all sources) and the planted (copy, original) row pairs of each kind."""
    rng = np.random.default_rng(seed)
    parts = []
    for name, (share, sizes, findings) in SOURCES.items():
        count = round(rows * share) if name != "cohen" else rows - sum(len(p) for p in parts)
        patient = _patients(count, sizes, rng)
        finding = np.asarray(findings[0])[rng.choice(len(findings[0]), size=patient.max() + 1, p=findings[1])]
        parts.append(pd.DataFrame({"source": name, "patient": patient, "finding": finding[patient]}))
    table = pd.concat(parts, ignore_index=True)
    number = np.arange(rows)
    base, variant = number.copy(), np.zeros(rows, dtype=np.int64)
    phash = _half_set_hashes(rows, rng)
    sha = _hex(np.stack([_mixed(number, salt) for salt in range(4)], axis=1), 64)

    planted = rng.permutation(rows)
    counts = {kind: int(rows * share) for kind, share in SHARES.items()}
    cut = np.cumsum([0] + [counts[k] for k in ("exact", "near", "decoy")])
    copies = {kind: planted[cut[i]:cut[i + 1]] for i, kind in enumerate(("exact", "near", "decoy"))}
    originals = planted[cut[-1]:cut[-1] + cut[-1]]
    source_of = dict(zip(("exact", "near", "decoy"), np.split(originals, cut[1:-1])))
    family = planted[2 * cut[-1]:2 * cut[-1] + counts["family"]]
    prototypes = _half_set_hashes(max(1, counts["family"] // 5), rng)
    phash[family] = _swapped(prototypes[rng.integers(0, len(prototypes), len(family))], np.full(len(family), 4), rng)
    phash[copies["near"]] = _swapped(phash[source_of["near"]], rng.integers(1, 3, counts["near"]), rng)
    phash[copies["decoy"]] = _swapped(phash[source_of["decoy"]], np.full(counts["decoy"], 2), rng)
    base[copies["near"]], variant[copies["near"]] = source_of["near"], 1
    exact, original = copies["exact"], source_of["exact"]
    phash[exact], base[exact], sha[exact] = phash[original], base[original], sha[original]

    patient_id = table["source"] + ":" + table["patient"].astype(str)
    folder = "/synthetic/" + table["source"] + "/" + table["patient"].astype(str)
    path = folder + "/img" + pd.Series(base).astype(str) + "-v" + pd.Series(variant).astype(str) + ".png"
    path[exact] = path[original].to_numpy()
    manifest = pd.DataFrame({
        "image_id": _hex(_mixed(number, 99), 16), "sha256": sha, "path": path, "source": table["source"],
        "site": table["source"] + "-site" + (table["patient"] % 20).astype(str), "patient_id": patient_id,
        "finding": table["finding"], "view": rng.choice(["PA", "AP", "AP Supine"], rows), "modality": "X-ray",
        "sex": rng.choice(["M", "F"], rows), "age": rng.integers(18, 90, rows).astype(float),
        "license": rng.choice(["CC BY 4.0", "CC BY-NC-SA 4.0", "unknown"], rows),
        "width": rng.integers(224, 3000, rows), "height": rng.integers(224, 3000, rows), "phash": _hex(phash, 16),
    })
    return manifest, {kind: np.stack([copies[kind], source_of[kind]], axis=1) for kind in copies}


def synthetic_thumbnails(paths: list[str]) -> Iterator[np.ndarray]:
    """64x64 grey pixels for synthetic paths: copies of one image (img<base>-v<variant>) agree (r ~ 0.98),
    different bases do not (r ~ 0); whole numbers in 0..255, like decoded thumbnails."""
    keys = np.array([[int(part) for part in PATH.search(path).groups()] for path in paths], dtype=np.uint64)
    for start in range(0, len(keys), 1024):
        base, variant = keys[start:start + 1024].T
        coarse = _unit_interval(base[:, None] * np.uint64(64) + np.arange(64, dtype=np.uint64), 1)
        noise = _NOISE[((base * np.uint64(7) + variant) % np.uint64(len(_NOISE))).astype(np.int64)]
        coarse = (40 + 170 * coarse).astype(np.float32).reshape(-1, 8, 1, 8, 1)
        pixels = np.broadcast_to(coarse, (len(base), 8, 8, 8, 8)).reshape(-1, 4096) + noise
        yield from np.clip(np.rint(pixels, out=pixels), 0, 255, out=pixels)


def _unit_interval(words: np.ndarray, salt: int) -> np.ndarray:
    """Deterministic uniform numbers in [0, 1) from 64-bit words (splitmix64's finaliser: neighbours look unrelated)."""
    mixed = words + np.uint64(salt * 0x9E3779B97F4A7C15 % 2**64)
    mixed = (mixed ^ (mixed >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    mixed = (mixed ^ (mixed >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return ((mixed ^ (mixed >> np.uint64(31))) >> np.uint64(11)).astype(np.float64) / 2.0**53


def generate(rows: int, folder: Path) -> dict[str, int]:
    """Write one imported manifest per source into `folder` (as `data import` would). Returns the near-duplicate
    pairs the build must join: the planted copies whose two rows both keep a label for the task."""
    from covidxr.data.labels import labels_for
    from covidxr.data.manifest import save_manifest

    manifest, planted = synthetic_manifest(rows)
    for source, part in manifest.groupby("source", sort=False):
        save_manifest(part, folder / f"{source}.parquet")
    labelled = (labels_for(manifest["finding"], TASK) != "").to_numpy()
    return {"expected": int(labelled[planted["near"]].all(axis=1).sum())}


def _timed(figures: dict[str, float], stage: str, function: Callable[..., T], *args, **kwargs) -> T:
    """`function(*args, **kwargs)`, its wall and CPU seconds (this process, all its threads) put in `figures`."""
    wall, cpu = time.perf_counter(), time.process_time()
    value = function(*args, **kwargs)
    figures[stage], figures[f"{stage}_cpu"] = time.perf_counter() - wall, time.process_time() - cpu
    return value


def measure(folder: Path) -> dict[str, float | int]:
    """Seconds of import (read + validate the per-source manifests), build, write and check, in this process."""
    from covidxr.cli import main as cli
    from covidxr.data import build, load_manifest

    figures: dict[str, float] = {}
    tables = _timed(figures, "import", lambda: [load_manifest(path) for path in sorted(folder.glob("*.parquet"))])
    result = _timed(figures, "build", build, tables, task=TASK, folds=FOLDS, seed=0, thumbnails=synthetic_thumbnails)
    out = _timed(figures, "write", result.save, folder / "built.parquet")
    code = _timed(figures, "check", cli, ["data", "check", str(out)])
    if code != 0:
        raise SystemExit(f"data check exited {code}")
    joined = next(line for line in result.lines if line.startswith("duplicates:"))
    return {**figures, "rows": len(result.manifest), "joined": int(joined.split()[1])}


def _child(argument: str, value: str) -> tuple[dict, int]:
    """Run this script with one flag in a fresh process; its JSON answer and its peak RSS in KiB."""
    process = subprocess.Popen([sys.executable, __file__, argument, value], stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argument} {value} failed:\n{output}")
    return json.loads(output.strip().splitlines()[-1]), usage.ru_maxrss


def run(sizes: list[int]) -> None:
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.1f}; task {TASK}, --folds {FOLDS}; "
          f"planted shares {SHARES}")
    print("seconds wall (CPU of the process)")
    print(f"{'rows':>10} {'import':>13} {'build':>15} {'write':>13} {'check':>13} {'total':>15} "
          f"{'peak MiB':>9} {'joined':>7} {'expected':>8}")
    totals = {"wall": [], "cpu": []}
    for rows in sizes:
        with tempfile.TemporaryDirectory() as folder:
            counts, _ = _child("--generate", f"{rows}:{folder}")
            figures, peak = _child("--measure", folder)
        for kind, suffix in (("wall", ""), ("cpu", "_cpu")):
            totals[kind].append(sum(figures[stage + suffix] for stage in STAGES))
        cells = " ".join(f"{figures[s]:>6.2f} ({figures[s + '_cpu']:>5.2f})" for s in STAGES)
        print(f"{rows:>10,} {cells} {totals['wall'][-1]:>7.1f} ({totals['cpu'][-1]:>5.1f}) {peak / 1024:>9,.0f} "
              f"{figures['joined']:>7,} {counts['expected']:>8,}", flush=True)
    slope = {kind: np.polyfit(np.log(sizes), np.log(values), 1)[0] if len(sizes) > 1 else float("nan")
             for kind, values in totals.items()}
    print(f"growth exponent (log-log slope of CPU seconds vs rows, {sizes[0]:,}..{sizes[-1]:,} rows): "
          f"{slope['cpu']:.2f} (goal <= 1.2; of wall seconds {slope['wall']:.2f}); {sizes[-1]:,} rows: "
          f"{totals['wall'][-1]:.0f} s wall, {peak / 1024:,.0f} MiB peak (goals <= 600 s, <= 4096 MiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="comma-separated row counts")
    parser.add_argument("--generate", help=argparse.SUPPRESS)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        rows, folder = args.generate.split(":", 1)
        print(json.dumps(generate(int(rows), Path(folder))))
    elif args.measure:
        print(json.dumps(measure(Path(args.measure))))
    else:
        run([int(size) for size in args.sizes.split(",")])


if __name__ == "__main__":
    main()
