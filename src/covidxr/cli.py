"""The `covidxr` command: thin over the library; parses, calls, prints (docs/reference.md, "Command line").

Exit codes: 0 done; 1 failed or found what it checks for; 2 usage error; 3 done, some named inputs failed.
Results go to stdout; progress and logs to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from rich.console import Console

from covidxr import __version__
from covidxr.errors import CovidxrError, UsageError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3
# The commands `_add_evaluation_commands` defines: those that use a trained model.
INFERENCE_COMMANDS = ("evaluate", "calibrate", "audit", "report", "export", "serve", "predict", "dicomweb", "explain",
                      "segment")
# Paths and data are printed literally: rich would otherwise turn `a:smile:b.jpg` into an emoji.
stdout = Console(soft_wrap=True, emoji=False, markup=False, highlight=False)
# Library parameters whose flag is not `--` + the name with dashes (argparse's own rule, `max_distance` ->
# `--max-distance`); usage errors name parameters and are printed with the flag.
FLAG_OF_PARAMETER = {"overrides": "--set", "out": "-o", "studies": "--study"}


def usage_message(error: UsageError) -> str:
    """The error as the command line says it: `split='val': ...` -> `--split 'val': ...`."""
    if error.parameter is None:
        return str(error)
    flag = FLAG_OF_PARAMETER.get(error.parameter, "--" + error.parameter.replace("_", "-"))
    return error.naming(flag, separator=" ")


def _views(text: str) -> tuple[str, ...]:
    views = tuple(v.strip() for v in text.split(",") if v.strip())
    if not views:
        raise argparse.ArgumentTypeError("expected a comma-separated list of views such as PA,AP")
    return views


def _fractions(text: str) -> tuple[float, float, float]:
    from covidxr.data.split import parse_fractions

    try:
        return parse_fractions(text)
    except UsageError as error:
        raise argparse.ArgumentTypeError(error.problem) from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, not {value}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, not {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port; expected 1 to 65535")
    return value


def _check_outputs(args: argparse.Namespace) -> None:
    """predict's output paths, checked before any work: --csv a file, --dicom-out a folder."""
    if args.csv is not None and args.csv.is_dir():
        raise UsageError("is a folder; expected the path of a CSV file to write", "csv", args.csv)
    if args.dicom_out is not None and args.dicom_out.exists() and not args.dicom_out.is_dir():
        raise UsageError("exists and is not a folder; expected a folder to write DICOM results into", "dicom_out",
                         args.dicom_out)


def _print_lines(lines: Sequence[str]) -> None:
    for line in lines:
        stdout.print(line, highlight=False, markup=False)


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
    _print_lines(result.report() + [f"wrote {out} ({len(result.manifest)} rows) and its dropped rows beside it"])
    return EXIT_OK


def cmd_download(args: argparse.Namespace) -> int:
    from covidxr.data.download import download

    folder = download(args.source, args.to, args.url)
    _print_lines([f"downloaded and verified {args.source} into {folder}"])
    return EXIT_OK


def cmd_build(args: argparse.Namespace) -> int:
    from covidxr import data

    result = data.build(
        args.manifests, task=args.task, balance=args.balance, split=args.split, folds=args.folds, seed=args.seed,
        labels=args.labels, exclude_license=args.exclude_license, max_distance=args.max_distance,
        min_correlation=args.min_correlation,
    )
    out = result.save(args.out)
    _print_lines(result.report())
    _print_lines([f"wrote {out} ({len(result.manifest)} rows) and its dropped rows beside it; leak check passed"])
    return EXIT_OK


def cmd_summary(args: argparse.Namespace) -> int:
    from covidxr.data.summary import print_summary, summarize_file

    summary, manifest = summarize_file(args.manifest)
    if args.json:
        print(json.dumps(summary, indent=2))
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
        _print_lines([f"warning: {missing} listed file(s) are missing on this machine"])
    if len(leaks):
        _print_lines([f"LEAK: {len(leaks)} patient unit(s) cross splits or folds:", leaks.to_string(index=False)])
        return EXIT_FAILED
    _print_lines([f"ok: {len(manifest)} images, {manifest['patient_id'].nunique()} patients; "
                  "no patient or duplicate group crosses a split or fold"])
    return EXIT_OK


def _check_against(manifest, training_path: Path) -> int:
    from covidxr.data import load_manifest
    from covidxr.data.overlap import overlap_with_training, training_part

    training, described = training_part(load_manifest(training_path))
    report = overlap_with_training(manifest, training, f"{training_path}, {described}")
    _print_lines(report.lines())
    return EXIT_FAILED if report.counts()["rows"] else EXIT_OK


def cmd_prepare(args: argparse.Namespace) -> int:
    from covidxr.config import parse_overrides, with_overrides
    from covidxr.data import load_manifest
    from covidxr.data.cache import prepare
    from covidxr.data.preprocess import Preprocessing
    from covidxr.lungs import lung_step

    if (args.preview is None) != (args.preview_out is None):
        raise UsageError("--preview N and --preview-out FILE.png go together")
    config, lungs = lung_step(with_overrides(Preprocessing(size=args.size), parse_overrides(args.set)))
    report = prepare(load_manifest(args.manifest), args.out, config, lungs)
    _print_lines(report.lines())
    if args.preview:
        from covidxr.reporting.preview import contact_sheet

        sheet = contact_sheet(load_manifest(args.manifest), report.cache, args.preview, args.preview_out)
        _print_lines([f"wrote {sheet}"])
    return EXIT_PARTIAL if len(report.failures) else EXIT_OK


def _add_prepare_command(commands: argparse._SubParsersAction) -> None:
    from covidxr.data.preprocess import Preprocessing

    settings = ", ".join(f"{name} (default {field.default!r})" for name, field in Preprocessing.model_fields.items())
    prepare = commands.add_parser(
        "prepare", help="decode, remove borders, square and resize every image into a pixel cache",
        description=f"Preprocessing settings for --set: {settings}.",
    )
    prepare.add_argument("manifest", type=Path)
    prepare.add_argument("--size", type=_positive, default=256, help="output side in pixels (default 256)")
    prepare.add_argument("-o", "--out", type=Path, required=True, metavar="CACHE", help="cache folder")
    prepare.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="a preprocessing setting, e.g. --set clahe=true --set borders=black,white")
    prepare.add_argument("--preview", type=_positive, metavar="N", help="before/after contact sheet of N images")
    prepare.add_argument("--preview-out", type=Path, metavar="FILE.png")
    prepare.set_defaults(handler=cmd_prepare)


def cmd_train(args: argparse.Namespace) -> int:
    from covidxr.config import load_recipe
    from covidxr.training.run import train

    config = load_recipe(args.config, args.set)
    run = train(config, args.data, args.out, cache_root=args.cache, resume=args.resume)
    if run is not None:
        _print_lines([f"wrote run {run}: model.safetensors, model.json, metrics.csv, curves.png, model_card.json"])
    return EXIT_OK


def cmd_lr_find(args: argparse.Namespace) -> int:
    from covidxr.config import load_recipe
    from covidxr.training.lr_find import find_learning_rate

    suggestion, plot = find_learning_rate(load_recipe(args.config, args.set), args.data, args.out, args.cache)
    _print_lines([f"suggested learning rate: {suggestion:.2e} (set it with --set optimisation.lr={suggestion:.2e})",
                  f"wrote {plot}"])
    return EXIT_OK


def cmd_weights_convert(args: argparse.Namespace) -> int:
    from covidxr.models.weights import convert_checkpoint

    count = convert_checkpoint(args.file, args.out)
    _print_lines([f"wrote {args.out} ({count} tensors)"])
    return EXIT_OK


def _require_run(args: argparse.Namespace) -> Path:
    """--run, or the shipped model where the contract allows it (predict, explain, serve, --data)."""
    if args.run is not None:
        return args.run
    if args.command in ("evaluate", "audit") and getattr(args, "data", None) is None:
        raise UsageError(f"{args.command} without --data needs --run RUN (the shipped model has no test split here)")
    from covidxr.runs import shipped_run

    return shipped_run()


def _overlap_lines(overlap: dict | None) -> list[str]:
    """The evaluation set's overlap with the model's training rows, printed before any figure."""
    if overlap is None:
        return ["overlap with training: not checked (the model keeps no training manifest)"]
    kinds = f"same file {overlap['same_file']}, near-duplicate {overlap['near_duplicate']}, " \
            f"same patient {overlap['same_patient']}"
    if not overlap["rows"]:
        return [f"overlap with training ({overlap['against']}): none"]
    return [f"OVERLAP with training ({overlap['against']}): {overlap['rows']} evaluation row(s) ({kinds}); the "
            "figures below are optimistic — run `covidxr data check MANIFEST --against TRAIN` to list them"]


def _summary_line(result: dict, cv: dict | None = None) -> list[str]:
    from covidxr.evaluation.metrics import format_estimate, source_explains_result, within_source_lines

    lines = _overlap_lines(result["overlap_with_training"]) if "overlap_with_training" in result else []
    lines += [
        f"{result['data']} / {result['split']}: {result['n_images']} images, {result['n_patients']} patients, "
        f"prevalence {result['prevalence']:.3f}",
        f"model AUC {format_estimate(result, 'auc')}  vs  source-only baseline AUC "
        f"{format_estimate(result, 'source_only_auc')}",
    ]
    if source_explains_result(result):
        lines.append("warning: which dataset an image comes from predicts the label about as well as the model "
                     "here; this figure measures the source at least as much as the disease")
    lines += within_source_lines(result, cv)
    at_threshold = ", ".join(f"{key} {format_estimate(result, key)}"
                             for key in ("sensitivity", "specificity", "accuracy", "f1"))
    lines.append(f"at threshold {result['threshold']:.3f} ({result['threshold_rule']}): {at_threshold}")
    lines.append(f"calibration ({result['calibration']}): ECE {format_estimate(result, 'ece')} (before calibration "
                 f"{format_estimate(result, 'ece_before_calibration')}), Brier {result['brier']:.3f}")
    lines += [f"operating point {name} (threshold {point['threshold']:.3f}, fitted on validation): sensitivity "
              f"{format_estimate(point, 'sensitivity')}, specificity {format_estimate(point, 'specificity')}"
              for name, point in result["operating_points"].items()]
    lines.append(f"95% CIs: {result['ci_method']}")
    return lines


def cmd_evaluate(args: argparse.Namespace) -> int:
    from covidxr.evaluation.crossval import read_cv
    from covidxr.evaluation.evaluate import evaluate
    from covidxr.runs import RunDir
    from covidxr.training.tracking import log_result, tracked_run

    run = _require_run(args)
    with tracked_run(f"evaluate {run.name}") as run_id:
        result = evaluate(run, args.data, args.split, args.prevalence, args.cache)
        log_result(run_id, result, artifacts=RunDir(run).evaluation)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_lines(_summary_line(result, read_cv(RunDir(run).evaluation)))
    return EXIT_OK


def cmd_calibrate(args: argparse.Namespace) -> int:
    from covidxr.evaluation.metrics import format_estimate
    from covidxr.evaluation.recalibrate import calibrate

    result = calibrate(_require_run(args), args.data, args.out, args.prevalence, args.cache, args.split)
    if args.json:
        print(json.dumps(result, indent=2))
        return EXIT_OK
    figures = result["figures_out_of_fold"]
    lines = [f"{result['data']} ({result['split']}): {result['images']} images, {result['patients']} patients, "
             f"{result['positives']} positives, {result['negatives']} negatives; {result['folds']}-fold cross-fitting "
             "by patient",
             f"ECE out of fold: before {format_estimate(figures['before'], 'ece')}, after "
             f"{format_estimate(figures['after'], 'ece')}"]
    for name, after in figures["after"]["operating_points"].items():
        before = figures["before"]["operating_points"].get(name)
        was = (f"before {format_estimate(before, 'sensitivity')} / {format_estimate(before, 'specificity')}, "
               if before else "")
        lines.append(f"{name}: sensitivity / specificity {was}after {format_estimate(after, 'sensitivity')} / "
                     f"{format_estimate(after, 'specificity')}")
    lines.append(f"wrote {args.out} (weights unchanged); 95% CIs: {result['ci_method']}")
    _print_lines(lines)
    return EXIT_OK


def cmd_audit(args: argparse.Namespace) -> int:
    from covidxr.evaluation.audit import audit
    from covidxr.evaluation.metrics import format_number

    result = audit(_require_run(args), args.data, args.cache)
    if args.json:
        print(json.dumps(result, indent=2))
        return EXIT_OK
    occlusion = result["occlusion"]
    _print_lines([
        f"audit of {result['data']}: {result['n_images']} images, {result['n_patients']} patients",
        f"1. origin: {result['source_predictability']['verdict']}",
        f"2. occlusion: {occlusion['verdict']} (AUC all {format_number(occlusion['auc'])}, "
        + ", ".join(f"{name.replace('_', ' ')} {format_number(occlusion[name]['auc'])}"
                    for name in ("lungs_hidden", "lungs_only", "borders_only")) + ")",
        f"3. leave-one-site-out: {result['leave_one_site_out']['verdict']}",
    ])
    return EXIT_OK


def cmd_cv(args: argparse.Namespace) -> int:
    from covidxr.config import load_recipe
    from covidxr.evaluation.crossval import cross_validate
    from covidxr.evaluation.metrics import format_estimate, format_number

    result = cross_validate(load_recipe(args.config, args.set), args.data, args.out, args.folds, args.cache)
    if not result:
        return EXIT_OK
    lines = [f"fold {f['fold']}: {f['n_images']} images, AUC {format_number(f['auc'])}" for f in result["folds"]]
    lines += [f"mean AUC {format_number(result['mean']['auc'])} (sd {format_number(result['sd']['auc'])}); "
              f"pooled out-of-fold AUC {format_estimate(result, 'pooled_out_of_fold_auc')}",
              f"wrote {Path(args.out) / 'cv.json'} and one run per fold"]
    _print_lines(lines)
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    from covidxr.evaluation.compare import compare
    from covidxr.reporting.comparison import comparison_rows, write_comparison

    entries = compare(args.recipes, args.data, args.out, args.set, args.folds, args.within, args.cache)
    if not entries:
        return EXIT_OK
    page = write_comparison(entries, args.out)
    _print_lines([comparison_rows(entries).to_string(index=False),
                  f"95% CIs: {entries[0]['ci_method']}; wrote {Path(args.out) / 'compare.json'} and {page}"])
    return EXIT_OK


def cmd_explain(args: argparse.Namespace) -> int:
    from covidxr.data.imageio import ImageReadError
    from covidxr.predict import load_model

    predictor = load_model(_require_run(args))
    try:
        result = predictor.explain(args.image, args.out, args.method)
    except ImageReadError as error:
        _print_lines([f"error: {error}"])
        return EXIT_PARTIAL
    if result["probability"] is None:
        checked = result["input_check"]
        _print_lines([f"{args.image}: refused ({checked.reason}): {checked.words()} No overlay written."])
        return EXIT_PARTIAL
    positive = predictor.contract.positive_class
    _print_lines([f"P({positive}) {result['probability']:.3f} at prevalence "
                  f"{_share(predictor.scorer.reported_prevalence)}; {result['lung_heat_share']:.0%} of the "
                  f"{args.method} heat inside the lungs; wrote {args.out}"])
    return EXIT_OK


def _write_predictions_csv(predictions: Sequence, classes: list[str], out: Path) -> None:
    """One row per input file (docs/reference.md, "Outputs"); empty cells where a file failed or was refused."""
    import csv

    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["path", "status", "error", "label", "threshold", "operating_point", "prevalence",
                         "probability", *(f"p_{name}" for name in classes), "input_check", "input_check_reason",
                         "input_check_score", "warnings"])
        for p in predictions:
            writer.writerow([p.path, p.status, p.error, p.label, p.threshold, p.operating_point, p.prevalence,
                             p.probability, *(p.probabilities.get(name) for name in classes), p.input_check.status,
                             p.input_check.reason or "", p.input_check.score, ";".join(p.warnings)])


def _prediction_line(prediction, positive: str) -> str:
    if prediction.status != "ok":
        text = f"error: {prediction.error}"
    elif prediction.refused:
        text = f"refused ({prediction.input_check.reason}): {prediction.input_check.words()}"
    else:
        text = (f"{prediction.label} (P({positive}) {prediction.probability:.3f} at prevalence "
                f"{_share(prediction.prevalence)}; {prediction.operating_point} threshold {prediction.threshold:.3f})")
    return f"{prediction.path}: {text}" + (f"  [{'; '.join(prediction.warnings)}]" if prediction.warnings else "")


def _share(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.3g}"


def _prediction_summary(predictions: Sequence) -> tuple[str, bool]:
    """'N predicted, M refused by the input check (reason: n, ...), F failed' and whether any input was not
    predicted."""
    from collections import Counter

    failed = sum(p.status != "ok" for p in predictions)
    reasons = Counter(p.input_check.reason for p in predictions if p.status == "ok" and p.refused)
    refused = sum(reasons.values())
    detail = f" ({', '.join(f'{reason}: {n}' for reason, n in reasons.most_common())})" if refused else ""
    return (f"{len(predictions) - failed - refused} predicted, {refused} refused by the input check{detail}, "
            f"{failed} failed"), bool(failed or refused)


def cmd_predict(args: argparse.Namespace) -> int:
    from covidxr.engines import ModelRequest, engine
    from covidxr.predict import expand_paths

    _check_outputs(args)
    request = ModelRequest(_require_run(args), args.operating_point, args.prevalence, not args.no_input_check)
    predictor = request.load()
    paths = expand_paths(args.paths)
    if not paths:
        raise UsageError(f"no file found in {', '.join(map(str, args.paths))}")
    predictions = engine(args.engine, args.ray_address).predict(request, predictor, paths)
    if args.csv:
        _write_predictions_csv(predictions, predictor.classes, args.csv)
    if args.json:
        print(json.dumps({"model": predictor.info, "predictions": [p.as_dict() for p in predictions]}, indent=2))
    elif not args.csv:
        _print_lines([_prediction_line(p, predictor.contract.positive_class) for p in predictions])
    summary, incomplete = _prediction_summary(predictions)
    Console(stderr=True, emoji=False).print(summary + (f"; wrote {args.csv}" if args.csv else ""), markup=False,
                                            highlight=False)
    dicom_failed = _write_dicom_outputs(predictor, predictions, args.dicom_out, args.json) if args.dicom_out else 0
    return EXIT_PARTIAL if incomplete or dicom_failed else EXIT_OK


def _write_dicom_outputs(predictor, predictions: list, out: Path, quiet_stdout: bool) -> int:
    """--dicom-out: SR and SC per input DICOM, a note per other input; returns how many DICOM inputs failed."""
    from covidxr.dicom.results import write_dicom_outputs

    outputs = write_dicom_outputs(predictor, predictions, out)
    console = Console(stderr=True, soft_wrap=True, emoji=False) if quiet_stdout else stdout
    for output in outputs:
        text = f"wrote {output.sr.name} and {output.sc.name}" if output.status == "written" else output.note
        console.print(f"{output.path}: {text}", markup=False, highlight=False)
    counts = {status: sum(output.status == status for output in outputs) for status in ("written", "failed",
                                                                                          "refused", "not-dicom")}
    Console(stderr=True, emoji=False).print(
        f"DICOM results: {counts['written']} written to {out}, {counts['failed']} DICOM input(s) without, "
        f"{counts['refused']} refused by the input check, {counts['not-dicom']} non-DICOM input(s)", markup=False,
        highlight=False)
    failed = counts["failed"]
    return failed


def cmd_dicomweb(args: argparse.Namespace) -> int:
    from covidxr.dicom.dicomweb import DicomWebError, classify_studies, connect, summary
    from covidxr.predict import load_model

    logging.getLogger("retrying").setLevel(logging.CRITICAL)  # covidxr reports the outcome of its retries itself
    logging.getLogger("dicomweb_client").setLevel(logging.CRITICAL)
    server = connect(args.url, attempts=args.attempts)
    predictor = load_model(_require_run(args), args.operating_point, args.prevalence, not args.no_input_check)
    try:
        reports = classify_studies(server, predictor, args.study)
    except DicomWebError as error:
        _print_dicomweb_reports(error.reports)
        raise
    _print_dicomweb_reports(reports)
    _print_lines(summary(reports))
    return EXIT_PARTIAL if any(report.status == "failed" for report in reports) else EXIT_OK


def _print_dicomweb_reports(reports: list) -> None:
    _print_lines([f"study {r.study} instance {r.instance or '-'}: {r.status}" + (f" ({r.reason})" if r.reason else "")
                  for r in reports])


def cmd_segment(args: argparse.Namespace) -> int:
    import pandas as pd

    from covidxr.lungs import LungSegmenter
    from covidxr.lungs.segment import segment_files
    from covidxr.predict import expand_paths

    paths = expand_paths(args.paths)
    if not paths:
        raise UsageError(f"no file found in {', '.join(map(str, args.paths))}")
    results = segment_files(paths, args.out, args.overlay, LungSegmenter(args.model))
    pd.DataFrame([r.as_row() for r in results]).to_csv(args.out / "segment.csv", index=False)
    for result in results:
        if result.status != "ok":
            _print_lines([f"{result.path}: error: {result.error}"])
        elif result.warnings:
            _print_lines([f"{result.path}: {'; '.join(result.warnings)}"])
    failed = sum(r.status != "ok" for r in results)
    fallbacks = sum(any("rectangle" in w for w in r.warnings) for r in results)
    _print_lines([f"{len(results) - failed} segmented ({fallbacks} with the fallback rectangle), {failed} failed; "
                  f"wrote {args.out / 'segment.csv'}"])
    return EXIT_PARTIAL if failed else EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from covidxr.export import PARITY_TOLERANCE, export_onnx

    out, difference = export_onnx(args.run, args.out)
    _print_lines([f"wrote {out}; parity with PyTorch: max |difference| {difference:.1e} "
                  f"(limit {PARITY_TOLERANCE:.0e})"])
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from covidxr.serving.app import create_app
    from covidxr.serving.guard import allowed_hosts

    app = create_app(_require_run(args), args.operating_point, args.prevalence,
                     hosts=allowed_hosts(args.host, args.allow_host))
    Console(stderr=True, emoji=False).print(f"covidxr serving on http://{args.host}:{args.port}/ (API docs at /docs); "
                               "not for clinical use", markup=False, highlight=False)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from covidxr.reporting.report import write_report

    _print_lines([f"wrote {write_report(args.run, args.out, args.cache)}"])
    return EXIT_OK


def _add_evaluation_commands(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser("evaluate", help="metrics with patient-level CIs, within-source figures, "
                                                    "source-only baseline, calibration")
    evaluate.add_argument("--run", type=Path, metavar="RUN")
    evaluate.add_argument("--data", type=Path, metavar="MANIFEST", help="another manifest (external validation)")
    evaluate.add_argument("--split", default="test", help="split of the manifest to evaluate (default test)")
    evaluate.add_argument("--prevalence", type=float, metavar="P", help="also report PPV/NPV at this prevalence")
    evaluate.add_argument("--cache", type=Path, metavar="DIR", help="pixel cache root")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    _add_tracking(evaluate)
    evaluate.set_defaults(handler=cmd_evaluate)
    calibrate = commands.add_parser(
        "calibrate", help="refit calibration and operating points (never weights) on a site's labelled sample",
        description="Cross-fits by patient to report ECE, sensitivity and specificity on rows each refit did not "
                    "see, then refits on every row and writes a new run. Not for clinical use.")
    calibrate.add_argument("--run", type=Path, metavar="RUN", help="default: the model shipped in the package")
    calibrate.add_argument("--data", type=Path, required=True, metavar="MANIFEST", help="the site's labelled rows")
    calibrate.add_argument("-o", "--out", type=Path, required=True, metavar="NEW_RUN")
    calibrate.add_argument("--prevalence", type=_prevalence, metavar="P",
                           help="the site's share of positives, when the sample's share is not it (e.g. an "
                                "enriched sample): the new run reports probabilities at P")
    calibrate.add_argument("--split", help="only the rows of this split of the manifest (default: every row)")
    calibrate.add_argument("--cache", type=Path, metavar="DIR", help="pixel cache root")
    calibrate.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    calibrate.set_defaults(handler=cmd_calibrate)
    audit = commands.add_parser("audit", help="shortcut audit: origin in the embeddings, occlusion, "
                                              "leave-one-site-out")
    audit.add_argument("--run", type=Path, metavar="RUN")
    audit.add_argument("--data", type=Path, metavar="MANIFEST")
    audit.add_argument("--cache", type=Path, metavar="DIR", help="pixel cache root")
    audit.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    audit.set_defaults(handler=cmd_audit)
    report = commands.add_parser("report", help="one self-contained HTML report of a run")
    report.add_argument("--run", type=Path, required=True, metavar="RUN")
    report.add_argument("-o", "--out", type=Path, required=True, metavar="REPORT.html")
    report.add_argument("--cache", type=Path, metavar="DIR", help="pixel cache root")
    report.set_defaults(handler=cmd_report)
    export = commands.add_parser("export", help="ONNX export with the inference contract and a parity check")
    export.add_argument("--run", type=Path, required=True, metavar="RUN")
    export.add_argument("--format", choices=("onnx",), required=True)
    export.add_argument("-o", "--out", type=Path, metavar="FILE", help="default: RUN/model.onnx")
    export.set_defaults(handler=cmd_export)
    serve = commands.add_parser("serve", help="REST API and web page (FastAPI + uvicorn)")
    serve.add_argument("--run", type=Path, metavar="RUN")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=_port, default=8000)
    serve.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                       help="also answer requests for this host name (repeatable; default: localhost, 127.0.0.1, "
                            "[::1] and --host); other Host headers get 400")
    _add_answer_options(serve)
    serve.set_defaults(handler=cmd_serve)
    predict = commands.add_parser("predict", help="classify images, folders (recursive) and DICOM files")
    predict.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    predict.add_argument("--run", type=Path, metavar="RUN")
    predict.add_argument("--dicom-out", type=Path, metavar="DIR",
                         help="also write DIR/<SOPInstanceUID>.sr.dcm (DICOM SR) and .sc.dcm (Grad-CAM overlay) "
                              "per input DICOM")
    _add_answer_options(predict)
    predict.add_argument("--no-input-check", action="store_true",
                         help="skip the check that each input is a frontal chest radiograph (recorded as skipped)")
    _add_engine_options(predict)
    outputs = predict.add_mutually_exclusive_group()
    outputs.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    outputs.add_argument("--csv", type=Path, metavar="OUT", help="write one row per input file")
    predict.set_defaults(handler=cmd_predict)
    dicomweb = commands.add_parser(
        "dicomweb", help="classify the CR/DX images of studies on a DICOMweb server (PACS) and store SR and "
                         "overlay back in each study",
        description="Searches (QIDO-RS), retrieves (WADO-RS) and stores (STOW-RS). A bearer token, when the server "
                    "needs one, is read from $COVIDXR_DICOMWEB_TOKEN. Research and teaching only; not for clinical "
                    "use.")
    dicomweb.add_argument("--url", required=True, help="the DICOMweb root, e.g. http://localhost:8042/dicom-web")
    dicomweb.add_argument("--study", action="append", metavar="UID",
                          help="a StudyInstanceUID (repeatable); default: every study on the server")
    dicomweb.add_argument("--run", type=Path, metavar="RUN")
    dicomweb.add_argument("--attempts", type=_positive, metavar="N",
                          help="tries per request when the server is down or busy (default 4)")
    _add_answer_options(dicomweb)
    dicomweb.add_argument("--no-input-check", action="store_true",
                          help="skip the check that each image is a frontal chest radiograph")
    dicomweb.set_defaults(handler=cmd_dicomweb, data=None)
    explain = commands.add_parser("explain", help="class activation map overlay of one image")
    explain.add_argument("image", type=Path, metavar="IMAGE")
    explain.add_argument("--run", type=Path, metavar="RUN")
    explain.add_argument("-o", "--out", type=Path, required=True, metavar="OVERLAY.png")
    explain.add_argument("--method", choices=("gradcam", "gradcam++", "eigencam"), default="gradcam")
    explain.set_defaults(handler=cmd_explain, data=None)
    segment = commands.add_parser("segment", help="lung masks (and outline overlays) with the shipped segmenter")
    segment.add_argument("paths", nargs="+", type=Path, metavar="IMAGE_OR_DIR")
    segment.add_argument("-o", "--out", type=Path, required=True, metavar="DIR")
    segment.add_argument("--overlay", action="store_true", help="also write DIR/<stem>_overlay.png")
    segment.add_argument("--model", type=Path, metavar="DIR", help="a lung segmenter folder (default: the shipped one)")
    segment.set_defaults(handler=cmd_segment)


def _prevalence(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a share of positives strictly between 0 and 1, e.g. 0.05")
    return value


def _add_engine_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--engine", choices=("local", "ray"), default="local",
                         help="where the work runs: this machine (default) or Ray (docs/cluster.md)")
    command.add_argument("--ray-address", metavar="ADDR",
                         help="the Ray cluster for --engine ray (default: $RAY_ADDRESS, else a Ray started here)")


def _add_answer_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--operating-point", metavar="NAME",
                         help="the model's named threshold to call labels at (balanced, high-sensitivity, "
                              "high-specificity; default: the model's default_operating_point)")
    command.add_argument("--prevalence", type=_prevalence, metavar="P",
                         help="report probabilities at this share of positives (default: the prevalence the "
                              "calibration was fitted at)")


def _add_tracking(*commands: argparse.ArgumentParser) -> None:
    for command in commands:
        command.add_argument("--tracking", metavar="URI", help="log to MLflow, e.g. sqlite:///mlruns.db")


def _tracking(args: argparse.Namespace) -> AbstractContextManager:
    """MLflow tracking around the command when --tracking is given; else nothing (and nothing imported)."""
    if getattr(args, "tracking", None) is None:
        return nullcontext()
    from covidxr.evaluation.compare import recipe_name
    from covidxr.training.tracking import tracking

    recipe = getattr(args, "config", None)
    experiment = f"compare {args.out.name}" if args.command == "compare" else "covidxr"
    return tracking(args.tracking, experiment, recipe and recipe_name(recipe))


def _add_training_commands(commands: argparse._SubParsersAction) -> None:
    from covidxr.config import recipe_names

    recipes = ", ".join(recipe_names())
    train = commands.add_parser("train", help="train a recipe on a manifest into a run directory",
                                description=f"Shipped recipes: {recipes}.")
    lr_find = commands.add_parser("lr-find", help="learning-rate range test with a plot")
    for command in (train, lr_find):
        command.add_argument("--config", required=True, metavar="RECIPE", help=f"shipped ({recipes}) or a YAML path")
        command.add_argument("--data", required=True, type=Path, metavar="MANIFEST")
        command.add_argument("--cache", type=Path, metavar="DIR",
                             help="pixel cache root (default: ~/.cache/covidxr/pixels)")
        command.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                             help="override a recipe key, e.g. --set trainer.max_epochs=1 --set model.name=resnet18")
    cv = commands.add_parser("cv", help="grouped stratified k-fold cross-validation of a recipe")
    cv.add_argument("--config", required=True, metavar="RECIPE")
    cv.add_argument("--data", required=True, type=Path, metavar="MANIFEST")
    cv.add_argument("--folds", type=_positive, metavar="K", help="make K folds (default: the manifest's own)")
    cv.add_argument("--cache", type=Path, metavar="DIR", help="pixel cache root")
    cv.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    cv.add_argument("-o", "--out", type=Path, required=True, metavar="DIR")
    cv.set_defaults(handler=cmd_cv)
    compare = commands.add_parser("compare", help="recipes side by side on one split: test, within-source, "
                                                  "out-of-fold within-source, lungs-hidden and origin AUCs")
    compare.add_argument("recipes", nargs="+", metavar="RECIPE", help=f"shipped ({recipes}) or YAML paths")
    compare.add_argument("--data", required=True, type=Path, metavar="MANIFEST")
    compare.add_argument("--folds", type=_positive, default=5, metavar="K",
                         help="cross-validation folds over all patients (default 5)")
    compare.add_argument("--within", metavar="SOURCE",
                         help="source of the pooled out-of-fold within-source AUC (default: the source holding "
                              "both classes with the most patients)")
    compare.add_argument("--cache", type=Path, metavar="DIR", help="pixel cache root")
    compare.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every recipe")
    compare.add_argument("-o", "--out", type=Path, required=True, metavar="DIR")
    compare.set_defaults(handler=cmd_compare)
    train.add_argument("-o", "--out", type=Path, required=True, metavar="RUN")
    train.add_argument("--resume", action="store_true", help="continue a killed run from its last checkpoint")
    train.set_defaults(handler=cmd_train)
    _add_tracking(train, cv, compare)
    lr_find.add_argument("-o", "--out", type=Path, required=True, metavar="PLOT.png")
    lr_find.set_defaults(handler=cmd_lr_find)
    weights = commands.add_parser("weights", help="weights files")
    weights_commands = weights.add_subparsers(dest="weights_command", required=True, metavar="COMMAND")
    convert = weights_commands.add_parser("convert", help=".pth state dict -> .safetensors (never unpickles code)")
    convert.add_argument("file", type=Path, metavar="FILE.pth")
    convert.add_argument("-o", "--out", type=Path, required=True, metavar="FILE.safetensors")
    convert.set_defaults(handler=cmd_weights_convert)


def _add_data_commands(commands: argparse._SubParsersAction) -> None:
    from covidxr.data.dedup import DEFAULT_MAX_DISTANCE, DEFAULT_MIN_CORRELATION
    from covidxr.data.severity import BUILD_TASKS
    from covidxr.data.sources import DEFAULT_VIEWS

    data = commands.add_parser("data", help="import, build, summarize and check datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")

    imports = data_commands.add_parser("import", help="import a published dataset layout into a manifest")
    layouts = imports.add_subparsers(dest="layout", required=True, metavar="LAYOUT")
    cohen = layouts.add_parser("cohen", help="Cohen's covid-chestxray-dataset (metadata.csv + images/)")
    cohen.add_argument("dir", type=Path)
    cohen.add_argument("--views", type=_views, default=DEFAULT_VIEWS,
                       help=f"views to keep, comma-separated (default: {','.join(DEFAULT_VIEWS)})")
    table = layouts.add_parser("csv", help="a table with an image column and a finding column")
    table.add_argument("file", type=Path)
    table.add_argument("--image-col", required=True)
    table.add_argument("--label-col", required=True, help="the column of findings as published")
    table.add_argument("--patient-col", help="without it, each image is its own patient")
    table.add_argument("--root", type=Path, help="folder the image paths are relative to (default: the table's)")
    table.add_argument("--source", help="dataset name (default: the table's folder name)")
    folders = layouts.add_parser("folders", help="class folders of images and DICOM files, recursive")
    folders.add_argument("dir", type=Path)
    folders.add_argument("--source", help="dataset name (default: the folder's name)")
    severity = layouts.add_parser("severity", help="Cohen's COVID-19 severity scores (covid-severity-scores.csv: "
                                                  "extent 0-8, opacity 0-6) joined to the collection's metadata.csv")
    severity.add_argument("file", type=Path, metavar="CSV")
    severity.add_argument("--root", type=Path, required=True, metavar="DIR",
                          help="the collection's folder (with metadata.csv and images/)")
    severity.add_argument("--views", type=_views, default=DEFAULT_VIEWS,
                          help=f"views to keep, comma-separated (default: {','.join(DEFAULT_VIEWS)})")
    for layout in (cohen, table, folders, severity):
        layout.add_argument("-o", "--out", type=Path, required=True, help="manifest to write (.csv or .parquet)")
        layout.set_defaults(handler=cmd_import)

    fetch = data_commands.add_parser("download", help="fetch a public source (resumable, verified)")
    fetch.add_argument("source", choices=("cohen", "rsna-normal"))
    fetch.add_argument("--to", type=Path, required=True, metavar="DIR")
    fetch.add_argument("--url", help="another address of the same archive (a mirror or a local copy)")
    fetch.set_defaults(handler=cmd_download)

    build = data_commands.add_parser("build", help="label, filter, deduplicate, balance and split manifests")
    build.add_argument("manifests", nargs="+", type=Path, metavar="MANIFEST")
    build.add_argument("--task", required=True, choices=BUILD_TASKS,
                       help="severity: regression targets severity_extent and severity_opacity (from `data import "
                            "severity`), folds stratified by extent")
    build.add_argument("--balance", nargs="?", type=_positive, const=True, default=False, metavar="N",
                       help="keep N images per class (default N: the smallest class), whole patients, seeded")
    build.add_argument("--split", type=_fractions, default=(0.7, 0.15, 0.15), metavar="TRAIN,VAL,TEST")
    build.add_argument("--folds", type=_positive, help="grouped stratified folds over train and val rows")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--labels", type=Path, metavar="MAP.yaml", help="replace the label table")
    build.add_argument("--exclude-license", metavar="PAT", help="case-insensitive regular expression, e.g. 'NC|ND'")
    build.add_argument("--max-distance", type=int, default=DEFAULT_MAX_DISTANCE,
                       help=f"pHash bits for a near-duplicate candidate (default {DEFAULT_MAX_DISTANCE})")
    build.add_argument("--min-correlation", type=float, default=DEFAULT_MIN_CORRELATION,
                       help=f"64x64 grey Pearson r to join a candidate (default {DEFAULT_MIN_CORRELATION})")
    build.add_argument("-o", "--out", type=Path, required=True)
    build.set_defaults(handler=cmd_build)

    summary = data_commands.add_parser("summary", help="images, patients, labels, sources, splits, drops")
    summary.add_argument("manifest", type=Path)
    summary.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    summary.set_defaults(handler=cmd_summary)

    check = data_commands.add_parser("check", help="fail (exit 1) when a patient or duplicate group crosses splits, "
                                                   "or with --against when an evaluation set overlaps a training set")
    check.add_argument("manifest", type=Path)
    check.add_argument("--against", type=Path, metavar="TRAIN",
                       help="report rows sharing a file, a near-duplicate or a patient with TRAIN's train and val rows")
    check.set_defaults(handler=cmd_check)


def parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; for `command` in INFERENCE_COMMANDS, only the commands that use a trained
    model (the dataset and training commands' options import pandas, SciPy and YAML: seconds of start-up
    that `covidxr predict` does not need)."""
    root = argparse.ArgumentParser(
        prog="covidxr",
        description="Build, honestly evaluate, explain and serve chest X-ray classifiers. "
                    "Research and teaching only; not for clinical use.",
    )
    root.add_argument("--version", action="version", version=f"covidxr {__version__}")
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    if command not in INFERENCE_COMMANDS:
        _add_data_commands(commands)
        _add_prepare_command(commands)
        _add_training_commands(commands)
    _add_evaluation_commands(commands)
    return root


def _log_to(console: Console) -> None:
    from rich.logging import RichHandler

    root = logging.getLogger("covidxr")
    if not root.handlers:
        root.addHandler(RichHandler(console=console, show_path=False, show_time=False, markup=False))
        root.setLevel(logging.INFO)
    # Lightning's banner lines (GPU/TPU availability, tips) add nothing to covidxr's own report.
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*treespec.*is deprecated")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser(argv[0] if argv else None).parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    errors = Console(stderr=True, soft_wrap=True, emoji=False)
    _log_to(errors)
    try:
        with _tracking(args):
            return handler(args)
    except UsageError as error:
        errors.print(f"covidxr: usage error: {usage_message(error)}", markup=False, highlight=False)
        return EXIT_USAGE
    except CovidxrError as error:
        errors.print(f"covidxr: error: {error}", markup=False, highlight=False)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
