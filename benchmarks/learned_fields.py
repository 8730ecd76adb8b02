"""The learned field analysis (filter ``learned`` with a field posterior) against the LETKF it learns from.

Training analyses are simulated without files: the case cycled by its own ``[filter]`` (the LETKF) on training
seeds (other truths). The field posterior is trained by flow matching; then the learned analysis and the LETKF
are cycled on held-out seeds. Scores: means over the cycles after a 10 % burn-in, then mean and std over the
held-out seeds (mean ± standard error), the load average recorded beside every time. ``--posterior FILE``
scores a posterior trained elsewhere (``enff learn --case``, or the one a case ships) instead of training one;
``--save FILE`` keeps the one trained here.

    python benchmarks/learned_fields.py --case l96_40_sparse --train-seeds 1 2 3 4 5 6 7 8 --eval-seeds 0 100 101
    python benchmarks/learned_fields.py --case l96_40_sparse --posterior cases/posteriors/l96_40_sparse.pt
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

from enff.amortized import SolverConfig, TrainingConfig, load_posterior  # noqa: E402
from enff.amortized.field_analysis import FieldFMPE, FieldPosterior  # noqa: E402
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


def one_step(case_name: str, posterior: FieldPosterior, seed: int, cycles: int) -> list[dict]:
    """The analysis alone, on the forecasts the posterior was trained on: the case's [filter] cycled on ``seed``,
    cycles after a 20 % burn-in; RMSE and spread of the forecast mean, that filter's analysis and 20 draws of
    the learned one (all on the same forecasts). Observations are read back off the grid (pointwise operators)."""
    case = load_case(case_name)
    data = simulated_training_set(case, [seed], cycles, burn_in=cycles // 5)
    space = case.observations.space(case.model.grid, dtype=case.run.torch_dtype, device=case.run.torch_device)
    forecasts = data.context.forecast.to(case.run.torch_dtype)[:, :, 0]  # (analysis, member, 40): one field
    index = torch.as_tensor(space.state_index)
    observed = data.context.observation.reshape(data.size, -1)[:, index].to(case.run.torch_dtype)  # (analysis, obs)
    generator = torch.Generator().manual_seed(seed)
    classical = torch.stack([case.filter.analysis(f, y, space, generator=generator).ensemble
                             for f, y in zip(forecasts, observed)]).float()
    learned = posterior.sample(20, data.context, generator=torch.Generator().manual_seed(1))[:, :, 0].transpose(0, 1)
    truth = data.truth[:, 0]

    def scores(ensemble: torch.Tensor) -> dict:
        return {"rmse": float((ensemble.mean(1) - truth).pow(2).mean().sqrt()),
                "spread": float(ensemble.var(1).mean().sqrt())}

    ensembles = {"forecast": forecasts.float(), case.filter.name: classical, "learned": learned}
    return [{"analysis": name, "seed": seed, "load_average": os.getloadavg()[0], **scores(ensemble)}
            for name, ensemble in ensembles.items()]


def mean_se(values: list[float]) -> str:
    """``"mean ± standard error"`` of ``values`` (sample std / sqrt(n)), or the one value alone."""
    if len(values) == 1:
        return f"{values[0]:.4g}"
    return f"{statistics.mean(values):.4g} ± {statistics.stdev(values) / len(values) ** 0.5:.2g}"


def markdown(rows: list[dict], steps: list[dict], trained: dict, args: argparse.Namespace) -> str:
    if args.posterior:
        source = (f"Posterior {args.posterior} ({trained['estimator']}; {trained['epochs']} epochs, best "
                  f"{trained['best_epoch']}, validation loss {trained['best_validation_loss']:.4g}).")
    else:
        source = (f"Training analyses: the case's [filter] cycled {args.train_cycles} cycles on training seeds "
                  f"{args.train_seeds} (burn-in {args.burn_in}), simulated without files ({trained['analyses']} "
                  f"analyses, {trained['simulation_seconds']:.0f} s); field network {trained['network']}; flow "
                  f"matching (time prior exponent {args.time_prior_exponent}, batch {args.batch_size}, learning rate "
                  f"{args.learning_rate}), {trained['epochs']} epochs (best {trained['best_epoch']}, validation loss "
                  f"{trained['best_validation_loss']:.4g}), {trained['seconds']:.0f} s.")
    lines = [
        f"# Learned field analysis on {args.case}",
        "",
        f"CPU, {torch.get_num_threads()} torch thread(s), 2 shared cores (load average at the end "
        f"{os.getloadavg()[0]:.1f}). {source} Sampling: RK4 with {trained['solver_steps']} steps. Held-out seeds "
        f"{args.eval_seeds}, {args.cycles} cycles, scores after {args.cycles // 10}: mean ± standard error over "
        "the seeds; spread / RMSE is the mean of the per-seed ratios.",
    ]
    if rows:
        lines += ["", "| filter | RMSE | spread | spread / RMSE | CRPS | s/analysis | RMSE per seed |",
                  "|---|---|---|---|---|---|---|"]
    for label in dict.fromkeys(r["filter"] for r in rows):
        mine = [r for r in rows if r["filter"] == label]
        cells = [mean_se([r[key] for r in mine]) for key in ("rmse_analysis", "spread_analysis")]
        cells.append(mean_se([r["spread_analysis"] / r["rmse_analysis"] for r in mine]))
        cells += [mean_se([r[key] for r in mine]) for key in ("crps_analysis", "analysis_seconds")]
        cells.append(" / ".join(f"{r['rmse_analysis']:.3f}" for r in mine))
        lines.append(f"| {label} | {' | '.join(cells)} |")
    if steps:
        lines += ["", f"One step on the forecasts of the case's [filter] (the forecasts the posterior was trained on), "
                  f"held-out seeds {args.eval_seeds}, cycles {args.one_step_cycles // 5 + 1}-{args.one_step_cycles}, "
                  "20 learned draws per analysis:", "",
                  "| analysis | RMSE | spread / RMSE | RMSE per seed |", "|---|---|---|---|"]
        for label in dict.fromkeys(r["analysis"] for r in steps):
            mine = [r for r in steps if r["analysis"] == label]
            per_seed = " / ".join(f"{r['rmse']:.3f}" for r in mine)
            lines.append(f"| {label} | {mean_se([r['rmse'] for r in mine])} | "
                         f"{mean_se([r['spread'] / r['rmse'] for r in mine])} | {per_seed} |")
    return "\n".join(lines)


def trained_posterior(args: argparse.Namespace) -> tuple[FieldPosterior, dict]:
    """The posterior to score (read from ``--posterior`` or trained here) and what to report of its training."""
    if args.posterior:
        posterior = load_posterior(args.posterior)
        if not isinstance(posterior, FieldPosterior):
            raise SystemExit(f"{args.posterior} is not a field posterior")
        return posterior, {"estimator": posterior.estimator, "solver_steps": posterior.solver.n_steps,
                           "epochs": len(posterior.history.validation_loss),
                           "best_epoch": posterior.history.best_epoch,
                           "best_validation_loss": min(posterior.history.validation_loss)}
    case = load_case(args.case)
    start, cpu = time.perf_counter(), time.process_time()
    data = simulated_training_set(case, args.train_seeds, args.train_cycles, burn_in=args.burn_in)
    simulated, simulated_cpu = time.perf_counter() - start, time.process_time() - cpu
    print(json.dumps({"analyses": data.size, "simulation_seconds": simulated}), flush=True)
    network = FieldNetworkConfig(channels=args.channels, set_channels=args.set_channels,
                                 dilations=tuple(args.dilations), correlation_offsets=tuple(args.correlation_offsets))
    estimator = FieldFMPE(network=network, solver=SolverConfig(n_steps=args.solver_steps),
                          time_prior_exponent=args.time_prior_exponent,
                          training=TrainingConfig(batch_size=args.batch_size, learning_rate=args.learning_rate,
                                                  max_epochs=args.max_epochs, patience=15, progress=False))
    start, cpu = time.perf_counter(), time.process_time()
    posterior = estimator.fit(data)
    trained = {"network": repr(network), "estimator": posterior.estimator, "analyses": data.size,
               "solver_steps": args.solver_steps, "epochs": len(posterior.history.validation_loss),
               "best_epoch": posterior.history.best_epoch, "seconds": time.perf_counter() - start,
               "cpu_seconds": time.process_time() - cpu, "simulation_cpu_seconds": simulated_cpu,
               "simulation_seconds": simulated, "load_average": os.getloadavg()[0],
               "best_validation_loss": min(posterior.history.validation_loss)}
    if args.save:
        posterior.save(args.save)
    return posterior, trained


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
    parser.add_argument("--correlation-offsets", nargs="*", type=int, default=[],
                        help="offsets of the ensemble correlation channels (FieldNetworkConfig.correlation_offsets)")
    parser.add_argument("--dilations", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--max-epochs", type=int, default=100)
    parser.add_argument("--solver-steps", type=int, default=5)
    parser.add_argument("--time-prior-exponent", type=float, default=0.0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--posterior", type=Path, help="score this posterior file instead of training one")
    parser.add_argument("--save", type=Path, help="write the posterior trained here to this file")
    parser.add_argument("--one-step-cycles", type=int, default=0,
                        help="also score the analysis alone on this many cycles of the case's [filter] per seed")
    parser.add_argument("--name", default="learned_fields_run", help="results/<name>.{md,json}")
    args = parser.parse_args()
    import numba  # noqa: F401  (importing numba resets torch's thread count; the LETKF imports it)

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    posterior, trained = trained_posterior(args)
    print(json.dumps(trained), flush=True)
    case = load_case(args.case)
    rows: list[dict] = []
    steps = [row for seed in args.eval_seeds for row in one_step(args.case, posterior, seed, args.one_step_cycles)
             ] if args.one_step_cycles else []
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}

    def save() -> None:
        write_results(args.name, {"settings": settings, "training": trained, "one_step": steps, "rows": rows},
                      markdown(rows, steps, trained, args))

    save()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        path = work / "posterior.pt"
        posterior.save(path)
        filters = {case.filter.name: [], "learned": [f"filter.posterior='{path}'"]}
        for seed in args.eval_seeds if args.cycles else ():
            for name, extra in filters.items():
                row = {"filter": name, "seed": seed, "load_average": os.getloadavg()[0],
                       **cycle(args.case, name, seed, args.cycles, work / "eval.nc", extra)}
                rows.append(row)
                print(json.dumps(row), flush=True)
                save()

if __name__ == "__main__":
    main()
