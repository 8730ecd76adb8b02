"""Tuning sweeps of the classical filters on the shipped cases, scored like the published table.

Each grid point runs the shipped case through the ordinary cycle runner (``enff.cycle.run_case``) with
the filter's hyper-parameters overridden, and is scored by the RMSE of the analysis mean averaged over
the last 50 analyses (as ``benchmarks/reproduce_published.py`` does). Diverged runs are recorded as such.

Usage::

    python benchmarks/classical_tune.py ks512_atan letkf --cycles 300 --grid radius=3,5,6.3 inflation=1.0,1.05
    python benchmarks/classical_tune.py ns64_atan enkf --grid radius=0.1,0.2 inflation=1.1

Results are appended to ``results/classical_tune_<case>.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine  # noqa: E402

from enff.casefile import load_case  # noqa: E402
from enff.cycle import Divergence, run_case  # noqa: E402
from enff.runfile import open_run  # noqa: E402

LAST = 50


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """``["radius=3,5", "inflation=1.0"]`` -> ``{"radius": [3.0, 5.0], "inflation": [1.0]}``."""
    grid = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise ValueError(f"grid entries look like KEY=V1,V2,...; got {item!r}")
        grid[key] = [float(v) for v in values.split(",")]
    return grid


def score(case_name: str, filter_name: str, hyper: dict[str, Any], cycles: int, seed: int) -> dict[str, Any]:
    """Run one grid point and return its row (RMSE, spread of the last ``LAST`` analyses, timing)."""
    overrides = [f"run.cycles={cycles}", f"run.seed={seed}"] + [f"filter.{k}={v}" for k, v in hyper.items()]
    case = load_case(case_name, filter_name=filter_name, overrides=overrides)
    row: dict[str, Any] = {"case": case_name, "filter": filter_name, **hyper, "cycles": cycles, "seed": seed}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run.nc"
        try:
            run_case(case, out, overwrite=True, progress=False)
        except Divergence as err:
            return {**row, "error": str(err)}
        ds = open_run(out).isel(time=slice(-LAST, None))
        row.update(
            rmse=float(ds["rmse_analysis"].mean()),
            spread=float(ds["spread_analysis"].mean()) if "spread_analysis" in ds else None,
            seconds_per_analysis=float(ds["analysis_seconds"].mean()),
            wall_seconds=time.perf_counter() - start,
        )
        ds.close()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", help="shipped case name, e.g. ks512_atan")
    parser.add_argument("filter", help="filter name, e.g. letkf")
    parser.add_argument("--grid", nargs="+", default=[], help="KEY=V1,V2,... hyper-parameter values")
    parser.add_argument("--cycles", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    grid = parse_grid(args.grid)
    out = RESULTS / f"classical_tune_{args.case}.json"
    previous = json.loads(out.read_text())["rows"] if out.is_file() else []
    rows = []
    for values in itertools.product(*grid.values()):
        rows.append(score(args.case, args.filter, dict(zip(grid, values)), args.cycles, args.seed))
        print(json.dumps(rows[-1]), flush=True)
        out.write_text(json.dumps({"setup": machine(), "rows": previous + rows}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
