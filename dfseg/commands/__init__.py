"""One module per ``dfseg`` sub-command: ``HELP``, ``add_arguments(parser)``, ``run(args) -> int``.

Every command spells its shared options the same way: :func:`add_out` for what it writes
(``-o/--out``) and :func:`add_no_progress` where it shows progress bars (``--no-progress``).
"""

from __future__ import annotations

import argparse
from typing import Any


def add_out(parser: argparse.ArgumentParser, help: str, **kwargs: Any) -> argparse.Action:
    """``-o/--out`` (read as ``args.out``): the file or folder a command writes.

    ``--output``, the older spelling of some commands, is kept as an alias so existing scripts work.
    ``kwargs`` go to ``add_argument`` (``type``, ``required``, ``default``, ``metavar``).
    """
    return parser.add_argument("-o", "--out", "--output", dest="out", help=help, **kwargs)


def add_no_progress(parser: argparse.ArgumentParser, *aliases: str) -> argparse.Action:
    """``--no-progress`` (read as ``args.no_progress``): no progress bars. Bars show only when stderr
    is a terminal anyway; older spellings in ``aliases`` (``--quiet``) are kept working, out of the help."""
    action = parser.add_argument("--no-progress", action="store_true", dest="no_progress",
                                 help="no progress bars (they show only when stderr is a terminal)")
    for alias in aliases:
        parser.add_argument(alias, action="store_true", dest="no_progress", help=argparse.SUPPRESS)
    return action
