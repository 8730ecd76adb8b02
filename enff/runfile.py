"""The run file: one crash-safe netCDF file per cycling run.

Layout (CF-1.8; classic 64-bit-offset format, which survived repeated SIGKILL tests here when
synced after every record):

* ``time`` (unlimited) x ``member`` x the model's state dims, plus ``obs`` and ``rank``;
* per cycle: ``truth``, ``observation``, ensemble means/spreads, optional full ``analysis``/``forecast``
  ensembles, scalar scores and filter diagnostics, and ``cycle_complete`` written last;
* a two-slot restart area (``restart_truth``, ``restart_analysis``, ``restart_cycle``) written and synced
  *before* the cycle's record, so that for every complete record one slot holds the state needed to
  continue exactly from it.

A record whose ``cycle_complete`` is not 1 was cut off by a crash; :func:`open_run` drops it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import netCDF4
import numpy as np
import xarray as xr

__all__ = ["CycleRecord", "ResumePoint", "RunFile", "open_run", "SCALARS"]

#: Per-cycle scalar variables: name -> (long_name, units).
SCALARS: dict[str, tuple[str, str]] = {
    "rmse_forecast": ("RMSE of the forecast ensemble mean", "state units"),
    "rmse_analysis": ("RMSE of the analysis ensemble mean", "state units"),
    "spread_forecast": ("forecast ensemble spread", "state units"),
    "spread_analysis": ("analysis ensemble spread", "state units"),
    "crps_forecast": ("fair ensemble CRPS of the forecast, mean over state", "state units"),
    "crps_analysis": ("fair ensemble CRPS of the analysis, mean over state", "state units"),
    "energy_score_analysis": ("fair energy score of the analysis over the whole state", "state units"),
    "analysis_seconds": ("wall-clock seconds of the analysis step", "s"),
}


@dataclass
class CycleRecord:
    """Everything written for one cycle (numpy arrays; state arrays shaped like the model state)."""

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


@dataclass
class ResumePoint:
    """State to continue a run after its last complete cycle ``cycles_done`` (0 = none completed)."""

    cycles_done: int
    truth: np.ndarray | None
    analysis: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)


class RunFile:
    """Writer of one run file; create with :meth:`create` or reopen with :meth:`reopen`."""

    def __init__(self, dataset: netCDF4.Dataset, state_dims: tuple[str, ...]) -> None:
        self._ds = dataset
        self._state_dims = state_dims

    @classmethod
    def create(
        cls,
        path: str | Path,
        *,
        state_dims: tuple[str, ...],
        coords: Mapping[str, np.ndarray],
        state_attrs: Mapping[str, str],
        n_members: int,
        obs_index: np.ndarray,
        obs_locations: np.ndarray,
        dtype: np.dtype,
        has_truth: bool,
        save_analysis: bool,
        save_forecast: bool,
        diagnostic_names: tuple[str, ...],
        attrs: Mapping[str, Any],
    ) -> "RunFile":
        """Create the file with every dimension, variable and attribute; no record is written yet."""
        ds = netCDF4.Dataset(str(path), "w", format="NETCDF3_64BIT_OFFSET")
        try:
            cls._define(ds, state_dims, coords, state_attrs, n_members, obs_index, obs_locations, np.dtype(dtype),
                        has_truth, save_analysis, save_forecast, diagnostic_names, attrs)
        except BaseException:
            ds.close()
            Path(path).unlink(missing_ok=True)
            raise
        ds.sync()
        return cls(ds, state_dims)

    @staticmethod
    def _define(ds: netCDF4.Dataset, state_dims: tuple[str, ...], coords: Mapping[str, np.ndarray],
                state_attrs: Mapping[str, str], n_members: int, obs_index: np.ndarray,
                obs_locations: np.ndarray, dtype: np.dtype, has_truth: bool, save_analysis: bool,
                save_forecast: bool, diagnostic_names: tuple[str, ...], attrs: Mapping[str, Any]) -> None:
        ds.createDimension("time", None)
        ds.createDimension("member", n_members)
        ds.createDimension("obs", len(obs_index))
        ds.createDimension("rank", n_members + 1)
        ds.createDimension("slot", 2)
        for dim in state_dims:
            ds.createDimension(dim, len(coords[dim]))
            var = ds.createVariable(dim, "f8", (dim,))
            var[:] = coords[dim]
            var.long_name = f"grid coordinate {dim}"
        time = ds.createVariable("time", "f8", ("time",))
        time.long_name = "model time since the end of the spin-up"
        time.units = "model time units"
        member = ds.createVariable("member", "i4", ("member",))
        member[:] = np.arange(n_members)
        member.standard_name = "realization"
        member.long_name = "ensemble member"
        obs = ds.createVariable("obs", "i4", ("obs",))
        obs[:] = np.arange(len(obs_index))
        obs.long_name = "observation number"
        oi = ds.createVariable("obs_index", "i4", ("obs",))
        oi[:] = obs_index
        oi.long_name = "flat index of the state element each observation is located at"
        for axis, dim in enumerate(state_dims):
            loc = ds.createVariable(f"obs_{dim}", "f8", ("obs",))
            loc[:] = obs_locations[:, axis]
            loc.long_name = f"observation location along {dim}"
        rank = ds.createVariable("rank", "i4", ("rank",))
        rank[:] = np.arange(n_members + 1)
        rank.long_name = "number of members below the truth"

        code = "f8" if dtype == np.float64 else "f4"
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
        if save_analysis:
            state_var("analysis", ("time", "member", *state_dims), "analysis ensemble")
        if save_forecast:
            state_var("forecast", ("time", "member", *state_dims), "forecast ensemble")
        for name, (long_name, units) in SCALARS.items():
            if name.startswith(("rmse", "crps", "energy")) and not has_truth:
                continue
            var = ds.createVariable(name, "f8", ("time",), **fill)
            var.long_name, var.units = long_name, units
        for name in diagnostic_names:
            var = ds.createVariable(f"diag_{name}", "f8", ("time",), **fill)
            var.long_name = f"filter diagnostic {name}"
        if has_truth:
            rh = ds.createVariable("rank_counts", "i4", ("time", "rank"))
            rh.long_name = "rank histogram counts of the truth among the analysis members"
        done = ds.createVariable("cycle_complete", "i1", ("time",))
        done.long_name = "1 when every variable of this cycle was written"
        state_var("restart_analysis", ("slot", "member", *state_dims), "analysis ensemble for resuming")
        if has_truth:
            state_var("restart_truth", ("slot", *state_dims), "true state for resuming")
        rc = ds.createVariable("restart_cycle", "i4", ("slot",))
        rc[:] = np.array([-2, -2], dtype=np.int32)
        rc.long_name = "number of completed cycles the slot's state belongs to (-2: empty)"
        ds.setncatts({"Conventions": "CF-1.8", **{k: _attr(v) for k, v in attrs.items()}})

    @classmethod
    def reopen(cls, path: str | Path) -> tuple["RunFile", ResumePoint]:
        """Reopen an existing run file for appending; returns the writer and where to continue."""
        ds = netCDF4.Dataset(str(path), "a")
        ds.set_auto_mask(False)
        state_dims = tuple(d for d in ds["restart_analysis"].dimensions if d not in ("slot", "member"))
        done = np.asarray(ds["cycle_complete"][:]) if ds.dimensions["time"].size else np.zeros(0)
        cycles_done = int(np.argmin(done == 1)) if (done != 1).any() else int(done.size)
        slots = np.asarray(ds["restart_cycle"][:])
        match = np.flatnonzero(slots == cycles_done)
        if match.size == 0:
            ds.close()
            raise ValueError(f"{path}: no restart state for cycle {cycles_done}; the file cannot be resumed")
        slot = int(match[0])
        truth = np.array(ds["restart_truth"][slot]) if "restart_truth" in ds.variables else None
        point = ResumePoint(cycles_done, truth, np.array(ds["restart_analysis"][slot]),
                            {k: ds.getncattr(k) for k in ds.ncattrs()})
        return cls(ds, state_dims), point

    def write_restart(self, cycles_done: int, truth: np.ndarray | None, analysis: np.ndarray) -> None:
        """Store the state after ``cycles_done`` cycles in slot ``cycles_done % 2`` and sync."""
        slot = cycles_done % 2
        self._ds["restart_cycle"][slot] = -2  # invalidate first: a torn write never looks valid
        self._ds.sync()
        self._ds["restart_analysis"][slot] = analysis
        if truth is not None:
            self._ds["restart_truth"][slot] = truth
        self._ds.sync()
        self._ds["restart_cycle"][slot] = cycles_done
        self._ds.sync()

    def write_cycle(self, index: int, record: CycleRecord, diagnostics: Mapping[str, float]) -> None:
        """Write record ``index`` (0-based), mark it complete last, and sync."""
        ds = self._ds
        ds["cycle_complete"][index] = 0
        ds["time"][index] = record.time
        if record.truth is not None:
            ds["truth"][index] = record.truth
            ds["rank_counts"][index] = record.rank_counts
        ds["observation"][index] = record.observation
        for name in ("forecast_mean", "forecast_spread", "analysis_mean", "analysis_spread"):
            ds[name][index] = getattr(record, name)
        if "analysis" in ds.variables:
            ds["analysis"][index] = record.analysis
        if "forecast" in ds.variables:
            ds["forecast"][index] = record.forecast
        for name, value in record.scalars.items():
            if name in ds.variables:
                ds[name][index] = value
        for name, value in diagnostics.items():
            ds[f"diag_{name}"][index] = value
        ds.sync()
        ds["cycle_complete"][index] = 1
        ds.sync()

    def close(self) -> None:
        """Close the file (everything written is already synced)."""
        if self._ds.isopen():
            self._ds.close()

    def __enter__(self) -> "RunFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _attr(value: Any) -> Any:
    """netCDF-3 attributes hold text or numbers only."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, np.integer)) and not -(2**31) <= value < 2**31:
        return str(value)  # netCDF-3 has no 64-bit integer attributes: keep every digit, as text
    if isinstance(value, (int, float, np.integer, np.floating)):
        return value
    return str(value)


def open_run(path: str | Path, **kwargs: Any) -> xr.Dataset:
    """Open a run file with xarray, keeping only complete cycles and dropping the restart area."""
    ds = xr.open_dataset(path, **kwargs)
    ds = ds.drop_vars([v for v in ("restart_analysis", "restart_truth", "restart_cycle") if v in ds.variables])
    if ds.sizes.get("time", 0):
        ds = ds.isel(time=(ds["cycle_complete"] == 1).values)
    return ds
from enff.runset import open_runs  # noqa: E305,E402,F401  many run files as one Dataset (enff.runset)
