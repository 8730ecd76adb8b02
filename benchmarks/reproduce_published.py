"""Reproduce the published settings with the shipped cases and compare with the published table.

For each setting and filter, runs the shipped case (published hyper-parameters; ``steps`` = S - 1
velocity evaluations) for one or more seeds through the ordinary cycle runner, then scores the last
50 analyses as the published table does: RMSE of the mean, fair CRPS, fair energy score and seconds per
analysis.

    python benchmarks/reproduce_published.py --settings ks1024_atan --filters enff-ot enff-f2p ensf letkf --seeds 0 1 2
    python benchmarks/reproduce_published.py --settings l96_1e6_atan --filters enff-f2p --published-grid --steps 99 \
        --workdir runs/repro   # rerun the same command to resume after an interruption

Writes results/reproduce_published.json and results/reproduce_published.md (rows are merged with an
earlier result file, so settings can be run in separate sessions).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, write_results  # noqa: E402

import torch  # noqa: E402

from enff.casefile import load_case  # noqa: E402
from enff.cycle import Divergence, run_case  # noqa: E402
from enff.filters import FILTERS  # noqa: E402
from enff.runfile import open_run  # noqa: E402

PUBLISHED = Path(__file__).resolve().parents[2] / "shared" / "reference" / "enff_paper_results.csv"
NAMES = {"enff-ot": "EnFF-OT", "enff-f2p": "EnFF-F2P", "ensf": "EnSF", "letkf": "LETKF", "enkf": "EnKF-PO",
         "etkf": "ESRF", "bpf": "BPF"}
LAST = 50


def published_rows() -> list[dict[str, str]]:
    if not PUBLISHED.is_file():
        return []
    with PUBLISHED.open() as handle:
        return list(csv.DictReader(handle))


def published_for(setting: str, filter_name: str, steps: int | None) -> dict[str, str] | None:
    for row in published_rows():
        if row["setting"] == setting and row["filter"] == NAMES.get(filter_name):
            if steps is None or row["euler_steps"] in ("", str(steps)):
                return row
    return None


#: Published hyper-parameter names -> our case keys.
HYPER_KEYS = {"sigma_min": "filter.sigma_min", "lambda": "filter.guidance_scale", "epsilon_alpha": "filter.eps_alpha",
              "epsilon_beta": "filter.eps_beta"}


def published_overrides(setting: str, filter_name: str) -> list[list[str]]:
    """One override list per published row of ``setting`` and ``filter_name``: steps and hyper-parameters."""
    grids = []
    for row in published_rows():
        if row["setting"] != setting or row["filter"] != NAMES.get(filter_name) or not row["euler_steps"]:
            continue
        sets = [f"filter.steps={int(row['euler_steps'])}"]
        for text in (row["hp1"], row["hp2"]):
            if text:
                key, value = text.split("=")
                sets.append(f"{HYPER_KEYS[key]}={float(value)}")
        grids.append(sets)
    return grids


def run(setting: str, filter_name: str, seed: int, overrides: list[str], workdir: Path) -> dict:
    """Run one case in ``workdir`` and score it; a run file an interrupted earlier call left there is resumed.

    Resuming needs the same case (a different one is an error naming the file); the run file is deleted
    once scored. ``wall_seconds`` then covers only the resumed part, ``seconds_per_analysis`` every cycle.
    """
    case = load_case(setting, filter_name=filter_name, overrides=[f"run.seed={seed}", *overrides])
    out = workdir / f"{setting}_{filter_name}_{seed}.nc"
    start = time.perf_counter()
    resume = out.is_file()
    hyper = dict(case.tables["filter"])  # the [filter] table as run (name included)
    row = {"setting": setting, "filter": filter_name, "seed": seed, "hyper": hyper,
           "steps": hyper.get("steps"), "overrides": overrides, "torch_threads": torch.get_num_threads()}
    if resume:
        row["resumed"] = True
        print(f"resuming {out}", flush=True)
    try:
        summary = run_case(case, out, resume=resume, overwrite=not resume, progress=None)
    except Divergence as err:
        row.update(error=str(err))
        return row
    ds = open_run(out).isel(time=slice(-LAST, None))
    row.update(
        cycles=summary.cycles_done, rmse=float(ds["rmse_analysis"].mean()), crps=float(ds["crps_analysis"].mean()),
        energy_score=float(ds["energy_score_analysis"].mean()),
        seconds_per_analysis=float(ds["analysis_seconds"].mean()), wall_seconds=time.perf_counter() - start,
    )
    for name in ds.data_vars:
        if str(name).startswith("diag_"):
            row[str(name)] = float(ds[name].mean())
    out.unlink()
    return row


def has_scored_row(rows: list[dict], setting: str, filter_name: str, seed: int, overrides: list[str]) -> bool:
    """Whether ``rows`` already score this configuration and seed (however its overrides were spelled)."""
    case = load_case(setting, filter_name=filter_name, overrides=[f"run.seed={seed}", *overrides])
    wanted = configuration({"setting": setting, "filter": filter_name, "hyper": dict(case.tables["filter"]),
                            "overrides": overrides})
    return any(configuration(r) == wanted and r["seed"] == seed and "error" not in r for r in rows)


def row_key(row: dict) -> tuple:
    """What makes a row one run: setting, filter, seed and overrides (a rerun replaces the row)."""
    return row["setting"], row["filter"], row["seed"], json.dumps(row.get("overrides", []))


def _case_overrides(row: dict) -> list[str]:
    """The row's overrides outside ``[filter]`` (e.g. ``ensemble.initial_std=0.5``): part of its configuration."""
    return [o for o in row.get("overrides", []) if not o.startswith("filter.")]


def _filled_hyper(row: dict) -> dict:
    """The row's ``[filter]`` table with the filter's defaults for keys it lacks (a row written before a
    key existed ran with that key's default)."""
    fields = dataclasses.fields(FILTERS[row["filter"]]) if row["filter"] in FILTERS else ()
    defaults = {f.name: f.default for f in fields if f.default is not dataclasses.MISSING}
    return {**defaults, **row["hyper"]}


def configuration(row: dict) -> tuple:
    """What makes rows comparable: setting, filter, resolved ``[filter]`` table and other case overrides."""
    return (row["setting"], row["filter"], json.dumps(_filled_hyper(row), sort_keys=True),
            json.dumps(_case_overrides(row)))


def _hyper_text(row: dict) -> str:
    skip = {"name", "steps", "guidance", "sampler", "score"}
    return ", ".join([f"{k}={v}" for k, v in row["hyper"].items() if k not in skip] + _case_overrides(row))


def markdown(rows: list[dict]) -> str:
    info = machine()
    lines = [
        "# Published settings: ours beside the published results",
        "",
        f"Ours: {info.get('cpu_model', info['processor'])}, {info['cpu_count']} cores shared with other jobs, torch "
        f"threads per run {sorted({r.get('torch_threads') for r in rows}, key=str)}, device {info['cuda'] or 'cpu'}. "
        f"Scores are means over the last {LAST} analyses "
        "(as published), then mean ± std over seeds. S = number of velocity evaluations (published "
        "'grid points' minus one). Energy score is the fair estimator over the whole state; the published "
        "'crps' column is that energy score. Published seconds are CPU process time on their GPU machine: "
        "compare ratios, not absolute times. Navier-Stokes states are pressure and velocity at every point, "
        "as in the published code (`navier_stokes2d_primitive`; vorticity-state runs are in "
        "`reproduce_published_ns_vorticity.md`).",
        "",
        "| setting | filter | S | hyper-parameters | seeds | cycles | RMSE ours | RMSE published | CRPS ours | "
        "energy score ours | energy score published | s/analysis ours | s/analysis published |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:  # one group per configuration; the same configuration and seed counts once
        group = groups.setdefault((r["setting"], r["filter"], r.get("steps"), *configuration(r)[2:]), [])
        if all(other["seed"] != r["seed"] for other in group):
            group.append(r)
    for (setting, filt, steps, *_), group in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or 0)):
        ok = [r for r in group if "error" not in r]
        pub = published_for(setting, filt, steps) or {}

        def stat(key: str) -> str:
            vals = [r[key] for r in ok]
            if not vals:
                return "diverged"
            return f"{statistics.mean(vals):.4g}" + (f" ± {statistics.stdev(vals):.2g}" if len(vals) > 1 else "")

        lines.append(
            f"| {setting} | {filt} | {steps if steps is not None else ''} | {_hyper_text(group[0])} | "
            f"{','.join(str(r['seed']) for r in group)} | "
            f"{ok[0]['cycles'] if ok else ''} | {stat('rmse')} | {pub.get('rmse', '')} | {stat('crps')} | "
            f"{stat('energy_score')} | {pub.get('energy_score', '')} | {stat('seconds_per_analysis')} | "
            f"{pub.get('seconds_per_analysis', '')} |")
    ran = {(r["setting"], NAMES.get(r["filter"]), str(r.get("steps") or "")) for r in rows if "error" not in r}
    missing = [f"{p['setting']} {p['filter']} S={p['euler_steps']}" for p in published_rows()
               if p["euler_steps"] and (p["setting"], p["filter"], p["euler_steps"]) not in ran]
    if missing:
        lines += ["", f"Published rows with no run of ours yet ({len(missing)}): " + "; ".join(missing) + "."]
    failed = [r for r in rows if "error" in r]
    if failed:
        lines += ["", "Diverged runs: " + "; ".join(f"{r['setting']} {r['filter']} seed {r['seed']}: {r['error']}"
                                                    for r in failed)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=["ks1024_atan"])
    parser.add_argument("--filters", nargs="+", default=["enff-ot", "enff-f2p", "ensf"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra case override")
    parser.add_argument("--fresh", action="store_true", help="do not merge with an earlier result file")
    parser.add_argument("--name", default="reproduce_published", help="result file stem under results/")
    parser.add_argument("--merge", nargs="+", type=Path, default=[],
                        help="only merge the rows of these result JSON files into --name and rewrite the summary")
    parser.add_argument("--published-grid", action="store_true",
                        help="run every published (S, hyper-parameter) row of each setting and filter")
    parser.add_argument("--steps", nargs="+", type=int, default=None,
                        help="with --published-grid: only the rows with these step counts S")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep run files here (default: a temporary folder) so an interrupted call can be "
                             "rerun to resume them")
    parser.add_argument("--missing", action="store_true",
                        help="skip configurations and seeds that already have a scored row in the result file")
    args = parser.parse_args()
    previous = RESULTS / f"{args.name}.json"
    rows: list[dict] = []
    if previous.is_file() and not args.fresh:
        rows = json.loads(previous.read_text())["rows"]
    if args.merge:
        merged = {row_key(r): r for r in rows}
        for path in args.merge:
            merged.update({row_key(r): r for r in json.loads(path.read_text())["rows"]})
        rows = list(merged.values())
        write_results(args.name, {"rows": rows}, markdown(rows))
        return
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        workdir = args.workdir or Path(scratch)
        for setting in args.settings:
            for filter_name in args.filters:
                grid = published_overrides(setting, filter_name) if args.published_grid else [[]]
                if args.published_grid and args.steps is not None:
                    grid = [sets for sets in grid if int(sets[0].split("=")[1]) in args.steps]
                for extra in grid:
                    overrides = [*extra, *args.overrides]
                    for seed in args.seeds:
                        key = row_key({"setting": setting, "filter": filter_name, "seed": seed, "overrides": overrides})
                        if args.missing and has_scored_row(rows, setting, filter_name, seed, overrides):
                            continue
                        rows = [r for r in rows if row_key(r) != key]
                        rows.append(run(setting, filter_name, seed, overrides, workdir))
                        write_results(args.name, {"rows": rows}, markdown(rows))
                        print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
