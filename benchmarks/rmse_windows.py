"""Analysis RMSE of finished runs over windows of cycles: spin-up against steady state.

``enff score --burn-in B`` averages cycles ``B+1 ..`` to the end; a filter that converges slowly from its initial
ensemble can lose on that mean and still win once both have converged. This script reads the run files of
one folder (``enff.compare``, so the same runs and seeds as ``sweep_table.py``) and averages each run's
``rmse_analysis`` over each window ``START:STOP`` of cycle indices (cycles ``START+1 .. STOP``; an empty STOP
is the end), per seed and as mean ± std over seeds, and lists the first seed's trajectory at a few cycles.

Usage::

    python benchmarks/rmse_windows.py RUN_FOLDER --windows 30:80 80: 160: --at 10 20 30 40 60 80 120 240
        --name NAME

Writes ``results/<NAME>.json`` and ``results/<NAME>.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402

from enff.compare import compare, records  # noqa: E402


def parse_window(text: str) -> slice:
    """``"30:80"`` -> ``slice(30, 80)``; ``"80:"`` -> ``slice(80, None)``."""
    start, sep, stop = text.partition(":")
    if not sep or not start:
        raise argparse.ArgumentTypeError(f"window {text!r}: expected START:STOP or START:")
    return slice(int(start), int(stop) if stop else None)


def window_label(window: slice, cycles: int) -> str:
    """``slice(30, 80)`` -> ``"cycles 31-80"`` (cycle numbers count from 1)."""
    return f"cycles {window.start + 1}-{cycles if window.stop is None else window.stop}"


def configuration_label(row: dict[str, Any]) -> str:
    """``"letkf inflation=1.1"``: the filter and the overrides that tell its configurations apart."""
    return row["filter"] + " " + " ".join(f"{k.removeprefix('filter.')}={v}" for k, v in row["overrides"].items())


def window_means(series: np.ndarray, windows: list[slice]) -> np.ndarray:
    """Mean of ``series`` ``(configuration, seed, time)`` over each window: ``(configuration, seed, window)``."""
    return np.stack([series[..., w].mean(axis=-1) for w in windows], axis=-1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, help="folder of run files (a sweep's out folder)")
    parser.add_argument("--windows", nargs="+", type=parse_window, required=True, help="START:STOP cycle windows")
    parser.add_argument("--at", nargs="*", type=int, default=[], help="cycles of the first seed's trajectory")
    parser.add_argument("--name", required=True, help="results/<NAME>.json and .md")
    args = parser.parse_args(argv)

    ds = compare([args.folder])
    rows = records(ds)
    series = ds["rmse_analysis"].values  # (configuration, seed, time)
    cycles = series.shape[-1]
    if any(c < 1 or c > cycles for c in args.at):
        parser.error(f"--at: cycles must lie in 1..{cycles} (the runs in {args.folder})")
    for window in args.windows:
        stop = cycles if window.stop is None else window.stop
        if not window.start < stop <= cycles:
            parser.error(f"--windows {window.start}:{window.stop or ''}: needs START < STOP <= {cycles} "
                         f"(the runs in {args.folder})")
    means = window_means(series, args.windows)
    seeds = [int(s) for s in ds["seed"].values]
    labels = [window_label(w, cycles) for w in args.windows]
    configs = [configuration_label(r) for r in rows]

    lines = [f"# Analysis RMSE by window of cycles: {args.folder.name}", "",
             f"Run files: `{args.folder}` ({len(configs)} configurations, seeds {seeds}, {cycles} cycles). "
             "Each cell: the mean of `rmse_analysis` over the window; mean ± std over seeds, then per seed.", ""]
    lines += ["| configuration | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for name, cell in zip(configs, means):
        lines.append(f"| {name} | " + " | ".join(
            f"{np.nanmean(cell[:, j]):.4f} ± {np.nanstd(cell[:, j]):.4f} ("
            + " / ".join(f"{v:.4f}" for v in cell[:, j]) + ")" for j in range(len(labels))) + " |")
    if args.at:
        lines += ["", f"Trajectory of seed {seeds[0]} (analysis RMSE at the cycle):", "",
                  "| configuration | " + " | ".join(f"cycle {c}" for c in args.at) + " |",
                  "|---|" + "---|" * len(args.at)]
        for name, run in zip(configs, series[:, 0]):
            lines.append(f"| {name} | " + " | ".join(f"{run[c - 1]:.4f}" for c in args.at) + " |")
    payload = {"folder": str(args.folder), "seeds": seeds, "cycles": cycles, "windows": labels,
               "trajectory_seed": seeds[0],
               "configurations": [{"label": name, **row, "window_rmse": cell.tolist(),
                                   "trajectory": {c: float(run[c - 1]) for c in args.at}}
                                  for name, row, cell, run in zip(configs, rows, means, series[:, 0])]}
    json_path, md_path = write_results(args.name, payload, "\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
