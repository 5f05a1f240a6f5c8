"""`covidxr report`: one self-contained HTML file a person reads top to bottom (plots embedded)."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from covidxr.data.dataset import CachedImages
from covidxr.data.manifest import load_dropped
from covidxr.evaluation.audit import audit
from covidxr.evaluation.crossval import read_cv
from covidxr.evaluation.evaluate import evaluate, model_probabilities
from covidxr.evaluation.metrics import format_estimate, format_number, source_explains_result, within_source_lines
from covidxr.explain.cam import gallery, heatmaps, lung_heat_share, top_losses
from covidxr.lungs import prepare_with_lungs, shipped_segmenter
from covidxr.models.loading import RunModel, load_run
from covidxr.runs import NOT_FOR_CLINICAL_USE, default_cache_root, read_json

GALLERY_PER_CLASS, TOP_LOSSES = 4, 6
STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.2em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%}
.banner{background:#fff3cd;border:1px solid #e0c060;padding:.6em 1em;font-weight:600}
.verdict{background:#eef5ff;border-left:4px solid #4a7bd0;padding:.4em .8em;margin:.4em 0}"""


def _png(path: Path) -> str:
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,' \
           f'{base64.b64encode(path.read_bytes()).decode()}">'


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, border=0, escape=True, na_rep="")


def _cached(run: RunModel, name: str, compute) -> dict:
    path = run.output_folder / name
    return read_json(path) if path.is_file() else compute()


def _headline(result: dict, cv: dict | None) -> str:
    text = (f"<p>On the run's test split ({result['n_images']} images, {result['n_patients']} patients) the model "
            f"reaches an AUC of <b>{format_estimate(result, 'auc')}</b>. Knowing only which dataset each image comes "
            f"from gives an AUC of <b>{format_estimate(result, 'source_only_auc')}</b>.</p>"
            "<p>Inside one source the origin cannot tell the classes apart; there the model scores:</p><ul>"
            + "".join(f"<li>{html.escape(line)}</li>" for line in within_source_lines(result, cv)) + "</ul>")
    if source_explains_result(result):
        text += ("<p class='verdict'>The source alone predicts the label about as well as the model: this headline "
                 "measures where the images come from at least as much as the disease. Read the within-source "
                 "figures and the audit below before believing it.</p>")
    return text


def _operating_points_table(result: dict) -> str:
    rows = [{"operating point": name + (" (default)" if name == result["operating_point"] else ""),
             "threshold": f"{point['threshold']:.3f}", "rule": point["rule"],
             "validation sensitivity / specificity": f"{format_number(point['validation']['sensitivity'])} / "
                                                     f"{format_number(point['validation']['specificity'])}",
             **{f"test {key} (95% CI)": format_estimate(point, key) for key in ("sensitivity", "specificity", "ppv")}}
            for name, point in result["operating_points"].items()]
    return _table(pd.DataFrame(rows))


def _metrics_table(result: dict) -> str:
    keys = ("auc", "pr_auc", "accuracy", "sensitivity", "specificity", "ppv", "npv", "f1")
    rows = [{"metric": k, "test (95% CI)": format_estimate(result, k)} for k in keys]
    within = [{"subgroup": f"{kind} {name}", "images": f["n_images"], "patients": f["n_patients"],
               "AUC (95% CI)": format_estimate(f, "auc"), "sensitivity": format_number(f["sensitivity"]),
               "specificity": format_number(f["specificity"])}
              for kind in ("source", "site") for name, f in result[f"within_{kind}"].items()]
    return _table(pd.DataFrame(rows)) + ("<h3>Within each source / site holding both classes</h3>"
                                         + _table(pd.DataFrame(within)) if within else
                                         "<p>No source or site holds both classes.</p>")


def _data_section(run: RunModel) -> str:
    manifest = pd.read_csv(run.rundir.manifest, dtype=str, keep_default_na=False)
    crossed = pd.crosstab([manifest["source"], manifest["label"]], manifest["split"], margins=True,
                          margins_name="total").reset_index()
    crossed.columns.name = None
    dropped = load_dropped(run.rundir.manifest)
    drops = dropped["reason"].value_counts().rename_axis("reason").reset_index(name="rows") if len(dropped) else None
    groups = manifest.loc[manifest["dup_group"] != "", "dup_group"].value_counts()
    licences = manifest["license"].value_counts().rename_axis("licence").reset_index(name="images")
    return ("<h2>Data</h2>" + _table(crossed)
            + f"<p>{len(manifest)} images of {manifest['patient_id'].nunique()} patients; {int((groups > 1).sum())} "
              f"duplicate groups (largest {int(groups.max()) if len(groups) else 0}) kept within one split.</p>"
            + ("<h3>Filtered before training</h3>" + _table(drops) if drops is not None else "")
            + "<h3>Licences</h3>" + _table(licences))


def _explanations(run: RunModel, cache_root: Path, folder: Path) -> str:
    manifest = pd.read_csv(run.rundir.manifest, dtype=str, keep_default_na=False)
    test = manifest[manifest["split"] == "test"].reset_index(drop=True)
    rows, _, probabilities = model_probabilities(run, test, cache_root)
    cache = prepare_with_lungs(rows, cache_root, run.preprocessing).cache
    positive = run.positive_index
    truth = rows["label"].map(run.classes.index).to_numpy()
    rng = np.random.default_rng(0)
    chosen = np.concatenate([rng.permutation(np.flatnonzero(truth == k))[:GALLERY_PER_CLASS]
                             for k in range(len(run.classes))])
    sections = []
    for title, indices in (("Grad-CAM gallery (test images)", chosen),
                           ("Top losses: the most confidently wrong test images",
                            top_losses(truth, probabilities, TOP_LOSSES))):
        if len(indices) == 0:
            continue
        images = CachedImages(rows.iloc[indices], cache, run.classes)
        pixels = torch.stack([images[i][0] for i in range(len(images))])
        maps = heatmaps(run.model, pixels.float(), positive)
        lungs = shipped_segmenter().segment_many(list(pixels[:, 0].numpy()))
        shares = [lung_heat_share(m, mask.mask) for m, mask in zip(maps, lungs)]
        titles = [f"true {rows['label'].iloc[i]}, P({run.positive_class}) {probabilities[i, positive]:.2f}\n"
                  f"heat in lungs {s:.0%}" for i, s in zip(indices, shares)]
        out = gallery(pixels[:, 0].numpy(), maps, titles, lungs, folder / f"{title.split()[0].lower()}.png")
        fallbacks = sum(mask.fallback for mask in lungs)
        sections.append(f"<h3>{html.escape(title)}</h3><p>Mean share of Grad-CAM heat inside the lungs (outlined: "
                        f"each image's mask from the lung segmenter{_fallback_note(fallbacks)}): "
                        f"{np.mean(shares):.0%}.</p>{_png(out)}")
    return "".join(sections)


def _fallback_note(fallbacks: int) -> str:
    return f"; {fallbacks} image(s) with the fixed rectangle, dashed, where no plausible mask was found" \
        if fallbacks else ""


def _model_card(card: dict) -> str:
    data = card.get("training_data", {})
    items = [
        ("Intended use", card.get("intended_use", "")),
        ("Source of data", ", ".join(f"{k} ({v} images)" for k, v in data.get("sources", {}).items())),
        ("Participants", f"{data.get('images')} images of {data.get('patients')} patients; split by patient"),
        ("Outcome", "label from the published finding (label table in docs/reference.md)"),
        ("Model", f"{card['model']['architecture']} with head {card['model']['head']}, pretrained: "
                  f"{card['model']['pretrained']}, transfer: {card['model']['transfer']}"),
        ("Operating point", json.dumps(card.get("operating_point", {}))),
        ("Licences of the training data", ", ".join(f"{k}: {v}" for k, v in card.get("licences", {}).items())),
        ("Limitations", " ".join(card.get("limitations", []))),
    ]
    return "<h2>Model card</h2><table>" + "".join(
        f"<tr><th>{html.escape(k)}</th><td style='text-align:left'>{html.escape(str(v))}</td></tr>"
        for k, v in items) + "</table>"


def _cv_section(cv: dict | None) -> str:
    if cv is None:
        return ("<h2>Cross-validation</h2><p>Not run for this model: <code>covidxr cv --config RECIPE --data MANIFEST "
                "-o DIR</code>, then copy <code>DIR/cv.json</code> to <code>RUN/evaluation/</code>.</p>")
    folds = pd.DataFrame(cv["folds"]).round(3)
    return (f"<h2>Cross-validation</h2><p>Pooled out-of-fold AUC {format_estimate(cv, 'pooled_out_of_fold_auc')} "
            f"over {cv['n_images']} images; mean AUC {format_number(cv['mean']['auc'])} "
            f"(sd {format_number(cv['sd']['auc'])}). "
            f"{html.escape(cv['note'])}.</p>" + _table(folds))


def write_report(run_dir: str | Path, out: str | Path, cache_root: str | Path | None = None) -> Path:
    run = load_run(run_dir)
    cache_root = Path(cache_root or default_cache_root())
    result = _cached(run, "evaluate-internal-test.json", lambda: evaluate(run.run, cache_root=cache_root))
    audited = _cached(run, "audit-internal.json", lambda: audit(run.run, cache_root=cache_root))
    folder = run.output_folder
    external = [read_json(p) for p in sorted(folder.glob("evaluate-*.json"))
                if not p.name.startswith("evaluate-internal-")]
    card = run.rundir.read_card()
    cv = read_cv(folder)
    parts = [
        f"<h1>covidxr report: {html.escape(run.run.name)}</h1>",
        f"<p class='banner'>{html.escape(NOT_FOR_CLINICAL_USE)}</p>",
        "<h2>The model against the source-only baseline</h2>", _headline(result, cv),
        _data_section(run),
        "<h2>Training</h2>" + (_png(run.rundir.curves) if run.rundir.curves.is_file() else ""),
        f"<h2>Metrics at the operating threshold {result['threshold']:.3f} ({html.escape(result['threshold_rule'])},"
        f" fitted on validation)</h2>", _metrics_table(result),
        f"<p>CIs: {html.escape(result['ci_method'])}.</p>",
        _png(folder / "evaluate-internal-test-curves.png"),
        f"<p>Calibration ({html.escape(result['calibration'])}, fitted on validation at prevalence "
        f"{format_number(result['calibration_prevalence'])}): ECE {format_estimate(result, 'ece')} (before "
        f"calibration {format_estimate(result, 'ece_before_calibration')}), Brier {format_number(result['brier'])}."
        "</p>",
        "<h3>Operating points (fitted on validation, applied to test)</h3>", _operating_points_table(result),
        "<h2>External data</h2>" + ("".join(
            f"<p>{html.escape(e['data'])} ({e['split']}): {e['n_images']} images, {e['n_patients']} patients, AUC "
            f"{format_estimate(e, 'auc')}; source-only {format_estimate(e, 'source_only_auc')}</p>" for e in external)
            or "<p>None evaluated: run <code>covidxr evaluate --run RUN --data OTHER.csv</code>.</p>"),
        _cv_section(cv),
        "<h2>Shortcut audit</h2>",
        *(f"<p class='verdict'>{html.escape(audited[k]['verdict'])}</p>"
          for k in ("source_predictability", "occlusion", "leave_one_site_out")),
        _explanations(run, cache_root, folder),
        _model_card(card),
    ]
    document = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>covidxr report "
                f"{html.escape(run.run.name)}</title><style>{STYLE}</style></head><body>{''.join(parts)}</body></html>")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(document, encoding="utf-8")
    return out
