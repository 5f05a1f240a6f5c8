"""What `covidxr` and the `python -m` tools share on the command line: argument types, parent parsers (one
declaration of an option that several commands take) and a console that prints text as it is.

Text printed is literal: no markup, no emoji codes, no highlighting, and control characters (an escape sequence,
a carriage return, a newline in a file name) shown escaped, `\\x1b`, `\\r`, `\\n`, so no file name or data value can
move the cursor, recolour or rewrite the terminal.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

# Every control character (Unicode category Cc: C0, DEL and C1) -> the escape Python's repr writes for it.
_ESCAPES = {code: repr(chr(code))[1:-1] for code in (*range(0x20), *range(0x7F, 0xA0))}


def escape_controls(text: str) -> str:
    """`text` with each control character written as its escape: 'a\\x1b[31mb' -> 'a\\\\x1b[31mb'."""
    return text.translate(_ESCAPES)


def escape_controls_by_line(text: str) -> str:
    """escape_controls for a message meant to span lines (a table in an error): its newlines are kept."""
    return "\n".join(escape_controls(line) for line in text.split("\n"))


class LiteralConsole(Console):
    """A rich console that prints strings (and table cells) literally, control characters escaped."""

    def __init__(self, **settings: Any):
        super().__init__(**{"emoji": False, "markup": False, "highlight": False, **settings})

    def render_str(self, text: str, **settings: Any) -> Text:
        return super().render_str(escape_controls(text), **settings)


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, not {value}")
    return value


def option(*flags: str, **settings: Any) -> argparse.ArgumentParser:
    """A parent parser holding one argument: `add_parser(name, parents=[option("--x", ...), ...])`."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(*flags, **settings)
    return parent


def out_option(metavar: str | None = None, help: str | None = None,  # noqa: A002 (argparse's own name)
               required: bool = True) -> argparse.ArgumentParser:
    """-o/--out PATH, required unless told."""
    return option("-o", "--out", type=Path, required=required, metavar=metavar, help=help)


def cache_option(help: str = "pixel cache root") -> argparse.ArgumentParser:  # noqa: A002
    """--cache DIR, the pixel cache root."""
    return option("--cache", type=Path, metavar="DIR", help=help)
