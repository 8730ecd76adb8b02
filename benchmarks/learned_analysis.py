"""Learned analysis step (filter ``learned``, an FMPE posterior) in cycling runs, against the filters it learns from.

Training pairs come from ETKF runs of the case on training seeds (other truths); the learned analysis is then
cycled on held-out seeds beside the ETKF, the EnKF and the free ensemble. Scores are means over the cycles after
a burn-in of 10 %, then mean and std over the held-out seeds.

    python benchmarks/learned_analysis.py --case l63 --train-seeds 1 2 3 4 5 6 7 8 --sizes 2 8 --eval-seeds 0 100 101
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import score_cells_by_filter, write_results  # noqa: E402

from enff.amortized import TrainingConfig  # noqa: E402
from enff.amortized.analysis import analysis_training_set, fit_learned_analysis  # noqa: E402
from enff.casefile import load_case  # noqa: E402
from enff.cycle import run_case  # noqa: E402
from enff.runfile import open_run  # noqa: E402

SCORES = ("rmse_analysis", "spread_analysis", "crps_analysis", "analysis_seconds")


def cycle(case_name: str, filter_name: str, seed: int, cycles: int, out: Path, extra: list[str] | None = None) -> dict:
    """Run one filter on one seed and return its scores after a 10 % burn-in."""
    case = load_case(case_name, filter_name=filter_name,
                     overrides=[f"run.seed={seed}", f"run.cycles={cycles}", *(extra or [])])
    run_case(case, out, overwrite=True, progress=False)
    with open_run(out) as ds:
        kept = ds.isel(time=slice(cycles // 10, None))
        return {name: float(kept[name].mean()) for name in SCORES}


def markdown(rows: list[dict], trained: list[dict], args: argparse.Namespace, threads: int) -> str:
    lines = [
        f"# Learned analysis step on {args.case}",
        "",
        f"CPU, {threads} torch thread(s), 2 shared cores. Training pairs: ETKF runs of {args.cycles} cycles on "
        f"training seeds {args.train_seeds} (burn-in {args.burn_in}); the learned analysis is an FMPE flow over "
        "the state conditioned on (observation, forecast mean, forecast spread), default network and training, "
        f"RK4 with 50 steps. Scores: means over cycles {args.cycles // 10}..{args.cycles} of held-out seeds "
        f"{args.eval_seeds} (mean ± std over seeds).",
        "",
        "| filter | training pairs | RMSE | spread | CRPS | s/analysis |",
        "|---|---|---|---|---|---|",
    ]
    pairs = {t["filter"]: t["pairs"] for t in trained}
    lines += [f"| {label} | {pairs.get(label, '')} | {' | '.join(cells)} |"
              for label, cells in score_cells_by_filter(rows)]
    lines += ["", "Training: " + "; ".join(f"{t['filter']}: {t['pairs']} pairs, {t['epochs']} epochs, "
                                          f"{t['seconds']:.0f} s" for t in trained)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="l63")
    parser.add_argument("--train-seeds", nargs="+", type=int, default=[1, 2, 3, 4, 5, 6, 7, 8])
    parser.add_argument("--sizes", nargs="+", type=int, default=[2, 8], help="numbers of training runs to learn from")
    parser.add_argument("--eval-seeds", nargs="+", type=int, default=[0, 100, 101])
    parser.add_argument("--cycles", type=int, default=2000)
    parser.add_argument("--burn-in", type=int, default=100)
    parser.add_argument("--baselines", nargs="+", default=["etkf", "enkf", "none"])
    parser.add_argument("--name", default="learned_analysis")
    args = parser.parse_args()
    rows: list[dict] = []
    trained: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        train_files = []
        for seed in args.train_seeds:
            train_files.append(work / f"train_{seed}.nc")
            cycle(args.case, "etkf", seed, args.cycles, train_files[-1])
        filters: dict[str, list[str]] = {name: [] for name in args.baselines}
        for size in args.sizes:
            theta, context = analysis_training_set(train_files[:size], burn_in=args.burn_in)
            start = time.perf_counter()
            posterior = fit_learned_analysis(theta, context, TrainingConfig(progress=False))
            label = f"learned ({size} ETKF runs)"
            trained.append({"filter": label, "pairs": int(theta.shape[0]), "seconds": time.perf_counter() - start,
                            "epochs": len(posterior.history.validation_loss)})
            path = work / f"learned_{size}.pt"
            posterior.save(path)
            filters[label] = [f"filter.posterior='{path}'"]
            print(json.dumps(trained[-1]), flush=True)
        for seed in args.eval_seeds:
            for label, extra in filters.items():
                name = "learned" if label.startswith("learned") else label
                row = {"filter": label, "seed": seed,
                       **cycle(args.case, name, seed, args.cycles, work / "eval.nc", extra)}
                rows.append(row)
                print(json.dumps(row), flush=True)
                write_results(args.name, {"settings": vars(args), "training": trained, "rows": rows},
                              markdown(rows, trained, args, torch.get_num_threads()))


if __name__ == "__main__":
    main()
