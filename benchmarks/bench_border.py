"""Border removal: ours (vectorised) vs write-up 002's per-pixel Python loop, on 3 real 1024-px images.

The reference does what write-up 002 describes: for every row and every column, a Python loop over its
pixels calling np.average on each pixel; rows/columns with more than half their pixels darker than 40
are removed. It takes seconds per image, so it runs once on each of the 3 images only.
Prints ms per image for both and, on its last line, the speed-up.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from _common import DATA, machine
from covidxr.data.imageio import ImageReadError, read_grayscale
from covidxr.data.preprocess import Preprocessing, find_cut, remove_borders

THRESHOLD = 40


def _reference_dark_lines(image: np.ndarray) -> np.ndarray:
    """Per row: more than half of its pixels, each averaged with np.average in a Python loop, below 40."""
    height, width = image.shape
    dark_lines = []
    for y in range(height):
        dark = 0
        for x in range(width):
            if np.average(image[y, x]) < THRESHOLD:
                dark += 1
        dark_lines.append(dark > width / 2)
    return np.array(dark_lines)


def reference_border_removal(image: np.ndarray) -> np.ndarray:
    dark_rows = _reference_dark_lines(image)
    dark_columns = _reference_dark_lines(image.T)
    return image[~dark_rows][:, ~dark_columns]


def bordered_1024_images(count: int = 3) -> list[tuple[str, np.ndarray]]:
    """The first `count` Cohen images (by name) whose long side is 1024 px and that have a black border."""
    config = Preprocessing()
    found = []
    for path in sorted((DATA / "covid-chestxray-dataset" / "images").iterdir()):
        try:
            image = read_grayscale(path)
        except ImageReadError:
            continue
        cut = find_cut(image, config)
        if max(image.shape) == 1024 and cut.top + cut.bottom + cut.left + cut.right > 0:
            found.append((path.name, image))
        if len(found) == count:
            return found
    raise SystemExit("fewer than 3 bordered 1024-px images found")


def main() -> None:
    config = Preprocessing(borders=("black",), black_level=THRESHOLD, border_share=0.5)
    print(f"machine: {machine()}")
    ours_ms, reference_ms = [], []
    for name, image in bordered_1024_images():
        timings = []
        for _ in range(200):
            start = time.perf_counter()
            ours, cut = remove_borders(image, config)
            timings.append(time.perf_counter() - start)
        start = time.perf_counter()
        theirs = reference_border_removal(image)
        reference_ms.append((time.perf_counter() - start) * 1000)
        ours_ms.append(statistics.median(timings) * 1000)
        print(f"{name} {image.shape[1]}x{image.shape[0]}: ours {ours_ms[-1]:.3f} ms -> {ours.shape[1]}x{ours.shape[0]} "
              f"(cut {cut}); reference {reference_ms[-1] / 1000:.1f} s -> {theirs.shape[1]}x{theirs.shape[0]}")
    square = np.random.default_rng(0).integers(0, 256, (1024, 1024), dtype=np.uint8)
    square[:100] = 0
    timings = []
    for _ in range(200):
        start = time.perf_counter()
        remove_borders(square, config)
        timings.append(time.perf_counter() - start)
    print(f"ours on a 1024x1024 image: {statistics.median(timings) * 1000:.3f} ms (target <= 5 ms)")
    ratio = statistics.mean(reference_ms) / statistics.mean(ours_ms)
    print(f"border removal: ours {statistics.mean(ours_ms):.3f} ms/image vs reference "
          f"{statistics.mean(reference_ms):.0f} ms/image: {ratio:,.0f}x faster (target >= 1000x)")


if __name__ == "__main__":
    main()
