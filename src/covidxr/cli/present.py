"""What the `covidxr` commands print and write for people: the consoles, the summary lines of each command,
the audit printout and predict's CSV. Results go to stdout, progress, summaries and logs to stderr.

Every console here is a LiteralConsole: paths and data are printed as they are (rich would otherwise turn
`a:smile:b.jpg` into an emoji or `[bold]` into a style) with control characters escaped (a file name holding
`\\x1b[31m` or a newline cannot rewrite the terminal).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from covidxr.commandline import LiteralConsole, escape_controls_by_line

if TYPE_CHECKING:
    from covidxr.runs import CrossValidationResult

stdout = LiteralConsole(soft_wrap=True)
stderr = LiteralConsole(stderr=True, soft_wrap=True)
# Summary lines on stderr wrap at the terminal's width.
notes = LiteralConsole(stderr=True)


def print_lines(lines: Sequence[str]) -> None:
    """Each item as one line of stdout: a newline inside an item is data and is shown escaped."""
    for line in lines:
        stdout.print(line)


def print_json(result: object) -> None:
    """One JSON object on stdout (JSON escapes control characters itself)."""
    print(json.dumps(result, indent=2))


def note(text: str) -> None:
    notes.print(text)


def print_error(text: str) -> None:
    """An error on stderr; a message spanning lines (a table of leaks) keeps its lines."""
    for line in escape_controls_by_line(text).split("\n"):
        stderr.print(line)


def table_lines(frame) -> list[str]:
    """A pandas table as lines (pandas writes a newline in a cell as \\n already)."""
    return frame.to_string(index=False).split("\n")


def log_to(console: LiteralConsole = stderr) -> None:
    """covidxr's log records on `console`, their control characters escaped (rich.logging is imported here: it
    loads pygments, which a command that logs nothing does not need)."""
    from rich.logging import RichHandler

    class LiteralRichHandler(RichHandler):
        def render_message(self, record: logging.LogRecord, message: str):
            return super().render_message(record, escape_controls_by_line(message))

    root = logging.getLogger("covidxr")
    if not root.handlers:
        root.addHandler(LiteralRichHandler(console=console, show_path=False, show_time=False, markup=False))
        root.setLevel(logging.INFO)
    # Lightning's banner lines (GPU/TPU availability, tips) add nothing to covidxr's own report.
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*treespec.*is deprecated")


def share(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.3g}"


def overlap_lines(overlap: dict | None) -> list[str]:
    """The evaluation set's overlap with the model's training rows, printed before any figure."""
    if overlap is None:
        return ["overlap with training: not checked (the model keeps no training manifest)"]
    kinds = f"same file {overlap['same_file']}, near-duplicate {overlap['near_duplicate']}, " \
            f"same patient {overlap['same_patient']}"
    if not overlap["rows"]:
        return [f"overlap with training ({overlap['against']}): none"]
    return [f"OVERLAP with training ({overlap['against']}): {overlap['rows']} evaluation row(s) ({kinds}); the "
            "figures below are optimistic — run `covidxr data check MANIFEST --against TRAIN` to list them"]


def evaluation_lines(result: dict, cv: CrossValidationResult | None = None) -> list[str]:
    """evaluate's summary: overlap, AUC against the source-only baseline, within-source figures, the threshold,
    calibration and the operating points."""
    from covidxr.evaluation.metrics import format_estimate, source_explains_result, within_source_lines

    lines = overlap_lines(result["overlap_with_training"]) if "overlap_with_training" in result else []
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


def calibration_lines(result: dict, out: Path) -> list[str]:
    """calibrate's summary: the sample, ECE and each operating point before and after, out of fold."""
    from covidxr.evaluation.metrics import format_estimate

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
    lines.append(f"wrote {out} (weights unchanged); 95% CIs: {result['ci_method']}")
    return lines


def audit_lines(result: dict) -> list[str]:
    """The shortcut audit's three verdicts."""
    from covidxr.evaluation.metrics import format_number

    occlusion = result["occlusion"]
    return [
        f"audit of {result['data']}: {result['n_images']} images, {result['n_patients']} patients",
        f"1. origin: {result['source_predictability']['verdict']}",
        f"2. occlusion: {occlusion['verdict']} (AUC all {format_number(occlusion['auc'])}, "
        + ", ".join(f"{name.replace('_', ' ')} {format_number(occlusion[name]['auc'])}"
                    for name in ("lungs_hidden", "lungs_only", "borders_only")) + ")",
        f"3. leave-one-site-out: {result['leave_one_site_out']['verdict']}",
    ]


def cross_validation_lines(result: CrossValidationResult, out: Path) -> list[str]:
    from covidxr.evaluation.metrics import format_estimate, format_number, pooled_within_source_lines

    lines = [f"fold {f.fold}: {f.n_images} images, AUC {format_number(f.auc)}" for f in result.folds]
    within = pooled_within_source_lines(result) or [
        "no source holds both classes in the pooled out-of-fold rows: within-source skill cannot be measured"]
    return lines + [f"mean AUC {format_number(result.mean.auc)} (sd {format_number(result.sd.auc)}); "
                    f"pooled out-of-fold AUC {format_estimate(result, 'pooled_out_of_fold_auc')}  vs  source-only "
                    f"baseline AUC {format_estimate(result, 'source_only_auc')}", *within,
                    f"wrote {Path(out) / 'cv.json'} and one run per fold"]


def write_predictions_csv(predictions: Sequence, classes: list[str], out: Path) -> None:
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


def prediction_line(prediction, positive: str) -> str:
    if prediction.status != "ok":
        text = f"error: {prediction.error}"
    elif prediction.refused:
        text = f"refused ({prediction.input_check.reason}): {prediction.input_check.words()}"
    else:
        text = (f"{prediction.label} (P({positive}) {prediction.probability:.3f} at prevalence "
                f"{share(prediction.prevalence)}; {prediction.operating_point} threshold {prediction.threshold:.3f})")
    return f"{prediction.path}: {text}" + (f"  [{'; '.join(prediction.warnings)}]" if prediction.warnings else "")


def prediction_summary(predictions: Sequence) -> tuple[str, bool]:
    """'N predicted, M refused by the input check (reason: n, ...), F failed' and whether any input was not
    predicted."""
    from collections import Counter

    failed = sum(p.status != "ok" for p in predictions)
    reasons = Counter(p.input_check.reason for p in predictions if p.status == "ok" and p.refused)
    refused = sum(reasons.values())
    detail = f" ({', '.join(f'{reason}: {n}' for reason, n in reasons.most_common())})" if refused else ""
    return (f"{len(predictions) - failed - refused} predicted, {refused} refused by the input check{detail}, "
            f"{failed} failed"), bool(failed or refused)


def print_dicom_outputs(outputs: Sequence, out: Path, quiet_stdout: bool) -> None:
    """A line per input (on stderr when stdout holds JSON) and the DICOM results' counts."""
    console = stderr if quiet_stdout else stdout
    for output in outputs:
        text = f"wrote {output.sr.name} and {output.sc.name}" if output.status == "written" else output.note
        console.print(f"{output.path}: {text}")
    counts = dicom_counts(outputs)
    note(f"DICOM results: {counts['written']} written to {out}, {counts['failed']} DICOM input(s) without, "
         f"{counts['refused']} refused by the input check, {counts['not-dicom']} non-DICOM input(s)")


def dicom_counts(outputs: Sequence) -> dict[str, int]:
    return {status: sum(output.status == status for output in outputs)
            for status in ("written", "failed", "refused", "not-dicom")}


def dicomweb_lines(reports: Sequence) -> list[str]:
    return [f"study {r.study} instance {r.instance or '-'}: {r.status}" + (f" ({r.reason})" if r.reason else "")
            for r in reports]


def segment_lines(results: Sequence, table: Path) -> list[str]:
    """A line per failed or warned image, then the counts."""
    lines = []
    for result in results:
        if result.status != "ok":
            lines.append(f"{result.path}: error: {result.error}")
        elif result.warnings:
            lines.append(f"{result.path}: {'; '.join(result.warnings)}")
    failed = sum(r.status != "ok" for r in results)
    fallbacks = sum(any("rectangle" in w for w in r.warnings) for r in results)
    return lines + [f"{len(results) - failed} segmented ({fallbacks} with the fallback rectangle), {failed} failed; "
                    f"wrote {table}"]
