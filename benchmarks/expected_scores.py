"""Run every shipped case's ``[expected.*]`` entries through a sweep and compare with the recorded RMSE.

The same check as the slow test ``tests/test_expected_scores.py``, for all cases at once, with a record:

    python benchmarks/expected_scores.py [CASE ...] [--workers 2] [--out benchmarks/specs/runs/expected]

Writes ``results/expected_scores.{json,md}`` (with named cases ``results/expected_scores_<case>_....{json,md}``,
so that checking a few cases leaves the record of all of them as it is; ``--name`` chooses another): per entry
the recorded and the measured mean RMSE over its seeds, the standard error, the tolerance and whether it holds.
Re-running resumes the run files in ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_results  # noqa: E402

from dask.distributed import Client  # noqa: E402

from enff.casefile import shipped_cases  # noqa: E402
from enff.expected import check_expected, expected_scores  # noqa: E402
from enff.sweep import local_cluster  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="*", help="shipped case names (default: every shipped case)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "specs" / "runs" / "expected")
    parser.add_argument("--name", help="results/<name>.{json,md} (default: expected_scores, with the named cases "
                        "appended when some are given)")
    args = parser.parse_args()
    name = args.name or "_".join(["expected_scores", *args.cases])
    args.cases = args.cases or sorted(shipped_cases())
    entries = [entry for case in args.cases for entry in expected_scores(case)]
    with local_cluster(workers=args.workers, dashboard=None) as cluster, Client(cluster) as client:
        checks = check_expected(entries, args.out, client)
    info = machine()
    lines = ["# Expected scores of the shipped cases", "",
             f"`python benchmarks/expected_scores.py {' '.join(args.cases)}` on {info.get('cpu_model', info['processor'])}, "
             f"{args.workers} dask workers with one thread each, device cpu. Each entry runs the case's tuned "
             "`[filters.<name>]` table with the entry's overrides and seeds; RMSE is the mean over seeds of "
             "`enff score`'s time-averaged analysis RMSE (standard error over seeds).", "",
             "| case | filter | seeds | overrides | recorded RMSE | tolerance | measured RMSE | ± se | holds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in checks:
        e = c.expected
        lines.append(f"| {e.case} | {e.filter} | {','.join(map(str, e.seeds))} | {' '.join(e.overrides) or '-'} | "
                     f"{e.rmse:.4g} | {100 * e.tolerance:.0f} % | {c.rmse:.4g} | {c.rmse_se:.2g} | "
                     f"{'yes' if c.ok else 'NO'} |")
    rows = [{"case": c.expected.case, "filter": c.expected.filter, "seeds": list(c.expected.seeds),
             "overrides": list(c.expected.overrides), "burn_in": c.expected.burn_in, "recorded_rmse": c.expected.rmse,
             "tolerance": c.expected.tolerance, "rmse": c.rmse, "rmse_se": c.rmse_se, "failed": c.failed, "ok": c.ok}
            for c in checks]
    write_results(name, {"rows": rows}, "\n".join(lines))
    print("\n".join(c.describe() for c in checks))
    sys.exit(0 if all(c.ok for c in checks) else 1)


if __name__ == "__main__":
    main()
