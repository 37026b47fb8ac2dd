"""Errors a user can cause, reported as one clear message (CLI exit status 2)."""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input: a file, column, row or setting that tfrec cannot use.

    Attributes:
      path: the file at fault, if any.
      line: 1-based line in that file (the header is line 1 of a CSV), if known.
      column: the column at fault, if any.
      key: the setting at fault (a config key or command-line option), if any.
      reason: what is wrong, in words.
    """

    def __init__(self, reason: str, path: str | None = None, line: int | None = None,
                 column: str | None = None, key: str | None = None):
        self.path = None if path is None else str(path)
        self.line = line
        self.column = column
        self.key = key
        self.reason = reason
        super().__init__(self.message)

    @property
    def message(self) -> str:
        where = []
        if self.path:
            where.append(self.path)
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.column:
            where.append(f"column '{self.column}'")
        if self.key:
            where.append(f"setting '{self.key}'")
        return (", ".join(where) + ": " if where else "") + self.reason
