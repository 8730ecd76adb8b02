"""The ``enff sweep`` and ``enff compare`` subcommands (registered by :mod:`enff.cli`).

Exit status of ``enff sweep``: 0 every run complete, 2 invalid spec (nothing run) or no scheduler,
4 some runs diverged or failed (each is listed with the ``enff run`` command that reproduces it; the
others are complete). ``enff compare``: 0, or 2 for missing or unreadable files.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Callable

from enff.progress import add_progress_arguments

__all__ = ["COMMANDS", "add_commands"]


def add_commands(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add the ``sweep`` and ``compare`` sub-parsers."""
    sweep = sub.add_parser("sweep", help="run every (case, filter, grid point, seed) of a sweep spec on dask")
    sweep.add_argument("spec", type=Path, help="sweep specification (TOML)")
    where = sweep.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, default=2,
                       help="process workers (one thread each) of the local cluster (default 2)")
    where.add_argument("--scheduler", metavar="ADDRESS", help="a running dask scheduler, e.g. tcp://10.0.0.1:8786")
    sweep.add_argument("--retries", type=int, default=2, help="reruns of a task whose worker died (default 2)")
    add_progress_arguments(sweep)

    compare = sub.add_parser("compare", help="scores of many runs by configuration: mean and SE over seeds")
    compare.add_argument("paths", type=Path, nargs="+", metavar="PATH", help="run files or folders of run files")
    compare.add_argument("--burn-in", type=int, default=None,
                         help="cycles to discard at the start of each run (default: the first tenth of each, "
                              "cycles // 10, as enff score)")
    compare.add_argument("--json", action="store_true", help="print a JSON list, one object per configuration")
    compare.add_argument("--csv", type=Path, metavar="FILE", help="also write the table as CSV")
    compare.add_argument("--netcdf", type=Path, metavar="FILE", help="also write the comparison Dataset as netCDF")
    compare.add_argument("--plots", type=Path, metavar="DIR", help="write the figures into DIR")


def _fail(message: str) -> int:
    from enff.cli import _fail as fail

    return fail(message)


def cmd_sweep(args: argparse.Namespace) -> int:
    from enff.sweepspec import SpecError, load_spec, plan

    if args.workers < 1:
        return _fail(f"--workers must be >= 1, got {args.workers}")
    try:
        runs = plan(load_spec(args.spec))
    except SpecError as err:
        return _fail(str(err))
    from distributed import Client

    from enff.sweep import EXIT_SOME_FAILED, dashboard_link, format_report, local_cluster, run_sweep

    print(f"{len(runs)} runs into {runs[0].path.parent}")
    with ExitStack() as stack:
        if args.scheduler:
            try:
                client = stack.enter_context(Client(args.scheduler, timeout="20s"))
            except (OSError, TimeoutError) as err:
                return _fail(f"cannot connect to the scheduler {args.scheduler}: {err}")
        else:
            client = stack.enter_context(Client(stack.enter_context(local_cluster(args.workers))))
        link = dashboard_link(client)
        print(f"dashboard: {link}" if link else "dashboard: none (the scheduler serves none; install bokeh)")
        result = run_sweep(runs, client, retries=args.retries, progress=args.progress)
    print(format_report(result))
    return EXIT_SOME_FAILED if result.failures else 0


def cmd_compare(args: argparse.Namespace) -> int:
    from enff.compare import compare, format_comparison, records, write_csv, write_netcdf

    try:
        ds = compare(args.paths, burn_in=args.burn_in)
    except (OSError, ValueError, KeyError) as err:
        return _fail(str(err))
    notes = sys.stderr if args.json else sys.stdout
    if args.json:
        print(json.dumps(records(ds)))
    else:
        print(format_comparison(ds))
    if args.csv:
        write_csv(ds, args.csv)
        print(f"wrote {args.csv}", file=notes)
    if args.netcdf:
        write_netcdf(ds, args.netcdf)
        print(f"wrote {args.netcdf}", file=notes)
    if args.plots:
        from enff.compare_plots import plot_comparison

        for path in plot_comparison(ds, args.plots):
            print(f"wrote {path}", file=notes)
    return 0


#: Subcommand name -> handler, merged into :func:`enff.cli.main`'s table.
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"sweep": cmd_sweep, "compare": cmd_compare}
