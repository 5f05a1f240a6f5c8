"""The `covidxr` command: thin over the library; parses, calls, prints (docs/reference.md, "Command line").

Exit codes: 0 done; 1 failed or found what it checks for; 2 usage error; 3 done, some named inputs failed.
Results go to stdout; progress and logs to stderr. The commands and their options are tables in
cli.commands, turned into argparse parsers by cli.parser; what they print is in cli.present.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

from covidxr.cli.commands import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE
from covidxr.cli.parser import INFERENCE_COMMANDS, parser
from covidxr.cli.present import log_to, print_error
from covidxr.errors import CovidxrError, UsageError

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_PARTIAL", "EXIT_USAGE", "INFERENCE_COMMANDS", "main", "parser",
           "usage_message"]

# Library parameters whose flag is not `--` + the name with dashes (argparse's own rule, `max_distance` ->
# `--max-distance`); usage errors name parameters and are printed with the flag.
FLAG_OF_PARAMETER = {"overrides": "--set", "out": "-o", "studies": "--study"}


def usage_message(error: UsageError) -> str:
    """The error as the command line says it: `split='val': ...` -> `--split 'val': ...`."""
    if error.parameter is None:
        return str(error)
    flag = FLAG_OF_PARAMETER.get(error.parameter, "--" + error.parameter.replace("_", "-"))
    return error.naming(flag, separator=" ")


def _tracking(args: argparse.Namespace) -> AbstractContextManager:
    """MLflow tracking around the command when --tracking is given; else nothing (and nothing imported)."""
    if getattr(args, "tracking", None) is None:
        return nullcontext()
    from covidxr.evaluation.compare import recipe_name
    from covidxr.training.tracking import tracking

    recipe = getattr(args, "config", None)
    experiment = f"compare {args.out.name}" if args.command == "compare" else "covidxr"
    return tracking(args.tracking, experiment, recipe and recipe_name(recipe))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser(argv[0] if argv else None).parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    log_to()
    try:
        with _tracking(args):
            return handler(args)
    except UsageError as error:
        print_error(f"covidxr: usage error: {usage_message(error)}")
        return EXIT_USAGE
    except CovidxrError as error:
        print_error(f"covidxr: error: {error}")
        return EXIT_FAILED
