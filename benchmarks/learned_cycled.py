"""A shipped (or any) learned field posterior cycled by ``enff run``'s runner against the case's ``[filter]``.

Both filters run on the same held-out truths and observations (``run.seed`` = each of ``--seeds``), for
``--cycles`` cycles, scored by :func:`enff.summary.summarize` (the scores of ``enff score``) after ``--burn-in``
cycles. Per run: RMSE, spread, spread / RMSE, CRPS, the runner's seconds per analysis, the process CPU seconds
of the whole run (spin-up and forecasts included) and the load average. Table: mean ± standard error over seeds;
"vs [filter]" is the mean of the per-seed differences ± its standard error and the ratio of the means.

    python benchmarks/learned_cycled.py --case ks128_sparse --posterior cases/posteriors/ks128_sparse.pt \
        --seeds 0 1 2 --cycles 500 --burn-in 100 --name learned_ks128_sparse
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402

from enff.amortized import load_posterior  # noqa: E402
from enff.casefile import load_case  # noqa: E402
from enff.cycle import run_case  # noqa: E402
from enff.summary import summarize  # noqa: E402


def mean_se(values: list[float], digits: int = 4) -> str:
    """``"mean ± standard error"`` (sample std / sqrt(n)), or the one value alone."""
    if len(values) == 1:
        return f"{values[0]:.{digits}g}"
    return f"{statistics.mean(values):.{digits}g} ± {statistics.stdev(values) / len(values) ** 0.5:.2g}"


def run_one(case_name: str, filter_name: str, seed: int, args: argparse.Namespace, out: Path,
            extra: list[str]) -> dict:
    case = load_case(case_name, filter_name=filter_name,
                     overrides=[f"run.seed={seed}", f"run.cycles={args.cycles}", *extra])
    wall, cpu = time.perf_counter(), time.process_time()
    run_case(case, out, overwrite=True, progress=False)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    scores = summarize(out, burn_in=args.burn_in)
    return {"filter": filter_name, "seed": seed, "rmse": scores["rmse"], "spread": scores["spread"],
            "spread_rmse_ratio": scores["spread_rmse_ratio"], "crps": scores["crps"],
            "analysis_seconds": scores["analysis_seconds"], "run_wall_seconds": wall, "run_cpu_seconds": cpu,
            "lost_track": scores["lost_track"], "load_average": os.getloadavg()[0]}


def markdown(rows: list[dict], args: argparse.Namespace, reference: str, posterior: dict) -> str:
    lines = [f"# The learned field analysis on {args.case}, cycled against its [filter] ({reference})", "",
             f"Made by `python benchmarks/learned_cycled.py --case {args.case} --posterior {args.posterior} --seeds "
             f"{' '.join(map(str, args.seeds))} --cycles {args.cycles} --burn-in {args.burn_in} --name {args.name}`. "
             f"CPU, {torch.get_num_threads()} torch thread, `enff run`'s runner; held-out seeds {args.seeds}, "
             f"{args.cycles} cycles, scores after a burn-in of {args.burn_in}; mean ± standard error over seeds. "
             f"Posterior: {posterior['estimator']} ({posterior['epochs']} epochs, best {posterior['best_epoch']}, "
             f"validation loss {posterior['best_validation_loss']:.4g}, sampling RK4 with {posterior['solver_steps']} "
             "steps).", "",
             f"| filter | RMSE | per seed | vs {reference} | spread | spread / RMSE | CRPS | s / analysis | "
             "CPU s / run | load |", "|---|---|---|---|---|---|---|---|---|---|"]
    ref = {r["seed"]: r["rmse"] for r in rows if r["filter"] == reference}
    for name in dict.fromkeys(r["filter"] for r in rows):
        mine = [r for r in rows if r["filter"] == name]
        if name == reference or not all(r["seed"] in ref for r in mine):
            versus = "—"
        else:
            diffs = [r["rmse"] - ref[r["seed"]] for r in mine]
            ratio = statistics.mean(r["rmse"] for r in mine) / statistics.mean(ref[r["seed"]] for r in mine) - 1
            versus = f"{mean_se(diffs, 3)} ({100 * ratio:+.1f} %)"
        loads = [r["load_average"] for r in mine]
        lines.append(f"| {name} | {mean_se([r['rmse'] for r in mine])} | "
                     f"{' / '.join(format(r['rmse'], '.3f') for r in mine)} | {versus} | "
                     f"{mean_se([r['spread'] for r in mine])} | {mean_se([r['spread_rmse_ratio'] for r in mine], 3)} | "
                     f"{mean_se([r['crps'] for r in mine])} | {mean_se([r['analysis_seconds'] for r in mine], 3)} | "
                     f"{mean_se([r['run_cpu_seconds'] for r in mine], 3)} | {min(loads):.1f}-{max(loads):.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="ks128_sparse")
    parser.add_argument("--posterior", type=Path, required=True, help="field posterior file to cycle")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--cycles", type=int, default=500)
    parser.add_argument("--burn-in", type=int, default=100)
    parser.add_argument("--name", default="learned_cycled_run", help="results/<name>.{md,json}")
    args = parser.parse_args()
    __import__("numba")  # importing numba resets torch's thread count (the LETKF imports it): import it first

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    flow = load_posterior(args.posterior)
    posterior = {"file": str(args.posterior), "estimator": flow.estimator, "solver_steps": flow.solver.n_steps,
                 "epochs": len(flow.history.validation_loss), "best_epoch": flow.history.best_epoch,
                 "best_validation_loss": min(flow.history.validation_loss),
                 "training_seconds": flow.history.seconds, "bytes": args.posterior.stat().st_size}
    reference = load_case(args.case).filter.name
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for name, extra in ((reference, []), ("learned", [f"filter.posterior='{args.posterior.resolve()}'"])):
                rows.append(run_one(args.case, name, seed, args, Path(tmp) / "run.nc", extra))
                print(json.dumps(rows[-1]), flush=True)
                write_results(args.name, {"settings": settings, "posterior": posterior, "rows": rows},
                              markdown(rows, args, reference, posterior))


if __name__ == "__main__":
    main()
