"""Localized generative filters against the LETKF and the published global filters: sweep, then compare.

Runs the sweep specs in ``benchmarks/specs/`` (``enff sweep``: one dask task per run, one thread each;
re-running resumes and skips finished runs), then scores every run with ``enff.compare`` and writes
``results/localized_filters.{json,md}``: per configuration the mean and standard error over seeds of
RMSE, spread and CRPS, seconds per analysis, and diverged runs; the best grid point of each filter is
marked (each filter gets the same number of grid points and the same seeds).

Usage::

    python benchmarks/localized_filters.py [--workers 2] [--burn-in 100] [--compare-only] [SPEC ...]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402

from enff.compare import compare, format_comparison, records  # noqa: E402
from enff.sweepspec import load_spec  # noqa: E402

SPECS = Path(__file__).resolve().parent / "specs"
DEFAULT_SPECS = ("localized_ks512.toml", "localized_ks512_reference.toml")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="*", type=Path, default=[SPECS / name for name in DEFAULT_SPECS])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--burn-in", type=int, default=100)
    parser.add_argument("--name", default="localized_filters")
    parser.add_argument("--compare-only", action="store_true", help="score the run files already in the out folders")
    args = parser.parse_args()
    for spec in args.specs if not args.compare_only else ():
        subprocess.run([str(Path(sys.executable).parent / "enff"), "sweep", str(spec), "--workers", str(args.workers),
                        "--quiet"], env=ENV, check=False)
    table = compare([load_spec(spec).out_dir for spec in args.specs], burn_in=args.burn_in)
    rows = records(table)
    text = format_comparison(table)
    print(text)
    summary = "\n".join([
        "# Localized filters against the LETKF",
        "",
        f"Specs: {', '.join(str(s.resolve().relative_to(SPECS.parent.parent)) for s in args.specs)}. "
        f"Scores over the cycles after a burn-in of {args.burn_in}, mean and standard error over seeds; "
        "one torch thread per run, "
        + ("the runs scored as they were made (see the summary beside this table for how many ran at a time)"
           if args.compare_only else f"{args.workers} run(s) at a time")
        + " on the shared 2-core machine (seconds per analysis are therefore under load). "
        "`*` marks the best grid point of each filter.",
        "",
        "```",
        text,
        "```",
    ])
    write_results(args.name, {"specs": [str(s) for s in args.specs], "burn_in": args.burn_in, "rows": rows},
                  summary)


if __name__ == "__main__":
    main()
