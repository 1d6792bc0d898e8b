"""The analysis library's errors. Library code raises them; only the ``analyze`` CLI (analysis/cli.py)
turns one into a line and an exit code:

    AnalysisError   Error: <message>                                   exit 1
    BadOption       Error: Invalid value for '<option>': <message>     exit 2
"""
from __future__ import annotations


class AnalysisError(Exception):
    """What an analysis cannot do with the server, model, folder or file it was given (one line)."""


class BadOption(AnalysisError):
    """A value given on the command line that cannot be used; ``option`` names it (``--layer``), or is
    None when the value may come from more than one option."""

    def __init__(self, message: str, option: str | None = None):
        super().__init__(message)
        self.option = option
