"""Sweeps on dask.distributed: one task per run, resumable from the run files, failing gently.

Each planned run (:func:`enff.sweepspec.plan`) is one task. A task skips a run whose file holds every
cycle, resumes one whose file holds fewer, and starts the others; a run that diverges or raises
returns a failed :class:`RunOutcome` (and leaves a failure note, :mod:`enff.runstatus`) instead of
stopping the others. A worker killed mid-run loses no work but the cycle in flight: the scheduler
runs the task again elsewhere (``retries``) and it resumes from the file, which on CPU gives the
result of an uninterrupted run.

Python API::

    from dask.distributed import Client
    from enff.sweep import local_cluster, run_sweep
    from enff.sweepspec import SweepSpec

    spec = SweepSpec(cases=("l96_40",), filters=("etkf", "letkf"), seeds=(0, 1), out="sweeps/l96",
                     common=("run.cycles=500",), grid={"letkf": {"filter.radius": (5.0, 10.0)}})
    with local_cluster(workers=2) as cluster, Client(cluster) as client:
        result = run_sweep(spec, client)
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Sequence

from tqdm import tqdm

from enff.progress import tqdm_disable
from enff.runstatus import Failure, clear_failure, write_failure
from enff.sweepspec import PlannedRun, SweepSpec, plan

if TYPE_CHECKING:
    from distributed import Client, LocalCluster

__all__ = ["EXIT_SOME_FAILED", "Outcome", "RunOutcome", "SweepResult", "dashboard_link", "execute_run",
           "format_report", "local_cluster", "run_sweep"]

#: Exit status of ``enff sweep`` when at least one run diverged or failed (the others are complete).
EXIT_SOME_FAILED = 4
#: ``complete``: the task ran the run to its last cycle (from the start or resumed); ``skipped``: the
#: file already held every cycle; ``diverged`` / ``failed``: the run stopped with an error.
Outcome = Literal["complete", "skipped", "diverged", "failed"]


@dataclass(frozen=True)
class RunOutcome:
    """What one task did to one run."""

    name: str
    path: Path
    status: Outcome
    cycles_before: int  # complete cycles in the file when the task started (0: a fresh run)
    cycles_done: int
    seconds: float  # wall-clock time of the task
    message: str = ""
    command: str = ""  # the ``enff run`` command that reproduces a failure

    @property
    def failed(self) -> bool:
        return self.status in ("diverged", "failed")


@dataclass(frozen=True)
class SweepResult:
    """The outcomes of a sweep, in the order of its planned runs."""

    outcomes: tuple[RunOutcome, ...]

    @property
    def failures(self) -> tuple[RunOutcome, ...]:
        return tuple(o for o in self.outcomes if o.failed)

    @property
    def paths(self) -> list[Path]:
        """Every run file the sweep wrote (failed runs included; a run that failed before its file
        existed is left out)."""
        return [o.path for o in self.outcomes if o.path.is_file()]


def _cycles_in_file(path: Path) -> int | None:
    """Complete cycles in the run file ``path``, or ``None`` when there is no file."""
    from enff.runset import read_run_info

    return read_run_info(path).cycles_done if path.is_file() else None


def execute_run(run: PlannedRun) -> RunOutcome:
    """The task of one run (runs on a worker, with one torch and numba thread): skip, resume or start it."""
    import numba
    import torch

    from enff.cycle import Divergence, run_case
    from enff.preflight import read_run_attributes

    torch.set_num_threads(1)
    numba.set_num_threads(1)
    start = time.perf_counter()
    before: int | None = None
    try:
        before = _cycles_in_file(run.path)
        if before is not None and before >= run.cycles:
            if not run.case.defines_same_run(read_run_attributes(run.path).get("case", "")):
                raise ValueError(f"{run.path}: the file holds a run of a different case (its model, observations, "
                                 "ensemble, filter or run tables were changed since); delete it or choose another out")
            clear_failure(run.path)
            return RunOutcome(run.name, run.path, "skipped", before, before, time.perf_counter() - start)
        summary = run_case(run.case, run.path, resume=before is not None, progress=False)
    except Divergence as err:
        kind, message = "diverged", str(err)
    except Exception as err:  # noqa: BLE001 - any error of one run is reported, the others go on
        kind, message = "failed", f"{type(err).__name__}: {err}"
    else:
        clear_failure(run.path)
        return RunOutcome(run.name, run.path, "complete", before or 0, summary.cycles_done,
                          time.perf_counter() - start)
    return _failed(run, kind, message, before or 0, time.perf_counter() - start)


def _failed(run: PlannedRun, kind: Literal["diverged", "failed"], message: str, before: int,
            seconds: float) -> RunOutcome:
    """Record a failure note beside the run file and the outcome that reports it."""
    write_failure(run.path, Failure(kind, message, run.command()))
    try:
        done = _cycles_in_file(run.path) or 0
    except Exception:  # noqa: BLE001 - an unreadable file holds no usable cycle
        done = 0
    return RunOutcome(run.name, run.path, kind, before, done, seconds, message, run.command())


def local_cluster(workers: int = 2, dashboard: str | None = "127.0.0.1:8787") -> "LocalCluster":
    """A LocalCluster of ``workers`` process workers with one thread each, on the loopback interface."""
    from distributed import LocalCluster

    return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                        dashboard_address=dashboard)


def dashboard_link(client: "Client") -> str | None:
    """The address of the scheduler's dashboard, or ``None`` when it serves none (bokeh missing)."""
    services = client.scheduler_info().get("services", {})
    return client.dashboard_link if "dashboard" in services else None


def run_sweep(runs: SweepSpec | Sequence[PlannedRun], client: "Client", *, retries: int = 2,
              progress: bool | None = None) -> SweepResult:
    """Run every planned run as one task on ``client``'s cluster and wait for all of them.

    Parameters
    ----------
    runs:
        A spec (planned with :func:`enff.sweepspec.plan`) or its planned runs.
    client:
        A connected ``dask.distributed.Client``; the workers must see the run files' folder.
    retries:
        How often the scheduler runs a task again after its worker died (errors of the run itself are
        outcomes, never retried).
    progress:
        One progress bar over the runs; ``None`` shows it only on a terminal.
    """
    from distributed import as_completed

    planned = plan(runs) if isinstance(runs, SweepSpec) else list(runs)
    for folder in {run.path.parent for run in planned}:
        folder.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    futures = {client.submit(execute_run, run, key=f"enff_run-{run.name}-{token}", retries=retries, pure=False): run
               for run in planned}
    outcomes: dict[str, RunOutcome] = {}
    failed = 0
    with tqdm(total=len(planned), desc="sweep", unit="run", disable=tqdm_disable(progress)) as bar:
        for future in as_completed(futures):
            run = futures[future]
            try:
                outcome = future.result()
            except Exception as err:  # noqa: BLE001 - the task itself was lost (e.g. KilledWorker)
                outcome = _failed(run, "failed", f"{type(err).__name__}: {err}", 0, 0.0)
            outcomes[run.name] = outcome
            failed += outcome.failed
            bar.set_postfix(failed=failed, refresh=False)
            bar.update(1)
    return SweepResult(tuple(outcomes[run.name] for run in planned))


def format_report(result: SweepResult) -> str:
    """A few lines: counts by outcome, then each failure with its message and reproducing command."""
    counts = {status: sum(o.status == status for o in result.outcomes)
              for status in ("complete", "skipped", "diverged", "failed")}
    resumed = sum(o.status == "complete" and o.cycles_before > 0 for o in result.outcomes)
    lines = [f"{len(result.outcomes)} runs: {counts['complete']} run to the end ({resumed} resumed), "
             f"{counts['skipped']} already complete, {counts['diverged']} diverged, {counts['failed']} failed"]
    for outcome in result.failures:
        lines += [f"{outcome.status}: {outcome.name}: {outcome.message}", f"  reproduce with: {outcome.command}"]
    return "\n".join(lines)
