"""Exception types the command line maps to exit codes (docs/reference.md, "Exit codes").

Library functions name their own Python parameters (`split='val': ...`); the command line shows the flag
that set the parameter instead (`--split 'val': ...`), from `UsageError.parameter` and `value`.
"""

from __future__ import annotations

from pathlib import Path


class _NoValue:
    """The `value` of a UsageError about a parameter as a whole (a class: it pickles by reference)."""


class CovidxrError(Exception):
    """The command failed (exit 1); the message names the file or value and the problem."""


class UsageError(CovidxrError, ValueError):
    """A bad argument, column name or config key (exit 2); the message lists the accepted ones.

    With `parameter`, the message reads `parameter=value: problem` (`parameter: problem` without a value)."""

    def __init__(self, problem: str, parameter: str | None = None, value: object = _NoValue):
        super().__init__(problem, parameter, value)
        self.problem, self.parameter, self.value = problem, parameter, value

    def naming(self, name: str, separator: str = "=") -> str:
        """The message with the parameter called `name`: `naming("--split", " ")` -> `--split 'val': ...`."""
        if self.value is _NoValue:
            return f"{name}: {self.problem}"
        shown = str(self.value) if isinstance(self.value, Path) else repr(self.value)
        return f"{name}{separator}{shown}: {self.problem}"

    def __str__(self) -> str:
        return self.problem if self.parameter is None else self.naming(self.parameter)
