"""PNG figures of a run file, the ones a data-assimilation scientist looks at first.

* ``<stem>_scores.png``: analysis and forecast RMSE and spread over time;
* ``<stem>_diagnostics.png`` (filters that write ``diag_*``): each diagnostic over time, the ensemble size
  drawn beside the counts (effective sample sizes, distinct members);
* 1-D states: ``<stem>_hovmoller.png``, truth, analysis mean, error and spread over the last ``window``
  cycles, and ``<stem>_snapshots.png``, the state at several times with the analysis mean +- spread;
  states of fewer than :data:`FEW` values (Lorenz-63): ``<stem>_timeseries.png`` instead, one panel per value;
* 2-D states: ``<stem>_snapshots.png`` (``<stem>_snapshots_<field>.png`` for each field of a multi-field
  state), rows of times, columns truth, analysis mean, error and spread on the model's physical axes;
* ``<stem>_rank_histogram.png``.

Errors are drawn on colour scales centred on zero; observed points are marked (ticks along a 1-D
state, dots on a 2-D field, a note when every point is observed); the burn-in that ``enff score`` leaves
out (:func:`enff.summary.default_burn_in` unless given) is shaded on every time axis.
Figures are :class:`matplotlib.figure.Figure` objects saved directly: no pyplot state, no backend switch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from enff.runfile import open_run
from enff.summary import resolve_burn_in

__all__ = ["FEW", "WINDOW", "plot_run"]

#: States with fewer values than this are drawn as time series rather than as a Hovmoller diagram.
FEW = 10
#: Default number of cycles at the end of the run in the Hovmoller diagram and time series (``enff plot
#: --window``): a few hundred cycles stay readable, a whole run of thousands is a band.
WINDOW = 300
#: Largest number of grid points drawn along one axis (larger states are drawn at a stride).
_MAX_POINTS = 2048
#: Diagnostics that count members: drawn beside the ensemble size.
_COUNTS = ("ess", "distinct_members", "local_ess_mean", "local_ess_min")
_DPI = 90


def _label(da: xr.DataArray) -> str:
    return str(da.attrs.get("long_name", da.name))


def _shade_burn_in(ax: Axes, t: np.ndarray, burn_in: int, shown: np.ndarray | None = None, *,
                   vertical: bool = True) -> None:
    """Grey the first ``burn_in`` cycles of the run's times ``t`` where they overlap the times ``shown``
    (default: all of ``t``)."""
    shown = t if shown is None else shown
    if burn_in <= 0 or burn_in >= t.size or t[burn_in - 1] < shown[0]:
        return
    span, line = (ax.axvspan, ax.axvline) if vertical else (ax.axhspan, ax.axhline)
    if vertical:  # behind the curves
        span(shown[0], t[burn_in - 1], color="0.85", zorder=0, label=f"burn-in ({burn_in} cycles)")
    else:  # over a map: washed out, its end drawn
        span(shown[0], t[burn_in - 1], color="w", alpha=0.55, lw=0, zorder=3)
        line(t[burn_in - 1], color="k", lw=0.8, ls="--", zorder=4)


def _save(fig: Figure, path: Path, written: list[Path]) -> None:
    fig.savefig(path, dpi=_DPI)
    written.append(path)


def _scores(ds: xr.Dataset, t: np.ndarray, burn_in: int, title: str) -> Figure:
    fig = Figure(figsize=(8, 3.6), layout="constrained")
    ax = fig.subplots()
    for name, style, colour in (("rmse_analysis", "-", "C0"), ("spread_analysis", "--", "C0"),
                                ("rmse_forecast", "-", "C1"), ("spread_forecast", "--", "C1")):
        if name in ds:
            ax.plot(t, ds[name].values, style, color=colour, lw=0.9, label=name.replace("_", " "))
    _shade_burn_in(ax, t, burn_in)
    ax.set_xlabel("model time")
    ax.set_ylabel(f"RMSE, spread ({ds['rmse_analysis'].attrs.get('units', '1')})")
    ax.set_yscale("log")
    ax.legend(ncols=3, fontsize="small")
    ax.set_title(f"{title}: RMSE and spread")
    return fig


def _diagnostics(ds: xr.Dataset, names: list[str], t: np.ndarray, burn_in: int, title: str) -> Figure:
    fig = Figure(figsize=(8, 1.9 * len(names) + 0.6), layout="constrained")
    axes = fig.subplots(len(names), 1, sharex=True, squeeze=False)[:, 0]
    members = ds.sizes.get("member")
    for ax, name in zip(axes, names):
        ax.plot(t, ds[name].values, lw=0.9)
        short = name.removeprefix("diag_")
        if short in _COUNTS and members:
            ax.axhline(members, color="k", lw=0.8, ls="--", label=f"N = {members}")
            ax.set_ylim(0, members * 1.05)
            ax.legend(loc="lower right", fontsize="small")
        elif short == "max_weight" and members:
            ax.axhline(1 / members, color="k", lw=0.8, ls="--", label="1/N (equal weights)")
            ax.set_ylim(0, 1.02)
            ax.legend(loc="upper right", fontsize="small")
        _shade_burn_in(ax, t, burn_in)
        ax.set_ylabel(short.replace("_", " "))
    axes[-1].set_xlabel("model time")
    axes[0].set_title(f"{title}: filter diagnostics")
    return fig


def _observed(ds: xr.Dataset, state_shape: tuple[int, ...]) -> tuple[np.ndarray, ...] | None:
    """Grid indices ``(per state dim)`` of the observed points, or ``None`` (no ``obs_index``)."""
    if "obs_index" not in ds.coords and "obs_index" not in ds:
        return None
    flat = np.asarray(ds["obs_index"].values, dtype=np.int64)
    return np.unravel_index(flat, state_shape)


def _stride(n: int) -> int:
    return max(1, -(-n // _MAX_POINTS))


def _error_limits(error: np.ndarray) -> tuple[float, float]:
    """Colour limits centred on zero."""
    top = float(np.nanmax(np.abs(error))) if error.size else 0.0
    top = top if top > 0 and np.isfinite(top) else 1.0
    return -top, top


def _hovmoller(ds: xr.Dataset, dim: str, window: slice, burn_in: int, has_truth: bool,
               observed: tuple[np.ndarray, ...] | None, title: str) -> Figure:
    step = _stride(ds.sizes[dim])
    part = ds.isel({"time": window, dim: slice(None, None, step)})
    t, x = part["time"].values, part[dim].values
    mean = part["analysis_mean"].values
    panels: list[tuple[str, np.ndarray, str, tuple[float, float] | None]] = []
    if has_truth:
        truth = part["truth"].values
        low, high = float(np.nanmin([truth.min(), mean.min()])), float(np.nanmax([truth.max(), mean.max()]))
        panels += [("truth", truth, "viridis", (low, high)), ("analysis mean", mean, "viridis", (low, high)),
                   ("error (mean - truth)", mean - truth, "RdBu_r", _error_limits(mean - truth))]
    else:
        panels.append(("analysis mean", mean, "viridis", None))
    spread = part["analysis_spread"].values
    panels.append(("analysis spread", spread, "magma", (0.0, float(np.nanmax(spread)) or 1.0)))
    fig = Figure(figsize=(3.4 * len(panels), 4.6), layout="constrained")
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for ax, (name, values, cmap, limits) in zip(axes, panels):
        vmin, vmax = limits if limits else (None, None)
        mesh = ax.pcolormesh(x, t, values, shading="nearest", cmap=cmap, vmin=vmin, vmax=vmax, rasterized=True)
        fig.colorbar(mesh, ax=ax, orientation="horizontal", pad=0.02, aspect=30)
        ax.set_title(name, fontsize="medium")
        ax.set_xlabel(_label(ds[dim]))
        if observed is not None and observed[0].size < ds.sizes[dim]:
            ax.plot(ds[dim].values[observed[0]], np.full(observed[0].size, t[-1]), "|", color="k",
                    ms=6, clip_on=False, label="observed")
        _shade_burn_in(ax, ds["time"].values, burn_in, t, vertical=False)
    axes[0].set_ylabel("model time")
    where = "every point observed" if observed is not None and observed[0].size >= ds.sizes[dim] else \
        "ticks: observed points" if observed is not None else ""
    if burn_in and ds["time"].values[min(burn_in, ds.sizes["time"]) - 1] >= t[0]:
        where += ("; " if where else "") + f"washed out: burn-in ({burn_in} cycles)"
    fig.suptitle(f"{title}: last {t.size} cycles" + (f" ({where})" if where else ""))
    return fig


def _snapshot_indices(n: int, burn_in: int, count: int) -> list[int]:
    """``count`` cycle indices spread from the end of the burn-in to the last cycle (distinct, sorted)."""
    first = min(burn_in, n - 1)
    return sorted({int(round(v)) for v in np.linspace(first, n - 1, count)})


def _line_snapshots(ds: xr.Dataset, dim: str, indices: list[int], has_truth: bool,
                    observed: tuple[np.ndarray, ...] | None, title: str) -> Figure:
    step = _stride(ds.sizes[dim])
    fig = Figure(figsize=(8, 2.2 * len(indices) + 0.6), layout="constrained")
    axes = fig.subplots(len(indices), 1, sharex=True, squeeze=False)[:, 0]
    x = ds[dim].values[::step]
    for ax, k in zip(axes, indices):
        one = ds.isel(time=k, **{dim: slice(None, None, step)})
        mean, spread = one["analysis_mean"].values, one["analysis_spread"].values
        ax.fill_between(x, mean - spread, mean + spread, color="C0", alpha=0.25, lw=0, label="mean +- spread")
        ax.plot(x, mean, color="C0", lw=1, label="analysis mean")
        if has_truth:
            ax.plot(x, one["truth"].values, color="k", lw=1, ls="--", label="truth")
        if observed is not None and observed[0].size < ds.sizes[dim]:
            ax.plot(ds[dim].values[observed[0]], np.full(observed[0].size, ax.get_ylim()[0]), "|", color="C3",
                    ms=8, label="observed")
        ax.set_ylabel(f"t = {float(one['time']):.4g}")
    axes[0].legend(ncols=4, fontsize="small", loc="upper right")
    axes[-1].set_xlabel(_label(ds[dim]))
    axes[0].set_title(f"{title}: snapshots")
    return fig


def _timeseries(ds: xr.Dataset, dim: str, window: slice, burn_in: int, has_truth: bool, title: str) -> Figure:
    part = ds.isel(time=window)
    t = part["time"].values
    names = ds[dim].values
    fig = Figure(figsize=(8, 2.0 * ds.sizes[dim] + 0.6), layout="constrained")
    axes = fig.subplots(ds.sizes[dim], 1, sharex=True, squeeze=False)[:, 0]
    for j, ax in enumerate(axes):
        mean, spread = part["analysis_mean"].values[:, j], part["analysis_spread"].values[:, j]
        ax.fill_between(t, mean - spread, mean + spread, color="C0", alpha=0.25, lw=0, label="mean +- spread")
        ax.plot(t, mean, color="C0", lw=0.9, label="analysis mean")
        if has_truth:
            ax.plot(t, part["truth"].values[:, j], color="k", lw=0.8, ls="--", label="truth")
        _shade_burn_in(ax, ds["time"].values, burn_in, t)
        ax.set_ylabel(f"{dim} {names[j]:g}" if np.issubdtype(names.dtype, np.number) else f"{dim} {names[j]}")
    axes[0].legend(ncols=4, fontsize="small", loc="upper right")
    axes[-1].set_xlabel("model time")
    axes[0].set_title(f"{title}: last {t.size} cycles")
    return fig


def _field_snapshots(ds: xr.Dataset, dims: tuple[str, str], indices: list[int], has_truth: bool,
                     observed: tuple[np.ndarray, np.ndarray] | None, title: str) -> Figure:
    """Rows of times; columns truth (observed points marked), analysis mean, error, spread on axes ``dims``."""
    ydim, xdim = dims
    sy, sx = _stride(ds.sizes[ydim]), _stride(ds.sizes[xdim])
    part = ds.isel(time=indices, **{ydim: slice(None, None, sy), xdim: slice(None, None, sx)})
    y, x = part[ydim].values, part[xdim].values
    mean, spread = part["analysis_mean"].values, part["analysis_spread"].values
    columns: list[tuple[str, np.ndarray, str, tuple[float, float]]] = []
    if has_truth:
        truth = part["truth"].values
        limits = (float(min(truth.min(), mean.min())), float(max(truth.max(), mean.max())))
        columns += [("truth", truth, "viridis", limits), ("analysis mean", mean, "viridis", limits),
                    ("error (mean - truth)", mean - truth, "RdBu_r", _error_limits(mean - truth))]
    else:
        columns.append(("analysis mean", mean, "viridis", (float(mean.min()), float(mean.max()))))
    columns.append(("analysis spread", spread, "magma", (0.0, float(spread.max()) or 1.0)))
    aspect = (y.max() - y.min() + 1e-12) / (x.max() - x.min() + 1e-12)
    fig = Figure(figsize=(3.3 * len(columns), (3.0 * aspect + 0.5) * len(indices) + 0.8), layout="constrained")
    axes = fig.subplots(len(indices), len(columns), sharex=True, sharey=True, squeeze=False)
    n_points = ds.sizes[ydim] * ds.sizes[xdim]
    for col, (name, values, cmap, (vmin, vmax)) in enumerate(columns):
        for row in range(len(indices)):
            ax = axes[row][col]
            mesh = ax.pcolormesh(x, y, values[row], shading="nearest", cmap=cmap, vmin=vmin, vmax=vmax,
                                 rasterized=True)
            ax.set_aspect("equal")
            if col == 0:
                ax.set_ylabel(f"t = {float(part['time'].values[row]):.4g}\n{_label(ds[ydim])}")
            if row == 0:
                ax.set_title(name, fontsize="medium")
            if row == len(indices) - 1:
                ax.set_xlabel(_label(ds[xdim]))
            if col == 0 and observed is not None and observed[0].size < n_points:
                ax.plot(ds[xdim].values[observed[1]], ds[ydim].values[observed[0]], ".", color="w", ms=2,
                        mec="k", mew=0.3)
        fig.colorbar(mesh, ax=axes[:, col], orientation="horizontal", aspect=30)
    where = ("every point observed" if observed is not None and observed[0].size >= n_points else
             f"dots: {observed[0].size} observed points" if observed is not None else "")
    fig.suptitle(f"{title}" + (f" ({where})" if where else ""))
    return fig


def _rank_histogram(ds: xr.Dataset, title: str) -> Figure:
    counts = ds["rank_counts"].sum("time").values.astype(np.float64)
    fig = Figure(figsize=(6, 3.4), layout="constrained")
    ax = fig.subplots()
    ax.bar(ds["rank"].values, counts / max(counts.sum(), 1.0))
    ax.axhline(1 / counts.size, color="k", lw=0.8, ls="--", label="flat")
    ax.set_xlabel("rank of truth among analysis members")
    ax.set_ylabel("frequency")
    ax.set_title(f"{title}: rank histogram (every cycle and point)")
    ax.legend()
    return fig


def plot_run(path: str | Path, outdir: str | Path | None = None, *, window: int = WINDOW,
             burn_in: int | None = None, snapshots: int = 3) -> list[Path]:
    """Write the figures of run file ``path`` (see the module docstring) into ``outdir`` (default: beside
    the file) and return their paths.

    ``window``: cycles at the end of the run in the Hovmoller diagram and time series (all cycles when
    the run is shorter). ``burn_in``: cycles shaded as burn-in (default
    :func:`enff.summary.default_burn_in`). ``snapshots``: how many times the snapshot figures show,
    spread evenly from the end of the burn-in to the last cycle.
    """
    if window < 1 or snapshots < 1:
        raise ValueError(f"window (cycles in the Hovmoller diagram) and snapshots must be >= 1, got {window} and "
                         f"{snapshots}")
    path = Path(path)
    outdir = Path(outdir) if outdir is not None else path.parent
    ds = open_run(path)
    n = ds.sizes.get("time", 0)
    if n == 0:
        raise ValueError(f"{path}: the run has no complete cycle to plot")
    burn_in = resolve_burn_in(burn_in, n)
    if burn_in < 0:
        raise ValueError(f"burn_in must be >= 0, got {burn_in}")
    outdir.mkdir(parents=True, exist_ok=True)
    stem, title = path.stem, path.stem
    written: list[Path] = []
    t = ds["time"].values
    _save(_scores(ds, t, burn_in, title), outdir / f"{stem}_scores.png", written)
    diagnostics = sorted(str(v) for v in ds.data_vars if str(v).startswith("diag_"))
    if diagnostics:
        _save(_diagnostics(ds, diagnostics, t, burn_in, title), outdir / f"{stem}_diagnostics.png", written)

    dims = tuple(d for d in ds["analysis_mean"].dims if d != "time")
    shape = tuple(ds.sizes[d] for d in dims)
    has_truth = "truth" in ds
    observed = _observed(ds, shape)
    last = slice(max(0, n - window), None)
    indices = _snapshot_indices(n, burn_in, snapshots)
    if len(dims) == 1 and shape[0] < FEW:
        _save(_timeseries(ds, dims[0], last, burn_in, has_truth, title), outdir / f"{stem}_timeseries.png", written)
    elif len(dims) == 1:
        _save(_hovmoller(ds, dims[0], last, burn_in, has_truth, observed, title), outdir / f"{stem}_hovmoller.png",
              written)
        _save(_line_snapshots(ds, dims[0], indices, has_truth, observed, title), outdir / f"{stem}_snapshots.png",
              written)
    else:  # 2-D fields; leading dims (the field of a multi-field state) give one figure per entry
        lead = dims[:-2]
        for entry in np.ndindex(*shape[:-2]):
            one = ds.isel(dict(zip(lead, entry)))
            names = [str(ds[d].values[i]) if d in ds.coords else str(i) for d, i in zip(lead, entry)]
            mask = np.ones(observed[0].size, bool) if observed is not None else None
            if observed is not None:
                for axis, i in enumerate(entry):
                    mask &= observed[axis] == i
            here = (observed[-2][mask], observed[-1][mask]) if observed is not None else None
            suffix = "".join(f"_{name}" for name in names)
            _save(_field_snapshots(one, dims[-2:], indices, has_truth, here, f"{title} {' '.join(names)}".strip()),
                  outdir / f"{stem}_snapshots{suffix}.png", written)
    if "rank_counts" in ds:
        _save(_rank_histogram(ds, title), outdir / f"{stem}_rank_histogram.png", written)
    return written
