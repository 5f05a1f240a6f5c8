"""`covidxr audit`: does the model look at the disease or at where the image came from?

1. Source predictability: a logistic regression on the model's own embeddings (grouped by patient,
   5-fold) predicts `source` and `site`. A high AUC means the images carry their origin.
2. Occlusion: the model re-evaluated with the lungs hidden (replaced by mean grey), with only the lungs
   kept, and with only an outer border band kept. The lungs are each image's mask from the lung segmenter
   (`covidxr.lungs`; the fixed rectangle of `covidxr.data.regions` where no plausible mask is found); for a
   model whose preprocessing already blacked out all but the lungs (`lungs: mask`), the region it kept
   (`covidxr.lungs.lungs_of_prepared`), so hiding them leaves the mask's grey silhouette. If the classes stay
   separable with the lungs hidden, the model uses shortcuts.
3. Leave-one-site-out on the embeddings: a classifier fitted on the other sites, tested on each site
   that holds both classes; labels that come from a single site cannot be left out, and it says so.
Each result has a one-line verdict; the source and occlusion AUCs have patient-bootstrap CIs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch.utils.data import DataLoader

from covidxr.data.cache import PixelCache, PrepareReport, prepare
from covidxr.data.dataset import CachedImages
from covidxr.data.preprocess import Preprocessor
from covidxr.data.regions import BORDER_BAND, LUNG_COLUMNS, LUNG_ROWS, border_mask
from covidxr.evaluation.evaluate import evaluation_rows
from covidxr.lungs import LungSegmenter, lungs_of_prepared, preprocessor, shipped_segmenter, shows_only_lungs
from covidxr.metrics import PatientBootstrap, auc_or_none
from covidxr.models.loading import RunModel, load_run
from covidxr.runs import AuditResult, AuditVerdicts, default_cache_root, read_json, softmax_with_temperature, write_json

log = logging.getLogger("covidxr.audit")
MIN_SITE_PATIENTS = 5


@dataclass
class OcclusionPass:
    """P(positive class) per image as prepared and with parts hidden (set to the image's mean grey), the pooled
    embeddings, and how each image's lung mask was found."""

    scores: np.ndarray
    lungs_hidden: np.ndarray
    lungs_only: np.ndarray
    borders_only: np.ndarray
    embeddings: np.ndarray
    lung_shares: np.ndarray
    fallbacks: int


OCCLUSION_KEYS = ("scores", "lungs_hidden", "lungs_only", "borders_only", "embeddings", "lung_shares", "fallback")


@torch.no_grad()
def occlusion_batch(run: RunModel, pixels: torch.Tensor, segmenter: LungSegmenter) -> dict[str, np.ndarray]:
    """The occlusion pass of (N, 1, size, size) prepared pixels, one value (embedding) per image under each of
    OCCLUSION_KEYS: the work of a batch, wherever it runs. The lungs are each image's mask from the lung segmenter
    (the fixed rectangle where it finds none plausible), the border the outer band of `covidxr.data.regions`."""
    positive = run.positive_index
    masks = lungs_of_prepared(list(pixels[:, 0].numpy().astype(np.uint8)), run.preprocessing, segmenter)
    pixels = pixels.float()
    lungs = torch.from_numpy(np.stack([m.mask for m in masks]))[:, None]
    mean_grey = pixels.mean(dim=(2, 3), keepdim=True)
    borders = torch.from_numpy(border_mask(pixels.shape[-1]))
    found = {"lung_shares": np.array([m.share for m in masks]), "fallback": np.array([m.fallback for m in masks])}
    for name, keep in (("scores", None), ("lungs_hidden", ~lungs), ("lungs_only", lungs), ("borders_only", borders)):
        features = run.model.features(pixels if keep is None else torch.where(keep, pixels, mean_grey))
        logits = run.model.head(features).numpy()
        found[name] = softmax_with_temperature(logits, run.temperature)[:, positive]
        if keep is None:
            found["embeddings"] = features.mean(dim=(2, 3)).numpy()
    return found


def joined_pass(batches: list[dict[str, np.ndarray]]) -> OcclusionPass:
    """One OcclusionPass of the images of `occlusion_batch` results, in their order."""
    joined = {name: np.concatenate([batch[name] for batch in batches]) for name in OCCLUSION_KEYS}
    return OcclusionPass(joined["scores"], joined["lungs_hidden"], joined["lungs_only"], joined["borders_only"],
                         joined["embeddings"], joined["lung_shares"], int(joined["fallback"].sum()))


def occlusion_pass(run: RunModel, images: CachedImages, segmenter: LungSegmenter) -> OcclusionPass:
    """One pass over the images, in batches of 64 (`occlusion_batch`)."""
    return joined_pass([occlusion_batch(run, pixels, segmenter) for pixels, _ in DataLoader(images, batch_size=64)])


def occlusion_on_cache(run: RunModel, rows: pd.DataFrame, cache: PixelCache, segmenter: LungSegmenter
                       ) -> OcclusionPass:
    """The local engine's occlusion pass of the manifest rows' prepared pixels, here."""
    return occlusion_pass(run, CachedImages(rows, cache, run.classes), segmenter)


class AuditEngine(Protocol):
    """Where the audit's per-image work runs (`covidxr.engines` implements it; default: here)."""

    def prepare(self, manifest: pd.DataFrame, root: Path, preprocessor: Preprocessor) -> PrepareReport: ...

    def occlusion(self, run: RunModel, rows: pd.DataFrame, cache: PixelCache,
                  segmenter: LungSegmenter) -> OcclusionPass: ...


def _origin_auc(y: np.ndarray, out_of_fold: np.ndarray, classes: np.ndarray) -> float | None:
    """AUC (one-vs-rest, macro) of out-of-fold origin scores; None when a class is absent (in a resample)."""
    if len(np.unique(y)) < len(classes):
        return None
    if len(classes) == 2:
        return auc_or_none(y == classes[1], out_of_fold[:, 1])
    return float(roc_auc_score(y, out_of_fold, multi_class="ovr", labels=classes))


def _grouped_auc(embeddings: np.ndarray, target: pd.Series, groups: pd.Series,
                 bootstrap: PatientBootstrap | None = None) -> tuple[float | None, list[float] | None]:
    """Out-of-fold AUC (one-vs-rest, macro) of predicting `target` from embeddings, grouped by patient, and
    with a `bootstrap` its patient-bootstrap CI."""
    counts = target.value_counts()
    keep = target.isin(counts[counts >= 5].index).to_numpy()
    if keep.sum() < 10 or target[keep].nunique() < 2 or groups[keep].nunique() < 5:
        return None, None
    x, y, g = embeddings[keep], target[keep].to_numpy(), groups[keep].to_numpy()
    classes = np.unique(y)
    out_of_fold = np.zeros((len(y), len(classes)))
    for train, test in GroupKFold(n_splits=5).split(x, y, g):
        if len(np.unique(y[train])) < 2:
            return None, None
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x[train], y[train])
        columns = np.searchsorted(classes, model.classes_)
        out_of_fold[np.ix_(test, columns)] = model.predict_proba(x[test])
    auc = _origin_auc(y, out_of_fold, classes)
    if bootstrap is None:
        return auc, None
    interval = bootstrap.intervals(lambda r: {"auc": _origin_auc(y[r], out_of_fold[r], classes)}, pd.Series(g))["auc"]
    return auc, interval


def _surviving_share(auc: float | None, occluded: float | None) -> float | None:
    if auc is None or occluded is None or auc <= 0.5:
        return None
    return float(max(0.0, occluded - 0.5) / (auc - 0.5))


def occlusion_results(truth, scores, hidden, lungs_only, borders_only, patients: pd.Series,
                      bootstrap: PatientBootstrap, only_lungs_shown: bool = False) -> dict:
    """AUC of the whole image and of each occluded variant, each with its patient-bootstrap CI, and a verdict.
    `only_lungs_shown`: the model's preprocessing shows it nothing but the lungs (`lungs: mask`)."""
    variants = {"auc": scores, "lungs_hidden": hidden, "lungs_only": lungs_only, "borders_only": borders_only}
    intervals = bootstrap.intervals(lambda r: {k: auc_or_none(truth[r], v[r]) for k, v in variants.items()},
                                    patients)
    auc = auc_or_none(truth, scores)
    results = {"auc": auc, "auc_ci": intervals["auc"]}
    for name, variant in list(variants.items())[1:]:
        variant_auc = auc_or_none(truth, variant)
        results[name] = {"auc": variant_auc, "auc_ci": intervals[name],
                         "share_of_auc_above_chance_kept": _surviving_share(auc, variant_auc)}
    kept = results["lungs_hidden"]["share_of_auc_above_chance_kept"]
    flagged = kept is not None and kept >= 0.5 and (results["lungs_hidden"]["auc"] or 0) >= 0.7
    results["shortcut_suspected"] = bool(flagged)
    if auc is None:
        results["verdict"] = "Cannot judge: the data holds a single class."
    elif flagged and only_lungs_shown:
        results["verdict"] = (f"The model still separates the classes with the lungs hidden (AUC "
                              f"{results['lungs_hidden']['auc']:.2f}, {kept:.0%} of its skill kept): shown only "
                              "the lungs (lungs: mask), it then sees the grey silhouette of its lung mask, so it "
                              "reads the mask's shape and size: a shortcut.")
    elif flagged:
        results["verdict"] = (f"The model still separates the classes with the lungs hidden (AUC "
                              f"{results['lungs_hidden']['auc']:.2f}, {kept:.0%} of its skill kept): it uses "
                              "shortcuts outside the lungs, such as markers, text or borders.")
    elif only_lungs_shown:
        hidden_auc = results["lungs_hidden"]["auc"]
        results["verdict"] = (f"With the lungs hidden the model loses most of its skill (AUC {hidden_auc:.2f}"
                              + (f", {kept:.0%} of it kept" if kept is not None else "") + "): the grey silhouette "
                              "of its lung mask, all it then sees (lungs: mask), carries little of the label (this "
                              "does not prove it relies on the disease).")
    else:
        results["verdict"] = ("With the lungs hidden the model loses most of its skill: it relies on the lung "
                              "field (this does not prove it relies on the disease).")
    return results


def leave_one_site_out(embeddings: np.ndarray, rows: pd.DataFrame, truth: np.ndarray, positive_class: str) -> dict:
    """Per site holding both classes: AUC on it of a classifier fitted on all other sites' embeddings."""
    results, notes = {}, []
    for label, part in rows.assign(label_=np.where(truth, positive_class, "other")).groupby("label_"):
        sites = part.groupby("site")["patient_id"].nunique()
        enough = sites[sites >= MIN_SITE_PATIENTS]
        if len(enough) < 2:
            named = ", ".join(map(str, enough.index)) or "none"
            notes.append(f"'{label}' has fewer than two sites with {MIN_SITE_PATIENTS}+ patients ({named}): "
                         "it cannot be left out")
    for site, part in rows.groupby("site"):
        index = part.index.to_numpy()
        if not (0 < truth[index].sum() < len(index)) or part["patient_id"].nunique() < MIN_SITE_PATIENTS:
            continue
        others = np.setdiff1d(np.arange(len(rows)), index)
        if not 0 < truth[others].sum() < len(others):
            continue
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        model.fit(embeddings[others], truth[others])
        results[str(site)] = {"n_images": int(len(index)),
                              "auc": auc_or_none(truth[index], model.predict_proba(embeddings[index])[:, 1])}
    if results:
        worst = min(results.values(), key=lambda r: r["auc"])["auc"]
        verdict = (f"Unseen sites: AUC from {worst:.2f} to {max(r['auc'] for r in results.values()):.2f} on "
                   f"{len(results)} site(s) holding both classes.")
    else:
        verdict = "No site holds both classes with enough patients: leave-one-site-out cannot be run here."
    return {"sites": results, "notes": notes, "verdict": verdict + (" " + "; ".join(notes) + "." if notes else "")}


def source_verdict(source_auc: float | None, site_auc: float | None) -> str:
    best = max((a for a in (source_auc, site_auc) if a is not None), default=None)
    if best is None:
        return "Cannot judge: a single source and too few sites."
    if best >= 0.9:
        return (f"The model's embeddings tell where an image comes from (AUC {best:.2f}): the images carry their "
                "origin, and a classifier can score well by learning it.")
    if best >= 0.7:
        return f"The embeddings partly tell the origin (AUC {best:.2f}): some source signal is present."
    return f"The embeddings barely tell the origin (AUC {best:.2f})."


def audit_file(folder: Path, data: str) -> Path:
    """Where the audit of `data` is written in an evaluation folder."""
    return folder / f"audit-{data}.json"


def read_audit(path: Path) -> AuditResult:
    return AuditResult.parse(read_json(path), path)


def audit(run_dir: str | Path, data: str | Path | None = None, cache_root: str | Path | None = None,
          bootstrap: PatientBootstrap = PatientBootstrap(), engine: AuditEngine | None = None) -> dict:
    """`audit_run`'s result as written to its JSON file."""
    return audit_run(run_dir, data, cache_root, bootstrap, engine).to_json()


def audit_run(run_dir: str | Path, data: str | Path | None = None, cache_root: str | Path | None = None,
              bootstrap: PatientBootstrap = PatientBootstrap(), engine: AuditEngine | None = None) -> AuditResult:
    """The three checks of the module docstring on the run's own rows (all splits) or another manifest's, also
    written to `audit_file(RUN/evaluation, data)` with their verdicts in the model card; `engine`: where preparing
    the pixels and the occlusion pass run (default: here, `covidxr.data.cache.prepare` and `occlusion_on_cache`)."""
    run = load_run(run_dir)
    rows, name, _ = evaluation_rows(run, Path(data) if data else None, None)
    root = Path(cache_root or default_cache_root())
    steps = preprocessor(run.preprocessing)
    report = engine.prepare(rows, root, steps) if engine else prepare(rows, root, steps)
    rows = rows[~rows["sha256"].isin(report.failures["sha256"])].reset_index(drop=True)
    truth = (rows["label"] == run.positive_class).to_numpy()
    segmenter = shipped_segmenter()
    passed = (engine.occlusion if engine else occlusion_on_cache)(run, rows, report.cache, segmenter)
    embeddings = passed.embeddings
    source_auc, source_auc_ci = _grouped_auc(embeddings, rows["source"], rows["patient_id"], bootstrap)
    site_auc, _ = _grouped_auc(embeddings, rows["site"], rows["patient_id"])
    result = AuditResult(**{
        "run": str(run.run), "data": name, "n_images": int(len(rows)), "n_patients": int(rows["patient_id"].nunique()),
        "splits": "all rows (train, val and test for a run's own data)", "ci_method": bootstrap.method,
        "source_predictability": {"source_auc": source_auc, "source_auc_ci": source_auc_ci, "site_auc": site_auc,
                                  "verdict": source_verdict(source_auc, site_auc)},
        "occlusion": occlusion_results(truth, passed.scores, passed.lungs_hidden, passed.lungs_only,
                                       passed.borders_only, rows["patient_id"], bootstrap,
                                       only_lungs_shown=shows_only_lungs(run.preprocessing)),
        "leave_one_site_out": leave_one_site_out(embeddings, rows, truth, run.positive_class),
        "lungs": {"masks": "per image, the region its preprocessing kept (lungs: mask)"
                           if shows_only_lungs(run.preprocessing) else
                           f"per image, from the lung segmenter {segmenter.name} (weights sha256 "
                           f"{segmenter.weights_sha256[:12]}...) on the prepared pixels",
                  "fallback_rectangle": {"images": passed.fallbacks, "rows": LUNG_ROWS, "columns": LUNG_COLUMNS},
                  "mean_lung_share": float(passed.lung_shares.mean()) if len(rows) else None,
                  "border_band": BORDER_BAND},
    })
    folder = run.output_folder
    folder.mkdir(parents=True, exist_ok=True)
    write_json(audit_file(folder, name), result.to_json())
    run.rundir.update_card("audits", name, AuditVerdicts.of(result))
    return result
