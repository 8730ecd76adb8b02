"""Lorenz-96 at ten million variables: cycling with the LETKF and with EnFF through ``enff run``'s own run file.

The case is the shipped ``l96_1e6_atan`` (N = 20, float32, arctan observations of every component every 10
model steps) with ``model.dim`` set to each size of ``--dims``, a shorter spin-up (``SPINUP`` steps instead
of 1000: the run's cost is what is measured, the truth only has to be on the attractor) and each filter of
:data:`FILTERS`. Each (size, filter) runs :func:`enff.cycle.run_case` in its own interpreter, one thread, so
its peak resident memory (``ru_maxrss``) is its own. The run file stores no full ensemble per cycle
(``run.save_analysis = "auto"`` writes it only for states of at most 5000 values, and ``save_forecast`` is off):
each cycle writes the truth, the observations, the means and spreads and the scores; the two restart slots
hold the one analysis ensemble needed to resume exactly. Times per cycle are measured around the cycle's
parts (forecast + analysis + statistics in ``Experiment.cycle``, writing the restart slot and the record),
the analysis alone is the run file's ``analysis_seconds``. ``tracemalloc`` is not used: torch's tensors are
allocated outside Python's allocator, so it would miss nearly all of the memory.

The largest state that fits in ``--memory-gib`` is extrapolated linearly from the peak RSS of the two largest
sizes measured with each filter (peak = base + bytes per variable x d).

Usage::

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/scale_1e7.py
        [--runs letkf:1000000:2 enff-f2p:10000000:10 ...] [--workdir /tmp/scale]

``--runs`` lists ``filter:d:cycles`` in the order they run (default :data:`RUNS`). The results,
``results/scale_1e7.json`` and ``results/scale_1e7.md`` (``--name`` changes the stem), are rewritten after
every run; the run files go to ``--workdir`` and are deleted after they have been read.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, peak_rss_mb, write_results  # noqa: E402

CASE = "l96_1e6_atan"
#: Spin-up steps of the truth (the shipped case: 1000).
SPINUP = 300
#: Label -> (filter, overrides of its keys). LETKF: the case's radius and inflation without its line search
#: (which more than doubles the cost; over 10 cycles the plain LETKF does not diverge at d = 1e6); EnFF: the
#: case's published enff-f2p with S = 9.
FILTERS: dict[str, tuple[str, list[str]]] = {
    "letkf": ("letkf", ["filter.line_search=false"]),
    "enff-f2p": ("enff-f2p", []),
}
#: The default ``--runs``: each filter at 1e6 (the second point of the memory line), then at 1e7.
RUNS = ("letkf:1000000:2", "enff-f2p:1000000:2", "enff-f2p:10000000:10", "letkf:10000000:10")
MEMORY_GIB = 24.0
THREADS = 1


def run_one(label: str, d: int, cycles: int, workdir: Path) -> dict[str, Any]:
    """Run ``cycles`` cycles of the case at ``d`` with ``label`` in this process; times, memory and scores."""
    import netCDF4
    import numpy as np
    import torch

    from enff.casefile import load_case
    from enff.cycle import Experiment, run_case
    from enff.runfile import RunFile

    torch.set_num_threads(THREADS)
    name, overrides = FILTERS[label]
    case = load_case(CASE, filter_name=name, overrides=[f"model.dim={d}", f"run.cycles={cycles}",
                                                        f"run.spinup={SPINUP}", *overrides])
    parts: dict[str, list[float]] = {"cycle": [], "write": [], "initial": []}

    def timed(key: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                parts[key].append(time.perf_counter() - start)
        return wrapper

    Experiment.cycle = timed("cycle", Experiment.cycle)
    Experiment.initial_condition = timed("initial", Experiment.initial_condition)
    RunFile.write_restart = timed("write", RunFile.write_restart)
    RunFile.write_cycle = timed("write", RunFile.write_cycle)
    out = workdir / f"{label}_{d}.nc"
    out.unlink(missing_ok=True)
    load_before = os.getloadavg()
    start = time.perf_counter()
    summary = run_case(case, out, progress=False)
    total = time.perf_counter() - start
    with netCDF4.Dataset(out) as ds:
        analysis_seconds = [float(v) for v in ds["analysis_seconds"][:]]
        rmse = [float(v) for v in ds["rmse_analysis"][:]]
        spread = [float(v) for v in ds["spread_analysis"][:]]
        stored = sorted(ds.variables)
    file_bytes = out.stat().st_size
    out.unlink()
    writes = np.add.reduceat(parts["write"], np.arange(0, len(parts["write"]), 2)).tolist()  # restart + record
    return {
        "label": label, "filter": repr(case.filter), "d": d, "n": case.ensemble.size, "dtype": case.run.dtype,
        "cycles": summary.cycles_done, "spinup_steps": SPINUP,
        "total_s": total, "initial_s": parts["initial"][0], "cycle_s": parts["cycle"], "write_s": writes,
        "analysis_s": analysis_seconds, "forecast_and_statistics_s": [c - a for c, a in zip(parts["cycle"],
                                                                                              analysis_seconds)],
        "rmse_analysis": rmse, "spread_analysis": spread,
        "peak_rss_mib": peak_rss_mb(), "file_bytes": file_bytes,
        "file_stores_full_ensemble": "analysis" in stored or "forecast" in stored,
        "load_before": load_before, "load_after": os.getloadavg(),
    }


def run_in_subprocess(label: str, d: int, cycles: int, workdir: Path) -> dict[str, Any]:
    """:func:`run_one` in a fresh interpreter (the peak RSS is then the run's own)."""
    command = [sys.executable, __file__, "--one", json.dumps([label, d, cycles]), "--workdir", str(workdir)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        lines = result.stderr.strip().splitlines() or [f"exit status {result.returncode}"]
        return {"label": label, "d": d, "cycles": cycles, "error": lines[-1]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def largest_fitting(rows: list[dict[str, Any]], memory_gib: float) -> dict[str, dict[str, float]]:
    """Per filter: bytes per state variable and the largest d whose peak RSS fits in ``memory_gib``, from the
    line through the peak RSS of its two largest sizes."""
    out = {}
    for label in dict.fromkeys(r["label"] for r in rows):
        done = sorted((r for r in rows if r["label"] == label and "error" not in r), key=lambda r: r["d"])
        if len(done) < 2:
            continue
        small, large = done[-2], done[-1]
        per_d = (large["peak_rss_mib"] - small["peak_rss_mib"]) * 2**20 / (large["d"] - small["d"])
        base = large["peak_rss_mib"] * 2**20 - per_d * large["d"]
        out[label] = {"bytes_per_variable": per_d, "base_mib": base / 2**20,
                      "largest_d": (memory_gib * 2**30 - base) / per_d}
    return out


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def markdown(payload: dict[str, Any]) -> str:
    """Per run: time per cycle and its parts, peak memory, file size, scores; then the largest d that fits."""
    m = payload["machine"]
    lines = [
        "# Lorenz-96 at d = 1e7: cycling time and memory",
        "",
        f"Measured {payload['created']} on {m.get('cpu_model', m['processor'])} ({m['cpu_count']} cores shared with "
        f"other jobs, {payload['memory_total_gib']:.0f} GiB memory), {THREADS} thread (OMP_NUM_THREADS and "
        f"NUMBA_NUM_THREADS = 1), torch {m['torch']}. Case `{CASE}` with `model.dim` = d, N = 20, float32, "
        f"arctan observations of every component every 10 steps, spin-up {SPINUP} steps (shipped: 1000). "
        "Through `enff.cycle.run_case` and its run file, which stores no full ensemble per cycle (only the "
        "restart slots hold one). Absolute times are inflated by the other jobs on the 2 cores (load average "
        "beside each row).",
        "",
        "| filter | d | cycles | s per cycle | analysis s | forecast + statistics s | write s | spin-up + initial s "
        "| peak RSS (GiB) | run file (GiB) | full ensemble stored | RMSE last | spread last | load before / after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in payload["rows"]:
        if "error" in r:
            lines.append(f"| {r['label']} | {r['d']:,} | {r['cycles']} | error: {r['error']} |" + " |" * 10)
            continue
        per_cycle = [c + w for c, w in zip(r["cycle_s"], r["write_s"])]
        lines.append(
            f"| {r['label']} | {r['d']:,} | {r['cycles']} | {_mean(per_cycle):.1f} | {_mean(r['analysis_s']):.1f} | "
            f"{_mean(r['forecast_and_statistics_s']):.1f} | {_mean(r['write_s']):.1f} | {r['initial_s']:.1f} | "
            f"{r['peak_rss_mib'] / 1024:.2f} | {r['file_bytes'] / 2**30:.2f} | {'yes' if r['file_stores_full_ensemble'] else 'no'} | "
            f"{r['rmse_analysis'][-1]:.3g} | {r['spread_analysis'][-1]:.3g} | "
            f"{r['load_before'][0]:.1f} / {r['load_after'][0]:.1f} |")
    lines += ["", f"Largest d whose peak RSS fits in {payload['memory_gib']:g} GiB (line through the peak RSS of the "
              "two largest sizes of each filter):", ""]
    for label, fit in payload["largest_fitting"].items():
        lines.append(f"- {label}: {fit['bytes_per_variable']:.0f} bytes per state variable ("
                     f"{fit['bytes_per_variable'] / (4 * 20):.1f} float32 N x d ensembles), base "
                     f"{fit['base_mib']:.0f} MiB: d <= {fit['largest_d']:.3g}")
    lines += ["", "Per-cycle times (s), analysis / whole cycle:", ""]
    for r in payload["rows"]:
        if "error" not in r:
            lines.append(f"- {r['label']} d = {r['d']:,}: " + ", ".join(
                f"{a:.1f} / {c + w:.1f}" for a, c, w in zip(r["analysis_s"], r["cycle_s"], r["write_s"])))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", type=_run_spec, default=[_run_spec(r) for r in RUNS],
                        metavar="FILTER:D:CYCLES")
    parser.add_argument("--memory-gib", type=float, default=MEMORY_GIB)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/enff_scale"))
    parser.add_argument("--name", default="scale_1e7")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: JSON [label, d, cycles]
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.one:
        print(json.dumps(run_one(*json.loads(args.one), args.workdir)))
        return
    for name in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS"):  # one thread in every run's interpreter
        os.environ[name] = str(THREADS)
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    rows: list[dict[str, Any]] = []
    for label, d, cycles in args.runs:
        rows.append(run_in_subprocess(label, d, cycles, args.workdir))
        print(json.dumps({k: v for k, v in rows[-1].items() if not isinstance(v, list)}), flush=True)
        payload = {"case": CASE, "spinup_steps": SPINUP, "threads": THREADS, "memory_gib": args.memory_gib,
                   "memory_total_gib": memory, "rows": rows, "largest_fitting": largest_fitting(rows, args.memory_gib)}
        summary = markdown({**payload, "machine": machine(),
                            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        json_path, md_path = write_results(args.name, payload, summary)  # after every run: a stopped job keeps them
    print(summary)
    print(f"wrote {json_path} and {md_path}")


def _run_spec(text: str) -> tuple[str, int, int]:
    """``"filter:d:cycles"`` -> ``(filter, d, cycles)``, the filter one of :data:`FILTERS`."""
    try:
        label, d, cycles = text.split(":")
        spec = (label, int(d), int(cycles))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected FILTER:D:CYCLES, got {text!r}") from None
    if label not in FILTERS or spec[1] < 1 or spec[2] < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: the filter is one of {', '.join(FILTERS)}, d and cycles >= 1")
    return spec


if __name__ == "__main__":
    main()
