"""The `covidxr` argument parser, built from the command tables (cli.commands): a command is listed, parsed
and dispatched because its table holds it."""

from __future__ import annotations

import argparse

from covidxr import __version__
from covidxr.cli.commands import Command, Table, evaluation, inference

# The commands that use a trained model, in `covidxr --help`'s order.
MODEL_COMMANDS: Table = {**evaluation.COMMANDS, **inference.COMMANDS}
INFERENCE_COMMANDS = tuple(MODEL_COMMANDS)


def add_commands(commands: argparse._SubParsersAction, table: Table) -> None:
    """A sub-parser per entry of `table`, its options from the entry's parent parsers; groups nest."""
    for name, entry in table.items():
        if isinstance(entry, Command):
            command = commands.add_parser(name, help=entry.help, description=entry.description,
                                          parents=list(entry.options))
            command.set_defaults(handler=entry.handler, **entry.defaults)
        else:
            group = commands.add_parser(name, help=entry.help)
            add_commands(group.add_subparsers(dest=entry.dest, required=True, metavar=entry.metavar), entry.commands)


def parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; for `command` in INFERENCE_COMMANDS, only the commands that use a trained
    model (the dataset and training commands' options import pandas, SciPy and YAML: seconds of start-up
    that `covidxr predict` does not need)."""
    from covidxr.cli.commands import data, training

    root = argparse.ArgumentParser(
        prog="covidxr",
        description="Build, honestly evaluate, explain and serve chest X-ray classifiers. "
                    "Research and teaching only; not for clinical use.",
    )
    root.add_argument("--version", action="version", version=f"covidxr {__version__}")
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    if command not in INFERENCE_COMMANDS:
        add_commands(commands, data.commands())
        add_commands(commands, training.commands())
    add_commands(commands, MODEL_COMMANDS)
    return root
