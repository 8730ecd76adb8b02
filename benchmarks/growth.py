"""Growth of one analysis's cost with the state size d and the ensemble size N, for five filters side by side.

ETKF, LETKF (radius 4, numba local solver), EnFF (``enff-ot``, local guidance), EnSF and the bootstrap particle
filter analyse random forecast ensembles of a Lorenz-96-like ring (periodic, unit spacing) with every
component observed (identity, unit error std), in float32 on one thread: d = 1e3 ... 1e7 at N = 20, and
N = 10 ... 80 at d = 1e5. Each (filter, d, N) runs in its own interpreter through
:func:`classical_speed.measure_in_subprocess` (a first call, which also builds the LETKF's neighbour lists and
loads numba's cached kernels, then at least ``repeats`` timed calls, more while they take under 2 s); the
median of the repeated calls is the time per analysis. The generative filters run ``S = STEPS`` velocity (or
score) evaluations per analysis instead of their published 99, to keep the d = 1e7 rows short: their time is
linear in S, so per-evaluation cost is the time / S.

The exponents are log-log least-squares slopes of the median time against d (over d >= ``FIT_MIN_D``, where
fixed per-call costs no longer dominate, and over every d) and against N. The 1-minute load average is recorded
before and after every row: on the shared 2-core machine absolute times are inflated by the other jobs, and
rows measured under different loads compare only roughly.

Usage::

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/growth.py [--max-d 10000000] [--only letkf etkf]

writes ``results/growth.json``, ``results/growth.md`` and ``results/growth.png`` (``--name`` changes the stem).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, write_results  # noqa: E402
from classical_speed import RING_RADIUS, measure_in_subprocess  # noqa: E402

#: Velocity / score evaluations per analysis of the generative filters (published settings use 99).
STEPS = 9
#: Filter label -> (registry name, hyper-parameters).
FILTERS: dict[str, tuple[str, dict[str, Any]]] = {
    "etkf": ("etkf", {}),
    "letkf": ("letkf", {"radius": RING_RADIUS}),
    "enff-ot": ("enff-ot", {"steps": STEPS}),
    "ensf": ("ensf", {"steps": STEPS}),
    "bpf": ("bpf", {"jitter": 0.1}),
}
D_SWEEP = (1_000, 10_000, 100_000, 1_000_000, 10_000_000)
#: Largest d per filter where it is below ``D_SWEEP``'s. The LETKF at d = 1e7 takes two calls of 7-10 minutes each
#: on the loaded 2-core machine (13-40 s at d = 1e6), and when growth.json was measured its neighbour-list set-up
#: would have needed about 22 GiB there (2.6 GiB resident at 1e6); since commit 53e3455 it peaks at 7.9 GB.
MAX_D = {"letkf": 1_000_000}
D_SWEEP_N = 20
N_SWEEP = (10, 20, 40, 80)
N_SWEEP_D = 100_000
#: The d-exponent is fitted over d >= this (and, separately, over every d).
FIT_MIN_D = 10_000
#: Timed calls after the first one: at least this many for d <= 1e5, one above (each call then takes seconds).
REPEATS_SMALL = 3
DTYPE = "float32"
THREADS = 1


def cases(max_d: int, only: list[str] | None) -> list[dict[str, Any]]:
    """Every (filter, d, N) row: the d sweep at N = ``D_SWEEP_N``, then the N sweep at d = ``N_SWEEP_D``."""
    labels = [label for label in FILTERS if not only or label in only]
    sizes = [(d, D_SWEEP_N, "d") for d in D_SWEEP if d <= max_d]
    sizes += [(N_SWEEP_D, n, "n") for n in N_SWEEP if n != D_SWEEP_N and N_SWEEP_D <= max_d]
    return [{"label": label, "filter": FILTERS[label][0], "hyper": FILTERS[label][1], "grid": "ring",
             "d": d, "n": n, "sweep": sweep} for d, n, sweep in sizes for label in labels
            if d <= MAX_D.get(label, d)]


def exponent(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log y against log x (``None`` with fewer than two points)."""
    if len(xs) < 2:
        return None
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def sweep_rows(rows: list[dict[str, Any]], label: str, axis: str) -> list[dict[str, Any]]:
    """The successful rows of ``label`` along ``axis`` (``"d"`` at N = ``D_SWEEP_N``, ``"n"`` at d = ``N_SWEEP_D``),
    sorted by that axis."""
    fixed = ("n", D_SWEEP_N) if axis == "d" else ("d", N_SWEEP_D)
    return sorted((r for r in rows if r["label"] == label and r[fixed[0]] == fixed[1] and "error" not in r),
                  key=lambda r: r[axis])


def exponents(rows: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Per filter: the d-exponent over d >= ``FIT_MIN_D`` and over every d, and the N-exponent."""
    out = {}
    for label in dict.fromkeys(r["label"] for r in rows):
        along_d, along_n = sweep_rows(rows, label, "d"), sweep_rows(rows, label, "n")
        large = [r for r in along_d if r["d"] >= FIT_MIN_D]
        out[label] = {
            "d": exponent([r["d"] for r in large], [r["median_s"] for r in large]),
            "d_all": exponent([r["d"] for r in along_d], [r["median_s"] for r in along_d]),
            "n": exponent([r["n"] for r in along_n], [r["median_s"] for r in along_n]),
        }
    return out


def plot(rows: list[dict[str, Any]], fits: dict[str, dict[str, float | None]], path: Path) -> None:
    """Time per analysis against d (N = 20) and against N (d = 1e5), log-log, one line per filter."""
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    for ax, axis, title in zip(fig.subplots(1, 2), ("d", "n"),
                               (f"N = {D_SWEEP_N}", f"d = {N_SWEEP_D:,}")):
        for label in fits:
            points = sweep_rows(rows, label, axis)
            if not points:
                continue
            slope = fits[label][axis]
            ax.loglog([r[axis] for r in points], [r["median_s"] for r in points], "o-",
                      label=label + ("" if slope is None else f" (slope {slope:.2f})"))
        ax.set_xlabel("state size d" if axis == "d" else "members N")
        ax.set_ylabel("seconds per analysis")
        ax.set_title(f"{title}, {DTYPE}, {THREADS} thread, S = {STEPS} for EnFF / EnSF")
        ax.grid(True, which="both", alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def markdown(payload: dict[str, Any]) -> str:
    """The summary: fitted exponents, then every row with its load average."""
    m = payload["machine"]
    loads = [r["load_before"] for r in payload["rows"]]
    lines = [
        "# Growth of the time per analysis with d and N",
        "",
        f"Measured {payload['created']} on {m.get('cpu_model', m['processor'])} ({m['cpu_count']} cores shared with "
        f"other jobs), {THREADS} thread (OMP_NUM_THREADS={payload['env']['OMP_NUM_THREADS']}, "
        f"NUMBA_NUM_THREADS={payload['env']['NUMBA_NUM_THREADS']}), {DTYPE}, torch {m['torch']}. Lorenz-96-like ring, "
        "every component observed (identity, unit error std), random forecast ensembles; one interpreter per row; "
        "time = median of the repeated calls after a first one. EnFF (`enff-ot`, local guidance) and EnSF run "
        f"S = {STEPS} evaluations per analysis (published: 99; their time is linear in S); LETKF radius "
        f"{RING_RADIUS:g} with the numba local solver; the particle filter is the bootstrap filter with jitter 0.1. "
        f"1-minute load average before the rows: {min(loads):.1f} to {max(loads):.1f} on 2 cores, so every "
        "absolute time is inflated (by up to the load over the core count); the slopes, measured under similar "
        "loads, much less.",
        "",
        f"Largest d measured: {max(r['d'] for r in payload['rows']):,}"
        + "".join(f"; {label} only up to {d:,} (time and memory: see `MAX_D` in benchmarks/growth.py)"
                  for label, d in MAX_D.items() if d < max(r["d"] for r in payload["rows"])) + ".",
        "",
        f"| filter | exponent in d (d >= {FIT_MIN_D:,}) | exponent in d (all d) | exponent in N (d = {N_SWEEP_D:,}) "
        f"| s at d = 1e6, N = {D_SWEEP_N} |",
        "|---|---|---|---|---|",
    ]
    for label, fit in payload["exponents"].items():
        at = next((r for r in payload["rows"] if r["label"] == label and r["d"] == 1_000_000
                   and r["n"] == D_SWEEP_N and "error" not in r), None)
        lines.append(f"| {label} | {_fmt(fit['d'])} | {_fmt(fit['d_all'])} | {_fmt(fit['n'])} | "
                     f"{'' if at is None else format(at['median_s'], '.3g')} |")
    lines += [
        "",
        "Expected: ETKF, the particle filter and EnSF (member score) ~ d N to d N^2 (matrix products with N columns "
        "and N x N algebra), LETKF ~ d N^2 to d N^3 (one N-member analysis per grid point), EnFF ~ d N^2 (the "
        "N x N weight matrix of the Monte Carlo velocity).",
        "",
        "| filter | d | N | first call (s) | median (s) | repeats | peak RSS (MiB) | load before | load after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in payload["rows"]:
        if "error" in r:
            lines.append(f"| {r['label']} | {r['d']:,} | {r['n']} | error: {r['error']} | | | | "
                         f"{r['load_before']:.1f} | {r['load_after']:.1f} |")
            continue
        lines.append(f"| {r['label']} | {r['d']:,} | {r['n']} | {r['first_call_s']:.3g} | {r['median_s']:.3g} | "
                     f"{r['repeats']} | {r['peak_rss_mib']:.0f} | {r['load_before']:.1f} | {r['load_after']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-d", type=int, default=max(D_SWEEP), help="leave out larger states")
    parser.add_argument("--only", nargs="+", choices=list(FILTERS), help="time only these filters")
    parser.add_argument("--name", default="growth", help="results/<name>.json, .md and .png")
    args = parser.parse_args()
    for name in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS"):  # one thread in every row's interpreter
        os.environ[name] = str(THREADS)
    rows = []
    for case in cases(args.max_d, args.only):
        load_before = os.getloadavg()[0]
        repeats = REPEATS_SMALL if case["d"] <= N_SWEEP_D else 1
        row = measure_in_subprocess(case, THREADS, "cpu", DTYPE, repeats)
        rows.append({**row, "load_before": load_before, "load_after": os.getloadavg()[0],
                     "at": time.strftime("%H:%M:%S", time.gmtime())})
        print({k: rows[-1].get(k) for k in ("label", "d", "n", "median_s", "peak_rss_mib", "load_before", "error")},
              flush=True)
    fits = exponents(rows)
    payload = {"dtype": DTYPE, "threads": THREADS, "steps": STEPS, "fit_min_d": FIT_MIN_D,
               "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS")},
               "exponents": fits, "rows": rows}
    summary = markdown({**payload, "machine": machine(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    json_path, md_path = write_results(args.name, payload, summary)
    plot(rows, fits, RESULTS / f"{args.name}.png")
    print(summary)
    print(f"wrote {json_path}, {md_path} and {RESULTS / f'{args.name}.png'}")


if __name__ == "__main__":
    main()
