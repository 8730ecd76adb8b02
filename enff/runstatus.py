"""Why a run file stopped short: the failure note a sweep leaves beside it, and the run's status.

A run file alone cannot tell a run that diverged from one that was killed: both simply hold fewer
complete cycles than ``run.cycles``. When a sweep task ends in a failure it writes a small JSON note
``<run>.failure.json`` beside the run file (never inside it: the run file belongs to its writer), and
removes the note once the run completes. :func:`run_status` combines the note with the file's cycle
count.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

__all__ = ["Failure", "Status", "clear_failure", "failure_path", "read_failure", "run_status", "write_failure"]

#: ``complete``: every planned cycle is in the file; ``diverged``/``failed``: the run stopped with a
#: divergence or another error (a failure note says so); ``incomplete``: fewer cycles and no note
#: (still running, or killed).
Status = Literal["complete", "diverged", "failed", "incomplete"]


@dataclass(frozen=True)
class Failure:
    """How a run failed: ``kind``, the error ``message`` and the ``command`` that reproduces it."""

    kind: Literal["diverged", "failed"]
    message: str
    command: str


def failure_path(run_path: str | Path) -> Path:
    """The failure note of run file ``run_path`` (``out/a.nc`` -> ``out/a.failure.json``)."""
    run_path = Path(run_path)
    return run_path.with_name(f"{run_path.stem}.failure.json")


def write_failure(run_path: str | Path, failure: Failure) -> None:
    """Write the failure note of ``run_path`` (atomically: a temporary name renamed into place)."""
    note = failure_path(run_path)
    note.parent.mkdir(parents=True, exist_ok=True)
    tmp = note.with_name(f".{note.name}.tmp")
    tmp.write_text(json.dumps(asdict(failure), indent=1) + "\n")
    tmp.replace(note)


def clear_failure(run_path: str | Path) -> None:
    """Remove the failure note of ``run_path`` if there is one."""
    failure_path(run_path).unlink(missing_ok=True)


def read_failure(run_path: str | Path) -> Failure | None:
    """The failure note of ``run_path``, or ``None`` when there is none (or it is unreadable)."""
    try:
        data = json.loads(failure_path(run_path).read_text())
        return Failure(kind=data["kind"], message=data["message"], command=data["command"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def run_status(run_path: str | Path, cycles_done: int, cycles_planned: int) -> Status:
    """Status of a run file holding ``cycles_done`` complete cycles of the ``cycles_planned`` in its case."""
    if cycles_done >= cycles_planned:
        return "complete"
    failure = read_failure(run_path)
    return "incomplete" if failure is None else failure.kind
