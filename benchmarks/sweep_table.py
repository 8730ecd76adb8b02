"""Benchmark tables from sweep specs: ``enff sweep`` each spec, then ``enff compare`` its runs.

Every benchmark that compares filters is a sweep spec under ``benchmarks/specs/`` plus this script (no
private cycle loops): the runs are ordinary ``enff run`` files made by ``enff sweep`` (one dask task per
run, one thread each; re-running resumes and skips finished runs), and the scores are
``enff.compare``'s, which equal ``enff score`` on each file. With ``--published`` the published table's
numbers are set beside ours, matched by setting, filter and ``S - 1 = filter.steps``.

Usage::

    python benchmarks/sweep_table.py SPEC [SPEC ...] [--workers 2] [--burn-in N | --last N]
        [--published docs/reference/enff_paper_results.csv] [--name NAME] [--compare-only]

Writes ``results/<NAME>.json`` (one row per configuration: ``enff compare --json`` fields plus the spec and
the published numbers) and ``results/<NAME>.md`` (the table, the machine, threads, seeds and burn-in).
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_results  # noqa: E402

from enff.compare import compare, format_comparison, records  # noqa: E402
from enff.sweepspec import PlannedRun, SweepSpec, load_spec, plan  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: One torch/numba/BLAS thread per run: runs share the machine's cores through the workers.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
#: Our filter names -> the published table's.
PUBLISHED_NAMES = {"enff-ot": "EnFF-OT", "enff-f2p": "EnFF-F2P", "ensf": "EnSF", "letkf": "LETKF", "enkf": "EnKF-PO",
                   "etkf": "ESRF", "bpf": "BPF"}


def run_sweep(spec: Path, workers: int) -> int:
    """``enff sweep SPEC --workers N`` in a subprocess; its exit status (4: some runs failed)."""
    enff = Path(sys.executable).parent / "enff"
    return subprocess.run([str(enff), "sweep", str(spec), "--workers", str(workers), "--quiet"], env=ENV,
                          check=False).returncode


def spec_cycles(spec: SweepSpec, runs: list[PlannedRun]) -> int:
    """The one ``run.cycles`` of every run of ``spec`` (``--last`` needs one)."""
    cycles = {run.cycles for run in runs}
    if len(cycles) != 1:
        raise SystemExit(f"{spec.source}: --last needs every run to have the same run.cycles, got {sorted(cycles)}")
    return cycles.pop()


def specs_by_out_dir(paths: list[Path], specs: list[SweepSpec]) -> dict[Path, list[tuple[Path, SweepSpec]]]:
    """The specs grouped by their out folder, in order: specs that share one (one spec per seed, say) are one
    table, since ``enff compare`` scores every run file in the folder."""
    groups: dict[Path, list[tuple[Path, SweepSpec]]] = {}
    for path, spec in zip(paths, specs):
        groups.setdefault(spec.out_dir.resolve(), []).append((path, spec))
    return groups


def published_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def published_match(row: dict[str, Any], steps: int | None, table: list[dict[str, str]]) -> dict[str, str] | None:
    """The published row of this configuration's setting and filter (and step count, for the flows)."""
    name = PUBLISHED_NAMES.get(row["filter"])
    for pub in table:
        if pub["setting"] == row["case"] and pub["filter"] == name:
            if not pub["euler_steps"] or (steps is not None and int(pub["euler_steps"]) == steps):
                return pub
    return None


def filter_steps(runs: list[PlannedRun], row: dict[str, Any]) -> int | None:
    """``filter.steps`` of a configuration: its override, else the case's value for the filter."""
    if "filter.steps" in row["overrides"]:
        return int(row["overrides"]["filter.steps"])
    for run in runs:
        if Path(run.case_ref).stem == row["case"] and run.filter == row["filter"]:
            return getattr(run.case.filter, "steps", None)
    return None


def _num(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}g}"


def published_markdown(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| setting | filter | S - 1 | hyper-parameters | seeds | diverged | RMSE ours | RMSE published | "
             "energy score ours | energy score published | s/analysis ours | s/analysis published |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        pub = row.get("published") or {}
        hyper = ", ".join(f"{k.removeprefix('filter.')}={v}" for k, v in row["overrides"].items() if k != "filter.steps")
        rmse = _num(row["rmse"]) + (f" ± {_num(row['rmse_se'], 2)}" if row["rmse_se"] is not None else "")
        lines.append(f"| {row['case']} | {row['filter']} | {row.get('steps') or ''} | {hyper or 'case'} | "
                     f"{row['seeds']} | {row['diverged'] + row['failed']} | {rmse} | {pub.get('rmse', '')} | "
                     f"{_num(row.get('energy_score'))} | {pub.get('energy_score', '')} | "
                     f"{_num(row['analysis_seconds'], 3)} | {pub.get('seconds_per_analysis', '')} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="+", type=Path)
    parser.add_argument("--workers", type=int, default=2)
    window = parser.add_mutually_exclusive_group()
    window.add_argument("--burn-in", type=int, default=None, help="cycles left out (default: each run's cycles // 10)")
    window.add_argument("--last", type=int, default=None, help="score only the last N cycles of every run")
    parser.add_argument("--published", type=Path, default=None, help="published results CSV to set beside ours")
    parser.add_argument("--name", default=None, help="result file stem under results/ (default: the first spec's)")
    parser.add_argument("--compare-only", action="store_true", help="score the run files already in the out folders")
    args = parser.parse_args()
    specs = [load_spec(path) for path in args.specs]
    failed = [] if args.compare_only else [str(p) for p in args.specs if run_sweep(p, args.workers) != 0]
    table = published_rows(args.published) if args.published else []
    rows: list[dict[str, Any]] = []
    texts = []
    for out_dir, group in specs_by_out_dir(args.specs, specs).items():
        runs = [run for _, spec in group for run in plan(spec)]  # builds every run's case once
        burn_in = spec_cycles(group[0][1], runs) - args.last if args.last is not None else args.burn_in
        ds = compare([out_dir], burn_in=burn_in)
        names = ", ".join(str(path.resolve().relative_to(ROOT) if path.resolve().is_relative_to(ROOT) else path)
                          for path, _ in group)
        texts.append(f"{names} (burn-in {ds.attrs['burn_in']}):\n{format_comparison(ds)}")
        for row in records(ds):
            row.update(spec=", ".join(str(path) for path, _ in group), burn_in=ds.attrs["burn_in"])
            if table:
                row["steps"] = filter_steps(runs, row)
                row["published"] = published_match(row, row["steps"], table)
            rows.append(row)
    info = machine()
    window_text = (f"the last {args.last} cycles of every run" if args.last is not None else
                   f"the cycles after a burn-in of {args.burn_in}" if args.burn_in is not None else
                   "the cycles after each run's default burn-in (cycles // 10)")
    seeds = sorted({s for spec in specs for s in spec.seeds})
    summary = [
        f"# {args.name or args.specs[0].stem}",
        "",
        f"Made by `python benchmarks/sweep_table.py {' '.join(str(p) for p in args.specs)}"
        f"{f' --last {args.last}' if args.last is not None else ''}"
        f"{f' --burn-in {args.burn_in}' if args.burn_in is not None else ''}"
        f"{f' --published {args.published}' if args.published else ''}"
        f"{' --compare-only' if args.compare_only else ''}{f' --name {args.name}' if args.name else ''}`. Machine: "
        f"{info.get('cpu_model', info['processor'])}, {info['cpu_count']} cores, device cpu, one torch thread per run, "
        f"{args.workers} dask workers (seconds per analysis were measured with that many runs at once). Seeds "
        f"{seeds}; scores over {window_text}; mean ± standard error over seeds.",
        "",
    ]
    if table:
        summary += published_markdown(rows) + [""]
    summary += ["```", "\n\n".join(texts), "```"]
    if failed:
        summary += ["", f"Sweeps with failed runs: {', '.join(failed)} (see `enff sweep` output)."]
    name = args.name or args.specs[0].stem
    write_results(name, {"specs": [str(p) for p in args.specs], "rows": rows}, "\n".join(summary))
    print("\n".join(summary))


if __name__ == "__main__":
    main()
