"""Time-averaged scores of a run file (what ``enff score`` prints)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from enff.runfile import open_run

__all__ = ["summarize", "format_table"]


def summarize(path: str | Path | xr.Dataset, burn_in: int = 0) -> dict[str, float | int]:
    """Average the per-cycle scores of a run after discarding the first ``burn_in`` cycles.

    Returns a dict with ``rmse``, ``spread``, ``crps``, ``spread_rmse_ratio``, ``analysis_seconds``,
    ``cycles`` (analysis values; ``cycles`` counts the averaged cycles) followed by ``rmse_forecast``,
    ``spread_forecast``, ``crps_forecast``, ``energy_score`` and the mean of every filter diagnostic.
    """
    ds = path if isinstance(path, xr.Dataset) else open_run(path)
    if burn_in < 0:
        raise ValueError(f"burn_in must be >= 0, got {burn_in}")
    n = ds.sizes.get("time", 0)
    if n <= burn_in:
        raise ValueError(f"the run has {n} complete cycles, not more than burn_in={burn_in}")
    ds = ds.isel(time=slice(burn_in, None))

    def mean(name: str) -> float:
        return float(ds[name].mean()) if name in ds else float("nan")

    rmse, spread = mean("rmse_analysis"), mean("spread_analysis")
    result: dict[str, float | int] = {
        "rmse": rmse,
        "spread": spread,
        "crps": mean("crps_analysis"),
        "spread_rmse_ratio": spread / rmse if rmse > 0 else float("nan"),
        "analysis_seconds": mean("analysis_seconds"),
        "cycles": int(ds.sizes["time"]),
        "rmse_forecast": mean("rmse_forecast"),
        "spread_forecast": mean("spread_forecast"),
        "crps_forecast": mean("crps_forecast"),
        "energy_score": mean("energy_score_analysis"),
    }
    for name in sorted(v for v in ds.data_vars if str(v).startswith("diag_")):
        result[str(name)[5:]] = float(ds[name].mean())
    return result


def format_table(result: dict[str, float | int]) -> str:
    """A two-column text table of :func:`summarize`'s result."""
    width = max(len(k) for k in result)
    lines = []
    for key, value in result.items():
        text = str(value) if isinstance(value, int) else (f"{value:.6g}" if np.isfinite(value) else "nan")
        lines.append(f"{key:<{width}}  {text}")
    return "\n".join(lines)
