"""The commands as tables: a name -> the command's help, options (parent parsers, in the order `--help` lists
them) and handler; a group of sub-commands nests a table. cli.parser turns the tables into argparse parsers, so
a command exists, is listed and is dispatched because it is in a table, nowhere else."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from covidxr.errors import UsageError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3


@dataclass(frozen=True)
class Command:
    """One command. `defaults` are set on the parsed arguments (never name a shared option's dest here:
    argparse's set_defaults would change that option's default in every command sharing it)."""

    help: str
    handler: Callable[[argparse.Namespace], int]
    options: Sequence[argparse.ArgumentParser] = ()
    description: str | None = None
    defaults: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Group:
    """Sub-commands under one name (`data import cohen`); `dest` names the chosen one in the parsed arguments."""

    help: str
    commands: Mapping[str, Command | Group]
    dest: str
    metavar: str = "COMMAND"


Table = Mapping[str, Command | Group]


def require_run(args: argparse.Namespace) -> Path:
    """--run, or the shipped model where the contract allows it (predict, explain, serve, --data)."""
    if args.run is not None:
        return args.run
    if args.command in ("evaluate", "audit") and getattr(args, "data", None) is None:
        raise UsageError(f"{args.command} without --data needs --run RUN (the shipped model has no test split here)")
    from covidxr.runs import shipped_run

    return shipped_run()
