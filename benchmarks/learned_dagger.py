"""The learned field analysis trained on its own cycles (DAgger-style rounds), against the LETKF on held-out truths.

A field posterior trained on the LETKF's cycles (``--start``, the one ``l96_40_sparse`` ships) meets other
forecasts when it cycles on its own analyses. Each round here cycles the current posterior on new training truths
(seeds disjoint from the held-out ones), adds those analyses' (truth, observation, forecast ensemble) to the
training set (the LETKF's analyses of ``--base-seeds`` first), fine-tunes the posterior on all of it, and scores
it cycled on the held-out seeds against the case's ``[filter]`` (the LETKF) on the same truths and observations.
The learned analyses of all seeds of a round run as one batch of the network
(:func:`enff.amortized.field_data.cycle_field_posterior`); the LETKF runs through ``enff run``'s runner. CPU
time (one thread) and wall time of every step are recorded with the load average; each round's posterior is
written to ``--save-dir``.

    python benchmarks/learned_dagger.py --case l96_40_sparse --rounds 3 --name learned_dagger
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402
from learned_fields import cycle, mean_se  # noqa: E402

from enff.amortized import SolverConfig, TrainingConfig, load_posterior  # noqa: E402
from enff.amortized.field_analysis import FieldContext, FieldFMPE, FieldPosterior, FieldTrainingSet  # noqa: E402
from enff.amortized.field_data import cycle_field_posterior, simulated_training_set  # noqa: E402
from enff.casefile import load_case  # noqa: E402


class Clock:
    """Wall and process CPU seconds of a block, with the load average at its end."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        self.load = os.getloadavg()[0]

    def record(self) -> dict:
        return {"wall_seconds": self.wall, "cpu_seconds": self.cpu, "load_average": self.load}


def scored(run, seeds: list[int], burn_in: int) -> list[dict]:
    """Per-seed time means of a :class:`CycledPosterior`'s RMSE and spread after ``burn_in`` cycles."""
    return [{"seed": s, "rmse_analysis": float(run.rmse[i, burn_in:].mean()),
             "spread_analysis": float(run.spread[i, burn_in:].mean())} for i, s in enumerate(seeds)]


def summary(rows: list[dict], reference: dict[int, float]) -> dict:
    """Mean RMSE, mean spread / RMSE and the mean paired difference to the reference RMSE of the same seeds."""
    rmse = [r["rmse_analysis"] for r in rows]
    diffs = [r["rmse_analysis"] - reference[r["seed"]] for r in rows]
    ref = statistics.mean(reference[r["seed"]] for r in rows)
    return {"rmse": statistics.mean(rmse), "rmse_se": statistics.stdev(rmse) / len(rmse) ** 0.5,
            "ratio": statistics.mean(r["spread_analysis"] / r["rmse_analysis"] for r in rows),
            "paired_diff": statistics.mean(diffs), "paired_se": statistics.stdev(diffs) / len(diffs) ** 0.5,
            "vs_reference_percent": 100 * (statistics.mean(rmse) / ref - 1)}


def markdown(result: dict, args: argparse.Namespace) -> str:
    official = args.eval_seeds
    letkf = {r["seed"]: r["rmse_analysis"] for r in result["letkf"]}
    lines = [f"# Learned field analysis on {args.case}, trained on its own cycles (DAgger-style rounds)", "",
             f"CPU, {result.get('torch_threads', torch.get_num_threads())} torch thread(s), 2 shared cores. Start: "
             f"{args.start}; each round cycles "
             f"the current posterior {args.collect_cycles} cycles on {args.seeds_per_round} new training truths "
             f"(analyses after cycle {args.collect_burn_in} kept), adds them to the training set (the case's "
             f"[filter] on seeds {args.base_seeds}, {args.base_cycles} cycles, burn-in {args.base_burn_in}, first) "
             f"and fine-tunes {args.epochs} epochs (batch {args.batch_size}, learning rate {args.learning_rate}). "
             f"Sampling: RK4 with {args.solver_steps} steps. Scored cycled on held-out seeds {official} (and "
             f"{args.extra_seeds}), {args.cycles} cycles, scores after {args.cycles // 10}, against the case's "
             f"[filter] on the same truths; mean ± standard error over seeds, 'vs LETKF' the paired difference.", "",
             "| round | training analyses | RMSE (seeds " + " / ".join(map(str, official)) + ") | mean | vs LETKF | "
             "spread / RMSE | all held-out seeds: mean, vs LETKF | CPU s (collect + fit) | load |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines.append(f"| LETKF | — | {' / '.join(f'{letkf[s]:.3f}' for s in official)} | "
                 f"{mean_se([letkf[s] for s in official])} | — | "
                 f"{mean_se([r['spread_analysis'] / r['rmse_analysis'] for r in result['letkf'] if r['seed'] in official])}"
                 f" | {mean_se(list(letkf.values()))} | — | — |")
    for rnd in result["rounds"]:
        rows = {r["seed"]: r for r in rnd["scores"]}
        main_rows = [rows[s] for s in official]
        a, b = summary(main_rows, letkf), summary(list(rows.values()), letkf)
        cpu = (f"{rnd['collect']['cpu_seconds']:.0f} + {rnd['fit']['cpu_seconds']:.0f}" if "fit" in rnd else "—")
        label = f"{rnd['round']} (start)" if "fit" not in rnd else str(rnd["round"])
        analyses = rnd["training_analyses"] or "—"
        lines.append(f"| {label} | {analyses} | "
                     f"{' / '.join(format(rows[s]['rmse_analysis'], '.3f') for s in official)} | "
                     f"{a['rmse']:.3f} ± {a['rmse_se']:.2g} | {a['paired_diff']:+.3f} ± {a['paired_se']:.2g} "
                     f"({a['vs_reference_percent']:+.1f} %) | {a['ratio']:.2f} | {b['rmse']:.3f}, "
                     f"{b['paired_diff']:+.3f} ± {b['paired_se']:.2g} ({b['vs_reference_percent']:+.1f} %) | {cpu} | "
                     f"{rnd['evaluate']['load_average']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="l96_40_sparse")
    parser.add_argument("--start", type=Path, default=Path("cases/posteriors/l96_40_sparse.pt"))
    parser.add_argument("--base-seeds", nargs="*", type=int, default=[1, 2, 3, 4, 5, 6, 7, 8])
    parser.add_argument("--base-cycles", type=int, default=1000)
    parser.add_argument("--base-burn-in", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=200, help="training truths of round r: first-seed + "
                        "(r - 1) * seeds-per-round, ... (disjoint from the held-out seeds)")
    parser.add_argument("--seeds-per-round", type=int, default=8)
    parser.add_argument("--collect-cycles", type=int, default=300)
    parser.add_argument("--collect-burn-in", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--solver-steps", type=int, default=5)
    parser.add_argument("--eval-seeds", nargs="+", type=int, default=[0, 100, 101])
    parser.add_argument("--extra-seeds", nargs="*", type=int, default=[102, 103, 104])
    parser.add_argument("--cycles", type=int, default=300)
    parser.add_argument("--first-round", type=int, default=1, help="number of the first round (a continued "
                        "series: --start the last round's posterior, --own-data its file)")
    parser.add_argument("--own-data", type=Path, help="file of the own-cycle analyses: read at the start when it "
                        "exists, rewritten after every round (tensors only)")
    parser.add_argument("--skip-start-eval", action="store_true", help="do not score the start posterior (round "
                        "first-round - 1) again")
    parser.add_argument("--save-dir", type=Path, default=Path("dagger_posteriors"))
    parser.add_argument("--name", default="learned_dagger_run", help="results/<name>.{md,json}")
    args = parser.parse_args()
    __import__("numba")  # importing numba resets torch's thread count (the LETKF imports it): import it first

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    held_out = [*args.eval_seeds, *args.extra_seeds]
    last_round = args.first_round + args.rounds - 1
    training_seeds = {args.first_seed + i for i in range(last_round * args.seeds_per_round)} | set(args.base_seeds)
    if training_seeds & set(held_out):
        raise SystemExit(f"training seeds {sorted(training_seeds & set(held_out))} are held out")
    case = load_case(args.case)
    posterior = load_posterior(args.start)
    if not isinstance(posterior, FieldPosterior):
        raise SystemExit(f"{args.start} is not a field posterior")
    solver = SolverConfig(n_steps=args.solver_steps)
    posterior.solver = solver
    args.save_dir.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    result: dict = {"settings": settings, "torch_threads": torch.get_num_threads(), "letkf": [], "rounds": []}

    def save() -> None:
        write_results(args.name, result, markdown(result, args))

    with Clock() as clock:
        for seed in held_out:
            out = args.save_dir / "letkf.nc"
            result["letkf"].append({"seed": seed, **cycle(args.case, case.filter.name, seed, args.cycles, out, [])})
    result["letkf_time"] = clock.record()
    print(json.dumps(result["letkf"]), flush=True)

    def evaluate(rnd: int) -> dict:
        with Clock() as clock:
            run = cycle_field_posterior(case, posterior, held_out, args.cycles,
                                        generator=torch.Generator().manual_seed(10_000 + rnd))
        return {"scores": scored(run, held_out, args.cycles // 10), "evaluate": clock.record()}

    parts: list[FieldTrainingSet] = []
    if args.base_seeds:
        with Clock() as clock:
            parts.append(simulated_training_set(case, args.base_seeds, args.base_cycles, burn_in=args.base_burn_in))
        result["base_data"] = {"analyses": parts[0].size, **clock.record()}
        print(json.dumps(result["base_data"]), flush=True)
    names = ("truth", "observation", "mask", "forecast")
    if args.own_data and args.own_data.exists():
        own_data = torch.load(args.own_data, weights_only=True)
        parts.append(FieldTrainingSet(own_data["truth"], FieldContext(*(own_data[k] for k in names[1:])),
                                      posterior.layout))
        result["own_data_read"] = {"file": str(args.own_data), "analyses": parts[-1].size}
    if not args.skip_start_eval:
        result["rounds"].append({"round": args.first_round - 1, "training_analyses": 0,
                                 **evaluate(args.first_round - 1)})
        print(json.dumps(result["rounds"][-1]), flush=True)
    save()
    for rnd in range(args.first_round, last_round + 1):
        seeds = [args.first_seed + (rnd - 1) * args.seeds_per_round + i for i in range(args.seeds_per_round)]
        with Clock() as collect:
            own = cycle_field_posterior(case, posterior, seeds, args.collect_cycles, burn_in=args.collect_burn_in,
                                        generator=torch.Generator().manual_seed(rnd))
        parts.append(own.data)
        data = FieldTrainingSet.concatenate(parts)
        if args.own_data:
            mine = FieldTrainingSet.concatenate(parts[1 if args.base_seeds else 0:])
            torch.save(dict(zip(names, (mine.truth, mine.context.observation, mine.context.mask,
                                        mine.context.forecast))), args.own_data)
        estimator = FieldFMPE(network=posterior.net.config, solver=solver, seed=rnd,
                              training=TrainingConfig(batch_size=args.batch_size, learning_rate=args.learning_rate,
                                                      max_epochs=args.epochs, patience=args.epochs, progress=False))
        with Clock() as fit:
            posterior = estimator.fit(data, start=posterior)
        path = args.save_dir / f"round{rnd}.pt"
        posterior.save(path)
        entry = {"round": rnd, "seeds": seeds, "training_analyses": data.size, "posterior": str(path),
                 "collect": collect.record(), "fit": fit.record(),
                 "collect_scores": scored(own, seeds, args.collect_burn_in),
                 "validation_loss": posterior.history.validation_loss, "best_epoch": posterior.history.best_epoch,
                 **evaluate(rnd)}
        result["rounds"].append(entry)
        print(json.dumps({k: v for k, v in entry.items() if k != "validation_loss"}), flush=True)
        save()


if __name__ == "__main__":
    main()
