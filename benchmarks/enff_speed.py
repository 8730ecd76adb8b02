"""Time per EnFF analysis step: the batched Monte Carlo velocity against a per-particle loop.

One "step" is one velocity evaluation plus local guidance, the unit an EnFF analysis repeats S times.
Both implementations evaluate the same estimator on the same data, side by side in one run:

- ``batched``: :func:`enff.filters.velocity.marginal_velocity` (one ``N x N`` weight matrix from a
  chunked, centred Gram product; the velocity by one ``addmm``);
- ``per_particle``: the way the published code evaluates it, a Python loop over particles, each
  forming its differences to all members, its own softmax weights and its weighted conditional velocity.

The guidance (``-lambda grad E`` at the predicted end point, arctan observations of every component, as
in l96_1e6_atan) is the same function for both. The script asserts that the two velocities agree to
float32 tolerance and that the batched step is at least 10x faster at d = 1e6. It also reports how the
time grows with N and d, and the step's memory traffic against the bandwidth of a large tensor copy
measured in the same run, and where a step's time goes at the largest d (:func:`breakdown`: the velocity's
squared distances and matrix product, the guidance's observation operator and gradient, each timed alone beside a
copy and a plain matrix product of the same shape, in passes over the ensemble and in GFLOP/s).

Usage::

    python benchmarks/enff_speed.py [--threads 2] [--repeats 5] [--quick] [--breakdown-only]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import time_call, write_results  # noqa: E402

from enff.filters.guidance import LocalGuidance  # noqa: E402
from enff.filters.paths import OTPath  # noqa: E402
from enff.filters.likelihood import (  # noqa: E402
    autograd_likelihood_gradient,
    likelihood_gradient,
    member_blocks,
    states,
)
from enff.filters.velocity import marginal_velocity, mixture_weights, squared_distances  # noqa: E402
from enff.models.base import Grid  # noqa: E402
from enff.observations.operators import ATan  # noqa: E402
from enff.observations.space import ObservationSpace  # noqa: E402

MEMBERS = 20
DIMENSIONS = (10_000, 100_000, 1_000_000)
N_SWEEP = (10, 20, 40, 80)
N_SWEEP_D = 100_000
FLOW_TIME = 0.5
SIGMA_MIN = 0.01
OBS_STD = 0.05
GUIDANCE_SCALE = 0.05
DTYPE = torch.float32
TARGET_SPEEDUP = 10.0


def per_particle_velocity(
    path: OTPath, t: float, x: torch.Tensor, x1: torch.Tensor, out: torch.Tensor
) -> torch.Tensor:
    """The published evaluation order: for each particle, its own weights over all members."""
    mu, dmu = path.mean(t, None, x1), path.mean_derivative(t, None, x1)
    sigma = path.std(t)
    rate = path.std_derivative(t) / sigma
    for i in range(x.shape[0]):
        diff = x[i] - mu
        weights = torch.softmax(-(diff * diff).sum(dim=1) / (2 * sigma**2), dim=0)
        out[i] = weights @ (rate * diff + dmu)
    return out


def batched_velocity(
    path: OTPath, t: float, x: torch.Tensor, x1: torch.Tensor, out: torch.Tensor
) -> torch.Tensor:
    """The batched estimator of :mod:`enff.filters.velocity`."""
    return marginal_velocity(path, t, x, x1, out=out).velocity


def problem(n: int, d: int, seed: int = 0) -> dict[str, Any]:
    """Forecast ``(n, d)``, particles at flow time ``FLOW_TIME`` on the OT path, arctan observations."""
    g = torch.Generator().manual_seed(seed)
    truth = 3.0 * torch.randn(d, generator=g, dtype=DTYPE)
    x1 = truth + torch.randn(n, d, generator=g, dtype=DTYPE)
    path = OTPath(sigma_min=SIGMA_MIN)
    x = FLOW_TIME * x1 + path.std(FLOW_TIME) * torch.randn(n, d, generator=g, dtype=DTYPE)
    grid = Grid((np.arange(d, dtype=np.float64),), (float(d),))
    obs = ObservationSpace(ATan(), torch.full((d,), OBS_STD, dtype=DTYPE), grid, (d,))
    y = torch.atan(truth) + OBS_STD * torch.randn(d, generator=g, dtype=DTYPE)
    # the result buffer is reused across calls, as the filter reuses it across its S evaluations
    return {"path": path, "x": x, "x1": x1, "obs": obs, "y": y, "out": torch.empty_like(x)}


def step(velocity_fn: Callable[..., torch.Tensor], p: dict[str, Any]) -> torch.Tensor:
    """One EnFF step: velocity plus local guidance at the predicted end point."""
    guide = LocalGuidance(scale=GUIDANCE_SCALE)
    v = velocity_fn(p["path"], FLOW_TIME, p["x"], p["x1"], p["out"])
    return guide.add_force(v, p["x"], FLOW_TIME, p["y"], p["obs"])


def copy_bandwidth(n_bytes: int = 1 << 29, repeats: int = 5) -> float:
    """Bytes per second of ``dst.copy_(src)`` on preallocated float32 tensors (read + write counted)."""
    src = torch.ones(n_bytes // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)
    return 2 * n_bytes / min(time_call(lambda: dst.copy_(src), repeats))


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Time each function ``repeats`` times, alternating between them so load changes hit both."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm-up (allocator, first-call dispatch)
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name] += time_call(fn, 1)
    return times


def compare(d: int, repeats: int, bandwidth: float) -> dict[str, Any]:
    """Side-by-side timing and agreement check at one state dimension, N = MEMBERS."""
    p = problem(MEMBERS, d)
    fast = step(batched_velocity, p).clone()
    slow = step(per_particle_velocity, p).clone()
    v_fast = batched_velocity(p["path"], FLOW_TIME, p["x"], p["x1"], p["out"]).clone()
    v_slow = per_particle_velocity(p["path"], FLOW_TIME, p["x"], p["x1"], p["out"])
    scale = float(v_slow.abs().max())
    velocity_error = float((v_fast - v_slow).abs().max()) / scale
    step_error = float((fast - slow).abs().max()) / float(slow.abs().max())
    assert velocity_error < 1e-5 and step_error < 1e-5, (d, velocity_error, step_error)
    max_weight = float(marginal_velocity(p["path"], FLOW_TIME, p["x"], p["x1"]).weights.max(dim=1).values.mean())
    times = interleaved(
        {
            "batched_step": lambda: step(batched_velocity, p),
            "per_particle_step": lambda: step(per_particle_velocity, p),
            "batched_velocity": lambda: batched_velocity(p["path"], FLOW_TIME, p["x"], p["x1"], p["out"]),
            "per_particle_velocity": lambda: per_particle_velocity(p["path"], FLOW_TIME, p["x"], p["x1"], p["out"]),
        },
        repeats,
    )
    median = {name: statistics.median(ts) for name, ts in times.items()}
    array_bytes = MEMBERS * d * DTYPE.itemsize
    # minimal traffic of the batched velocity: read x and x1 for the Gram product, then read x, x1
    # and write v in the addmm (the N x N matrices are negligible)
    velocity_bytes = 5 * array_bytes
    return {
        "d": d,
        "n": MEMBERS,
        "seconds": median,
        "seconds_all": times,
        "speedup_step": median["per_particle_step"] / median["batched_step"],
        "speedup_velocity": median["per_particle_velocity"] / median["batched_velocity"],
        "relative_max_difference_velocity": velocity_error,
        "relative_max_difference_step": step_error,
        "mean_max_weight": max_weight,
        "velocity_model_bytes": velocity_bytes,
        "velocity_bandwidth_bound_seconds": velocity_bytes / bandwidth,
        "velocity_fraction_of_bandwidth_bound": velocity_bytes / bandwidth / median["batched_velocity"],
        "velocity_gflops": 4 * MEMBERS**2 * d / median["batched_velocity"] / 1e9,
        "step_array_passes_at_copy_bandwidth": median["batched_step"] * bandwidth / array_bytes,
    }


def breakdown(d: int, repeats: int, bandwidth: float) -> dict[str, Any]:
    """Where one batched step's time goes at ``d``, N = MEMBERS: each part timed alone (interleaved), in seconds
    and in passes over an ``N x d`` float32 array at copy bandwidth, beside a copy and a plain matrix product of
    the velocity's shape (its flop rate says whether the part is bound by arithmetic or by memory)."""
    p = problem(MEMBERS, d)
    path, x, x1, obs, y, out = p["path"], p["x"], p["x1"], p["obs"], p["y"], p["out"]
    a, _ = path.mean_coefficients(FLOW_TIME)
    weights = mixture_weights(squared_distances(x, x1, a=a), path.std(FLOW_TIME)).to(DTYPE)
    velocity = batched_velocity(path, FLOW_TIME, x, x1, out).clone()
    blocks = member_blocks(MEMBERS, d)
    parts: dict[str, Callable[[], Any]] = {
        "copy (read + write)": lambda: out.copy_(x),
        "velocity: squared distances (chunked centred Gram, float64 sums)": lambda: squared_distances(x, x1, a=a),
        "velocity: W x1 + c x (addmm)": lambda: torch.addmm(x, weights, x1, beta=0.5, alpha=0.5, out=out),
        "plain matrix product W x1 (mm)": lambda: torch.mm(weights, x1, out=out),
        "velocity (whole)": lambda: batched_velocity(path, FLOW_TIME, x, x1, out),
        "guidance: h(x) alone (arctan)": lambda: [obs.h(states(x[block], obs)) for block in blocks],
        "guidance: likelihood gradient (autograd through h)": lambda: [autograd_likelihood_gradient(x[block], y, obs)
                                                                        for block in blocks],
        "guidance: likelihood gradient (written out, the guidance's)": lambda: [
            likelihood_gradient(x[block], y, obs) for block in blocks],
        "guidance (whole: end point, gradient, add)": lambda: LocalGuidance(scale=GUIDANCE_SCALE).add_force(
            velocity, x, FLOW_TIME, y, obs),
        "step (velocity + guidance)": lambda: step(batched_velocity, p),
    }
    median = {name: statistics.median(ts) for name, ts in interleaved(parts, repeats).items()}
    array_bytes = MEMBERS * d * DTYPE.itemsize
    flops = 2 * MEMBERS**2 * d  # one N x N x d matrix product
    return {
        "d": d,
        "seconds": median,
        "passes": {name: t * bandwidth / array_bytes for name, t in median.items()},
        "gflops_per_matrix_product": {name: flops / median[name] / 1e9 for name in
                                      ("velocity: squared distances (chunked centred Gram, float64 sums)",
                                       "velocity: W x1 + c x (addmm)", "plain matrix product W x1 (mm)")},
    }


def n_sweep(repeats: int) -> list[dict[str, Any]]:
    """Batched step and velocity time against N at d = N_SWEEP_D."""
    rows = []
    for n in N_SWEEP:
        p = problem(n, N_SWEEP_D, seed=n)
        times = interleaved(
            {
                "batched_step": lambda: step(batched_velocity, p),
                "batched_velocity": lambda: batched_velocity(p["path"], FLOW_TIME, p["x"], p["x1"], p["out"]),
            },
            repeats,
        )
        rows.append({"n": n, "d": N_SWEEP_D, "seconds": {k: statistics.median(v) for k, v in times.items()}})
    return rows


def growth_exponent(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log y against log x."""
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def markdown(payload: dict[str, Any]) -> str:
    m = payload["machine_note"]
    lines = [
        "# EnFF step time: batched Monte Carlo velocity vs per-particle loop",
        "",
        f"Machine: {m}. One step = one velocity evaluation (S counts these) + local guidance (arctan "
        f"observations of every component, std {OBS_STD}), N = {MEMBERS}, float32, OT path at t = {FLOW_TIME}. "
        f"Median of {payload['repeats']} interleaved repeats; both implementations in the same run.",
        "",
        "| d | batched step (s) | per-particle step (s) | step speed-up | batched velocity (s) | per-particle velocity (s) "
        "| velocity speed-up | max rel. difference | velocity / bandwidth bound | velocity GFLOP/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in payload["dimensions"]:
        s = r["seconds"]
        lines.append(
            f"| {r['d']:,} | {s['batched_step']:.4f} | {s['per_particle_step']:.4f} | {r['speedup_step']:.1f}x "
            f"| {s['batched_velocity']:.4f} | {s['per_particle_velocity']:.4f} | {r['speedup_velocity']:.1f}x "
            f"| {max(r['relative_max_difference_velocity'], r['relative_max_difference_step']):.1e} "
            f"| {r['velocity_fraction_of_bandwidth_bound']:.2f} | {r['velocity_gflops']:.1f} |"
        )
    lines += [
        "",
        f"Copy bandwidth (read + write of a 512 MiB float32 tensor): {payload['copy_bandwidth_gb_s']:.1f} GB/s. "
        "\"velocity / bandwidth bound\" = (5 N d x 4 bytes: read x and x1 for the Gram product, read x, x1 and "
        "write v in the addmm) / bandwidth / measured velocity time: 1.0 would be a velocity evaluation at the "
        "memory-bandwidth limit. The full step (velocity + guidance) costs "
        + ", ".join(f"{r['step_array_passes_at_copy_bandwidth']:.0f}" for r in payload["dimensions"])
        + " passes over an N x d float32 array at copy bandwidth (d = "
        + ", ".join(f"{r['d']:,}" for r in payload["dimensions"])
        + ").",
        "",
        f"Growth: batched step time ~ d^{payload['exponent_d']:.2f} (N = {MEMBERS}); at d = {N_SWEEP_D:,}, "
        f"batched velocity time ~ N^{payload['exponent_n_velocity']:.2f} and step time ~ N^{payload['exponent_n_step']:.2f} "
        "over N = " + ", ".join(str(r["n"]) for r in payload["n_sweep"]) + " (flops grow like N^2 d, memory like N d).",
        "",
        "| N | batched velocity (s) | batched step (s) |",
        "|---|---|---|",
    ]
    for r in payload["n_sweep"]:
        lines.append(f"| {r['n']} | {r['seconds']['batched_velocity']:.4f} | {r['seconds']['batched_step']:.4f} |")
    if "breakdown" in payload:
        lines += ["", *breakdown_lines(payload["breakdown"], payload["repeats"])]
    return "\n".join(lines)


def breakdown_lines(b: dict[str, Any], repeats: int) -> list[str]:
    """The Markdown table of :func:`breakdown`."""
    lines = [
        f"Where a step's time goes at d = {b['d']:,}, N = {MEMBERS} (each part timed alone, interleaved, median of "
        f"{repeats}; passes = time x copy bandwidth / (N d x 4 bytes); GFLOP/s for the parts with one N x N x d "
        "matrix product's worth of flops, 2 N^2 d):",
        "",
        "| part | seconds | passes | GFLOP/s |",
        "|---|---|---|---|",
    ]
    for name, seconds in b["seconds"].items():
        rate = b["gflops_per_matrix_product"].get(name)
        lines.append(f"| {name} | {seconds:.4f} | {b['passes'][name]:.1f} | {'' if rate is None else f'{rate:.1f}'} |")
    return lines


def write_breakdown(name: str, parts: dict[str, Any], bandwidth: float, repeats: int) -> None:
    """``results/<name>_breakdown.json`` and ``.md``: :func:`breakdown` alone, with the load average."""
    load = os.getloadavg()
    header = [f"# EnFF step: where the time goes (torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
              f"float32)", "",
              f"Copy bandwidth measured in the same run: {bandwidth / 1e9:.1f} GB/s. Load average (1, 5, 15 min) at the "
              f"end: {', '.join(f'{v:.1f}' for v in load)} on {os.cpu_count()} shared cores: absolute times are "
              "inflated, the parts were interleaved so their ratios compare.", ""]
    payload = {"repeats": repeats, "copy_bandwidth_gb_s": bandwidth / 1e9, "load_average_1_5_15": load,
               "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS")}, "breakdown": parts}
    json_path, md_path = write_results(f"{name}_breakdown", payload, "\n".join(header + breakdown_lines(parts, repeats)))
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="d up to 1e5 only, no assertion on the speed-up")
    parser.add_argument("--name", default="enff_speed", help="results/<name>.json and .md")
    parser.add_argument("--breakdown-only", action="store_true",
                        help="only the per-part breakdown at the largest d (results/<name>_breakdown.*)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    dims = [d for d in DIMENSIONS if not args.quick or d < 1_000_000]
    bandwidth = copy_bandwidth()
    if args.breakdown_only:
        write_breakdown(args.name, breakdown(max(dims), args.repeats, bandwidth), bandwidth, args.repeats)
        return
    rows = [compare(d, args.repeats, bandwidth) for d in dims]
    sweep = n_sweep(args.repeats)
    parts = breakdown(max(dims), args.repeats, bandwidth)
    load = os.getloadavg()
    payload = {
        "repeats": args.repeats,
        "dtype": str(DTYPE),
        "flow_time": FLOW_TIME,
        "copy_bandwidth_gb_s": bandwidth / 1e9,
        "load_average_1_5_15": load,
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "THP_MEM_ALLOC_ENABLE")},
        "dimensions": rows,
        "n_sweep": sweep,
        "breakdown": parts,
        "exponent_d": growth_exponent([r["d"] for r in rows], [r["seconds"]["batched_step"] for r in rows]),
        "exponent_n_velocity": growth_exponent(
            [r["n"] for r in sweep], [r["seconds"]["batched_velocity"] for r in sweep]
        ),
        "exponent_n_step": growth_exponent([r["n"] for r in sweep], [r["seconds"]["batched_step"] for r in sweep]),
    }
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    payload["machine_note"] = (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} intra-op thread(s), "
        f"no GPU, load average {load[0]:.1f} (shared machine)"
    )
    json_path, md_path = write_results(args.name, payload, markdown(payload))
    print(markdown(payload))
    print(f"wrote {json_path} and {md_path}")
    big = [r for r in rows if r["d"] == 1_000_000]
    if big and not args.quick:
        assert big[0]["speedup_step"] >= TARGET_SPEEDUP, f"step speed-up {big[0]['speedup_step']:.1f}x < {TARGET_SPEEDUP}x"


if __name__ == "__main__":
    main()
