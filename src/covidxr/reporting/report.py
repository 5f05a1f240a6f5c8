"""`covidxr report`: one self-contained HTML file a person reads top to bottom (plots embedded).

Two steps: `gather_report` computes everything the page shows (it evaluates and audits the run where no saved
result exists, and draws the Grad-CAM galleries), then `templates/report.html` lays it out; rendering runs no
model."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from covidxr.data.cache import prepare
from covidxr.data.dataset import CachedImages
from covidxr.data.manifest import load_dropped
from covidxr.evaluation.audit import audit_file, audit_run, read_audit
from covidxr.evaluation.crossval import read_cv
from covidxr.evaluation.evaluate import (
    INTERNAL,
    evaluate_run,
    evaluation_file,
    evaluation_stem,
    model_probabilities,
    read_evaluation,
    saved_evaluations,
)
from covidxr.evaluation.metrics import format_estimate, format_number, source_explains_result, within_source_lines
from covidxr.evaluation.plots import curves_file
from covidxr.explain.cam import gallery, heatmaps, lung_heat_share, top_losses
from covidxr.lungs import lungs_of_prepared, preprocessor
from covidxr.models.loading import RunModel, load_run
from covidxr.reporting.templates import Table, render
from covidxr.runs import AuditResult, CrossValidationResult, EvaluationResult, ModelCard, default_cache_root

GALLERY_PER_CLASS, TOP_LOSSES = 4, 6
INTERNAL_SPLIT = "test"
METRIC_KEYS = ("auc", "pr_auc", "accuracy", "sensitivity", "specificity", "ppv", "npv", "f1")


@dataclass(frozen=True)
class DataSummary:
    """The run's manifest: images per source, label and split; duplicates; what was filtered; licences."""

    by_source: Table
    images: int
    patients: int
    duplicate_groups: int
    largest_group: int
    dropped: Table | None
    licences: Table


@dataclass(frozen=True)
class Gallery:
    """A Grad-CAM figure of test images and the mean share of its heat inside the lungs."""

    title: str
    image: Path
    lung_heat_share: float
    fallbacks: int


@dataclass(frozen=True)
class Report:
    """Everything the report shows, computed."""

    run_name: str
    evaluation: EvaluationResult
    audit: AuditResult
    external: list[EvaluationResult]
    cv: CrossValidationResult | None
    data: DataSummary
    training_curves: Path | None
    evaluation_curves: Path
    galleries: list[Gallery]
    card: list[tuple[str, str]]

    @property
    def within_source(self) -> list[str]:
        return within_source_lines(self.evaluation, self.cv)

    @property
    def source_explains(self) -> bool:
        return source_explains_result(self.evaluation)

    @property
    def metrics(self) -> Table:
        return Table.from_frame(pd.DataFrame(
            [{"metric": key, "test (95% CI)": format_estimate(self.evaluation, key)} for key in METRIC_KEYS]))

    @property
    def subgroups(self) -> Table | None:
        result = self.evaluation
        rows = [{"subgroup": f"{kind} {name}", "images": f.n_images, "patients": f.n_patients,
                 "AUC (95% CI)": format_estimate(f, "auc"), "sensitivity": format_number(f.sensitivity),
                 "specificity": format_number(f.specificity)}
                for kind, groups in (("source", result.within_source), ("site", result.within_site))
                for name, f in groups.items()]
        return Table.from_frame(pd.DataFrame(rows)) if rows else None

    @property
    def operating_points(self) -> Table:
        result = self.evaluation
        rows = [{"operating point": name + (" (default)" if name == result.operating_point else ""),
                 "threshold": f"{point.threshold:.3f}", "rule": point.rule,
                 "validation sensitivity / specificity": f"{format_number(point.validation.sensitivity)} / "
                                                         f"{format_number(point.validation.specificity)}",
                 **{f"test {key} (95% CI)": format_estimate(point, key) for key in ("sensitivity", "specificity",
                                                                                     "ppv")}}
                for name, point in result.operating_points.items()]
        return Table.from_frame(pd.DataFrame(rows))

    @property
    def cv_folds(self) -> Table | None:
        return Table.from_frame(pd.DataFrame([fold.model_dump() for fold in self.cv.folds]).round(3)) \
            if self.cv is not None else None


def data_summary(run: RunModel) -> DataSummary:
    manifest = pd.read_csv(run.rundir.manifest, dtype=str, keep_default_na=False)
    crossed = pd.crosstab([manifest["source"], manifest["label"]], manifest["split"], margins=True,
                          margins_name="total").reset_index()
    crossed.columns.name = None
    dropped = load_dropped(run.rundir.manifest)
    groups = manifest.loc[manifest["dup_group"] != "", "dup_group"].value_counts()
    return DataSummary(
        by_source=Table.from_frame(crossed), images=len(manifest), patients=manifest["patient_id"].nunique(),
        duplicate_groups=int((groups > 1).sum()), largest_group=int(groups.max()) if len(groups) else 0,
        dropped=Table.from_frame(dropped["reason"].value_counts().rename_axis("reason").reset_index(name="rows"))
        if len(dropped) else None,
        licences=Table.from_frame(manifest["license"].value_counts().rename_axis("licence").reset_index(name="images")))


def grad_cam_galleries(run: RunModel, cache_root: Path, folder: Path) -> list[Gallery]:
    """A gallery of test images of each class and one of the most confidently wrong, their Grad-CAM heat outlined
    with each image's lung mask; written into `folder`."""
    manifest = pd.read_csv(run.rundir.manifest, dtype=str, keep_default_na=False)
    test = manifest[manifest["split"] == INTERNAL_SPLIT].reset_index(drop=True)
    rows, _, probabilities = model_probabilities(run, test, cache_root)
    cache = prepare(rows, cache_root, preprocessor(run.preprocessing)).cache
    positive = run.positive_index
    truth = rows["label"].map(run.classes.index).to_numpy()
    rng = np.random.default_rng(0)
    chosen = np.concatenate([rng.permutation(np.flatnonzero(truth == k))[:GALLERY_PER_CLASS]
                             for k in range(len(run.classes))])
    galleries = []
    for title, indices in (("Grad-CAM gallery (test images)", chosen),
                           ("Top losses: the most confidently wrong test images",
                            top_losses(truth, probabilities, TOP_LOSSES))):
        if len(indices) == 0:
            continue
        images = CachedImages(rows.iloc[indices], cache, run.classes)
        pixels = torch.stack([images[i][0] for i in range(len(images))])
        maps = heatmaps(run.model, pixels.float(), positive)
        lungs = lungs_of_prepared(list(pixels[:, 0].numpy().astype(np.uint8)), run.preprocessing)
        shares = [lung_heat_share(m, mask.mask) for m, mask in zip(maps, lungs)]
        titles = [f"true {rows['label'].iloc[i]}, P({run.positive_class}) {probabilities[i, positive]:.2f}\n"
                  f"heat in lungs {s:.0%}" for i, s in zip(indices, shares)]
        image = gallery(pixels[:, 0].numpy(), maps, titles, lungs, folder / f"{title.split()[0].lower()}.png")
        galleries.append(Gallery(title, image, float(np.mean(shares)), sum(mask.fallback for mask in lungs)))
    return galleries


def card_rows(card: ModelCard) -> list[tuple[str, str]]:
    """The model card's entries a reader needs, as (name, text)."""
    data, model = card.training_data, card.model
    return [
        ("Intended use", card.intended_use),
        ("Source of data", ", ".join(f"{k} ({v} images)" for k, v in data.sources.items())),
        ("Participants", f"{data.images} images of {data.patients} patients; split by patient"),
        ("Outcome", "label from the published finding (label table in docs/reference.md)"),
        ("Model", f"{model.architecture} with head {model.head}, pretrained: {model.pretrained}, "
                  f"transfer: {model.transfer}"),
        ("Operating point", json.dumps(card.operating_point.model_dump(mode="json", exclude_unset=True))),
        ("Licences of the training data", ", ".join(f"{k}: {v}" for k, v in card.licences.items())),
        ("Limitations", " ".join(card.limitations)),
    ]


def internal_evaluation(run: RunModel, cache_root: Path) -> EvaluationResult:
    """The run's saved evaluation on its own test split; computed (and saved) when there is none."""
    path = evaluation_file(run.output_folder, INTERNAL, INTERNAL_SPLIT)
    return read_evaluation(path) if path.is_file() else evaluate_run(run.run, cache_root=cache_root)


def internal_audit(run: RunModel, cache_root: Path) -> AuditResult:
    """The run's saved audit on its own rows; computed (and saved) when there is none."""
    path = audit_file(run.output_folder, INTERNAL)
    return read_audit(path) if path.is_file() else audit_run(run.run, cache_root=cache_root)


def gather_report(run_dir: str | Path, cache_root: str | Path | None = None) -> Report:
    """Everything the report shows: saved results where they exist, the rest computed now (this runs the model)."""
    run = load_run(run_dir)
    cache_root = Path(cache_root or default_cache_root())
    result, audited = internal_evaluation(run, cache_root), internal_audit(run, cache_root)
    folder = run.output_folder
    return Report(
        run_name=run.run.name, evaluation=result, audit=audited,
        external=[other for other in saved_evaluations(folder) if other.data != INTERNAL], cv=read_cv(folder),
        data=data_summary(run), training_curves=run.rundir.curves if run.rundir.curves.is_file() else None,
        evaluation_curves=curves_file(evaluation_stem(folder, INTERNAL, INTERNAL_SPLIT)),
        galleries=grad_cam_galleries(run, cache_root, folder), card=card_rows(run.rundir.read_card()))


def render_report(report: Report) -> str:
    return render("report.html", title=f"covidxr report {report.run_name}",
                  heading=f"covidxr report: {report.run_name}", report=report, card=report.card)


def write_report(run_dir: str | Path, out: str | Path, cache_root: str | Path | None = None) -> Path:
    out = Path(out)
    document = render_report(gather_report(run_dir, cache_root))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(document, encoding="utf-8")
    return out
