"""Accuracy of the classical filters on Lorenz-96 with 40 variables (F = 8, RK4 dt 0.05).

Every component is observed every step with unit error std (the shipped case ``cases/l96_40.toml``).
The score is the time-averaged RMSE of the analysis mean against the truth after a burn-in. The case
(model, observations, initial ensemble, per-cycle seeding) is built by :class:`enff.cycle.Experiment`;
the model runs on one thread (its parallel kernel only adds overhead at this size). The loop below skips the run file and the per-cycle score records (an energy score of 1000 members
every cycle would cost more than the filter) and keeps only the RMSE and spread.

Usage::

    python benchmarks/classical_l96_40.py                     # tuned settings, 10,000 cycles
    python benchmarks/classical_l96_40.py --cycles 2000 --sweep   # short tuning sweep
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from enff.casefile import load_case
from enff.cycle import Experiment, Stream

RESULTS = Path(__file__).parent / "results"

#: Tuned settings (filter, members, hyper-parameters) and the target RMSE of each, from the sweep.
TUNED: dict[str, tuple[str, int, dict[str, Any], float]] = {
    "ETKF N=40": ("etkf", 40, {"inflation": 1.01}, 0.18),
    "EnKF N=40": ("enkf", 40, {"inflation": 1.04}, 0.22),
    "LETKF N=20": ("letkf", 20, {"radius": 10.0, "inflation": 1.01}, 0.20),
    "BPF N=1000": ("bpf", 1000, {"jitter": 0.3}, 0.30),
    "BPF N=1000 tempered, regularized (duplicates, shrunk), RTPS": (
        "bpf", 1000, {"regularization": 1.0, "tempering": 0.8, "perturb": "duplicates", "shrink": True, "rtps": 0.5},
        0.30),
}

#: Grids of the tuning sweep: filter -> (members, {hyper-parameter: values}).
SWEEP: dict[str, tuple[int, dict[str, list[Any]]]] = {
    "etkf": (40, {"inflation": [1.005, 1.01, 1.02, 1.03, 1.05]}),
    "enkf": (40, {"inflation": [1.02, 1.04, 1.06, 1.08, 1.12]}),
    "letkf": (20, {"radius": [3.0, 4.0, 5.0, 6.0, 8.0, 10.0], "inflation": [1.01, 1.02, 1.04]}),
    "bpf": (1000, {"regularization": [0.6, 1.0], "tempering": [0.7, 0.8, 0.9], "perturb": ["duplicates"],
                   "shrink": [True], "rtps": [0.3, 0.5, 0.7]}),
}


def run(name: str, members: int, hyper: dict[str, Any], cycles: int, burn_in: int, seed: int) -> dict[str, Any]:
    """Cycle one filter and return its time-averaged analysis RMSE and spread after ``burn_in`` cycles."""
    overrides = [f"ensemble.size={members}", f"run.cycles={cycles}", f"run.seed={seed}", 'model.backend="numba-serial"']
    case = load_case("l96_40", filter_name=name, overrides=overrides)
    exp = Experiment(case.with_tables(filter={"name": name, **hyper}))  # exactly these, not merged with the case's
    truth, ensemble = exp.initial_condition()
    rmse, spread, ess = [], [], []
    seconds = 0.0
    for k in range(1, cycles + 1):
        forecast = exp.model.step(ensemble, exp.every)
        truth = exp.model.step(truth[None], exp.every)[0]
        y = exp.observations.observe(k, truth, exp.generator(Stream.OBSERVATION, k))
        start = time.perf_counter()
        result = exp.filter.analysis(forecast, y, exp.space, previous=ensemble, generator=exp.generator(Stream.FILTER, k))
        seconds += time.perf_counter() - start
        ensemble, diagnostics = result.ensemble, result.diagnostics
        mean = ensemble.mean(dim=0)
        rmse.append(float(torch.sqrt(torch.mean((mean - truth) ** 2))))
        spread.append(float(torch.sqrt(torch.mean(ensemble.var(dim=0)))))
        ess.append(diagnostics.get("ess", math.nan))
        if not math.isfinite(rmse[-1]):
            break
    kept = np.asarray(rmse[burn_in:])
    return {
        "filter": name,
        "members": members,
        **hyper,
        "cycles": len(rmse),
        "burn_in": burn_in,
        "rmse": float(kept.mean()) if kept.size and np.isfinite(kept).all() else math.inf,
        "spread": float(np.mean(spread[burn_in:])) if kept.size else math.nan,
        "mean_ess": float(np.nanmean(ess[burn_in:])) if name == "bpf" and kept.size else None,
        "seconds_per_analysis": seconds / max(len(rmse), 1),
    }


def machine() -> dict[str, Any]:
    return {
        "machine": platform.processor() or platform.machine(),
        "cpu_count": __import__("os").cpu_count(),
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=10_000, help="assimilation cycles per run")
    parser.add_argument("--burn-in", type=int, default=None, help="cycles discarded (default: a tenth)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per seed (tuned settings)")
    parser.add_argument("--sweep", action="store_true", help="tuning sweep over the SWEEP grids")
    parser.add_argument("--filters", nargs="*", default=None, help="restrict to these filter names")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    burn_in = args.cycles // 10 if args.burn_in is None else args.burn_in
    rows = []
    if args.sweep:
        for name, (members, grid) in SWEEP.items():
            if args.filters and name not in args.filters:
                continue
            for values in itertools.product(*grid.values()):
                rows.append(run(name, members, dict(zip(grid, values)), args.cycles, burn_in, args.seeds[0]))
                print(json.dumps(rows[-1]), flush=True)
        out = RESULTS / "classical_l96_40_sweep.json"
    else:
        for label, (name, members, hyper, target) in TUNED.items():
            if args.filters and name not in args.filters:
                continue
            for seed in args.seeds:
                rows.append({"label": label, "target_rmse": target, "seed": seed,
                             **run(name, members, hyper, args.cycles, burn_in, seed)})
                print(json.dumps(rows[-1]), flush=True)
        out = RESULTS / "classical_l96_40.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"setup": machine(), "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
