"""Time-averaged scores of a run file (what ``enff score`` prints)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from enff.runfile import open_run
from enff.scores import SCORES
from enff.tracking import WINDOW, describe

__all__ = ["default_burn_in", "format_table", "lost_track", "lost_track_warning", "resolve_burn_in", "summarize"]


def lost_track(ds: xr.Dataset) -> tuple[int, int] | None:
    """First cycle (1-based) whose ``lost_track`` flag is set, with its flag bits; ``None`` when the filter
    never lost track or the file has no flag (real observations, files written before the flag)."""
    if "lost_track" not in ds or not ds.sizes.get("time", 0):
        return None
    flags = ds["lost_track"].values.astype(int)
    flagged = np.flatnonzero(flags)
    return None if flagged.size == 0 else (int(flagged[0]) + 1, int(flags[flagged[0]]))


def lost_track_warning(path: str | Path, ds: xr.Dataset | None = None) -> str | None:
    """The warning ``enff run`` and ``enff score`` print when the run in ``path`` lost track, else ``None``."""
    found = lost_track(open_run(path) if ds is None else ds)
    if found is None:
        return None
    cycle, flags = found
    return (f"enff: warning: {path}: the filter lost track at cycle {cycle}: {describe(flags)}, "
            f"in each of the {WINDOW} cycles up to it")


def default_burn_in(cycles: int) -> int:
    """The burn-in of ``enff run``, ``enff score`` and :func:`summarize` when none is given: the first tenth
    of a run's ``cycles`` complete cycles, rounded down (0 below 10 cycles). Counted in cycles."""
    return cycles // 10


def resolve_burn_in(burn_in: int | None, cycles: int) -> int:
    """``burn_in`` (cycles), or :func:`default_burn_in` of a run with ``cycles`` complete cycles when it is ``None``."""
    return default_burn_in(cycles) if burn_in is None else burn_in


def summarize(path: str | Path | xr.Dataset, burn_in: int | None = None) -> dict[str, float | int | None]:
    """Average the per-cycle scores of a run after discarding the first ``burn_in`` cycles
    (``None``: :func:`default_burn_in` of the run's complete cycles).

    Returns a dict with the headline scores of :data:`enff.scores.SCORES` (``rmse``, ``spread``, ``crps``:
    analysis values), ``spread_rmse_ratio``, ``analysis_seconds``, ``cycles`` (the averaged cycles), the
    other scores (``rmse_forecast``, ``spread_forecast``, ``crps_forecast``, ``energy_score``; NaN when
    the run has no truth), the mean of every filter diagnostic and
    ``lost_track``: the first cycle of the whole run (burn-in included) at which the filter was flagged as
    having lost track (:mod:`enff.tracking`), or ``None``.
    """
    ds = path if isinstance(path, xr.Dataset) else open_run(path)
    first_lost = lost_track(ds)
    n = ds.sizes.get("time", 0)
    burn_in = resolve_burn_in(burn_in, n)
    if burn_in < 0:
        raise ValueError(f"burn_in must be >= 0, got {burn_in}")
    if n <= burn_in:
        raise ValueError(f"the run has {n} complete cycles, not more than burn_in={burn_in}")
    ds = ds.isel(time=slice(burn_in, None))

    def mean(name: str) -> float:
        return float(ds[name].mean()) if name in ds else float("nan")

    result: dict[str, float | int] = {score.summary: mean(score.name) for score in SCORES if score.headline}
    rmse, spread = result["rmse"], result["spread"]
    result["spread_rmse_ratio"] = spread / rmse if rmse > 0 else float("nan")
    result.update({"analysis_seconds": mean("analysis_seconds"), "cycles": int(ds.sizes["time"])})
    result.update({score.summary: mean(score.name) for score in SCORES if not score.headline})
    for name in sorted(v for v in ds.data_vars if str(v).startswith("diag_")):
        result[str(name)[5:]] = float(ds[name].mean())
    result["lost_track"] = None if first_lost is None else first_lost[0]
    return result


def format_table(result: dict[str, float | int | None]) -> str:
    """A two-column text table of :func:`summarize`'s result (``None`` reads ``none``)."""
    width = max(len(k) for k in result)
    lines = []
    for key, value in result.items():
        if value is None or isinstance(value, int):
            text = "none" if value is None else str(value)
        else:
            text = f"{value:.6g}" if np.isfinite(value) else "nan"
        lines.append(f"{key:<{width}}  {text}")
    return "\n".join(lines)
