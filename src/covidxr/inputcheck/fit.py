"""Fit the input check and measure it on held-out images (`make input-check`):

    python -m covidxr.inputcheck.fit --data DATA --manifest BUILT.csv -o OUT [--ship FILE]

DATA is laid out as the README's *Data* section says; BUILT.csv is the binary manifest the shipped classifier was
trained on (its split is reused, so the check's test images are the classifier's test patients). The check's
classifier and novelty statistics are fitted on training rows; its thresholds are chosen on validation rows (accept
at least ACCEPT_TARGET of the frontal images of each source there); the figures are measured on test rows, with
95% intervals from a bootstrap over patients (or base images). Writes OUT/input_check.json, OUT/figures.json, the
features (OUT/features.npz, OUT/samples.parquet), each image's outcome (OUT/outcomes.parquet), and with --ship
the same JSON into the package.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import binomtest
from sklearn.covariance import LedoitWolf
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, cross_val_score
from sklearn.preprocessing import StandardScaler

from covidxr.commandline import option, out_option
from covidxr.data.imageio import ImageReadError
from covidxr.data.manifest import load_manifest
from covidxr.inputcheck import feature_names, feature_vectors
from covidxr.inputcheck.corpus import Sample, corpus
from covidxr.inputcheck.features import THUMBNAIL, image_features
from covidxr.lungs import shipped_segmenter
from covidxr.metrics import PatientBootstrap
from covidxr.progress import progress_bar
from covidxr.runs import write_json
from covidxr.runs.inputcheck import InputCheckModel

log = logging.getLogger("covidxr.inputcheck")
CLASSES = ["frontal", "lateral", "ct", "other"]
COMPONENTS = 12
ACCEPT_TARGET = 0.995
C_GRID = (0.01, 0.1, 1.0, 10.0)


def measured_features(samples: list[Sample]) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """(one row per readable sample, thumbnails, statistics); unreadable files are logged and left out."""
    segmenter = shipped_segmenter()
    rows, thumbnails, statistics = [], [], []
    with progress_bar() as bar:
        task = bar.add_task("input-check features", total=len(samples))
        for sample in samples:
            try:
                gray = sample.load()
            except ImageReadError as error:
                log.warning("%s: left out (%s)", sample.name, error.problem)
                bar.advance(task)
                continue
            features = image_features(gray, segmenter)
            rows.append({"name": sample.name, "kind": sample.kind, "split": sample.split, "group": sample.group,
                         "origin": sample.origin, "lungs_found": features.lungs.lungs > 0,
                         "short_side": features.short_side})
            thumbnails.append(features.thumbnail)
            statistics.append(features.statistics)
            bar.advance(task)
    return pd.DataFrame(rows), np.stack(thumbnails), np.stack(statistics)


def fit_model(table: pd.DataFrame, thumbnails: np.ndarray, statistics: np.ndarray) -> InputCheckModel:
    train = (table["split"] == "train").to_numpy()
    frontal = (table["kind"] == "frontal").to_numpy()
    pca = PCA(COMPONENTS, random_state=0).fit(thumbnails[train & frontal])
    raw = feature_vectors(thumbnails, statistics, pca.mean_, pca.components_)
    scaler = StandardScaler().fit(raw[train])
    standardised = scaler.transform(raw)
    labels = table["kind"].to_numpy()
    scores = {c: cross_val_score(LogisticRegression(C=c, max_iter=5000, class_weight="balanced"), standardised[train],
                                 labels[train], groups=table["group"][train], cv=GroupKFold(5),
                                 scoring="neg_log_loss").mean() for c in C_GRID}
    chosen = max(scores, key=scores.get)
    classifier = LogisticRegression(C=chosen, max_iter=5000, class_weight="balanced").fit(standardised[train],
                                                                                          labels[train])
    order = [list(classifier.classes_).index(name) for name in CLASSES]
    covariance = LedoitWolf().fit(standardised[train & frontal])
    model = InputCheckModel(
        name="covidxr-input-check-logistic-mahalanobis", features=feature_names(COMPONENTS), thumbnail=THUMBNAIL,
        pca_mean=pca.mean_.tolist(), pca_components=pca.components_.tolist(), scaler_mean=scaler.mean_.tolist(),
        scaler_scale=scaler.scale_.tolist(), classes=CLASSES, coef=classifier.coef_[order].tolist(),
        intercept=classifier.intercept_[order].tolist(), novelty_mean=covariance.location_.tolist(),
        novelty_precision=covariance.precision_.tolist(), score_threshold=0.0, novelty_threshold=np.inf,
        fitted_on={"C": chosen, "cross_validated_log_loss": {str(c): -s for c, s in scores.items()}})
    return with_thresholds(model, table, raw)


def with_thresholds(model: InputCheckModel, table: pd.DataFrame, raw: np.ndarray) -> InputCheckModel:
    """Thresholds that accept at least ACCEPT_TARGET of each source's validation frontal images (the score's and
    the novelty distance's shares of refusals split the rest evenly)."""
    validation = (table["split"] == "val") & (table["kind"] == "frontal")
    standardised = model.standardised(raw[validation.to_numpy()])
    score = model.class_probabilities(standardised)[:, 0]
    distance = model.novelty(standardised)
    origins = table.loc[validation, "origin"].to_numpy()
    each = (1 - ACCEPT_TARGET) / 2
    score_threshold = min(float(np.quantile(score[origins == o], each)) for o in set(origins))
    novelty_threshold = max(float(np.quantile(distance[origins == o], 1 - each)) for o in set(origins))
    counts = table[table["split"] != "test"].groupby(["split", "kind"]).size()
    return model.model_copy(update={
        "score_threshold": score_threshold, "novelty_threshold": novelty_threshold,
        "fitted_on": {**model.fitted_on, "images": {f"{s} {k}": int(n) for (s, k), n in counts.items()},
                      "thresholds": f"accept >= {ACCEPT_TARGET} of each source's validation frontal images"}})


def outcomes(model: InputCheckModel, table: pd.DataFrame, raw: np.ndarray) -> pd.DataFrame:
    decided = [model.decide(vector, bool(found), int(side))
               for vector, found, side in zip(raw, table["lungs_found"], table["short_side"])]
    return table.assign(status=[d.status for d in decided], reason=[d.reason or "" for d in decided],
                        score=[d.score for d in decided])


def rate_with_interval(part: pd.DataFrame, accepted: bool, bootstrap: PatientBootstrap) -> dict:
    """The share of `part` accepted (or refused) with a 95% interval: the wider of a bootstrap over groups
    (patients, base images) and the exact binomial interval on images, which stays honest where every image of a
    small set has one outcome (a bootstrap then collapses to a point)."""
    hits = (part["status"] == "accepted").to_numpy() == accepted
    resampled = bootstrap.intervals(lambda rows: {"rate": float(hits[rows].mean())}, part["group"])["rate"]
    exact = binomtest(int(hits.sum()), len(hits)).proportion_ci(0.95, method="exact")
    interval = [min(exact.low, resampled[0]), max(exact.high, resampled[1])] if resampled else [exact.low, exact.high]
    return {"images": int(len(part)), "groups": int(part["group"].nunique()), "rate": float(hits.mean()),
            "rate_ci": [float(interval[0]), float(interval[1])],
            "reasons": {str(k): int(v) for k, v in part["reason"].value_counts().items() if k}}


GOALS = {"frontal": ("accepted", 0.99), "lateral": ("refused", 0.95), "ct": ("refused", 0.95),
         "other": ("refused", 0.95)}


def figures(decided: pd.DataFrame, splits: tuple[str, ...] = ("test",), kinds: tuple[str, ...] = tuple(GOALS)) -> dict:
    """Acceptance of frontal images per source and refusal of each other kind, on `splits`, with 95% intervals."""
    bootstrap = PatientBootstrap(1000, 0)
    part = decided[decided["split"].isin(splits)]
    result = {}
    for kind in kinds:
        outcome, goal = GOALS[kind]
        rows = part[part["kind"] == kind]
        groups = rows.groupby("origin") if kind == "frontal" else [(kind, rows)]
        for name, group in groups:
            key = f"frontal {name}" if kind == "frontal" else kind
            result[key] = {"measure": f"share {outcome}", "goal": goal,
                           **rate_with_interval(group, outcome == "accepted", bootstrap)}
    return {"splits": list(splits), "ci_method": "the wider of the exact binomial interval on images and a "
            + bootstrap.method.replace("over patients", "over patients (or base images)"), "by_kind": result}


def held_out_figures(decided: pd.DataFrame) -> dict:
    """Test-split figures, and the refusals of validation and test negatives together: the thresholds were chosen
    on validation frontal images only, so no negative outside the training split was fitted on."""
    return {"test": figures(decided),
            "negatives_val_and_test": figures(decided, ("val", "test"), ("lateral", "ct", "other"))}


def main(argv: list[str] | None = None) -> int:
    options = [option("--data", type=Path, required=True, help="folder holding covid-chestxray-dataset/"),
               option("--manifest", type=Path, required=True, help="the shipped classifier's built manifest"),
               out_option(), option("--ship", type=Path, help="also write the fitted check here (the package's copy)"),
               option("--reuse-features", action="store_true",
                      help="refit on OUT/features.npz and OUT/samples.parquet from an earlier run")]
    parser = argparse.ArgumentParser(prog="python -m covidxr.inputcheck.fit", description=__doc__.split("\n\n")[0],
                                     parents=options)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    measured = args.out / "features.npz"
    if args.reuse_features and measured.is_file():
        stored = np.load(measured, allow_pickle=False)
        table = pd.read_parquet(args.out / "samples.parquet")
        thumbnails, statistics = stored["thumbnails"], stored["statistics"]
    else:
        samples = corpus(load_manifest(args.manifest), args.data / "covid-chestxray-dataset")
        table, thumbnails, statistics = measured_features(samples)
        args.out.mkdir(parents=True, exist_ok=True)
        np.savez(measured, thumbnails=thumbnails, statistics=statistics)
        table.to_parquet(args.out / "samples.parquet")
    model = fit_model(table, thumbnails, statistics)
    raw = feature_vectors(thumbnails, statistics, np.asarray(model.pca_mean), np.asarray(model.pca_components))
    decided = outcomes(model, table, raw)
    model = model.model_copy(update={"figures": held_out_figures(decided)})
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "input_check.json", model.model_dump(mode="json"))
    write_json(args.out / "figures.json", model.figures)
    decided.to_parquet(args.out / "outcomes.parquet")
    if args.ship:
        write_json(args.ship, model.model_dump(mode="json"))
    for name, held_out in model.figures.items():
        for kind, figure in held_out["by_kind"].items():
            log.info("%s %-15s %4d images %4d groups: %s %.3f [%.3f, %.3f] (goal %.2f) %s", name, kind,
                     figure["images"], figure["groups"], figure["measure"], figure["rate"], *figure["rate_ci"],
                     figure["goal"], figure["reasons"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
