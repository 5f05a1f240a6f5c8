"""`DIR/compare.html`: the recipes of `covidxr compare` in one table and one plot of within-source skill
against test AUC (a model that reads the source climbs the test axis only)."""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from covidxr.evaluation.metrics import format_estimate
from covidxr.reporting.report import STYLE, _png, _table
from covidxr.runs import NOT_FOR_CLINICAL_USE


def _minutes(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds / 60:.1f} min"


def comparison_rows(entries: list[dict]) -> pd.DataFrame:
    """One row per recipe: every compared figure with its CI, as text."""
    sources = sorted({source for entry in entries for source in entry["within_source"]})
    rows = []
    for entry in entries:
        within = entry["within_source"]
        rows.append({
            "recipe": entry["recipe"],
            "test AUC": format_estimate(entry, "auc"),
            "source-only AUC": format_estimate(entry, "source_only_auc"),
            **{f"within {source} (test)": format_estimate(within[source], "auc") if source in within else "n/a"
               for source in sources},
            f"pooled out-of-fold within {entry.get('oof_source') or 'source'}":
                format_estimate(entry, "oof_within_source_auc")
                + (f" ({entry['oof_patients']} patients)" if entry.get("oof_patients") else ""),
            "lungs hidden AUC": format_estimate(entry, "lungs_hidden_auc"),
            "origin from embeddings AUC": format_estimate(entry, "origin_auc"),
            "train time": _minutes(entry.get("train_seconds")),
        })
    return pd.DataFrame(rows)


def _error(value: float, interval: list[float] | None) -> list[list[float]]:
    low, high = interval or (value, value)
    return [[max(0.0, value - low)], [max(0.0, high - value)]]


MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "<", ">")


def skill_plot(entries: list[dict], out: Path) -> Path:
    """Pooled out-of-fold within-source AUC (y) against test AUC (x), each with its 95% CI."""
    figure = Figure(figsize=(6.4, 5.2))
    axis = figure.subplots()
    plotted = [e for e in entries if e.get("auc") is not None and e.get("oof_within_source_auc") is not None]
    for number, entry in enumerate(plotted):
        x, y = entry["auc"], entry["oof_within_source_auc"]
        axis.errorbar([x], [y], xerr=_error(x, entry.get("auc_ci")),
                      yerr=_error(y, entry.get("oof_within_source_auc_ci")), fmt=MARKERS[number % len(MARKERS)],
                      capsize=3, label=entry["recipe"])  # a legend, not labels beside points: close recipes overlap
    axis.plot([0.4, 1.0], [0.4, 1.0], ls="--", color="grey", lw=0.8, label="within-source = test")
    axis.axhline(0.5, color="firebrick", lw=0.8, ls=":", label="chance within the source")
    source = next((e.get("oof_source") for e in entries if e.get("oof_source")), "one source")
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


def write_comparison(entries: list[dict], folder: str | Path) -> Path:
    """`folder/compare.html` (and the plot it embeds, `folder/compare.png`)."""
    folder = Path(folder)
    first = entries[0]
    plot = skill_plot(entries, folder / "compare.png")
    parts = [
        "<h1>covidxr compare</h1>",
        f"<p class='banner'>{html.escape(NOT_FOR_CLINICAL_USE)}</p>",
        f"<p>Data: <code>{html.escape(first['data'])}</code>; every recipe trained on its train and val rows and "
        f"tested on its test rows ({first['test_images']} images, {first['test_patients']} patients). The pooled "
        f"out-of-fold AUC within {html.escape(str(first.get('oof_source')))} comes from {first['oof_folds']}-fold "
        "grouped cross-validation over every patient, test rows included: inside one source, where an image comes "
        "from cannot tell the classes apart, so it measures the disease. The lungs-hidden and origin AUCs are "
        f"from <code>covidxr audit</code> ({html.escape(first['audit_rows'])}). 95% CIs: "
        f"{html.escape(first['ci_method'])}.</p>",
        _table(comparison_rows(entries)),
        _png(plot),
        "<p>Read it so: a recipe that learns the disease moves up (within-source skill) and keeps its lungs-hidden "
        "AUC near 0.5; a recipe that learns the source moves right only. Overlapping CIs mean the data cannot "
        "tell the recipes apart.</p>",
    ]
    document = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>covidxr compare</title>"
                f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>")
    out = folder / "compare.html"
    out.write_text(document, encoding="utf-8")
    return out
