"""Errors that name what is wrong and where, in one line."""

from __future__ import annotations

from pathlib import Path


class SmcError(Exception):
    """Base class: every error the project raises on bad input or configuration."""


class ConfigError(SmcError):
    """A setting or argument is invalid."""


class BarFileError(SmcError):
    """A bar file cannot be read at all (format, delimiter, path, emptiness).

    The message is ``<file>:<line>: <problem>`` (line omitted when the problem
    concerns the whole file), so editors and terminals can jump to it.
    """

    ingest_id: int | None = None
    """The ``ingest_log`` row of the refused attempt, when an ingest logged it."""

    def __init__(self, path: str | Path, problem: str, line: int | None = None):
        self.path = str(path)
        self.line = line
        self.problem = problem
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {problem}")


class ResampleRefreshError(SmcError):
    """Bars were stored, but the resampled timeframes built from them could not be refreshed."""


class RejectedRowsError(SmcError):
    """A file has rows that failed validation; nothing was written."""

    ingest_id: int | None = None
    """The ``ingest_log`` row (status ``rejected``) of the refused attempt, when an ingest logged it."""

    def __init__(self, path: str | Path, rejections: list):
        self.path = str(path)
        self.rejections = rejections
        first = rejections[0]
        more = f" (and {len(rejections) - 1} more rejected rows)" if len(rejections) > 1 else ""
        super().__init__(
            f"{first}{more}; nothing was written — fix the file or pass --skip-invalid"
        )
