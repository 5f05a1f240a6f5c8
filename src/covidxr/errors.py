"""Exception types the command line maps to exit codes (docs/reference.md, "Exit codes")."""


class CovidxrError(Exception):
    """The command failed (exit 1); the message names the file or value and the problem."""


class UsageError(CovidxrError, ValueError):
    """A bad option value, column name or config key (exit 2); the message lists the accepted ones."""
