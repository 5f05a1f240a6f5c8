"""Commands that answer with a trained model: `serve`, `predict`, `dicomweb`, `explain` and `segment`."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from covidxr.cli.commands import EXIT_OK, EXIT_PARTIAL, Command, require_run
from covidxr.cli.options import (
    ANSWER,
    ENGINE,
    JSON_HELP,
    RUN,
    no_input_check_option,
    option,
    out_option,
    port,
    positive,
)
from covidxr.cli.present import (
    dicom_counts,
    dicomweb_lines,
    note,
    prediction_line,
    prediction_summary,
    print_dicom_outputs,
    print_json,
    print_lines,
    segment_lines,
    share,
    write_predictions_csv,
)
from covidxr.errors import UsageError


def _check_outputs(args: argparse.Namespace) -> None:
    """predict's output paths, checked before any work: --csv a file, --dicom-out a folder."""
    if args.csv is not None and args.csv.is_dir():
        raise UsageError("is a folder; expected the path of a CSV file to write", "csv", args.csv)
    if args.dicom_out is not None and args.dicom_out.exists() and not args.dicom_out.is_dir():
        raise UsageError("exists and is not a folder; expected a folder to write DICOM results into", "dicom_out",
                         args.dicom_out)


def _expanded_paths(args: argparse.Namespace) -> list[Path]:
    from covidxr.data.inputs import expand_paths

    paths = expand_paths(args.paths)
    if not paths:
        raise UsageError(f"no file found in {', '.join(map(str, args.paths))}")
    return paths


def cmd_predict(args: argparse.Namespace) -> int:
    from covidxr.engines import engine
    from covidxr.predict import load_model

    _check_outputs(args)
    predictor = load_model(require_run(args), args.operating_point, args.prevalence, not args.no_input_check)
    paths = _expanded_paths(args)
    predictions = engine(args.engine, args.ray_address).predict(predictor, paths)
    if args.csv:
        write_predictions_csv(predictions, predictor.classes, args.csv)
    if args.json:
        print_json({"model": predictor.info, "predictions": [p.as_dict() for p in predictions]})
    elif not args.csv:
        print_lines([prediction_line(p, predictor.contract.positive_class) for p in predictions])
    summary, incomplete = prediction_summary(predictions)
    note(summary + (f"; wrote {args.csv}" if args.csv else ""))
    dicom_failed = _write_dicom_outputs(predictor, predictions, args.dicom_out, args.json) if args.dicom_out else 0
    return EXIT_PARTIAL if incomplete or dicom_failed else EXIT_OK


def _write_dicom_outputs(predictor, predictions: list, out: Path, quiet_stdout: bool) -> int:
    """--dicom-out: SR and SC per input DICOM, a note per other input; returns how many DICOM inputs failed."""
    from covidxr.dicom.results import write_dicom_outputs

    outputs = write_dicom_outputs(predictor, predictions, out)
    print_dicom_outputs(outputs, out, quiet_stdout)
    return dicom_counts(outputs)["failed"]


def cmd_dicomweb(args: argparse.Namespace) -> int:
    from covidxr.dicom.dicomweb import DicomWebError, classify_studies, connect, summary
    from covidxr.predict import load_model

    logging.getLogger("retrying").setLevel(logging.CRITICAL)  # covidxr reports the outcome of its retries itself
    logging.getLogger("dicomweb_client").setLevel(logging.CRITICAL)
    server = connect(args.url, attempts=args.attempts)
    predictor = load_model(require_run(args), args.operating_point, args.prevalence, not args.no_input_check)
    try:
        reports = classify_studies(server, predictor, args.study)
    except DicomWebError as error:
        print_lines(dicomweb_lines(error.reports))
        raise
    print_lines(dicomweb_lines(reports) + summary(reports))
    return EXIT_PARTIAL if any(report.status == "failed" for report in reports) else EXIT_OK


def cmd_explain(args: argparse.Namespace) -> int:
    from covidxr.data.imageio import ImageReadError
    from covidxr.predict import load_model

    predictor = load_model(require_run(args))
    try:
        result = predictor.explain(args.image, args.out, args.method)
    except ImageReadError as error:
        print_lines([f"error: {error}"])
        return EXIT_PARTIAL
    if result["probability"] is None:
        checked = result["input_check"]
        print_lines([f"{args.image}: refused ({checked.reason}): {checked.words()} No overlay written."])
        return EXIT_PARTIAL
    positive_class = predictor.contract.positive_class
    print_lines([f"P({positive_class}) {result['probability']:.3f} at prevalence "
                 f"{share(predictor.scorer.reported_prevalence)}; {result['lung_heat_share']:.0%} of the "
                 f"{args.method} heat inside the lungs; wrote {args.out}"])
    return EXIT_OK


def cmd_segment(args: argparse.Namespace) -> int:
    import pandas as pd

    from covidxr.engines import engine
    from covidxr.lungs import LungSegmenter

    paths = _expanded_paths(args)
    results = engine(args.engine, args.ray_address).segment(LungSegmenter(args.model), paths, args.out, args.overlay)
    pd.DataFrame([r.as_row() for r in results]).to_csv(args.out / "segment.csv", index=False)
    print_lines(segment_lines(results, args.out / "segment.csv"))
    return EXIT_PARTIAL if any(r.status != "ok" for r in results) else EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from covidxr.serving.app import create_app
    from covidxr.serving.guard import allowed_hosts

    app = create_app(require_run(args), args.operating_point, args.prevalence,
                     hosts=allowed_hosts(args.host, args.allow_host))
    note(f"covidxr serving on http://{args.host}:{args.port}/ (API docs at /docs); not for clinical use")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return EXIT_OK



def _predict_outputs() -> argparse.ArgumentParser:
    """predict prints JSON on stdout or writes a CSV, not both."""
    parent = argparse.ArgumentParser(add_help=False)
    outputs = parent.add_mutually_exclusive_group()
    outputs.add_argument("--json", action="store_true", help=JSON_HELP)
    outputs.add_argument("--csv", type=Path, metavar="OUT", help="write one row per input file")
    return parent


COMMANDS = {
    "serve": Command("REST API and web page (FastAPI + uvicorn)", cmd_serve, [
        RUN, option("--host", default="127.0.0.1"), option("--port", type=port, default=8000),
        option("--allow-host", action="append", default=[], metavar="NAME",
               help="also answer requests for this host name (repeatable; default: localhost, 127.0.0.1, [::1] and "
                    "--host); other Host headers get 400"),
        ANSWER]),
    "predict": Command("classify images, folders (recursive), DICOM files and manifests (.csv, .parquet)",
                       cmd_predict, [
        option("paths", nargs="+", type=Path, metavar="PATH"), RUN,
        option("--dicom-out", type=Path, metavar="DIR",
               help="also write DIR/<SOPInstanceUID>.sr.dcm (DICOM SR) and .sc.dcm (Grad-CAM overlay) per input DICOM"),
        ANSWER,
        no_input_check_option("skip the check that each input is a frontal chest radiograph (recorded as skipped)"),
        ENGINE, _predict_outputs()]),
    "dicomweb": Command(
        "classify the CR/DX images of studies on a DICOMweb server (PACS) and store SR and overlay back in each study",
        cmd_dicomweb, [
            option("--url", required=True, help="the DICOMweb root, e.g. http://localhost:8042/dicom-web"),
            option("--study", action="append", metavar="UID",
                   help="a StudyInstanceUID (repeatable); default: every study on the server"),
            RUN,
            option("--attempts", type=positive, metavar="N",
                   help="tries per request when the server is down or busy (default 4)"),
            ANSWER, no_input_check_option("skip the check that each image is a frontal chest radiograph")],
        description="Searches (QIDO-RS), retrieves (WADO-RS) and stores (STOW-RS). A bearer token, when the server "
                    "needs one, is read from $COVIDXR_DICOMWEB_TOKEN. Research and teaching only; not for clinical "
                    "use.",
        defaults={"data": None}),
    "explain": Command("class activation map overlay of one image", cmd_explain, [
        option("image", type=Path, metavar="IMAGE"), RUN, out_option("OVERLAY.png"),
        option("--method", choices=("gradcam", "gradcam++", "eigencam"), default="gradcam")],
        defaults={"data": None}),
    "segment": Command("lung masks (and outline overlays) with the shipped segmenter", cmd_segment, [
        option("paths", nargs="+", type=Path, metavar="IMAGE_OR_DIR",
               help="images, folders (recursive) and manifests (.csv, .parquet: their path column)"), out_option("DIR"),
        option("--overlay", action="store_true", help="also write DIR/<stem>_overlay.png"),
        option("--model", type=Path, metavar="DIR", help="a lung segmenter folder (default: the shipped one)"),
        ENGINE]),
}
