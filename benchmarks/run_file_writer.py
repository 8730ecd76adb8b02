"""Cost of writing the run file: an l63 ETKF run, timed as a whole and inside the run-file writer.

The writer's share is the time spent in :meth:`enff.runfile.RunFile.write_restart` and
:meth:`~enff.runfile.RunFile.write_cycle` (timed by wrapping both), over the whole :func:`enff.cycle.run_case`
call. ``--label`` names the code measured (run it once per version, e.g. ``before`` from a checkout of the
old commit on ``PYTHONPATH``), and the results go to ``results/run_file_writer_<label>.json`` and ``.md``.
Usage (one thread, about a minute on 2 idle cores)::

    OMP_NUM_THREADS=1 python benchmarks/run_file_writer.py --label after --cycles 2000 --repeats 3
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from _common import machine, write_results

from enff.casefile import load_case
from enff.cycle import run_case
from enff.runfile import RunFile


def _timed(method: Callable[..., Any], total: list[float]) -> Callable[..., Any]:
    """``method`` that adds its wall-clock seconds to ``total[0]``."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            total[0] += time.perf_counter() - start

    return wrapper


def measure(cycles: int, repeats: int) -> list[dict[str, float]]:
    """``repeats`` runs of l63 (its ETKF, ``cycles`` cycles): total seconds and seconds in the writer."""
    spent = [0.0]
    restart, cycle = RunFile.write_restart, RunFile.write_cycle
    RunFile.write_restart = _timed(restart, spent)  # type: ignore[method-assign]
    RunFile.write_cycle = _timed(cycle, spent)  # type: ignore[method-assign]
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            case = load_case("l63", overrides=[f"run.cycles={cycles}"])
            for k in range(repeats):
                spent[0] = 0.0
                start = time.perf_counter()
                run_case(case, Path(tmp) / f"run{k}.nc", progress=False)
                total = time.perf_counter() - start
                rows.append({"seconds": total, "writer_seconds": spent[0], "writer_share": spent[0] / total,
                             "writer_ms_per_cycle": 1e3 * spent[0] / cycles})
    finally:
        RunFile.write_restart, RunFile.write_cycle = restart, cycle  # type: ignore[method-assign]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", required=True, help="name of the code measured (results file suffix)")
    parser.add_argument("--cycles", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = measure(args.cycles, args.repeats)
    best = min(rows, key=lambda r: r["seconds"])
    payload = {"label": args.label, "case": "l63 (etkf)", "cycles": args.cycles, "runs": rows, "best": best,
               "machine": machine()}
    summary = (f"# Run-file writer cost ({args.label})\n\nl63 with its ETKF, {args.cycles} cycles, one thread, "
               f"{args.repeats} runs (load average {payload['machine']['load_average_1min']:.1f} at the end).\n\n"
               "| run | seconds | in the writer | share | ms per cycle |\n|---|---|---|---|---|\n"
               + "".join(f"| {k} | {r['seconds']:.2f} | {r['writer_seconds']:.2f} | {100 * r['writer_share']:.0f} % | "
                         f"{r['writer_ms_per_cycle']:.2f} |\n" for k, r in enumerate(rows)))
    for path in write_results(f"run_file_writer_{args.label}", payload, summary):
        print(f"wrote {path}")
    print(summary)


if __name__ == "__main__":
    main()
