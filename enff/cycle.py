"""The cycle runner: spin-up, then forecast -> observe -> analysis -> score -> write, cycle by cycle.

This is the only module that knows the model, the observations and the filter together. Every random
draw comes from a generator seeded from ``(run seed, stream, cycle)``, so a resumed run continues
exactly as if it had never stopped.
"""

from __future__ import annotations

import enum
import math
import shlex
import signal
import threading
import time as wallclock
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from tqdm import tqdm

import enff
from enff import scores
from enff.config import Case
from enff.preflight import check_inputs_unchanged, input_checksums
from enff.progress import tqdm_disable
from enff.runfile import CycleRecord, RunFile, RunFileError, RunFileWriteError, RunLayout, check_run
from enff.tracking import TrackMonitor, truth_scale

__all__ = ["EXIT_IO", "Divergence", "Experiment", "RunStopped", "RunSummary", "Stream", "run_case", "seeded_generator"]


class Stream(enum.IntEnum):
    """The random streams of a run; each draw comes from :func:`seeded_generator` ``(seed, stream, cycle)``."""

    #: The initial true state (cycle 0).
    TRUTH = 0
    #: The initial ensemble (cycle 0).
    ENSEMBLE = 1
    #: Each cycle's observation noise (twin experiments).
    OBSERVATION = 2
    #: Each cycle's draws of the filter, apart from the observations' so that they do not shift when the
    #: number of observations changes.
    FILTER = 3

#: Exit status of a run stopped because its file could not be written (signals give 128 + the signal).
EXIT_IO = 5
#: The spin-up advances the truth in this many chunks at most, so that its progress bar moves.
SPINUP_UPDATES = 100
#: Seconds before the spin-up's progress bar appears: a spin-up shorter than this shows none.
SPINUP_BAR_DELAY = 2.0


class Divergence(RuntimeError):
    """The forecast or analysis became non-finite; ``cycle`` is the 1-based cycle number."""

    def __init__(self, cycle: int, what: str) -> None:
        super().__init__(f"run diverged at cycle {cycle}: the {what} ensemble has non-finite values")
        self.cycle = cycle


@dataclass(frozen=True)
class RunSummary:
    """What a finished (or stopped) run produced."""

    path: Path
    cycles_done: int
    scores: dict[str, float]


def seeded_generator(seed: int, stream: int, cycle: int, device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded from ``(seed, stream, cycle)`` by numpy's SeedSequence."""
    state = np.random.SeedSequence([int(seed), int(stream), int(cycle)]).generate_state(1, np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state) & ((1 << 63) - 1))


class Experiment:
    """A case made concrete on its device: the case's model, observation source and filter, the
    observation space and the run file's layout."""

    def __init__(self, case: Case) -> None:
        self.case = case
        self.model = case.model
        self.filter = case.filter
        self.observations = case.observations
        self.device = case.run.torch_device
        self.dtype = case.run.torch_dtype
        self.every = case.observation_setup.every
        self.seed = case.run.seed
        self.cycles = case.run.cycles
        #: Twin experiments know the truth; real observations do not.
        self.has_truth = self.observations.needs_truth
        self.space = self.observations.space(self.model.grid, dtype=self.dtype, device=self.device)
        self.save_analysis = case.run.analysis_saved(int(np.prod(self.model.state_shape)))

    def generator(self, stream: Stream, cycle: int = 0) -> torch.Generator:
        """The generator of ``stream`` in cycle ``cycle`` (0: before the first cycle) on the run's device."""
        return seeded_generator(self.seed, stream, cycle, self.device)

    def initial_condition(self, progress: bool | None = None) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Truth after the spin-up ``(*state)`` (``None`` for real observations) and the initial
        ensemble ``(member, *state)``; ``progress`` as in :func:`run_case` (for the spin-up)."""
        truth = None
        if self.has_truth:
            truth = self.model.initial_state(self.generator(Stream.TRUTH), 1, dtype=self.dtype, device=self.device)
            if self.case.run.spinup:
                truth = self._spin_up(truth, progress)
        ensemble = self.case.ensemble
        noise = torch.randn((ensemble.size, *self.model.state_shape), generator=self.generator(Stream.ENSEMBLE),
                            dtype=self.dtype, device=self.device)
        centre = truth if ensemble.centred_on_truth and truth is not None else 0.0
        return (None if truth is None else truth[0]), centre + ensemble.initial_std * noise

    def _spin_up(self, truth: torch.Tensor, progress: bool | None) -> torch.Tensor:
        """``truth`` ``(1, *state)`` advanced by ``run.spinup`` model steps, in at most :data:`SPINUP_UPDATES`
        chunks under a progress bar that appears after :data:`SPINUP_BAR_DELAY` seconds."""
        spinup = self.case.run.spinup
        chunk = math.ceil(spinup / SPINUP_UPDATES)
        with tqdm(total=spinup, desc="spin-up", unit="step", delay=SPINUP_BAR_DELAY, leave=False,
                  disable=tqdm_disable(progress)) as bar:
            for start in range(0, spinup, chunk):
                steps = min(chunk, spinup - start)
                truth = self.model.step(truth, steps)
                bar.update(steps)
        return truth

    def attributes(self) -> dict[str, Any]:
        """Global attributes that make the file alone enough to reproduce the run."""
        return {
            "title": f"enff cycling run: {self.model.__class__.__name__} with filter {self.filter.name}",
            "source": f"enff {enff.__version__}",
            "enff_version": enff.__version__,
            "case": self.case.to_toml(),
            "case_source": self.case.where,
            "model": repr(self.model.params),
            "filter": repr(self.filter),
            "seed": self.seed,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "threads": torch.get_num_threads(),
            "observation_every_steps": self.every,
            **input_checksums(self.case),
            "history": f"{wallclock.strftime('%Y-%m-%dT%H:%M:%SZ', wallclock.gmtime())} created by enff run",
        }

    def create_file(self, path: Path, truth: torch.Tensor | None, ensemble: torch.Tensor, *,
                    replace: bool = False) -> RunFile:
        """Create the run file ``path`` holding the restart state of cycle 0: the truth ``(*state)`` (``None``
        for real observations) and the initial ensemble ``(member, *state)``; ``replace`` an existing file."""
        return RunFile.create(path, self.layout(), initial_truth=None if truth is None else truth.cpu().numpy(),
                              initial_analysis=ensemble.cpu().numpy(), replace=replace)

    def layout(self) -> RunLayout:
        """What the run file of this experiment holds."""
        return RunLayout(
            state_dims=self.model.state_dims,
            coords=self.model.coords(),
            state_attrs={"units": self.model.units},
            n_members=self.case.ensemble.size,
            obs_index=self.space.state_index,
            obs_locations=self.space.locations,
            dtype=np.dtype(self.case.run.dtype),
            has_truth=self.has_truth,
            save_analysis=self.save_analysis,
            save_forecast=self.case.run.save_forecast,
            diagnostic_names=self.filter.diagnostic_names,
            attrs=self.attributes(),
        )

    def cycle(self, k: int, truth: torch.Tensor | None, ensemble: torch.Tensor
              ) -> tuple[torch.Tensor | None, torch.Tensor, CycleRecord, Mapping[str, float]]:
        """Run cycle ``k`` (1-based) from the previous truth ``(*state)`` (``None`` for real observations)
        and analysis ``(member, *state)``; returns the new truth and analysis, the record and diagnostics."""
        forecast = self.model.step(ensemble, self.every)
        if not bool(torch.isfinite(forecast).all()):
            raise Divergence(k, "forecast")
        if truth is not None:
            truth = self.model.step(truth[None], self.every)[0]
        y = self.observations.observe(k, truth, self.generator(Stream.OBSERVATION, k), dtype=self.dtype,
                                      device=self.device)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = wallclock.perf_counter()
        result = self.filter.analysis(forecast, y, self.space, previous=ensemble,
                                      generator=self.generator(Stream.FILTER, k))
        analysis = result.ensemble
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = wallclock.perf_counter() - start
        if not bool(torch.isfinite(analysis).all()):
            raise Divergence(k, "analysis")
        record = self.record(k, truth, y, forecast, analysis, seconds)
        return truth, analysis, record, result.diagnostics

    def record(self, k: int, truth: torch.Tensor | None, y: torch.Tensor, forecast: torch.Tensor,
               analysis: torch.Tensor, seconds: float) -> CycleRecord:
        """Scores and ensemble statistics of cycle ``k`` as numpy arrays for the run file."""

        def cpu(t: torch.Tensor) -> np.ndarray:
            return t.detach().cpu().numpy()

        scalars = {score.name: score.evaluate(forecast, analysis, truth) for score in scores.SCORES
                   if truth is not None or not score.needs_truth}
        scalars["analysis_seconds"] = seconds
        return CycleRecord(
            time=k * self.every * self.model.dt,
            truth=None if truth is None else cpu(truth),
            observation=cpu(y),
            forecast_mean=cpu(forecast.mean(0)),
            forecast_spread=cpu(forecast.std(0)),
            analysis_mean=cpu(analysis.mean(0)),
            analysis_spread=cpu(analysis.std(0)),
            scalars=scalars,
            rank_counts=None if truth is None else cpu(scores.rank_counts(analysis, truth)),
            analysis=cpu(analysis) if self.save_analysis else None,
            forecast=cpu(forecast) if self.case.run.save_forecast else None,
        )


class RunStopped(RuntimeError):
    """The run stopped before its last cycle for a reason outside the science (a signal, a failed write).

    ``status`` is the documented exit status (:data:`EXIT_IO` = 5, or 128 + the signal number: 130 for
    SIGINT, 143 for SIGTERM); the message names the file, what happened and how to continue.
    """

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class _Interrupted(Exception):
    """SIGINT or SIGTERM arrived (``signum``)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _SignalGuard:
    """Turns SIGINT and SIGTERM into :class:`_Interrupted`, at once or, while a cycle is being written
    (:meth:`deferring`), right after the write, so that a signal never cuts off a cycle being written.
    Later signals are only remembered. Installed in the main thread only (Python allows no other)."""

    _SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self._signum: int | None = None
        self._writing = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_SignalGuard":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self._SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: object) -> None:
        first = self._signum is None
        if first:
            self._signum = signum
        if first and not self._writing:
            raise _Interrupted(signum)

    @contextmanager
    def deferring(self) -> Iterator[None]:
        """Hold signals back while the block runs; raise the first one after it."""
        self._writing = True
        try:
            yield
        finally:
            self._writing = False
        if self._signum is not None:
            raise _Interrupted(self._signum)


def _stopped(out: Path, what: str, status: int, cycles: int) -> RunStopped:
    """The :class:`RunStopped` for a run of ``cycles`` cycles into ``out`` that stopped because of ``what``,
    saying what the file holds now and how to continue (checked with :func:`check_run`)."""
    try:
        held = check_run(out).cycles_done
    except RunFileError:
        return RunStopped(f"{what}; {out} cannot be resumed: start the run again", status)
    return RunStopped(f"{what}; {out} holds {held} of {cycles} cycles; continue with: "
                      f"enff run --resume --out {shlex.quote(str(out))}", status)


def _reopen(exp: Experiment, out: Path) -> tuple[RunFile, int, torch.Tensor | None, torch.Tensor]:
    """Writer, cycles done, truth and analysis to continue the run in ``out``; every check is made under the
    writer's lock on the file read-only, before it is opened for writing."""
    if not out.is_file():
        raise FileNotFoundError(f"{out}: cannot resume, no such run file")

    def accept(attrs: Mapping[str, Any]) -> None:
        if not exp.case.defines_same_run(attrs.get("case", "")):
            raise ValueError(f"{out}: the file was written by a different case; resume with the case stored in it")
        check_inputs_unchanged(out, attrs, exp.case)

    writer, point = RunFile.reopen(out, accept)
    truth = None if point.truth is None else torch.as_tensor(point.truth, device=exp.device, dtype=exp.dtype)
    return writer, point.cycles_done, truth, torch.as_tensor(point.analysis, device=exp.device, dtype=exp.dtype)


def run_case(
    case: Case,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
) -> RunSummary:
    """Run (or resume) ``case``, writing the run file ``out`` cycle by cycle.

    Parameters
    ----------
    resume:
        Continue the run stored in ``out`` after its last complete cycle. The case must be the one stored
        in the file.
    overwrite:
        Replace an existing ``out``; without it (and without ``resume``) an existing file is an error.
    progress:
        Show progress bars (the spin-up's when it lasts over :data:`SPINUP_BAR_DELAY` seconds, then the
        cycles'); ``None`` shows them only on a terminal, ``True`` also into a log (:mod:`enff.progress`).

    Raises
    ------
    Divergence
        When the forecast or analysis becomes non-finite; every earlier cycle is in the file.
    RunStopped
        On SIGINT or SIGTERM (in the main thread) or a failed write of the run file (disk full, file
        deleted or replaced); the message says what ``out`` holds and how to continue.
    RunFileError
        (a ``ValueError``) When ``out`` is being written by another run, or cannot be resumed.
    """
    out = Path(out)
    exp = Experiment(case)
    with _SignalGuard() as guard:
        try:
            return _run(exp, out, guard, resume=resume, overwrite=overwrite, progress=progress)
        except _Interrupted as sig:
            raise _stopped(out, f"run stopped by {sig}", 128 + sig.signum, exp.cycles) from None
        except RunFileWriteError as err:
            raise _stopped(out, f"run stopped: {err}", EXIT_IO, exp.cycles) from None


def _run(exp: Experiment, out: Path, guard: _SignalGuard, *, resume: bool, overwrite: bool,
         progress: bool | None) -> RunSummary:
    """The body of :func:`run_case`: open or create ``out``, then cycle, writing each cycle inside ``guard``."""
    if resume:
        writer, cycles_done, truth, ensemble = _reopen(exp, out)
    else:
        if out.exists() and not overwrite:
            raise FileExistsError(f"{out} exists; pass --overwrite to replace it or --resume to continue it")
        out.parent.mkdir(parents=True, exist_ok=True)
        truth, ensemble = exp.initial_condition(progress)
        writer = exp.create_file(out, truth, ensemble, replace=overwrite)
        cycles_done = 0
    monitor = TrackMonitor(exp.case.ensemble.size)
    bar = tqdm(total=exp.cycles, initial=cycles_done, desc=f"{exp.filter.name}", unit="cycle",
               disable=tqdm_disable(progress))
    last: dict[str, float] = {}
    lost: int | None = None
    try:
        if exp.has_truth:
            monitor.replay(*writer.track_history(cycles_done, monitor.window))
        for k in range(cycles_done + 1, exp.cycles + 1):
            truth, ensemble, record, diagnostics = exp.cycle(k, truth, ensemble)
            if record.truth is not None:
                record.lost_track = monitor.update(record.scalars["rmse_analysis"], record.scalars["spread_analysis"],
                                                   truth_scale(record.truth))
                lost = lost or (k if record.lost_track else None)
            with guard.deferring():
                writer.write_restart(k, record.truth, ensemble.detach().cpu().numpy())
                writer.write_cycle(k - 1, record, diagnostics)
                cycles_done = k
            last = record.scalars
            bar.set_postfix(rmse=f"{last.get('rmse_analysis', float('nan')):.4g}",
                            spread=f"{last['spread_analysis']:.4g}", **({"lost_track": lost} if lost else {}),
                            refresh=False)
            bar.update(1)
    finally:
        bar.close()
        writer.close()
    return RunSummary(out, cycles_done, last)
