"""The command line's argument types and shared options: each option several commands take is declared once,
as an argparse parent parser, and a command names it in its `options` (docs/reference.md, "Command line")."""

from __future__ import annotations

import argparse
from pathlib import Path

from covidxr.commandline import cache_option, option, out_option, positive
from covidxr.errors import UsageError

__all__ = ["ANSWER", "CACHE", "ENGINE", "JSON", "JSON_HELP", "RUN", "TRACKING", "cache_option", "config_option",
           "data_option", "fractions", "no_input_check_option", "option", "out_option", "port", "positive",
           "prevalence", "run_option", "set_option", "views"]


def views(text: str) -> tuple[str, ...]:
    chosen = tuple(v.strip() for v in text.split(",") if v.strip())
    if not chosen:
        raise argparse.ArgumentTypeError("expected a comma-separated list of views such as PA,AP")
    return chosen


def fractions(text: str) -> tuple[float, float, float]:
    from covidxr.data.split import parse_fractions

    try:
        return parse_fractions(text)
    except UsageError as error:
        raise argparse.ArgumentTypeError(error.problem) from None


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, not {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port; expected 1 to 65535")
    return value


def prevalence(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a share of positives strictly between 0 and 1, e.g. 0.05")
    return value


def run_option(help: str | None = None, required: bool = False) -> argparse.ArgumentParser:  # noqa: A002
    return option("--run", type=Path, required=required, metavar="RUN", help=help)


def data_option(help: str | None = None, required: bool = True) -> argparse.ArgumentParser:  # noqa: A002
    return option("--data", type=Path, required=required, metavar="MANIFEST", help=help)


def config_option(help: str | None = None) -> argparse.ArgumentParser:  # noqa: A002
    return option("--config", required=True, metavar="RECIPE", help=help)


def set_option(help: str | None = None) -> argparse.ArgumentParser:  # noqa: A002
    return option("--set", action="append", default=[], metavar="KEY=VALUE", help=help)


def no_input_check_option(help: str) -> argparse.ArgumentParser:  # noqa: A002
    return option("--no-input-check", action="store_true", help=help)


# --run RUN, optional: without it a command uses the model shipped in the package where that is allowed.
RUN = run_option()
CACHE = cache_option()
JSON_HELP = "print one JSON object on stdout"
JSON = option("--json", action="store_true", help=JSON_HELP)
TRACKING = option("--tracking", metavar="URI", help="log to MLflow, e.g. sqlite:///mlruns.db")

# Where the work runs: a command that hands its work to covidxr.engines takes ENGINE among its options.
ENGINE = argparse.ArgumentParser(add_help=False)
ENGINE.add_argument("--engine", choices=("local", "ray"), default="local",
                    help="where the work runs: this machine (default) or Ray (docs/cluster.md)")
ENGINE.add_argument("--ray-address", metavar="ADDR",
                    help="the Ray cluster for --engine ray (default: $RAY_ADDRESS, else a Ray started here)")

# How a model's answers are called: the operating point's threshold and the prevalence of the probabilities.
ANSWER = argparse.ArgumentParser(add_help=False)
ANSWER.add_argument("--operating-point", metavar="NAME",
                    help="the model's named threshold to call labels at (balanced, high-sensitivity, "
                         "high-specificity; default: the model's default_operating_point)")
ANSWER.add_argument("--prevalence", type=prevalence, metavar="P",
                    help="report probabilities at this share of positives (default: the prevalence the "
                         "calibration was fitted at)")
