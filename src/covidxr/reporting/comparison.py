"""`DIR/compare.html`: the recipes of `covidxr compare` in one table and one plot of within-source skill
against test AUC (a model that reads the source climbs the test axis only)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from covidxr.evaluation.metrics import format_estimate
from covidxr.reporting.templates import Table, render
from covidxr.runs import CompareEntry

Entries = Sequence[CompareEntry | dict]


def _minutes(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds / 60:.1f} min"


def compare_entries(entries: Entries) -> list[CompareEntry]:
    """The entries typed (as `compare_recipes` returns them), whether given so or as written to compare.json."""
    return [CompareEntry.model_validate(entry) for entry in entries]


def comparison_rows(entries: Entries) -> pd.DataFrame:
    """One row per recipe: every compared figure with its CI, as text."""
    entries = compare_entries(entries)
    sources = sorted({source for entry in entries for source in entry.within_source})
    rows = []
    for entry in entries:
        within = entry.within_source
        rows.append({
            "recipe": entry.recipe,
            "test AUC": format_estimate(entry, "auc"),
            "source-only AUC": format_estimate(entry, "source_only_auc"),
            **{f"within {source} (test)": format_estimate(within[source], "auc") if source in within else "n/a"
               for source in sources},
            f"pooled out-of-fold within {entry.oof_source or 'source'}":
                format_estimate(entry, "oof_within_source_auc")
                + (f" ({entry.oof_patients} patients)" if entry.oof_patients else ""),
            "lungs hidden AUC": format_estimate(entry, "lungs_hidden_auc"),
            "origin from embeddings AUC": format_estimate(entry, "origin_auc"),
            "train time": _minutes(entry.train_seconds),
        })
    return pd.DataFrame(rows)


def _error(value: float, interval: list[float] | None) -> list[list[float]]:
    low, high = interval or (value, value)
    return [[max(0.0, value - low)], [max(0.0, high - value)]]


MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "<", ">")


def skill_plot(entries: list[CompareEntry], out: Path) -> Path:
    """Pooled out-of-fold within-source AUC (y) against test AUC (x), each with its 95% CI."""
    figure = Figure(figsize=(6.4, 5.2))
    axis = figure.subplots()
    plotted = [e for e in entries if e.auc is not None and e.oof_within_source_auc is not None]
    for number, entry in enumerate(plotted):
        x, y = entry.auc, entry.oof_within_source_auc
        axis.errorbar([x], [y], xerr=_error(x, entry.auc_ci),
                      yerr=_error(y, entry.oof_within_source_auc_ci), fmt=MARKERS[number % len(MARKERS)],
                      capsize=3, label=entry.recipe)  # a legend, not labels beside points: close recipes overlap
    axis.plot([0.4, 1.0], [0.4, 1.0], ls="--", color="grey", lw=0.8, label="within-source = test")
    axis.axhline(0.5, color="firebrick", lw=0.8, ls=":", label="chance within the source")
    source = next((e.oof_source for e in entries if e.oof_source), "one source")
    axis.set(xlim=(0.4, 1.0), ylim=(0.3, 1.0), xlabel="test AUC (split's test rows)",
             ylabel=f"pooled out-of-fold AUC within {source}")
    axis.set_title("Does the model read the disease or the source?", fontsize=10)
    axis.legend(fontsize=7, loc="upper left")
    axis.grid(alpha=0.3)
    if len(plotted) < len(entries):
        axis.text(0.41, 0.31, f"{len(entries) - len(plotted)} recipe(s) without both figures not shown", fontsize=7)
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    return out


def write_comparison(entries: Entries, folder: str | Path) -> Path:
    """`folder/compare.html` (and the plot it embeds, `folder/compare.png`)."""
    folder = Path(folder)
    entries = compare_entries(entries)
    plot = skill_plot(entries, folder / "compare.png")
    out = folder / "compare.html"
    out.write_text(render("compare.html", title="covidxr compare", heading="covidxr compare", first=entries[0],
                          rows=Table.from_frame(comparison_rows(entries)), plot=plot), encoding="utf-8")
    return out
