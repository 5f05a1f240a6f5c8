"""Dataset commands: `data import|download|build|summary|check` and `prepare`."""

from __future__ import annotations

import argparse
from pathlib import Path

from covidxr.cli.commands import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL, Command, Group, Table
from covidxr.cli.options import ENGINE, JSON, fractions, option, out_option, positive, set_option, views
from covidxr.cli.present import print_json, print_lines, stdout, table_lines
from covidxr.errors import UsageError


def cmd_import(args: argparse.Namespace) -> int:
    from covidxr import data

    if args.layout == "cohen":
        result = data.import_cohen(args.dir, views=args.views)
    elif args.layout == "csv":
        result = data.import_csv(args.file, image_col=args.image_col, label_col=args.label_col,
                                 patient_col=args.patient_col, root=args.root, source=args.source)
    elif args.layout == "severity":
        result = data.import_severity(args.file, root=args.root, views=args.views)
    else:
        result = data.import_folders(args.dir, source=args.source)
    out = result.save(args.out)
    print_lines(result.report() + [f"wrote {out} ({len(result.manifest)} rows) and its dropped rows beside it"])
    return EXIT_OK


def cmd_download(args: argparse.Namespace) -> int:
    from covidxr.data.download import download

    folder = download(args.source, args.to, args.url)
    print_lines([f"downloaded and verified {args.source} into {folder}"])
    return EXIT_OK


def cmd_build(args: argparse.Namespace) -> int:
    from covidxr import data

    result = data.build(
        args.manifests, task=args.task, balance=args.balance, split=args.split, folds=args.folds, seed=args.seed,
        labels=args.labels, exclude_license=args.exclude_license, max_distance=args.max_distance,
        min_correlation=args.min_correlation,
    )
    out = result.save(args.out)
    print_lines(result.report())
    print_lines([f"wrote {out} ({len(result.manifest)} rows) and its dropped rows beside it; leak check passed"])
    return EXIT_OK


def cmd_summary(args: argparse.Namespace) -> int:
    from covidxr.data.summary import print_summary, summarize_file

    summary, manifest = summarize_file(args.manifest)
    if args.json:
        print_json(summary)
    else:
        print_summary(summary, manifest, stdout)
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from covidxr.data import find_leaks, load_manifest

    manifest = load_manifest(args.manifest)
    if args.against is not None:
        return _check_against(manifest, args.against)
    if (manifest["split"] == "").all():
        raise UsageError(f"{args.manifest}: has no split column values; check a manifest made by `data build`")
    leaks = find_leaks(manifest)
    missing = int((~manifest["path"].map(lambda p: Path(p).is_file())).sum())
    if missing:
        print_lines([f"warning: {missing} listed file(s) are missing on this machine"])
    if len(leaks):
        print_lines([f"LEAK: {len(leaks)} patient unit(s) cross splits or folds:", *table_lines(leaks)])
        return EXIT_FAILED
    print_lines([f"ok: {len(manifest)} images, {manifest['patient_id'].nunique()} patients; "
                 "no patient or duplicate group crosses a split or fold"])
    return EXIT_OK


def _check_against(manifest, training_path: Path) -> int:
    from covidxr.data import load_manifest
    from covidxr.data.overlap import overlap_with_training, training_part

    training, described = training_part(load_manifest(training_path))
    report = overlap_with_training(manifest, training, f"{training_path}, {described}")
    print_lines(report.lines())
    return EXIT_FAILED if report.counts()["rows"] else EXIT_OK


def cmd_prepare(args: argparse.Namespace) -> int:
    from covidxr.config import parse_overrides, with_overrides
    from covidxr.data import load_manifest
    from covidxr.data.preprocess import Preprocessing
    from covidxr.engines import engine
    from covidxr.lungs import preprocessor

    if (args.preview is None) != (args.preview_out is None):
        raise UsageError("--preview N and --preview-out FILE.png go together")
    steps = preprocessor(with_overrides(Preprocessing(size=args.size), parse_overrides(args.set)))
    report = engine(args.engine, args.ray_address).prepare(load_manifest(args.manifest), args.out, steps)
    print_lines(report.lines())
    if args.preview:
        from covidxr.reporting.preview import contact_sheet

        sheet = contact_sheet(load_manifest(args.manifest), report.cache, args.preview, args.preview_out)
        print_lines([f"wrote {sheet}"])
    return EXIT_PARTIAL if len(report.failures) else EXIT_OK


def commands() -> Table:
    """`data` and `prepare` (built on demand: their defaults import pandas and pydantic)."""
    from covidxr.data.dedup import DEFAULT_MAX_DISTANCE, DEFAULT_MIN_CORRELATION
    from covidxr.data.preprocess import Preprocessing
    from covidxr.data.severity import BUILD_TASKS
    from covidxr.data.sources import DEFAULT_VIEWS

    keep_views = option("--views", type=views, default=DEFAULT_VIEWS,
                        help=f"views to keep, comma-separated (default: {','.join(DEFAULT_VIEWS)})")
    manifest_out = out_option(help="manifest to write (.csv or .parquet)")
    layouts = {
        "cohen": Command("Cohen's covid-chestxray-dataset (metadata.csv + images/)", cmd_import,
                         [option("dir", type=Path), keep_views, manifest_out]),
        "csv": Command("a table with an image column and a finding column", cmd_import, [
            option("file", type=Path),
            option("--image-col", required=True),
            option("--label-col", required=True, help="the column of findings as published"),
            option("--patient-col", help="without it, each image is its own patient"),
            option("--root", type=Path, help="folder the image paths are relative to (default: the table's)"),
            option("--source", help="dataset name (default: the table's folder name)"),
            manifest_out]),
        "folders": Command("class folders of images and DICOM files, recursive", cmd_import, [
            option("dir", type=Path), option("--source", help="dataset name (default: the folder's name)"),
            manifest_out]),
        "severity": Command("Cohen's COVID-19 severity scores (covid-severity-scores.csv: extent 0-8, opacity 0-6) "
                            "joined to the collection's metadata.csv", cmd_import, [
                                option("file", type=Path, metavar="CSV"),
                                option("--root", type=Path, required=True, metavar="DIR",
                                       help="the collection's folder (with metadata.csv and images/)"),
                                keep_views, manifest_out]),
    }
    data = {
        "import": Group("import a published dataset layout into a manifest", layouts, dest="layout",
                        metavar="LAYOUT"),
        "download": Command("fetch a public source (resumable, verified)", cmd_download, [
            option("source", choices=("cohen", "rsna-normal")),
            option("--to", type=Path, required=True, metavar="DIR"),
            option("--url", help="another address of the same archive (a mirror or a local copy)")]),
        "build": Command("label, filter, deduplicate, balance and split manifests", cmd_build, [
            option("manifests", nargs="+", type=Path, metavar="MANIFEST"),
            option("--task", required=True, choices=BUILD_TASKS,
                   help="severity: regression targets severity_extent and severity_opacity (from `data import "
                        "severity`), folds stratified by extent"),
            option("--balance", nargs="?", type=positive, const=True, default=False, metavar="N",
                   help="keep N images per class (default N: the smallest class), whole patients, seeded"),
            option("--split", type=fractions, default=(0.7, 0.15, 0.15), metavar="TRAIN,VAL,TEST"),
            option("--folds", type=positive, help="grouped stratified folds over train and val rows"),
            option("--seed", type=int, default=0),
            option("--labels", type=Path, metavar="MAP.yaml", help="replace the label table"),
            option("--exclude-license", metavar="PAT", help="case-insensitive regular expression, e.g. 'NC|ND'"),
            option("--max-distance", type=int, default=DEFAULT_MAX_DISTANCE,
                   help=f"pHash bits for a near-duplicate candidate (default {DEFAULT_MAX_DISTANCE})"),
            option("--min-correlation", type=float, default=DEFAULT_MIN_CORRELATION,
                   help=f"64x64 grey Pearson r to join a candidate (default {DEFAULT_MIN_CORRELATION})"),
            out_option()]),
        "summary": Command("images, patients, labels, sources, splits, drops", cmd_summary,
                           [option("manifest", type=Path), JSON]),
        "check": Command("fail (exit 1) when a patient or duplicate group crosses splits, or with --against when an "
                         "evaluation set overlaps a training set", cmd_check, [
                             option("manifest", type=Path),
                             option("--against", type=Path, metavar="TRAIN",
                                    help="report rows sharing a file, a near-duplicate or a patient with TRAIN's "
                                         "train and val rows")]),
    }
    settings = ", ".join(f"{name} (default {field.default!r})" for name, field in Preprocessing.model_fields.items())
    prepare = Command(
        "decode, remove borders, square and resize every image into a pixel cache", cmd_prepare, [
            option("manifest", type=Path),
            option("--size", type=positive, default=256, help="output side in pixels (default 256)"),
            out_option("CACHE", help="cache folder"),
            set_option("a preprocessing setting, e.g. --set clahe=true --set borders=black,white"),
            option("--preview", type=positive, metavar="N", help="before/after contact sheet of N images"),
            option("--preview-out", type=Path, metavar="FILE.png"), ENGINE],
        description=f"Preprocessing settings for --set: {settings}.")
    return {"data": Group("import, build, summarize and check datasets", data, dest="data_command"),
            "prepare": prepare}
