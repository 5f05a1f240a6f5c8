"""Before/after contact sheet of `prepare`: what border removal, squaring and resizing did."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from covidxr.data.cache import PixelCache
from covidxr.data.imageio import read_grayscale
from covidxr.errors import CovidxrError


def preview_rows(manifest: pd.DataFrame, count: int, seed: int = 0) -> pd.DataFrame:
    """`count` distinct files, spread over the sources, chosen at random (seeded)."""
    files = manifest.drop_duplicates("sha256").sample(frac=1.0, random_state=seed)
    order = files.groupby("source").cumcount()
    return files.assign(_order=order).sort_values(["_order", "source"]).head(count)


def contact_sheet(manifest: pd.DataFrame, cache: PixelCache, count: int, out: str | Path, seed: int = 0) -> Path:
    """A PNG with, per image, the decoded original (border cut outlined in red) and the prepared pixels."""
    rows = preview_rows(manifest[manifest["sha256"].map(cache.__contains__)], count, seed)
    if rows.empty:
        raise CovidxrError(f"nothing to preview: none of the manifest's {len(manifest)} image(s) is prepared in "
                           f"{cache.folder} (the problems of the last prepare are in its failures.csv)")
    index = cache.index.set_index("sha256")
    figure = Figure(figsize=(6, 3 * len(rows)))
    axes = figure.subplots(len(rows), 2, squeeze=False)
    for (original_axis, prepared_axis), row in zip(axes, rows.itertuples()):
        original = read_grayscale(row.path)
        cut = index.loc[row.sha256]
        original_axis.imshow(original, cmap="gray", vmin=0, vmax=255)
        height, width = original.shape
        kept_width, kept_height = width - cut["left"] - cut["right"], height - cut["top"] - cut["bottom"]
        original_axis.add_patch(Rectangle((cut["left"] - 0.5, cut["top"] - 0.5), kept_width, kept_height,
                                          fill=False, edgecolor="red", linewidth=1.5))
        original_axis.set_title(f"{Path(row.path).name[:28]}\n{row.source}, {width}x{height}", fontsize=7)
        prepared_axis.imshow(cache.get(row.sha256), cmap="gray", vmin=0, vmax=255)
        prepared_axis.set_title(
            f"prepared {cache.config.size}px\ncut t{cut['top']} b{cut['bottom']} l{cut['left']} r{cut['right']}",
            fontsize=7,
        )
    for axis in axes.ravel():
        axis.set_axis_off()
    figure.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    return out
