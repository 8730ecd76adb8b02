"""Figures of a comparison (:func:`enff.compare.compare`): RMSE over time, scores with error bars,
spread against RMSE. Drawn on explicit :class:`~matplotlib.figure.Figure` objects: the process's
matplotlib backend is left alone."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

__all__ = ["plot_comparison"]


def _label(ds: xr.Dataset, i: int) -> str:
    overrides = str(ds["overrides"].values[i])
    mark = " *" if bool(ds["best"].values[i]) else ""
    return f"{ds['filter'].values[i]} {overrides}".strip() + mark


def _rmse_over_time(ds: xr.Dataset, path: Path) -> None:
    cases = list(dict.fromkeys(str(c) for c in ds["case"].values))
    fig = Figure(figsize=(9, 3.2 * len(cases)))
    axes = fig.subplots(len(cases), 1, squeeze=False)
    series = ds["rmse_analysis"].values  # (configuration, seed, time)
    time = ds["time"].values
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: seeds that stopped early
        median = np.nanmedian(series, axis=1)
        low, high = np.nanmin(series, axis=1), np.nanmax(series, axis=1)
    for ax, case in zip(axes[:, 0], cases):
        for i in np.flatnonzero(ds["case"].values == case):
            (line,) = ax.plot(time, median[i], lw=1, label=_label(ds, i))
            ax.fill_between(time, low[i], high[i], color=line.get_color(), alpha=0.2, lw=0)
        ax.set_yscale("log")
        ax.set_title(f"{case}: analysis RMSE, median and range over seeds")
        ax.set_xlabel("model time")
        ax.set_ylabel("RMSE")
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _scores(ds: xr.Dataset, path: Path) -> None:
    names = ("rmse", "spread", "crps", "spread_rmse_ratio")
    n = ds.sizes["configuration"]
    fig = Figure(figsize=(3.2 * len(names) + 3, 0.3 * n + 1.5))
    axes = fig.subplots(1, len(names), sharey=True)
    rows = np.arange(n)
    for ax, name in zip(axes, names):
        ax.errorbar(ds[f"{name}_mean"].values, rows, xerr=np.nan_to_num(ds[f"{name}_se"].values), fmt="o", ms=3)
        ax.set_title(f"{name} (mean ± se over seeds)", fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1].axvline(1.0, color="k", lw=0.5)
    axes[0].set_yticks(rows, [f"{ds['case'].values[i]} {_label(ds, i)}" for i in range(n)], fontsize=6)
    axes[0].invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _spread_against_rmse(ds: xr.Dataset, path: Path) -> None:
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    for name in dict.fromkeys(str(f) for f in ds["filter"].values):
        rows = ds["filter"].values == name
        ax.scatter(ds["rmse"].values[rows].ravel(), ds["spread"].values[rows].ravel(), s=12, label=name)
    values = np.concatenate([ds["rmse"].values.ravel(), ds["spread"].values.ravel()])
    values = values[np.isfinite(values) & (values > 0)]
    if values.size:
        lo, hi = values.min() / 1.2, values.max() * 1.2
        ax.plot([lo, hi], [lo, hi], "k", lw=0.5)
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel("RMSE (each run)")
    ax.set_ylabel("spread")
    ax.set_title("spread against RMSE")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_comparison(ds: xr.Dataset, outdir: str | Path) -> list[Path]:
    """Write ``rmse_time.png``, ``scores.png`` and ``spread_rmse.png`` into ``outdir``; returns the paths."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = [outdir / "rmse_time.png", outdir / "scores.png", outdir / "spread_rmse.png"]
    for draw, path in zip((_rmse_over_time, _scores, _spread_against_rmse), paths):
        draw(ds, path)
    return paths
