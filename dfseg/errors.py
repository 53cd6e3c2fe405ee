"""Errors that dfseg reports to users as one line: ``<where>: <problem>``."""

from __future__ import annotations

from os import PathLike


class DfsegError(Exception):
    """A problem the user can fix: bad input, a refused overwrite, a missing calibration key.

    Args:
        where: the file, key or field the problem is in (a path, ``manifest.json:training[3].fold``, ...).
        problem: what is wrong and, where useful, what to do about it.
    """

    def __init__(self, where: str | PathLike | None, problem: str):
        self.where = None if where is None else str(where)
        self.problem = problem
        super().__init__(f"{self.where}: {problem}" if self.where else problem)

    def __reduce__(self):
        # rebuilt from (where, problem), so the error crosses a process boundary (worker pools) intact
        return (type(self), (self.where, self.problem))


class InputError(DfsegError, ValueError):
    """Bad input data: missing or corrupt file, wrong shape, NaN/Inf, inconsistent metadata."""


class OutputExistsError(DfsegError):
    """An output already holds results and neither ``--overwrite`` nor ``--resume`` was given."""
