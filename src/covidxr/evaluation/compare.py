"""`covidxr compare`: recipes side by side on one manifest and one split.

Each recipe is trained on the split's train and val rows and evaluated on its test rows (AUC, and AUC
within each source holding both classes). Then it is cross-validated over every row, test rows included
(grouped folds over all patients), for the pooled out-of-fold AUC within one source: by default the source
holding both classes with the most patients (Cohen's collection on the shared data). Within one source the
origin of an image cannot separate the classes, so this is the figure that measures the disease. The
trained model is audited (`covidxr audit`: AUC with the lung field hidden, origin predicted from its
embeddings). Every AUC carries a patient-bootstrap CI.

Outputs: `DIR/compare.json` (a list, one object per recipe), `DIR/NAME/run` (the trained run, its
evaluation, audit and the cross-validation's cv.json), `DIR/NAME/cv/` (one run per fold). A recipe
finished by an earlier call (`DIR/NAME/entry.json`) is not redone.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import pandas as pd

from covidxr.config import TrainConfig, load_recipe
from covidxr.data.build import build
from covidxr.data.labels import CLASSES
from covidxr.data.manifest import load_manifest
from covidxr.errors import UsageError
from covidxr.evaluation.audit import audit_run
from covidxr.evaluation.crossval import cross_validate
from covidxr.evaluation.evaluate import evaluate_run
from covidxr.metrics import PatientBootstrap
from covidxr.runs import CompareEntry, RunDir, default_cache_root, read_json, write_json
from covidxr.training.data import ensure_cache, is_built_for, select_rows
from covidxr.training.run import train
from covidxr.training.tracking import log_result, tracked_run

log = logging.getLogger("covidxr.compare")
DEFAULT_FOLDS = 5


def recipe_name(recipe: str | Path) -> str:
    """A shipped recipe's name, or a YAML file's stem."""
    path = Path(recipe)
    return path.stem if path.suffix in (".yaml", ".yml") else str(recipe)


def load_recipes(recipes: list[str | Path], overrides: list[str]) -> dict[str, TrainConfig]:
    """The recipes by name, checked to be comparable: distinct names, one task, no per-recipe re-split."""
    if not recipes:
        raise UsageError("compare needs at least one recipe")
    configs: dict[str, TrainConfig] = {}
    for recipe in recipes:
        name = recipe_name(recipe)
        if name in configs:
            raise UsageError(f"recipe {name!r} is given twice; compare needs distinct recipe names")
        configs[name] = load_recipe(recipe, overrides)
    tasks = {config.task for config in configs.values()}
    if len(tasks) > 1:
        raise UsageError(f"the recipes have different tasks ({', '.join(sorted(tasks))}); compare needs one")
    rebalanced = [name for name, config in configs.items() if config.data.balance is not None]
    if rebalanced:
        raise UsageError(f"recipe(s) {', '.join(rebalanced)} set data.balance, which re-splits the data per recipe; "
                         "compare trains every recipe on one split: balance the manifest itself "
                         "(`data build --balance`) and add --set data.balance=null")
    return configs


def common_split(manifest_path: Path, config: TrainConfig, out: Path) -> Path:
    """The manifest every recipe trains on: the given one when it is built for the task, else it built here
    once (the first recipe's split fractions and seed) into `out/split.csv`."""
    manifest = load_manifest(manifest_path)
    if is_built_for(manifest, config.task):
        return manifest_path
    log.info("compare: %s is not built for the %s task; building one split for every recipe (split %s, seed %d)",
             manifest_path, config.task, config.data.split, config.seed)
    return build([manifest], task=config.task, split=config.data.split, seed=config.seed).save(out / "split.csv")


def within_source_name(manifest: pd.DataFrame, task: str, wanted: str | None) -> str | None:
    """The source whose pooled out-of-fold AUC is reported: `wanted`, or the source holding every class of the
    task with the most patients; None when no source holds them all."""
    classes = set(CLASSES[task])
    holding = {str(source): part["patient_id"].nunique() for source, part in manifest.groupby("source")
               if set(part["label"]) >= classes}
    if wanted is not None:
        if wanted not in holding:
            raise UsageError(f"--within {wanted!r}: not a source holding every class; such sources: "
                             f"{', '.join(sorted(holding)) or 'none'}")
        return wanted
    if not holding:
        log.warning("compare: no source holds every class; the within-source figures are undefined")
        return None
    return max(holding, key=lambda source: (holding[source], source))


def _test_figures(run: Path, cache_root: Path | None, bootstrap: PatientBootstrap) -> dict:
    result = evaluate_run(run, cache_root=cache_root, resamples=bootstrap.resamples, seed=bootstrap.seed)
    return {"test_images": result.n_images, "test_patients": result.n_patients, "auc": result.auc,
            "auc_ci": result.auc_ci, "source_only_auc": result.source_only_auc,
            "source_only_auc_ci": result.source_only_auc_ci, "within_source": result.within_source}


def _audit_figures(run: Path, cache_root: Path | None, bootstrap: PatientBootstrap) -> dict:
    result = audit_run(run, cache_root=cache_root, bootstrap=bootstrap)
    hidden, origin = result.occlusion.lungs_hidden, result.source_predictability
    return {"lungs_hidden_auc": hidden.auc, "lungs_hidden_auc_ci": hidden.auc_ci,
            "origin_auc": origin.source_auc, "origin_auc_ci": origin.source_auc_ci,
            "audit_rows": f"{result.splits}: {result.n_images} images, {result.n_patients} patients"}


def _out_of_fold_figures(config: TrainConfig, split: Path, folder: Path, run: Path, folds: int, within: str | None,
                         cache_root: Path | None, bootstrap: PatientBootstrap) -> dict | None:
    started = time.perf_counter()
    result = cross_validate(config, split, folder, folds, cache_root, include_test=True, bootstrap=bootstrap)
    if result is None:
        return None
    shutil.copy(folder / "cv.json", RunDir(run).evaluation / "cv.json")
    figures = result.pooled_out_of_fold_within_source.get(within) if within else None
    return {"oof_within_source_auc": figures.auc if figures else None,
            "oof_within_source_auc_ci": figures.auc_ci if figures else None, "oof_source": within,
            "oof_images": figures.n_images if figures else None,
            "oof_patients": figures.n_patients if figures else None, "oof_folds": folds,
            "oof_auc": result.pooled_out_of_fold_auc, "oof_auc_ci": result.pooled_out_of_fold_auc_ci,
            "cv_seconds": round(time.perf_counter() - started, 1)}


def compare_recipe(name: str, config: TrainConfig, split: Path, folder: Path, folds: int, within: str | None,
                   cache_root: Path | None, bootstrap: PatientBootstrap) -> CompareEntry | None:
    """Train, evaluate, audit and cross-validate one recipe into `folder`; its entry of compare.json (None in DDP
    worker processes)."""
    entry_path = folder / "entry.json"
    if entry_path.is_file():
        log.info("compare: %s was finished by an earlier call (%s): not redone", name, entry_path)
        return CompareEntry.parse(read_json(entry_path), entry_path)
    if folder.exists() and any(folder.iterdir()):
        raise UsageError(f"{folder} holds an unfinished comparison of {name}: delete it to redo it")
    ensure_cache(select_rows(load_manifest(split), config), cache_root or default_cache_root(), config)
    with tracked_run(name, recipe=name) as run_id:
        started = time.perf_counter()
        run = train(config, split, folder / "run", cache_root=cache_root)
        if run is None:
            return None
        train_seconds = round(time.perf_counter() - started, 1)
        tested, audited = _test_figures(run, cache_root, bootstrap), _audit_figures(run, cache_root, bootstrap)
        out_of_fold = _out_of_fold_figures(config, split, folder / "cv", run, folds, within, cache_root, bootstrap)
        if out_of_fold is None:
            return None
        entry = CompareEntry(recipe=name, description=config.description, run=str(run), data=str(split),
                             **tested, **out_of_fold, **audited, train_seconds=train_seconds,
                             ci_method=bootstrap.method)
        write_json(entry_path, entry.to_json())
        log_result(run_id, entry.to_json(), config.model_dump(mode="json"), entry_path)
    return entry


def compare(recipes: list[str | Path], manifest_path: str | Path, out: str | Path, overrides: list[str] | None = None,
            folds: int = DEFAULT_FOLDS, within: str | None = None, cache_root: str | Path | None = None,
            bootstrap: PatientBootstrap = PatientBootstrap()) -> list[dict]:
    """`compare_recipes`'s entries as written to DIR/compare.json."""
    return [entry.to_json() for entry in compare_recipes(recipes, manifest_path, out, overrides, folds, within,
                                                         cache_root, bootstrap)]


def compare_recipes(recipes: list[str | Path], manifest_path: str | Path, out: str | Path,
                    overrides: list[str] | None = None, folds: int = DEFAULT_FOLDS, within: str | None = None,
                    cache_root: str | Path | None = None,
                    bootstrap: PatientBootstrap = PatientBootstrap()) -> list[CompareEntry]:
    """Compare recipes on one manifest and split; writes DIR/compare.json and returns its entries."""
    configs = load_recipes(recipes, overrides or [])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    first = next(iter(configs.values()))
    split = common_split(Path(manifest_path), first, out)
    source = within_source_name(load_manifest(split), first.task, within)
    cache = Path(cache_root) if cache_root else None
    entries: list[CompareEntry] = []
    for index, (name, config) in enumerate(configs.items(), 1):
        log.info("compare: recipe %d of %d, %s: train, evaluate, audit, %d-fold cross-validation over all patients",
                 index, len(configs), name, folds)
        entry = compare_recipe(name, config, split, out / name, folds, source, cache, bootstrap)
        if entry is None:
            return []
        entries.append(entry)
        (out / "compare.json").write_text(json.dumps([e.to_json() for e in entries], indent=2) + "\n")
    return entries
