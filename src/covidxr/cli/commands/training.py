"""Training commands: `train`, `lr-find`, `cv`, `compare` and `weights convert`."""

from __future__ import annotations

import argparse
from pathlib import Path

from covidxr.cli.commands import EXIT_OK, Command, Group, Table
from covidxr.cli.options import (
    CACHE,
    TRACKING,
    cache_option,
    config_option,
    data_option,
    option,
    out_option,
    positive,
    set_option,
)
from covidxr.cli.present import cross_validation_lines, print_lines, table_lines


def cmd_train(args: argparse.Namespace) -> int:
    from covidxr.config import load_recipe
    from covidxr.training.run import train

    config = load_recipe(args.config, args.set)
    run = train(config, args.data, args.out, cache_root=args.cache, resume=args.resume)
    if run is not None:
        print_lines([f"wrote run {run}: model.safetensors, model.json, metrics.csv, curves.png, model_card.json"])
    return EXIT_OK


def cmd_lr_find(args: argparse.Namespace) -> int:
    from covidxr.config import load_recipe
    from covidxr.training.lr_find import find_learning_rate

    suggestion, plot = find_learning_rate(load_recipe(args.config, args.set), args.data, args.out, args.cache)
    print_lines([f"suggested learning rate: {suggestion:.2e} (set it with --set optimisation.lr={suggestion:.2e})",
                 f"wrote {plot}"])
    return EXIT_OK


def cmd_cv(args: argparse.Namespace) -> int:
    from covidxr.config import load_recipe
    from covidxr.evaluation.crossval import cross_validate

    result = cross_validate(load_recipe(args.config, args.set), args.data, args.out, args.folds, args.cache)
    if result:
        print_lines(cross_validation_lines(result, args.out))
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    from covidxr.evaluation.compare import compare
    from covidxr.reporting.comparison import comparison_rows, write_comparison

    entries = compare(args.recipes, args.data, args.out, args.set, args.folds, args.within, args.cache)
    if not entries:
        return EXIT_OK
    page = write_comparison(entries, args.out)
    print_lines([*table_lines(comparison_rows(entries)),
                 f"95% CIs: {entries[0]['ci_method']}; wrote {Path(args.out) / 'compare.json'} and {page}"])
    return EXIT_OK


def cmd_weights_convert(args: argparse.Namespace) -> int:
    from covidxr.models.weights import convert_checkpoint

    count = convert_checkpoint(args.file, args.out)
    print_lines([f"wrote {args.out} ({count} tensors)"])
    return EXIT_OK


def commands() -> Table:
    """train, lr-find, cv, compare and weights (built on demand: listing the recipes reads YAML)."""
    from covidxr.config import recipe_names

    recipes = ", ".join(recipe_names())
    recipe_options = [config_option(f"shipped ({recipes}) or a YAML path"), data_option(),
                      cache_option("pixel cache root (default: ~/.cache/covidxr/pixels)"),
                      set_option("override a recipe key, e.g. --set trainer.max_epochs=1 --set model.name=resnet18")]
    return {
        "train": Command("train a recipe on a manifest into a run directory", cmd_train, [
            *recipe_options, out_option("RUN"),
            option("--resume", action="store_true", help="continue a killed run from its last checkpoint"),
            TRACKING], description=f"Shipped recipes: {recipes}."),
        "lr-find": Command("learning-rate range test with a plot", cmd_lr_find,
                           [*recipe_options, out_option("PLOT.png")]),
        "cv": Command("grouped stratified k-fold cross-validation of a recipe", cmd_cv, [
            config_option(), data_option(),
            option("--folds", type=positive, metavar="K", help="make K folds (default: the manifest's own)"),
            CACHE, set_option(), out_option("DIR"), TRACKING]),
        "compare": Command("recipes side by side on one split: test, within-source, out-of-fold within-source, "
                           "lungs-hidden and origin AUCs", cmd_compare, [
                               option("recipes", nargs="+", metavar="RECIPE",
                                      help=f"shipped ({recipes}) or YAML paths"),
                               data_option(),
                               option("--folds", type=positive, default=5, metavar="K",
                                      help="cross-validation folds over all patients (default 5)"),
                               option("--within", metavar="SOURCE",
                                      help="source of the pooled out-of-fold within-source AUC (default: the source "
                                           "holding both classes with the most patients)"),
                               CACHE, set_option("override for every recipe"), out_option("DIR"), TRACKING]),
        "weights": Group("weights files", {
            "convert": Command(".pth state dict -> .safetensors (never unpickles code)", cmd_weights_convert, [
                option("file", type=Path, metavar="FILE.pth"), out_option("FILE.safetensors")]),
        }, dest="weights_command"),
    }
