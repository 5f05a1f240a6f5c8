"""Commands on a trained model's figures and files: `evaluate`, `calibrate`, `audit`, `report`, `export`."""

from __future__ import annotations

import argparse

from covidxr.cli.commands import EXIT_OK, Command, require_run
from covidxr.cli.options import (
    CACHE,
    ENGINE,
    JSON,
    RUN,
    TRACKING,
    data_option,
    option,
    out_option,
    prevalence,
    run_option,
)
from covidxr.cli.present import audit_lines, calibration_lines, evaluation_lines, print_json, print_lines


def cmd_evaluate(args: argparse.Namespace) -> int:
    from covidxr.evaluation.crossval import read_cv
    from covidxr.evaluation.evaluate import evaluate
    from covidxr.runs import RunDir
    from covidxr.training.tracking import log_result, tracked_run

    run = require_run(args)
    with tracked_run(f"evaluate {run.name}") as run_id:
        result = evaluate(run, args.data, args.split, args.prevalence, args.cache)
        log_result(run_id, result, artifacts=RunDir(run).evaluation)
    if args.json:
        print_json(result)
    else:
        print_lines(evaluation_lines(result, read_cv(RunDir(run).evaluation)))
    return EXIT_OK


def cmd_calibrate(args: argparse.Namespace) -> int:
    from covidxr.evaluation.recalibrate import calibrate

    result = calibrate(require_run(args), args.data, args.out, args.prevalence, args.cache, args.split)
    if args.json:
        print_json(result)
    else:
        print_lines(calibration_lines(result, args.out))
    return EXIT_OK


def cmd_audit(args: argparse.Namespace) -> int:
    from covidxr.engines import engine

    work = engine(args.engine, args.ray_address)  # a bad --ray-address before PyTorch's seconds of imports
    from covidxr.evaluation.audit import audit

    result = audit(require_run(args), args.data, args.cache, engine=work)
    if args.json:
        print_json(result)
    else:
        print_lines(audit_lines(result))
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from covidxr.reporting.report import write_report

    print_lines([f"wrote {write_report(args.run, args.out, args.cache)}"])
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from covidxr.export import PARITY_TOLERANCE, export_onnx

    out, difference = export_onnx(args.run, args.out)
    print_lines([f"wrote {out}; parity with PyTorch: max |difference| {difference:.1e} "
                 f"(limit {PARITY_TOLERANCE:.0e})"])
    return EXIT_OK


COMMANDS = {
    "evaluate": Command("metrics with patient-level CIs, within-source figures, source-only baseline, calibration",
                        cmd_evaluate, [
                            RUN, data_option("another manifest (external validation)", required=False),
                            option("--split", default="test", help="split of the manifest to evaluate (default test)"),
                            option("--prevalence", type=prevalence, metavar="P",
                                   help="also report PPV/NPV at this prevalence"),
                            CACHE, JSON, TRACKING]),
    "calibrate": Command(
        "refit calibration and operating points (never weights) on a site's labelled sample", cmd_calibrate, [
            run_option("default: the model shipped in the package"), data_option("the site's labelled rows"),
            out_option("NEW_RUN"),
            option("--prevalence", type=prevalence, metavar="P",
                   help="the site's share of positives, when the sample's share is not it (e.g. an enriched "
                        "sample): the new run reports probabilities at P"),
            option("--split", help="only the rows of this split of the manifest (default: every row)"),
            CACHE, JSON],
        description="Cross-fits by patient to report ECE, sensitivity and specificity on rows each refit did not "
                    "see, then refits on every row and writes a new run. Not for clinical use."),
    "audit": Command("shortcut audit: origin in the embeddings, occlusion, leave-one-site-out", cmd_audit,
                     [RUN, data_option(required=False), CACHE, JSON, ENGINE]),
    "report": Command("one self-contained HTML report of a run", cmd_report,
                      [run_option(required=True), out_option("REPORT.html"), CACHE]),
    "export": Command("ONNX export with the inference contract and a parity check", cmd_export, [
        run_option(required=True), option("--format", choices=("onnx",), required=True),
        out_option("FILE", help="default: RUN/model.onnx", required=False)]),
}
