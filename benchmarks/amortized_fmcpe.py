"""FMCPE against plain FMPE and a calibration-only flow on misspecified tasks; L96 calibration.

1. Shifted Gaussian tasks (analytic real-data posterior): C2ST against the true posterior of FMPE
   (trained on simulations), a flow trained on the calibration pairs (theta, y) alone, and FMCPE, for
   calibration sets of 10 to 1000 triples; on ``y`` of two numbers (one measurement of a 2-d theta) and
   of twenty (ten repeated measurements); the spread of FMCPE's carried observations against the true
   spread of p(x | y); and the error of FMCPE's Monte Carlo ``log_prob`` versus K = 512.
2. Lorenz-96 (forcing F and damping c from a short noisy trajectory): expected coverage of central
   marginal intervals and posterior-mean RMSE, for FMPE on simulator data (a calibration check) and,
   on the perturbed "real" system, for FMPE, the calibration-only flow and FMCPE.

Writes ``benchmarks/results/amortized_fmcpe.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

import torch

from enff.amortized import (FMCPE, FMPE, EmbeddingConfig, NetworkConfig, SolverConfig, TrainingConfig, c2st,
                            expected_coverage)
from enff.amortized.fmcpe import small_set_training
from enff.amortized.tasks import Lorenz96Task, ShiftedGaussianTask

RESULTS = Path(__file__).parent / "results"
LEVELS = torch.tensor([0.5, 0.8, 0.95])
TASKS = {"gaussian": ShiftedGaussianTask(), "repeated": ShiftedGaussianTask(noise=1.0, repeats=10)}


def small(n_cal):
    """Training settings of both stage-two methods (patience counted in gradient steps)."""
    return small_set_training(n_cal, progress=False)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def gaussian_study(name, cal_sizes, n_test, n_samples, with_log_prob, replicates=1, taus=(0.0,)):
    """Rows per calibration size and replicate; replicate ``r`` draws its own calibration set and seeds
    (replicate 0 keeps the seeds of the single-replicate runs); one FMCPE row per ``parameter_source_noise``
    in ``taus``."""
    task = TASKS[name]
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn((5000, task.dim), generator=gen)
    stage, train_s = timed(lambda: FMPE(task.prior, training=TrainingConfig(progress=False),
                                        time_prior_exponent=0.0).fit(theta, task.simulate(theta, gen)))
    theta_test = torch.randn((n_test, task.dim), generator=gen)
    y_test = task.simulate(theta_test, gen, real=True)
    true_post = task.true_posterior(y_test)
    truth = sample_truth(true_post, n_samples)
    true_x_std = float((true_post.variance + task.noise**2).sqrt().mean())

    def score(post):
        s = post.sample(n_samples, y_test, generator=torch.Generator().manual_seed(5))
        return {"c2st": sum(c2st(s[:, i], truth[:, i]) for i in range(n_test)) / n_test,
                "posterior_std": float(s.std(dim=0).mean()), "true_posterior_std": float(true_post.stddev.mean())}

    rows = [{"task": name, "method": "fmpe", "n_cal": 0, **score(stage), "train_s": train_s}]
    print(json.dumps(rows[-1]), flush=True)
    log_prob_rows = []
    for n_cal, rep in ((n, r) for n in cal_sizes for r in range(replicates)):
        cal_gen = torch.Generator().manual_seed(1000 + n_cal + 7919 * rep)
        seed = n_cal + 100_003 * rep
        tc = torch.randn((n_cal, task.dim), generator=cal_gen)
        xc, yc = task.simulate(tc, cal_gen), task.simulate(tc, cal_gen, real=True)
        only, only_s = timed(lambda: FMPE(task.prior, network=NetworkConfig(hidden_features=(64, 64, 64)),
                                          training=small(n_cal), time_prior_exponent=0.0, seed=seed).fit(tc, yc))
        fits = [("calibration_only", only, only_s)]
        for tau in taus:
            corrected, cpe_s = timed(lambda: FMCPE(stage, training=small(n_cal), seed=seed,
                                                   parameter_source_noise=tau).fit(tc, xc, yc))
            fits.append((fmcpe_method(tau), corrected, cpe_s))
        for method, post, seconds in fits:
            rows.append({"task": name, "method": method, "n_cal": n_cal, "replicate": rep, **score(post),
                         "train_s": seconds})
            if method.startswith("fmcpe"):
                carried = post.carry(y_test.repeat(n_samples, 1), torch.Generator().manual_seed(6))
                carried = carried.reshape(n_samples, n_test, task.x_dim)
                rows[-1].update(carried_x_std=float(carried.std(dim=0).mean()), true_x_std=true_x_std)
            print(json.dumps(rows[-1]), flush=True)
        if with_log_prob and rep == 0 and n_cal == min(cal_sizes, key=lambda n: abs(n - 100)):
            log_prob_rows = log_prob_error(fits[1][1], task, y_test[:1], n_cal)
    return rows, log_prob_rows


def fmcpe_method(tau):
    """Row label of FMCPE with ``parameter_source_noise=tau``."""
    return "fmcpe" if tau == 0 else f"fmcpe_tau{tau:g}"


def sample_truth(post, n):
    """Seeded draws of the analytic posterior ``(n, batch, d)``."""
    eps = torch.randn((n, *post.mean.shape), generator=torch.Generator().manual_seed(7))
    return post.mean + post.stddev * eps


def log_prob_error(post, task, y, n_cal):
    """Error of the Monte Carlo log-density versus K = 512 at 50 corrected samples."""
    theta = post.sample(50, y, generator=torch.Generator().manual_seed(3))
    reference = post.log_prob(theta, y, generator=torch.Generator().manual_seed(4), n_monte_carlo=512)
    rows = []
    for k in (4, 16, 64):
        est, seconds = timed(lambda: post.log_prob(theta, y, generator=torch.Generator().manual_seed(k),
                                                   n_monte_carlo=k))
        diff = est - reference
        rows.append({"K": k, "n_cal": n_cal, "mean_error": float(diff.mean()), "std_error": float(diff.std()),
                     "seconds_per_50": seconds})
        print(json.dumps(rows[-1]), flush=True)
    true_lp = task.true_posterior(y).log_prob(theta)
    rows.append({"K": 512, "mean_minus_true_posterior": float((reference - true_lp).mean()),
                 "std_minus_true_posterior": float((reference - true_lp).std())})
    return rows


def l96_study(n_sims, cal_sizes, n_test, n_samples, replicates=1, taus=(0.0,)):
    """Rows of FMPE (simulator and real data) and, per calibration size and replicate (own calibration
    set and seeds; replicate 0 keeps the seeds of the single-replicate runs), the calibration-only flow
    and FMCPE (one row per ``parameter_source_noise`` in ``taus``) on real data."""
    task = Lorenz96Task()
    gen = torch.Generator().manual_seed(0)
    theta = task.sample_prior(n_sims, gen)
    network = NetworkConfig(hidden_features=(128,) * 4, embedding=EmbeddingConfig(
        kind="periodic_conv", channels=task.n_obs, conv_channels=(32, 64), kernel_size=3, out_features=32))
    solver = SolverConfig(n_steps=20)
    stage, train_s = timed(lambda: FMPE(task.prior, network=network, solver=solver, time_prior_exponent=0.0,
                                        training=TrainingConfig(batch_size=128, patience=30, progress=False)
                                        ).fit(theta, task.simulate(theta, gen)))
    theta_test = task.sample_prior(n_test, gen)
    data = {"simulator": task.simulate(theta_test, gen), "real": task.simulate(theta_test, gen, real=True)}

    def evaluate(post, kind):
        # Raw flow samples: on misspecified data FMPE may put mass outside the prior box.
        s = post.sample(n_samples, data[kind], generator=torch.Generator().manual_seed(9), reject=False)
        cov = expected_coverage(s, theta_test, LEVELS)
        rmse = ((s.mean(dim=0) - theta_test) ** 2).mean(dim=0).sqrt()
        return {"coverage": {f"{float(lv):.2f}": [round(float(c), 3) for c in row] for lv, row in zip(LEVELS, cov)},
                "rmse_F_c": [round(float(r), 4) for r in rmse]}

    rows = [{"method": "fmpe", "data": kind, "n_cal": 0, "train_s": train_s, **evaluate(stage, kind)}
            for kind in ("simulator", "real")]
    for row in rows:
        print(json.dumps(row), flush=True)
    for n_cal, rep in ((n, r) for n in cal_sizes for r in range(replicates)):
        cal_gen = torch.Generator().manual_seed(2000 + n_cal + 7919 * rep)
        seed = n_cal + 100_003 * rep
        tc = task.sample_prior(n_cal, cal_gen)
        xc, yc = task.simulate(tc, cal_gen), task.simulate(tc, cal_gen, real=True)
        small_net = NetworkConfig(hidden_features=(64, 64, 64), embedding=network.embedding)
        only, only_s = timed(lambda: FMPE(task.prior, network=small_net, training=small(n_cal), solver=solver,
                                          time_prior_exponent=0.0, seed=seed).fit(tc, yc))
        fits = [("calibration_only", only, only_s)]
        for tau in taus:
            corrected, cpe_s = timed(lambda: FMCPE(stage, network=small_net, solver=solver, training=small(n_cal),
                                                   seed=seed, parameter_source_noise=tau).fit(tc, xc, yc))
            fits.append((fmcpe_method(tau), corrected, cpe_s))
        for name, post, seconds in fits:
            rows.append({"method": name, "data": "real", "n_cal": n_cal, "replicate": rep, "train_s": seconds,
                         **evaluate(post, "real")})
            print(json.dumps(rows[-1]), flush=True)
    return rows


TITLES = {"gaussian": "Shifted Gaussian (d = 2, one measurement, noise 0.3; x and y of 2 numbers)",
          "repeated": "Shifted Gaussian with repeated measurements (d = 2, 10 measurements of noise 1.0; "
                      "x and y of 20 numbers)"}


def _mean(rows, key):
    return sum(r[key] for r in rows) / len(rows)


def _cell(rows):
    """Mean C2ST (± std over replicates when there are several) and, in brackets, mean posterior std."""
    spread = ""
    if len(rows) > 1:
        mean = _mean(rows, "c2st")
        spread = f" ± {(sum((r['c2st'] - mean) ** 2 for r in rows) / len(rows)) ** 0.5:.3f}"
    return f"{_mean(rows, 'c2st'):.3f}{spread} ({_mean(rows, 'posterior_std'):.3f})"


def log_prob_table(result):
    """Markdown lines of the log_prob error study."""
    lines = ["", "### FMCPE log_prob: Monte Carlo estimate with K carried observations vs K = 512 "
              f"({result['log_prob'][0]['n_cal']} calibration pairs, 50 corrected samples of one observation, "
              f"{result['tasks'][0]} task)", "",
              "| K | mean error | std of error | seconds per 50 points |", "|---|---|---|---|"]
    for r in result["log_prob"]:
        if "mean_error" in r:
            lines.append(f"| {r['K']} | {r['mean_error']:+.3f} | {r['std_error']:.3f} | {r['seconds_per_50']:.1f} |")
        else:
            lines.append(f"\nK = 512 estimate minus the true real-data posterior log-density at those points: "
                         f"mean {r['mean_minus_true_posterior']:+.3f}, std {r['std_minus_true_posterior']:.3f} "
                         "(the FMCPE approximation error plus the estimator's).")
    return lines


def markdown(result):
    meta = result["meta"]
    lines = [f"# FMCPE versus FMPE and a calibration-only flow ({meta['machine']}, torch threads {meta['threads']})",
             "", f"Load average (1 min) at start {meta['load_start']:.2f}, at end {meta['load_end']:.2f}; "
             f"wall time {meta['wall_s']:.0f} s. Misspecification of both Gaussian tasks: real y = 1.5 theta + 0.5 "
             "+ noise, simulator x = theta + noise. FMCPE settings: "
             f"`{meta['fmcpe_settings']}`.", ""]
    for name in result["tasks"]:
        g = [r for r in result["gaussian"] if r["task"] == name]
        methods = [m for m in dict.fromkeys(r["method"] for r in g) if m.startswith("fmcpe")]
        labels = ["FMCPE" if m == "fmcpe" else f"FMCPE tau={m.removeprefix('fmcpe_tau')}" for m in methods]
        lines += [f"## {TITLES[name]}: C2ST against the analytic real-data posterior", "",
                  f"Mean over {meta['n_test']} real observations, {meta['n_samples']} samples per side (0.5 is "
                  f"perfect); {meta.get('replicates', 1)} replicate(s) per size (own calibration set and seeds; "
                  "mean ± std over replicates). FMPE: 5000 simulations. Calibration-only: FMPE trained on the (theta, y) calibration "
                  "pairs alone. In brackets: mean posterior standard deviation (true: "
                  f"{g[0]['true_posterior_std']:.3f}). Carried x std: spread of FMCPE's carried observations "
                  f"T_y(y) against the true spread of p(x | y), {g[-1].get('true_x_std', float('nan')):.3f}.", "",
                  "| calibration pairs | FMPE | calibration-only | " + " | ".join(labels) + " | best | "
                  + " | ".join(f"{label} below calibration-only" for label in labels) + " | carried x std |",
                  "|---" * (5 + 2 * len(labels)) + "|"]
        fmpe = next(r for r in g if r["method"] == "fmpe")
        for n in sorted({r["n_cal"] for r in g if r["n_cal"]}):
            only = [r for r in g if r["n_cal"] == n and r["method"] == "calibration_only"]
            cpe = {m: [r for r in g if r["n_cal"] == n and r["method"] == m] for m in methods}
            means = {"fmpe": fmpe["c2st"], "calibration_only": _mean(only, "c2st"),
                     **{m: _mean(rows, "c2st") for m, rows in cpe.items()}}
            wins = [sum(c["c2st"] < o["c2st"] for c, o in zip(rows, only)) for rows in cpe.values()]
            lines.append(f"| {n} | {_cell([fmpe])} | {_cell(only)} | "
                         + " | ".join(_cell(rows) for rows in cpe.values()) + f" | {min(means, key=means.get)} | "
                         + " | ".join(f"{w} of {len(only)}" for w in wins)
                         + f" | {_mean(cpe[methods[0]], 'carried_x_std'):.3f} |")
        lines.append("")
    if result["log_prob"]:
        lines += log_prob_table(result)
    if not result["l96"]:
        return "\n".join(lines) + "\n"
    lines += ["", "## Lorenz-96 (8 sites, infer forcing F and damping c; 10 noisy observation times)", "",
              f"Expected coverage of central marginal credible intervals (F, c) at levels "
              f"{[round(float(v), 2) for v in LEVELS]} and RMSE of the posterior mean, over {meta['l96_test']} test pairs, "
              f"{meta['l96_samples']} samples each. FMPE trained on {meta['l96_sims']} simulations.", "",
              "| method | data | calibration pairs | replicate | coverage 0.50 | coverage 0.80 | coverage 0.95 | "
              "RMSE F | RMSE c |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["l96"]:
        c = r["coverage"]
        lines.append(f"| {r['method']} | {r['data']} | {r['n_cal']} | {r.get('replicate', '')} | {c['0.50']} | "
                     f"{c['0.80']} | {c['0.95']} | {r['rmse_F_c'][0]} | {r['rmse_F_c'][1]} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cal-sizes", nargs="+", type=int, default=[10, 30, 100, 300, 1000])
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=["gaussian", "repeated"])
    parser.add_argument("--l96-cal-sizes", nargs="+", type=int, default=[30, 300])
    parser.add_argument("--l96-sims", type=int, default=10000)
    parser.add_argument("--n-test", type=int, default=10)
    parser.add_argument("--l96-test", type=int, default=200)
    parser.add_argument("--n-samples", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--replicates", type=int, default=1,
                        help="calibration sets (and seeds) per size on the Gaussian tasks")
    parser.add_argument("--l96-replicates", type=int, default=1,
                        help="calibration sets (and seeds) per size on Lorenz-96")
    parser.add_argument("--no-gaussian", action="store_true", help="skip the Gaussian tasks (and the log_prob study)")
    parser.add_argument("--no-l96", action="store_true", help="skip the Lorenz-96 study")
    parser.add_argument("--no-log-prob", action="store_true", help="skip the log_prob error study")
    parser.add_argument("--parameter-source-noise", nargs="+", type=float, default=[0.0],
                        help="FMCPE parameter_source_noise values (tau, z-scored units), one FMCPE row each; "
                             "the first is used for the log_prob study")
    parser.add_argument("--name", default="amortized_fmcpe", help="result file stem under results/")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start, load_start = time.perf_counter(), os.getloadavg()[0]
    gaussian, log_prob = [], []
    partial = RESULTS / f"{args.name}.partial.json"
    for i, name in enumerate([] if args.no_gaussian else args.tasks):
        rows, lp = gaussian_study(name, args.cal_sizes, args.n_test, args.n_samples,
                                  with_log_prob=i == 0 and not args.no_log_prob, replicates=args.replicates,
                                  taus=args.parameter_source_noise)
        gaussian += rows
        log_prob = log_prob or lp
        partial.write_text(json.dumps({"gaussian": gaussian, "log_prob": log_prob}, indent=1))
    l96 = [] if args.no_l96 else l96_study(args.l96_sims, args.l96_cal_sizes, args.l96_test, 500, args.l96_replicates,
                                           args.parameter_source_noise)
    partial.unlink(missing_ok=True)
    defaults = {f.name: f.default for f in dataclasses.fields(FMCPE)
                if f.name in ("observation_source", "source_noise", "parameter_source", "condition", "n_summary",
                              "n_source", "parameter_source_noise")}
    meta = {"machine": f"{platform.machine()}, 2 shared cores, no GPU", "threads": torch.get_num_threads(),
            "n_test": args.n_test, "n_samples": args.n_samples, "l96_sims": args.l96_sims, "l96_test": args.l96_test,
            "l96_samples": 500, "torch": torch.__version__, "replicates": args.replicates, "load_start": load_start,
            "load_end": os.getloadavg()[0], "wall_s": time.perf_counter() - start,
            "fmcpe_settings": "FMCPE(stage, training=small_set_training(n_cal)) defaults: "
                              + ", ".join(f"{k}={v!r}" for k, v in defaults.items())}
    result = {"meta": meta, "tasks": [] if args.no_gaussian else args.tasks, "gaussian": gaussian,
              "log_prob": log_prob, "l96": l96}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=1))
    (RESULTS / f"{args.name}.md").write_text(markdown(result))


if __name__ == "__main__":
    main()
