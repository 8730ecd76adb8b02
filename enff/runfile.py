"""The run file: one crash-safe netCDF file per cycling run.

Layout (CF-1.8; classic 64-bit-offset format written with unbuffered shared access, which survives
repeated SIGKILL tests with one sync per cycle, ``benchmarks/kill_storm.py``):

* ``time`` (unlimited) x ``member`` x the model's state dims, plus ``obs`` and ``rank``;
* per cycle: ``truth``, ``observation``, ensemble means/spreads, optional full ``analysis``/``forecast``
  ensembles, scalar scores, filter diagnostics, the ``lost_track`` flag (:mod:`enff.tracking`) and
  ``cycle_complete``, defined last so that it ends each record and is written last;
* a two-slot restart area (``restart_truth``, ``restart_analysis``, ``restart_cycle``) written
  *before* the cycle's record, so that for every complete record one slot holds the state needed to
  continue exactly from it.

A record whose ``cycle_complete`` is not 1 was cut off by a crash; :func:`open_run` drops it.

Safety (:mod:`enff.safefile`): a new file is prepared under a hidden temporary name and published
atomically once its header and first restart slot exist; its writer holds an exclusive lock on it for
as long as it writes; disk space for each record is reserved before it is written; after every record
the writer checks that its file was not deleted or replaced. :func:`check_run` is the consistency
check every reader and resumer goes through; nothing it refuses is ever opened for writing.
"""

from __future__ import annotations

import ctypes
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import netCDF4
import numpy as np
import xarray as xr

from enff.scores import SCORES
from enff.safefile import LockHeld, WriterLock, publish, remove_stale_temporaries, temporary_name
from enff.tracking import NO_SKILL, OVERCONFIDENT, truth_scale

__all__ = ["CycleRecord", "ResumePoint", "RunFile", "RunFileError", "RunFileLocked", "RunFileWriteError",
           "RunLayout", "RunState", "TIME_ATTRS", "TIMINGS", "check_run", "open_run"]

#: Per-cycle timing variables beside the scores of :data:`enff.scores.SCORES`: name -> (long_name, units).
TIMINGS: dict[str, tuple[str, str]] = {"analysis_seconds": ("wall-clock seconds of the analysis step", "s")}
#: Cartesian axis of the state dimensions that are spatial axes of the model grid, written as
#: ``cartesian_axis`` (read by ``cf_xarray``). Not CF's ``axis``: CF-1.8 reserves ``axis = "X"``/``"Y"`` for
#: longitude/latitude or map-projection coordinates, which the dimensionless periodic model domains are not
#: (the IOOS compliance checker then asks for ``degrees_east``/``degrees_north``).
GRID_AXES = {"x": "X", "y": "Y"}
#: Epoch of :data:`TIME_ATTRS`: arbitrary, a date ``numpy.datetime64`` holds at nanosecond resolution.
TIME_EPOCH = "1970-01-01 00:00:00"
#: CF attributes of the ``time`` coordinate. The models are dimensionless, but CF needs a time coordinate
#: in time units since a reference date (cfchecks, and the IOOS checker's rule that a dimension named
#: ``time`` has standard_name ``time``), so one model time unit is written as one second after the arbitrary
#: :data:`TIME_EPOCH`: the stored numbers are the model times themselves, and the ``comment`` says so.
#: :func:`open_run` reads them as numbers (``decode_times=False``); plain ``xarray.open_dataset`` decodes
#: them to datetimes ``TIME_EPOCH + t seconds``. Files written before this encoding (``units = "1"``) read
#: the same through :func:`open_run` and resume unchanged (their attributes are kept).
TIME_ATTRS: dict[str, str] = {
    "standard_name": "time",
    "long_name": "model time since the end of the spin-up (dimensionless model time units, written as seconds)",
    "units": f"seconds since {TIME_EPOCH}",
    "calendar": "standard",
    "axis": "T",
    "comment": ("The models are dimensionless. CF requires a time coordinate to carry time units since a "
                "reference date, so each value is the model time since the end of the spin-up written as that "
                f"many seconds after the arbitrary epoch {TIME_EPOCH}: one model time unit is stored as one "
                "second, and the dates mean nothing. Read the numbers with decode_times=False (as "
                "enff.runfile.open_run does), or subtract the epoch from the decoded datetimes."),
}
_EMPTY_SLOT = -2
#: netCDF modes of the writer: unbuffered shared access (NC_SHARE, the "s"), so that every put goes to
#: the operating system as it is made, in program order (the record count in the header too, as a record
#: is added). A process killed at any moment then leaves exactly the puts made before it, and the ordering
#: that keeps a file resumable (the empty mark before a restart slot's state, the state before its cycle
#: mark, ``cycle_complete`` after the rest of its record) needs no sync between puts: one per cycle.
_WRITE_MODE = {"create": "ws", "append": "as"}
#: Bytes reserved beyond one record before it is written: netCDF's buffered writes may round up.
_RESERVE_SLACK = 1 << 16


def _define_state_coordinate(ds: netCDF4.Dataset, dim: str, values: np.ndarray) -> None:
    """The dimension ``dim`` and its coordinate in ``ds``: text labels (``values`` of strings, e.g. the
    fields of a multi-field state) as a character array ``(dim, <dim>_strlen)`` that xarray reads as strings,
    else grid positions in dimensionless model length units with the ``cartesian_axis`` of :data:`GRID_AXES`."""
    ds.createDimension(dim, len(values))
    if values.dtype.kind in "US":
        width = max(1, max(len(str(v)) for v in values))
        ds.createDimension(f"{dim}_strlen", width)
        var = ds.createVariable(dim, "S1", (dim, f"{dim}_strlen"))
        var[:] = netCDF4.stringtochar(values.astype(f"S{width}"))
        var.long_name, var._Encoding = f"name of the {dim}", "utf-8"
        return
    var = ds.createVariable(dim, "f8", (dim,))
    var[:] = values
    var.long_name, var.units = f"grid coordinate {dim} (model length units)", "1"
    if dim in GRID_AXES:
        var.cartesian_axis = GRID_AXES[dim]


class RunFileError(ValueError):
    """A file that cannot serve as asked: not a run file, inconsistent, or being written. The message
    names the file."""


class RunFileLocked(RunFileError):
    """Another process is writing the run file; ``holder`` is its pid (``None`` when unknown)."""

    def __init__(self, path: Path, holder: int | None) -> None:
        who = f"process {holder}" if holder else "another process"
        super().__init__(f"{path} is being written by {who} (it holds the file's lock); wait for that run "
                         "to end or write to another --out")
        self.path, self.holder = path, holder


class RunFileWriteError(RuntimeError):
    """Writing the run file failed (disk full, file deleted or replaced, I/O error). Every cycle completed
    before is still in ``path`` unless ``resumable`` is false (the file is gone or another took its name)."""

    def __init__(self, path: Path, what: str, resumable: bool = True) -> None:
        super().__init__(f"{path}: {what}")
        self.path, self.what, self.resumable = path, what, resumable


@dataclass(frozen=True)
class RunLayout:
    """What the run file of one run holds, fixed when it is created.

    Attributes
    ----------
    state_dims, coords, state_attrs:
        The model's state dimensions, their coordinate arrays and the state's attributes (``units``).
    n_members:
        Ensemble size.
    obs_index, obs_locations:
        Flat state index ``(obs,)`` and grid coordinates ``(obs, ndim)`` of each observation.
    dtype:
        Of the state arrays (float32 or float64).
    has_truth:
        A twin experiment: the truth, the scores that need it, rank counts and the lost-track flag.
    save_analysis, save_forecast:
        Whether the full ensembles are written every cycle.
    diagnostic_names:
        The filter's per-cycle diagnostics (variables ``diag_<name>``).
    attrs:
        Global attributes (the case, the seed, ...).
    """

    state_dims: tuple[str, ...]
    coords: Mapping[str, np.ndarray]
    state_attrs: Mapping[str, str]
    n_members: int
    obs_index: np.ndarray
    obs_locations: np.ndarray
    dtype: np.dtype
    has_truth: bool
    save_analysis: bool
    save_forecast: bool
    diagnostic_names: tuple[str, ...]
    attrs: Mapping[str, Any]


@dataclass
class CycleRecord:
    """Everything written for one cycle (numpy arrays; state arrays shaped like the model state).
    ``lost_track`` holds the bits of :mod:`enff.tracking` (0: tracking)."""

    time: float
    truth: np.ndarray | None
    observation: np.ndarray
    forecast_mean: np.ndarray
    forecast_spread: np.ndarray
    analysis_mean: np.ndarray
    analysis_spread: np.ndarray
    scalars: dict[str, float]
    rank_counts: np.ndarray | None = None
    analysis: np.ndarray | None = None
    forecast: np.ndarray | None = None
    lost_track: int = 0


@dataclass
class ResumePoint:
    """State to continue a run after its last complete cycle ``cycles_done`` (0 = none completed)."""

    cycles_done: int
    truth: np.ndarray | None
    analysis: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunState:
    """What :func:`check_run` found: ``records`` in the file, of which the first ``cycles_done`` are
    complete, the cycle each restart slot belongs to (``-2``: empty) and the global attributes."""

    path: Path
    records: int
    cycles_done: int
    slots: tuple[int, ...]
    attrs: dict[str, Any]


def check_run(path: str | Path) -> RunState:
    """Check, read-only, that ``path`` is a consistent run file; raises :class:`RunFileError` naming it if not.

    Consistent means: complete cycles form one unbroken run from the first record, at most one record
    after them is incomplete (the cycle a crash cut off; a truncated file shows several, because
    ``cycle_complete`` ends each record), and the restart slots hold the last complete cycle plus at most
    its neighbour, each in the slot of its parity. A file written by two runs at once breaks these rules.
    """
    path = Path(path)
    try:
        ds = netCDF4.Dataset(str(path), "r")
    except OSError as err:
        raise RunFileError(f"{path} is not a readable netCDF file ({err.strerror or err})") from None
    with ds:
        missing = [name for name in ("cycle_complete", "restart_cycle", "restart_analysis") if name not in ds.variables]
        if missing or "case" not in ds.ncattrs():
            raise RunFileError(f"{path} is not a run file written by enff run (no {', '.join(missing) or 'stored case'})")
        ds.set_auto_mask(False)
        done = np.asarray(ds["cycle_complete"][:]) if ds.dimensions["time"].size else np.zeros(0, np.int8)
        slots = tuple(int(v) for v in np.asarray(ds["restart_cycle"][:]))
        attrs = {key: ds.getncattr(key) for key in ds.ncattrs()}
    cycles_done = int(np.argmin(done == 1)) if (done != 1).any() else int(done.size)
    problem = _inconsistency(done, cycles_done, slots)
    if problem:
        raise RunFileError(f"{path} is inconsistent: {problem}; it cannot be scored, plotted or resumed")
    return RunState(path, int(done.size), cycles_done, slots, attrs)


def _inconsistency(done: np.ndarray, cycles_done: int, slots: tuple[int, ...]) -> str | None:
    """What is wrong with ``cycle_complete`` ``(time,)`` and the restart slots, or ``None``."""
    tail = done[cycles_done:]
    if (tail == 1).any():
        later = cycles_done + 1 + int(np.argmax(tail == 1))
        return f"cycle {cycles_done + 1} is incomplete but cycle {later} is complete (cycle_complete has holes)"
    if tail.size > 1:
        return f"its last {tail.size} records are incomplete (a run leaves at most one): the file is truncated"
    near = (cycles_done - 1, cycles_done, cycles_done + 1)
    for slot, value in enumerate(slots):
        if value != _EMPTY_SLOT and (value < 0 or value % len(slots) != slot or value not in near):
            return f"restart slot {slot} holds cycle {value}, which cannot follow {cycles_done} complete cycles"
    if cycles_done not in slots:
        return f"no restart state for its {cycles_done} complete cycles"
    return None


class RunFile:
    """Writer of one run file; create with :meth:`create` or reopen with :meth:`reopen`. It holds the
    file's lock until :meth:`close`."""

    def __init__(self, dataset: netCDF4.Dataset, path: Path, lock: WriterLock) -> None:
        self._ds = dataset
        self.path = path
        self._lock = lock
        self._broken = False

    @classmethod
    def create(
        cls,
        path: str | Path,
        layout: RunLayout,
        *,
        initial_truth: np.ndarray | None,
        initial_analysis: np.ndarray,
        replace: bool = False,
    ) -> "RunFile":
        """Create the file with every dimension, variable and attribute of ``layout`` and the restart state
        of cycle 0 (``initial_truth`` ``(*state)``, ``initial_analysis`` ``(member, *state)``); no record is
        written yet.

        The file is prepared under a temporary name and appears at ``path`` complete, or not at all.
        Without ``replace`` an existing ``path`` is an error (``FileExistsError``); with it, a file that
        another run is writing is refused (:class:`RunFileLocked`).
        """
        path = Path(path)
        remove_stale_temporaries(path)
        old = _lock_for_writing(path) if replace and path.exists() else None
        try:
            return cls._prepare(path, layout, initial_truth, initial_analysis, replace)
        finally:
            if old is not None:
                old.release()

    @classmethod
    def _prepare(cls, path: Path, layout: RunLayout, initial_truth: np.ndarray | None,
                 initial_analysis: np.ndarray, replace: bool) -> "RunFile":
        """Build the file under its temporary name (locked from its first byte), then publish it at ``path``."""
        tmp = temporary_name(path)
        lock = WriterLock.acquire(tmp, create=True)
        writer = None
        try:
            writer = cls(netCDF4.Dataset(str(tmp), _WRITE_MODE["create"], clobber=True, format="NETCDF3_64BIT_OFFSET"),
                         path, lock)
            writer._ds.set_auto_mask(False)  # as reopen: plain arrays in and out
            with writer._guard("creating the file"):
                cls._define(writer._ds, layout)
            writer.write_restart(0, initial_truth, initial_analysis)
            writer._ds.sync()
            if lock.identity() != _identity(tmp):
                raise RunFileError(f"{tmp}: the temporary file was replaced while it was being prepared")
            _publish_naming_the_holder(tmp, path, replace)
        except BaseException:
            if writer is not None:
                writer.close()
            else:
                lock.release()
            tmp.unlink(missing_ok=True)
            raise
        return writer

    @staticmethod
    def _define(ds: netCDF4.Dataset, layout: RunLayout) -> None:
        state_dims, n_members, obs_index = layout.state_dims, layout.n_members, layout.obs_index
        state_attrs, has_truth = layout.state_attrs, layout.has_truth
        ds.createDimension("time", None)
        ds.createDimension("member", n_members)
        ds.createDimension("obs", len(obs_index))
        ds.createDimension("rank", n_members + 1)
        ds.createDimension("slot", 2)
        for dim in state_dims:
            _define_state_coordinate(ds, dim, np.asarray(layout.coords[dim]))
        time = ds.createVariable("time", "f8", ("time",))
        time.setncatts(TIME_ATTRS)
        member = ds.createVariable("member", "i4", ("member",))
        member[:] = np.arange(n_members)
        member.standard_name = "realization"
        member.long_name, member.units = "ensemble member", "1"
        obs = ds.createVariable("obs", "i4", ("obs",))
        obs[:] = np.arange(len(obs_index))
        obs.long_name, obs.units = "observation number", "1"
        oi = ds.createVariable("obs_index", "i4", ("obs",))
        oi[:] = obs_index
        oi.long_name, oi.units = "flat index of the state element each observation is located at", "1"
        for axis, dim in enumerate(state_dims):
            loc = ds.createVariable(f"obs_{dim}", "f8", ("obs",))
            loc[:] = layout.obs_locations[:, axis]
            loc.long_name, loc.units = f"observation location along {dim} (model length units)", "1"
        rank = ds.createVariable("rank", "i4", ("rank",))
        rank[:] = np.arange(n_members + 1)
        rank.long_name, rank.units = "number of members below the truth", "1"

        code = "f8" if np.dtype(layout.dtype) == np.float64 else "f4"
        fill = {"fill_value": np.nan}
        state = ("time", *state_dims)

        def state_var(name: str, dims: tuple[str, ...], long_name: str) -> None:
            var = ds.createVariable(name, code, dims, **fill)
            var.long_name = long_name
            var.units = state_attrs.get("units", "1")

        if has_truth:
            state_var("truth", state, "true state (nature run)")
        ov = ds.createVariable("observation", "f8", ("time", "obs"), **fill)
        ov.long_name = "observation (NaN where missing)"
        ov.coordinates = " ".join(["obs_index", *(f"obs_{dim}" for dim in state_dims)])
        state_var("forecast_mean", state, "forecast ensemble mean")
        state_var("forecast_spread", state, "forecast ensemble standard deviation")
        state_var("analysis_mean", state, "analysis ensemble mean")
        state_var("analysis_spread", state, "analysis ensemble standard deviation")
        if layout.save_analysis:
            state_var("analysis", ("time", "member", *state_dims), "analysis ensemble")
        if layout.save_forecast:
            state_var("forecast", ("time", "member", *state_dims), "forecast ensemble")
        for score in SCORES:
            if score.needs_truth and not has_truth:
                continue
            var = ds.createVariable(score.name, "f8", ("time",), **fill)
            var.long_name, var.units = score.long_name, state_attrs.get("units", "1")
        for name, (long_name, units) in TIMINGS.items():
            var = ds.createVariable(name, "f8", ("time",), **fill)
            var.long_name, var.units = long_name, units
        for name in layout.diagnostic_names:
            var = ds.createVariable(f"diag_{name}", "f8", ("time",), **fill)
            var.long_name = f"filter diagnostic {name}"
        if has_truth:
            rh = ds.createVariable("rank_counts", "i4", ("time", "rank"))
            rh.long_name = "rank histogram counts of the truth among the analysis members"
            lost = ds.createVariable("lost_track", "i1", ("time",))
            lost.long_name = "sustained symptoms of a filter that lost track of the truth (see enff.tracking)"
            lost.flag_masks = np.array([OVERCONFIDENT, NO_SKILL], dtype=np.int8)
            lost.flag_meanings = "overconfident no_better_than_climatology"
        done = ds.createVariable("cycle_complete", "i1", ("time",))
        done.long_name = "1 when every variable of this cycle was written"
        state_var("restart_analysis", ("slot", "member", *state_dims), "analysis ensemble for resuming")
        if has_truth:
            state_var("restart_truth", ("slot", *state_dims), "true state for resuming")
        rc = ds.createVariable("restart_cycle", "i4", ("slot",))
        rc[:] = np.array([_EMPTY_SLOT, _EMPTY_SLOT], dtype=np.int32)
        rc.long_name = "number of completed cycles the slot's state belongs to (-2: empty)"
        ds.setncatts({"Conventions": "CF-1.8", **{k: _attr(v) for k, v in layout.attrs.items()}})

    @classmethod
    def reopen(cls, path: str | Path,
               accept: Callable[[Mapping[str, Any]], None] | None = None) -> tuple["RunFile", ResumePoint]:
        """Lock and check an existing run file, then reopen it for appending; returns the writer and where
        to continue. A file that is locked, inconsistent or holds a non-finite restart state is refused
        (:class:`RunFileError`) before it is opened for writing.

        The lock is taken first, so every check reads a file no other run is writing (a file being written
        is refused as locked, never judged from a half-written cycle). ``accept``, given the file's global
        attributes, runs under the lock before the file is opened for writing and refuses it by raising."""
        path = Path(path)
        lock = _lock_for_writing(path)
        try:
            state = check_run(path)
            if accept is not None:
                accept(state.attrs)
            point = _read_resume_point(path, state)
            ds = netCDF4.Dataset(str(path), _WRITE_MODE["append"])
            if lock.identity() != _identity(path):
                ds.close()
                raise RunFileError(f"{path} was replaced while it was being reopened")
        except BaseException:
            lock.release()
            raise
        ds.set_auto_mask(False)
        return cls(ds, path, lock), point

    def track_history(self, cycles_done: int, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Analysis RMSE, spread and :func:`enff.tracking.truth_scale` of the (up to) ``count`` complete cycles
        before ``cycles_done``, oldest first, each ``(cycle,)``: what :class:`enff.tracking.TrackMonitor` needs."""
        start = max(0, cycles_done - count)
        ds = self._ds
        truth = np.asarray(ds["truth"][start:cycles_done])
        return (np.asarray(ds["rmse_analysis"][start:cycles_done], dtype=np.float64),
                np.asarray(ds["spread_analysis"][start:cycles_done], dtype=np.float64),
                np.array([truth_scale(state) for state in truth]))

    def write_restart(self, cycles_done: int, truth: np.ndarray | None, analysis: np.ndarray) -> None:
        """Store the state after ``cycles_done`` cycles in slot ``cycles_done % 2``: the slot is marked empty,
        filled, then marked with ``cycles_done``. Each put reaches the file as it is made (unbuffered shared
        access, see :data:`_WRITE_MODE`), so these steps land in this order without a sync of their own; the
        cycle's record (:meth:`write_cycle`) follows them and ends with the cycle's one sync."""
        slot = cycles_done % 2
        with self._guard(f"writing the restart state of cycle {cycles_done}"):
            variables = self._ds.variables
            variables["restart_cycle"][slot] = _EMPTY_SLOT  # invalidate first: a torn write never looks valid
            variables["restart_analysis"][slot] = analysis
            if truth is not None:
                variables["restart_truth"][slot] = truth
            variables["restart_cycle"][slot] = cycles_done

    def write_cycle(self, index: int, record: CycleRecord, diagnostics: Mapping[str, float]) -> None:
        """Write record ``index`` (0-based), mark it complete last, and sync; then check that the file is
        still at its path. Space for the record is reserved first, so a full disk stops the run before
        netCDF writes anything."""
        try:
            self._lock.reserve(self._record_bytes + _RESERVE_SLACK)
        except OSError as err:
            raise RunFileWriteError(self.path, f"disk full: cycle {index + 1} needs about "
                                    f"{self._record_bytes} bytes ({err.strerror})") from None
        with self._guard(f"writing cycle {index + 1}"):
            self._write_record(index, record, diagnostics)
        self._check_still_there()

    def _write_record(self, index: int, record: CycleRecord, diagnostics: Mapping[str, float]) -> None:
        ds = self._ds.variables  # by name, without Dataset.__getitem__'s path lookup
        ds["cycle_complete"][index] = 0
        ds["time"][index] = record.time
        if record.truth is not None:
            ds["truth"][index] = record.truth
            ds["rank_counts"][index] = record.rank_counts
        if "lost_track" in ds:
            ds["lost_track"][index] = record.lost_track
        ds["observation"][index] = record.observation
        for name in ("forecast_mean", "forecast_spread", "analysis_mean", "analysis_spread"):
            ds[name][index] = getattr(record, name)
        if "analysis" in ds:
            ds["analysis"][index] = record.analysis
        if "forecast" in ds:
            ds["forecast"][index] = record.forecast
        for name, value in record.scalars.items():
            if name in ds:
                ds[name][index] = value
        for name, value in diagnostics.items():
            ds[f"diag_{name}"][index] = value
        ds["cycle_complete"][index] = 1  # after every other put of the record, so it reaches the file last
        self._ds.sync()  # the cycle's one sync

    @cached_property
    def _record_bytes(self) -> int:
        """Bytes of one record in the classic format: the record variables' slices, each padded to 4."""
        total = 0
        for var in self._ds.variables.values():
            if var.dimensions and var.dimensions[0] == "time":
                size = int(np.prod(var.shape[1:], dtype=np.int64)) * var.dtype.itemsize
                total += -(-size // 4) * 4
        return total

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """Turn a failed netCDF write into :class:`RunFileWriteError`; the handle is then never closed again."""
        try:
            yield
        except (RuntimeError, OSError) as err:
            self._broken = True
            raise RunFileWriteError(self.path, f"{what} failed: {err}") from err

    def _check_still_there(self) -> None:
        """Stop when the file was deleted (restoring it from the open descriptor) or replaced."""
        if self._lock.is_at(self.path):
            return
        if self.path.exists():
            raise RunFileWriteError(self.path, "was replaced by another file while the run was writing it; the "
                                    "cycles of this run are lost", resumable=False)
        restored = self._lock.copy_to(self.path)
        what = "was deleted while the run was writing it; " + (
            "restored it with every complete cycle" if restored else "could not restore it")
        raise RunFileWriteError(self.path, what, resumable=restored)

    def close(self) -> None:
        """Close the file (everything written is already synced) and release its lock. After a failed
        write the netCDF handle is closed once and, if that fails too, abandoned (see :func:`_close_once`)."""
        ds, self._ds = self._ds, None
        try:
            if ds is not None and ds.isopen():
                _close_once(ds, quiet=self._broken)
        finally:
            self._lock.release()

    def __enter__(self) -> "RunFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _close_once(ds: netCDF4.Dataset, *, quiet: bool) -> None:
    """Close ``ds``; if netCDF-C fails to, keep the handle alive for ever instead of letting its finalizer
    close it again. netCDF-C 4.x frees a classic file's state on a failed ``nc_close`` but keeps its id, so a
    second close (netCDF4's ``__dealloc__``, at the latest at exit) dereferences freed memory and crashes."""
    try:
        ds.close()
    except (RuntimeError, OSError):
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(ds))
        if not quiet:
            raise


def _lock_for_writing(path: Path) -> WriterLock:
    """The writer's lock on the existing file ``path``, or :class:`RunFileError` (locked, unwritable)."""
    try:
        return WriterLock.acquire(path)
    except LockHeld as held:
        raise RunFileLocked(path, held.holder) from None
    except OSError as err:
        raise RunFileError(f"{path}: cannot open it for writing ({err.strerror})") from None


def _publish_naming_the_holder(tmp: Path, path: Path, replace: bool) -> None:
    """:func:`enff.safefile.publish`; when another run took the name first (two runs started together on
    one ``--out``), refuse naming that run (:class:`RunFileLocked`) while it still writes."""
    try:
        publish(tmp, path, replace=replace)
    except FileExistsError:
        _lock_for_writing(path).release()
        raise


def _identity(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino


def _read_resume_point(path: Path, state: RunState) -> ResumePoint:
    """The restart state after ``state.cycles_done`` cycles, read-only; refuses a non-finite one."""
    slot = state.slots.index(state.cycles_done)
    with netCDF4.Dataset(str(path), "r") as ds:
        ds.set_auto_mask(False)
        analysis = np.array(ds["restart_analysis"][slot])
        truth = np.array(ds["restart_truth"][slot]) if "restart_truth" in ds.variables else None
    if not np.isfinite(analysis).all() or (truth is not None and not np.isfinite(truth).all()):
        raise RunFileError(f"{path} is inconsistent: the restart state of cycle {state.cycles_done} (slot {slot}) "
                           "has non-finite values; it cannot be resumed")
    return ResumePoint(state.cycles_done, truth, analysis, state.attrs)


def _attr(value: Any) -> Any:
    """netCDF-3 attributes hold text or numbers only."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, np.integer)) and not -(2**31) <= value < 2**31:
        return str(value)  # netCDF-3 has no 64-bit integer attributes: keep every digit, as text
    if isinstance(value, (int, float, np.integer, np.floating)):
        return value
    return str(value)


def open_run(path: str | Path, *, check: bool = True, **kwargs: Any) -> xr.Dataset:
    """Open a run file with xarray, keeping only complete cycles and dropping the restart area.

    With ``check`` (the default) the file must pass :func:`check_run` first (:class:`RunFileError` names
    it otherwise); ``kwargs`` go to :func:`xarray.open_dataset`. ``time`` holds model time as numbers
    (``decode_times=False`` unless given, see :data:`TIME_ATTRS`).
    """
    if check:
        check_run(path)
    ds = xr.open_dataset(path, **{"decode_times": False, **kwargs})
    ds = ds.drop_vars([v for v in ("restart_analysis", "restart_truth", "restart_cycle") if v in ds.variables])
    if ds.sizes.get("time", 0):
        ds = ds.isel(time=(ds["cycle_complete"] == 1).values)
    return ds
from enff.runset import open_runs  # noqa: E305,E402,F401  many run files as one Dataset (enff.runset)
