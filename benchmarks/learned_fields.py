"""The learned field analysis (filter ``learned`` with a field posterior) against the LETKF it learns from.

Training analyses are simulated without files: the case cycled by its own ``[filter]`` (the LETKF) on training
seeds (other truths). The field posterior is trained by flow matching; then the learned analysis and the LETKF
are cycled on held-out seeds. Scores: means over the cycles after a 10 % burn-in, then mean and std over the
held-out seeds; the load average is recorded beside every time.

    python benchmarks/learned_fields.py --case l96_40_sparse --train-seeds 1 2 3 4 5 6 7 8 --eval-seeds 0 100 101
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import score_cells_by_filter, write_results  # noqa: E402

from enff.amortized import SolverConfig, TrainingConfig  # noqa: E402
from enff.amortized.field_analysis import FieldFMPE  # noqa: E402
from enff.amortized.field_data import simulated_training_set  # noqa: E402
from enff.amortized.field_network import FieldNetworkConfig  # noqa: E402
from enff.casefile import load_case  # noqa: E402
from enff.cycle import run_case  # noqa: E402
from enff.runfile import open_run  # noqa: E402

SCORES = ("rmse_analysis", "spread_analysis", "crps_analysis", "analysis_seconds")


def cycle(case_name: str, filter_name: str, seed: int, cycles: int, out: Path, extra: list[str]) -> dict:
    """Run one filter on one seed and return its scores after a 10 % burn-in."""
    case = load_case(case_name, filter_name=filter_name, overrides=[f"run.seed={seed}", f"run.cycles={cycles}", *extra])
    run_case(case, out, overwrite=True, progress=False)
    with open_run(out) as ds:
        kept = ds.isel(time=slice(cycles // 10, None))
        return {name: float(kept[name].mean()) for name in SCORES}


def markdown(rows: list[dict], trained: dict, args: argparse.Namespace) -> str:
    lines = [
        f"# Learned field analysis on {args.case}",
        "",
        f"CPU, {torch.get_num_threads()} torch thread(s), 2 shared cores (load average at the end "
        f"{os.getloadavg()[0]:.1f}). Training analyses: the case's [filter] cycled {args.train_cycles} cycles on "
        f"training seeds {args.train_seeds} (burn-in {args.burn_in}), simulated without files; field network "
        f"{trained['network']}; flow matching, {trained['epochs']} epochs (best {trained['best_epoch']}), "
        f"{trained['seconds']:.0f} s. Sampling: RK4 with {args.solver_steps} steps. Held-out seeds {args.eval_seeds}, "
        f"{args.cycles} cycles, scores after {args.cycles // 10} (mean ± std over seeds).",
        "",
        "| filter | RMSE | spread | CRPS | s/analysis |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {label} | {' | '.join(cells)} |" for label, cells in score_cells_by_filter(rows)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="l96_40_sparse")
    parser.add_argument("--train-seeds", nargs="+", type=int, default=[1, 2, 3, 4, 5, 6, 7, 8])
    parser.add_argument("--train-cycles", type=int, default=1000)
    parser.add_argument("--burn-in", type=int, default=100)
    parser.add_argument("--eval-seeds", nargs="+", type=int, default=[0, 100, 101])
    parser.add_argument("--cycles", type=int, default=300)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--set-channels", type=int, default=0)
    parser.add_argument("--dilations", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--max-epochs", type=int, default=100)
    parser.add_argument("--solver-steps", type=int, default=5)
    parser.add_argument("--name", default="learned_fields")
    args = parser.parse_args()
    import numba  # noqa: F401  (importing numba resets torch's thread count; the LETKF imports it)

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    case = load_case(args.case)
    start = time.perf_counter()
    data = simulated_training_set(case, args.train_seeds, args.train_cycles, burn_in=args.burn_in)
    simulated = time.perf_counter() - start
    print(json.dumps({"analyses": data.size, "simulation_seconds": simulated}), flush=True)
    network = FieldNetworkConfig(channels=args.channels, set_channels=args.set_channels,
                                 dilations=tuple(args.dilations))
    estimator = FieldFMPE(network=network, solver=SolverConfig(n_steps=args.solver_steps),
                          training=TrainingConfig(batch_size=64, max_epochs=args.max_epochs, patience=15,
                                                  progress=False))
    start = time.perf_counter()
    posterior = estimator.fit(data)
    trained = {"network": repr(network), "analyses": data.size, "epochs": len(posterior.history.validation_loss),
               "best_epoch": posterior.history.best_epoch, "seconds": time.perf_counter() - start,
               "simulation_seconds": simulated, "load_average": os.getloadavg()[0],
               "best_validation_loss": min(posterior.history.validation_loss)}
    print(json.dumps(trained), flush=True)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        path = work / "posterior.pt"
        posterior.save(path)
        filters = {case.filter.name: [], "learned": [f"filter.posterior='{path}'"]}
        for seed in args.eval_seeds:
            for name, extra in filters.items():
                row = {"filter": name, "seed": seed, "load_average": os.getloadavg()[0],
                       **cycle(args.case, name, seed, args.cycles, work / "eval.nc", extra)}
                rows.append(row)
                print(json.dumps(row), flush=True)
                write_results(args.name, {"settings": vars(args), "training": trained, "rows": rows},
                              markdown(rows, trained, args))


if __name__ == "__main__":
    main()
