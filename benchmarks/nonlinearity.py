"""How nonlinear the observations are over the forecast: the share of h's forecast variance a straight line misses.

For every state element with forecast mean ``m`` and spread ``s`` (the run file's ``forecast_mean`` and
``forecast_spread``) and ``x ~ N(m, s^2)``, the unexplained fraction

    u = 1 - Cov(x, h(x))^2 / (Var(x) Var(h(x)))

is 0 for a linear ``h`` and grows as ``h`` bends over the forecast spread (Gauss-Hermite quadrature with
``NODES`` nodes). A Kalman update uses exactly that linear part (the ensemble regression of ``h(x)`` on
``x``), so ``u`` is the share of the observed forecast variance it misreads. Reported per run file as the
mean and the 90th percentile over elements and the cycles after the burn-in (``--first``: over the
elements of the first analysis only).

Usage::

    python benchmarks/nonlinearity.py --operator atan --burn-in 100 [--first] RUN.nc [RUN.nc ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import xarray as xr

#: Gauss-Hermite nodes per element.
NODES = 40

#: Pointwise observation functions by case-file operator name (``power`` with exponent 3 is ``cube``).
FUNCTIONS = {"atan": np.arctan, "tanh": np.tanh, "cube": lambda x: x**3, "identity": lambda x: x}


def unexplained_fraction(mean: np.ndarray, spread: np.ndarray, h) -> np.ndarray:
    """``u`` for every entry of ``mean`` and ``spread`` (same shape, state units); elements with no spread give 0."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(NODES)
    weights = weights / weights.sum()
    x = mean[..., None] + spread[..., None] * nodes
    hx = h(x)
    h_mean = (hx * weights).sum(-1)
    cov = (((x - mean[..., None]) * (hx - h_mean[..., None])) * weights).sum(-1)
    var_h = (((hx - h_mean[..., None]) ** 2) * weights).sum(-1)
    var_x = spread**2
    with np.errstate(invalid="ignore", divide="ignore"):
        u = 1.0 - cov**2 / (var_x * var_h)
    return np.where((var_x > 0) & (var_h > 0), np.clip(u, 0.0, 1.0), 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--operator", choices=sorted(FUNCTIONS), required=True)
    parser.add_argument("--burn-in", type=int, default=100)
    parser.add_argument("--first", action="store_true", help="the first analysis only (no burn-in)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    rows = []
    for path in args.runs:
        with xr.open_dataset(path) as ds:
            complete = ds["cycle_complete"].values.astype(bool)
            cycles = slice(0, 1) if args.first else slice(args.burn_in, None)
            mean = ds["forecast_mean"].values[complete][cycles]
            spread = ds["forecast_spread"].values[complete][cycles]
        u = unexplained_fraction(mean, spread, FUNCTIONS[args.operator])
        rows.append({"run": path.name, "operator": args.operator, "cycles": "first" if args.first else
                     f"after a burn-in of {args.burn_in}",
                     "forecast_spread_mean": float(spread.mean()), "unexplained_mean": float(u.mean()),
                     "unexplained_p90": float(np.quantile(u, 0.9))})
        print(f"{path.name}: spread {spread.mean():.4g}, unexplained mean {u.mean():.3g}, p90 {np.quantile(u, 0.9):.3g}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
