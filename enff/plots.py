"""PNG figures of a run file: scores over time, Hovmoller or snapshots, rank histogram."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from enff.runfile import open_run

__all__ = ["plot_run"]


def _state_dims(ds: xr.Dataset) -> tuple[str, ...]:
    return tuple(d for d in ds["analysis_mean"].dims if d != "time")


def _panels(ds: xr.Dataset, has_truth: bool) -> list[tuple[str, xr.DataArray]]:
    """Titled fields to draw: truth (when known), analysis mean and their difference."""
    panels = [("truth", ds["truth"])] if has_truth else []
    panels.append(("analysis mean", ds["analysis_mean"]))
    if has_truth:
        panels.append(("error", ds["analysis_mean"] - ds["truth"]))
    return panels


def plot_run(path: str | Path, outdir: str | Path | None = None) -> list[Path]:
    """Write the figures of run file ``path`` into ``outdir`` (default: beside the file).

    Returns the paths written: ``<stem>_scores.png``, ``<stem>_hovmoller.png`` (1-D states) or
    ``<stem>_snapshots.png`` (2-D states; one row per field of a multi-field state), and ``<stem>_rank_histogram.png``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    outdir = Path(outdir) if outdir is not None else path.parent
    ds = open_run(path)
    if ds.sizes.get("time", 0) == 0:
        raise ValueError(f"{path}: the run has no complete cycle to plot")
    outdir.mkdir(parents=True, exist_ok=True)
    stem = path.stem
    written: list[Path] = []
    t = ds["time"].values

    fig, ax = plt.subplots(figsize=(8, 3.5))
    for name, style in (("rmse_analysis", "-"), ("spread_analysis", "--"), ("rmse_forecast", ":")):
        if name in ds:
            ax.plot(t, ds[name].values, style, label=name.replace("_", " "))
    ax.set_xlabel("model time")
    ax.set_ylabel("state units")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title(f"{stem}: RMSE and spread")
    fig.tight_layout()
    written.append(outdir / f"{stem}_scores.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    dims = _state_dims(ds)
    has_truth = "truth" in ds
    if len(dims) == 1:
        panels = _panels(ds, has_truth)
        fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), sharey=True, squeeze=False)
        x = ds[dims[0]].values
        for ax, (title, da) in zip(axes[0], panels):
            cmap = "RdBu_r" if title == "error" else "viridis"
            mesh = ax.pcolormesh(x, t, da.values, shading="auto", cmap=cmap)
            fig.colorbar(mesh, ax=ax)
            ax.set_title(title)
            ax.set_xlabel(dims[0])
        axes[0][0].set_ylabel("model time")
        name = "hovmoller"
    else:  # 2-D fields; a leading axis (e.g. the field of a multi-field state) gives one row per entry
        last = ds.isel(time=-1)
        panels = _panels(last, has_truth)
        rows = int(np.prod([ds.sizes[d] for d in dims[:-2]]))
        fig, axes = plt.subplots(rows, len(panels), figsize=(4 * len(panels), 3.6 * rows), squeeze=False)
        for col, (title, da) in enumerate(panels):
            images = da.values.reshape(rows, *da.shape[-2:])
            for row in range(rows):
                ax = axes[row][col]
                im = ax.imshow(images[row], origin="lower", cmap="RdBu_r" if title == "error" else "viridis")
                fig.colorbar(im, ax=ax)
                where = f"{', '.join(dims[:-2])} {row}, " if rows > 1 else ""
                ax.set_title(f"{title} ({where}t = {float(last['time']):.3g})")
        name = "snapshots"
    fig.tight_layout()
    written.append(outdir / f"{stem}_{name}.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    if "rank_counts" in ds:
        counts = ds["rank_counts"].sum("time").values.astype(np.float64)
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.bar(ds["rank"].values, counts / counts.sum())
        ax.axhline(1 / counts.size, color="k", lw=0.8, ls="--", label="flat")
        ax.set_xlabel("rank of truth among analysis members")
        ax.set_ylabel("frequency")
        ax.legend()
        fig.tight_layout()
        written.append(outdir / f"{stem}_rank_histogram.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written
