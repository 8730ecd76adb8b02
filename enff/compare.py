"""Compare runs: group them by configuration (everything but the seed), average over seeds, pick the best.

:func:`compare` opens the run files lazily (:func:`enff.runset.open_runs`), scores every complete run
with :func:`enff.summary.summarize` (so its numbers equal ``enff score`` on each file with the same
burn-in) and returns a Dataset with dims ``configuration`` x ``seed``. :func:`records` turns it into
the rows ``enff compare --json`` prints.
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import xarray as xr

from enff.runset import open_runs
from enff.summary import summarize

__all__ = ["SCORES", "compare", "find_run_files", "format_comparison", "records", "write_csv", "write_netcdf"]

#: The averaged scores: the first keys of ``enff score``.
SCORES = ("rmse", "spread", "crps", "energy_score", "spread_rmse_ratio", "analysis_seconds")
#: Per-cycle series kept for the figures: (configuration, seed, time).
SERIES = ("rmse_analysis", "spread_analysis")
_COUNTS = ("diverged", "failed", "incomplete")
#: The ``burn_in`` attribute of a comparison made with the default burn-in.
DEFAULT_BURN_IN_NOTE = "cycles // 10 of each run (enff.summary.default_burn_in)"


def find_run_files(paths: Iterable[str | Path]) -> list[Path]:
    """Run files named directly, and the ``*.nc`` files directly inside named folders (sorted; hidden
    names, such as files still being prepared, left out)."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files.extend(sorted(p for p in path.glob("*.nc") if not p.name.startswith(".")))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such run file or folder")
    if not files:
        raise FileNotFoundError(f"no run files (*.nc) in {', '.join(map(str, paths))}")
    return files


def _run_scores(runs: xr.Dataset, burn_in: int | None) -> np.ndarray:
    """``enff score`` of every complete run, ``(run, score)``; NaN for runs that are not complete.
    ``burn_in=None``: each run's :func:`enff.summary.default_burn_in`."""
    names = [v for v in runs.data_vars if runs[v].dims == ("run", "time") and not str(v).startswith("diag_")]
    table = runs[names].load()  # the per-cycle scores only (filter diagnostics are not compared)
    values = np.full((runs.sizes["run"], len(SCORES)), np.nan)
    for i in range(runs.sizes["run"]):
        if str(runs["status"].values[i]) != "complete":
            continue
        one = table.isel(run=i)
        one = one.isel(time=(one["cycle_complete"] == 1).values)
        try:
            result = summarize(one, burn_in=burn_in)
        except ValueError as err:
            raise ValueError(f"{runs['path'].values[i]}: {err}") from None
        values[i] = [result[name] for name in SCORES]
    return values


def _mean_and_se(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error over the last axis, ignoring NaN (SE is NaN below two values)."""
    n = np.sum(np.isfinite(values), axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        total = np.nansum(values, axis=-1)
        mean = np.where(n > 0, total / np.maximum(n, 1), np.nan)
        deviation = np.nansum((values - mean[..., None]) ** 2, axis=-1)
        se = np.where(n > 1, np.sqrt(deviation / np.maximum(n - 1, 1) / np.maximum(n, 1)), np.nan)
    return mean, se


def compare(paths: Iterable[str | Path], burn_in: int | None = None) -> xr.Dataset:
    """Group the runs in ``paths`` (files or folders) by configuration and average their scores over seeds.

    Parameters
    ----------
    paths:
        Run files, or folders whose ``*.nc`` files are runs.
    burn_in:
        Cycles left out at the start of every run, as ``enff score --burn-in``; ``None`` (the default)
        leaves out each run's :func:`enff.summary.default_burn_in` (the first tenth of its complete cycles),
        as ``enff score`` does.

    Returns
    -------
    xarray.Dataset
        Dims ``configuration`` (sorted by case, filter, then mean RMSE) and ``seed`` (every seed
        seen), and ``time`` for the series. Along ``configuration``: coordinates ``case``,
        ``filter``, ``overrides`` (``"key=value ..."``) and one per override key (see
        :func:`enff.runset.open_runs`); ``runs`` (how many seeds), ``scored`` (complete runs),
        ``diverged``, ``failed``, ``incomplete``; for each score in :data:`SCORES` the per-run value
        ``<score>(configuration, seed)`` (NaN where a run is missing or not complete), its mean
        over the complete runs ``<score>_mean`` and standard error ``<score>_se``; ``best``: the
        lowest mean RMSE of each (case, filter) among configurations with no diverged or failed run.
        Per run: ``status`` and ``path`` (empty text where a configuration lacks a seed) and the
        series ``rmse_analysis`` / ``spread_analysis`` ``(configuration, seed, time)``.
    """
    if burn_in is not None and burn_in < 0:
        raise ValueError(f"burn_in must be >= 0, got {burn_in}")
    runs = open_runs(find_run_files(paths))
    scores = _run_scores(runs, burn_in)
    keys = [(str(c), str(f), str(o)) for c, f, o in
            zip(runs["case"].values, runs["filter"].values, runs["overrides"].values)]
    configs = list(dict.fromkeys(keys))
    seeds = sorted({int(s) for s in runs["seed"].values})
    slot: dict[tuple[tuple[str, str, str], int], int] = {}
    for i, key in enumerate(keys):
        seed = int(runs["seed"].values[i])
        if (key, seed) in slot:
            raise ValueError(f"{runs['path'].values[slot[key, seed]]} and {runs['path'].values[i]} are two runs of "
                             f"one configuration with the same seed {seed}; compare one of them")
        slot[key, seed] = i
    index = np.array([[slot.get((cfg, seed), -1) for seed in seeds] for cfg in configs])  # (config, seed)
    present = index >= 0

    def per_run(values: np.ndarray, missing: Any) -> np.ndarray:
        out = values[np.maximum(index, 0)]
        out[~present] = missing
        return out

    status = per_run(runs["status"].values.astype(str), "")
    data: dict[str, Any] = {}
    for k, name in enumerate(SCORES):
        grid = per_run(scores[:, k], np.nan)
        mean, se = _mean_and_se(grid)
        data[name] = (("configuration", "seed"), grid)
        data[f"{name}_mean"] = ("configuration", mean)
        data[f"{name}_se"] = ("configuration", se)
    data["runs"] = ("configuration", present.sum(1))
    data["scored"] = ("configuration", (status == "complete").sum(1))
    for count in _COUNTS:
        data[count] = ("configuration", (status == count).sum(1))
    data["status"] = (("configuration", "seed"), status)
    data["path"] = (("configuration", "seed"), per_run(runs["path"].values.astype(str), ""))
    series = runs[[v for v in SERIES if v in runs]].load()
    for name in series.data_vars:
        values = series[name].values[np.maximum(index, 0)]
        values[~present] = np.nan
        data[name] = (("configuration", "seed", "time"), values)
    first = index.max(axis=1)  # one run of each configuration, for its coordinates
    override_names = _override_names(runs)
    coords: dict[str, Any] = {"seed": seeds, "time": runs["time"].values}
    for name in ("case", "filter", "overrides", *override_names):
        coords[name] = ("configuration", runs[name].values[first])
    ds = xr.Dataset(data, coords=coords)
    ds = ds.assign(best=("configuration", _best(ds)))
    order = sorted(range(len(configs)), key=lambda i: (configs[i][0], configs[i][1],
                                                       _sort_value(float(ds["rmse_mean"].values[i]))))
    ds = ds.isel(configuration=order)
    ds.attrs = {"title": "enff comparison of runs", "burn_in": DEFAULT_BURN_IN_NOTE if burn_in is None else burn_in,
                "scores": "means over seeds of each complete run's `enff score` values"}
    return ds


def _override_names(ds: xr.Dataset) -> list[str]:
    """The override-key coordinates: case keys are dotted (``filter.radius``), run variables never are."""
    return [str(c) for c in ds.coords if "." in str(c)]


def _sort_value(value: float) -> float:
    return math.inf if math.isnan(value) else value


def _best(ds: xr.Dataset) -> np.ndarray:
    """The lowest mean RMSE of each (case, filter) among configurations without diverged or failed runs."""
    best = np.zeros(ds.sizes["configuration"], dtype=bool)
    eligible = (ds["diverged"].values == 0) & (ds["failed"].values == 0) & np.isfinite(ds["rmse_mean"].values)
    groups = list(zip(ds["case"].values, ds["filter"].values))
    for group in set(groups):
        members = [i for i, g in enumerate(groups) if g == group and eligible[i]]
        if members:
            best[min(members, key=lambda i: ds["rmse_mean"].values[i])] = True
    return best


def _number(value: Any) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def _override_value(coordinate: xr.DataArray, i: int) -> tuple[bool, Any]:
    """Whether configuration ``i`` has the override key, and its value as the case file has it."""
    value = coordinate.values[i]
    if coordinate.dtype.kind in "iu":
        return True, int(value)
    if coordinate.dtype.kind == "f":
        return not math.isnan(value), float(value)
    return str(value) != "", tomllib.loads(f"v = {value}")["v"] if str(value) else None


def records(ds: xr.Dataset) -> list[dict[str, Any]]:
    """One dict per configuration (the ``enff compare --json`` rows): ``case``, ``filter``,
    ``overrides`` (override key -> value), ``seeds`` (runs), ``diverged``, ``failed``, ``incomplete``,
    ``best``, then each score's mean over the complete runs under its name and its standard error as
    ``<score>_se`` (``None`` for NaN)."""
    keys = _override_names(ds)
    rows = []
    for i in range(ds.sizes["configuration"]):
        overrides = {}
        for key in keys:
            has, value = _override_value(ds[key], i)
            if has:
                overrides[key] = value
        row: dict[str, Any] = {
            "case": str(ds["case"].values[i]),
            "filter": str(ds["filter"].values[i]),
            "overrides": overrides,
            "seeds": int(ds["runs"].values[i]),
            **{count: int(ds[count].values[i]) for count in _COUNTS},
            "best": bool(ds["best"].values[i]),
        }
        for name in SCORES:
            row[name] = _number(ds[f"{name}_mean"].values[i])
            row[f"{name}_se"] = _number(ds[f"{name}_se"].values[i])
        rows.append(row)
    return rows


def format_comparison(ds: xr.Dataset) -> str:
    """A text table, one line per configuration; ``*`` marks the best of each (case, filter)."""
    head = ["", "case", "filter", "overrides", "seeds", "diverged", "rmse", "± se", "spread", "crps",
            "spread/rmse", "s/analysis"]
    lines = [head]
    for row in records(ds):
        def num(value: float | None) -> str:
            return "nan" if value is None else f"{value:.4g}"

        over = " ".join(f"{k}={v}" for k, v in row["overrides"].items()) or "-"
        seeds = str(row["seeds"]) + (f" ({row['incomplete']} incomplete)" if row["incomplete"] else "")
        lines.append(["*" if row["best"] else "", row["case"], row["filter"], over, seeds,
                      str(row["diverged"] + row["failed"]), num(row["rmse"]), num(row["rmse_se"]),
                      num(row["spread"]), num(row["crps"]), num(row["spread_rmse_ratio"]),
                      num(row["analysis_seconds"])])
    widths = [max(len(line[c]) for line in lines) for c in range(len(head))]
    text = ["  ".join(cell.ljust(w) if c < 4 else cell.rjust(w) for c, (cell, w) in enumerate(zip(line, widths)))
            for line in lines]
    return "\n".join(text + ["* best mean RMSE of its case and filter (no diverged or failed run); "
                             "diverged counts failed runs too; the scores leave incomplete runs out"])


def write_csv(ds: xr.Dataset, path: str | Path) -> None:
    """The :func:`records` rows as CSV, one column per override key."""
    import pandas as pd

    rows = [{**{k: v for k, v in row.items() if k != "overrides"}, **row["overrides"]} for row in records(ds)]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)


def write_netcdf(ds: xr.Dataset, path: str | Path) -> None:
    """The comparison Dataset as netCDF (``best`` stored as 0/1)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    ds.assign(best=ds["best"].astype("i1")).to_netcdf(path)
