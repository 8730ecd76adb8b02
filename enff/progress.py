"""When progress bars show: one rule for ``enff run``, ``enff learn`` and ``enff sweep``.

``progress=None`` (the default) shows a bar only when stderr is a terminal (tqdm's ``disable=None``), so
batch logs stay clean; ``True`` always shows it (also into a log file), ``False`` never.
"""

from __future__ import annotations

import argparse

__all__ = ["add_progress_arguments", "tqdm_disable"]


def tqdm_disable(progress: bool | None) -> bool | None:
    """tqdm's ``disable`` for ``progress``: ``None`` (only on a terminal) stays ``None``, else its negation."""
    return None if progress is None else not progress


def add_progress_arguments(parser: argparse.ArgumentParser) -> None:
    """``--progress`` / ``--no-progress`` (and ``--quiet``, an alias of ``--no-progress``) into ``args.progress``:
    ``True``, ``False``, or ``None`` when neither is given (a bar only on a terminal)."""
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="show progress also without a terminal (--no-progress: never; default: on a terminal)")
    parser.add_argument("--quiet", dest="progress", action="store_const", const=False,
                        help="no progress bar (same as --no-progress)")
