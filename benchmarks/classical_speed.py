"""Time per analysis of the classical filters (or the localized generative ones beside the LETKF), side by side.

N = 20 members, every state component observed (identity, unit error std), random forecast
ensembles of the right shape: Lorenz-96-like rings of d = 40 ... 1,000,000 points (periodic length d,
unit spacing) and a 256 x 256 doubly periodic grid on [0, 2)^2 (Navier-Stokes-like). Each case runs
in its own subprocess so its peak resident memory (``ru_maxrss``) is its own; the first call (which
also builds the LETKF neighbour lists) is timed separately from the median of the repeated calls.

Usage::

    python benchmarks/classical_speed.py [--threads 1] [--device cpu] [--max-d 1000000] [--suite localized]

``--suite localized`` times the LETKF beside ``lenff-ot`` (gradient and kalman guidance), ``lenff-f2p``,
``lensf`` and ``lpf`` at the same radius, ``S = LOCALIZED_STEPS`` velocity evaluations each, and ``lenff-tempered``
(``K = --tempered-steps`` LETKF steps, default ``TEMPERED_STEPS``, shared frame).

``--suite letkf`` times one LETKF analysis (``observe`` and ``letkf_update``) with each local-analysis
backend side by side, the batched torch eigen-decompositions and the numba kernel, on the ring of
``--max-d`` points (radius 4) and on the 256 x 256 grid (radius ``NS256_RADIUS``), and writes ``letkf_speed.json``
and ``letkf_speed.md`` (with the load average before and after) unless ``--out`` says otherwise.
``--suite line-search`` times the LETKF (numba kernel) with and without its line search on the ring of
``--max-d`` points observed through ``arctan`` with error std ``ATAN_STD`` (the ``l96_1e6_atan`` setting, where
the forecast spread of 1 makes many linearized steps overshoot), and writes ``letkf_line_search_speed.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results"
MEMBERS = 20
RING_SIZES = (40, 400, 4_000, 40_000, 1_000_000)
#: LETKF / localized-EnKF Gaspari-Cohn half-width in grid spacings (support twice that).
RING_RADIUS = 4.0
GRID_RADIUS_CELLS = 2.0
#: Dense covariance tapers need n_state * n_obs numbers: localized EnKF only up to this size.
LOCALIZED_ENKF_MAX_D = 4_000


#: Velocity (or score) evaluations per analysis of the localized generative filters in ``--suite localized``.
LOCALIZED_STEPS = 9
#: Default tempering steps K of ``lenff-tempered`` in ``--suite localized`` (the shipped cases' K, shared frame;
#: ``--tempered-steps`` sets another).
TEMPERED_STEPS = 4


def localized_cases(max_d: int, tempered_steps: int = TEMPERED_STEPS) -> list[dict[str, Any]]:
    """The LETKF and the localized filters on the rings, at the LETKF's radius (``lenff-tempered`` with
    ``tempered_steps`` steps)."""
    filters = [
        ("letkf", {}),
        ("lenff-ot", {"steps": LOCALIZED_STEPS, "guidance": "local"}),
        ("lenff-ot", {"steps": LOCALIZED_STEPS, "guidance": "kalman"}),
        ("lenff-f2p", {"steps": LOCALIZED_STEPS}),
        ("lensf", {"steps": LOCALIZED_STEPS}),
        ("lpf", {}),
        ("lenff-tempered", {"steps": tempered_steps}),
    ]
    return [{"filter": name, "hyper": {"radius": RING_RADIUS, **hyper}, "grid": "ring", "d": d}
            for d in RING_SIZES if d <= max_d for name, hyper in filters]


#: The tuned LETKF radius of the ns256_atan case (cases/ns256_atan.toml), 3.2 cells of the 256 x 256 grid.
NS256_RADIUS = 0.025
#: Observation error std of the arctan observations of ``--suite line-search`` (that of ``l96_1e6_atan``).
ATAN_STD = 0.05


def line_search_cases(max_d: int) -> list[dict[str, Any]]:
    """The LETKF (numba kernel) on the arctan ring of ``max_d`` points, without and with its line search."""
    return [{"filter": "letkf", "backend": "numba", "operator": "atan", "grid": "ring", "d": max_d,
             "hyper": {"radius": RING_RADIUS, "line_search": search}} for search in (False, True)]


#: Local-analysis backends of ``--suite letkf``, the former (batched torch) one first.
LETKF_BACKENDS = ("torch", "numba")


def letkf_cases(max_d: int, device: str = "cpu") -> list[dict[str, Any]]:
    """The LETKF with each backend (only torch off the CPU) on the largest ring, on the 256 x 256 grid and on
    ns256_atan's own state: three fields (pressure, u, v) at each point of that grid."""
    backends = LETKF_BACKENDS if device == "cpu" else ("torch",)
    geometries = [{"grid": "ring", "d": max_d, "hyper": {"radius": RING_RADIUS}},
                  {"grid": "256x256", "d": 256 * 256, "hyper": {"radius": NS256_RADIUS}},
                  {"grid": "3x256x256", "d": 3 * 256 * 256, "hyper": {"radius": NS256_RADIUS}}]
    return [{"filter": "letkf", "backend": backend, **geometry, **({"min_repeats": 1} if backend == "torch" else {})}
            for geometry in geometries for backend in backends]


def cases(max_d: int) -> list[dict[str, Any]]:
    """Every (filter, geometry) pair of the classical benchmark."""
    out = []
    for d in (d for d in RING_SIZES if d <= max_d):
        out += [
            {"filter": "etkf", "hyper": {}, "grid": "ring", "d": d},
            {"filter": "enkf", "hyper": {}, "grid": "ring", "d": d},
            {"filter": "letkf", "hyper": {"radius": RING_RADIUS}, "grid": "ring", "d": d},
            {"filter": "letkf", "hyper": {"radius": RING_RADIUS, "line_search": True}, "grid": "ring", "d": d},
            {"filter": "bpf", "hyper": {"jitter": 0.1}, "grid": "ring", "d": d},
        ]
        if d <= LOCALIZED_ENKF_MAX_D:
            out.append({"filter": "enkf", "hyper": {"radius": RING_RADIUS}, "grid": "ring", "d": d})
    out.append({"filter": "letkf", "hyper": {"radius": GRID_RADIUS_CELLS * 2.0 / 256}, "grid": "256x256", "d": 256 * 256})
    return out


def measure(case: dict[str, Any], device: str, dtype: torch.dtype, min_seconds: float = 2.0,
            min_repeats: int = 3) -> dict[str, Any]:
    """Time one case in this process: a first call, then at least ``min_repeats`` timed calls.

    ``case`` holds ``filter``, ``hyper``, ``grid`` (``"ring"``, ``"256x256"`` or ``"3x256x256"``: three
    co-located fields) and ``d``, optionally ``n``
    (members, default ``MEMBERS``), ``backend`` (the LETKF's local solver alone), ``operator`` (``"atan"``:
    arctan observations with error std :data:`ATAN_STD`; default every element itself, unit error std) and
    ``min_repeats``."""
    from enff.filters import get_filter
    from enff.models.base import Grid
    from enff.observations.operators import ATan, Identity
    from enff.observations.space import ObservationSpace

    if case["grid"] == "ring":
        grid = Grid((np.arange(case["d"], dtype=np.float64),), (float(case["d"]),))
    else:
        axis = np.arange(256) * (2.0 / 256)
        fields = ((np.zeros(3),), (None,)) if case["grid"] == "3x256x256" else ((), ())
        grid = Grid((*fields[0], axis, axis), (*fields[1], 2.0, 2.0))
    d, members = case["d"], case.get("n", MEMBERS)
    arctan = case.get("operator") == "atan"
    std = ATAN_STD if arctan else 1.0
    obs = ObservationSpace(ATan() if arctan else Identity(), torch.full((d,), std, dtype=dtype, device=device),
                           grid, grid.shape)
    gen = torch.Generator(device=device).manual_seed(0)
    truth = torch.randn(grid.shape, generator=gen, dtype=dtype, device=device)
    forecast = truth + torch.randn((members, *grid.shape), generator=gen, dtype=dtype, device=device)
    y = obs.operator(truth[None])[0] + std * torch.randn(d, generator=gen, dtype=dtype, device=device)
    filt = get_filter(case["filter"], **case["hyper"])
    result: list[torch.Tensor] = []

    def analyse() -> None:
        if "backend" not in case:
            filt.analysis(forecast, y, obs, generator=gen)
            return
        from enff.filters.ensemble_space import observe
        from enff.filters.letkf import letkf_update

        observed = observe(forecast, y, obs)
        result[:] = letkf_update(forecast.reshape(members, -1), observed, obs, case["hyper"]["radius"],
                                 line_search=case["hyper"].get("line_search", False), backend=case["backend"])

    def once() -> float:
        if device != "cpu":
            torch.cuda.synchronize()
        start = time.perf_counter()
        analyse()
        if device != "cpu":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    first = once()
    min_repeats = case.get("min_repeats", min_repeats)  # the slow torch LETKF rows: fewer calls
    times = []
    while len(times) < min_repeats or (sum(times) < min_seconds and len(times) < 50):
        times.append(once())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    if device != "cpu":
        peak_device = torch.cuda.max_memory_allocated() / 2**20
    checksum = {"analysis_sum": float(result[0].double().sum()), "shortened_steps": result[1]} if result else {}
    return {
        **case,
        **checksum,
        "first_call_s": first,
        "median_s": statistics.median(times),
        "repeats": len(times),
        "peak_rss_mib": peak,
        **({"peak_device_mib": peak_device} if device != "cpu" else {}),
    }


def measure_in_subprocess(case: dict[str, Any], threads: int, device: str, dtype: str,
                          min_repeats: int) -> dict[str, Any]:
    """:func:`measure` of ``case`` in a fresh interpreter (its ``peak_rss_mib`` is then the case's own); a failed
    case gives the case with ``error`` (the last line of its stderr)."""
    command = [sys.executable, __file__, "--threads", str(threads), "--device", device, "--dtype", dtype,
               "--min-repeats", str(min_repeats), "--one", json.dumps(case)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        lines = result.stderr.strip().splitlines() or [f"exit status {result.returncode}"]
        return {**case, "error": lines[-1]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch (intra-op) threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    parser.add_argument("--max-d", type=int, default=max(RING_SIZES))
    parser.add_argument("--suite", choices=("classical", "localized", "letkf", "line-search"), default="classical")
    parser.add_argument("--min-repeats", type=int, default=3, help="timed calls after the first one (at least)")
    parser.add_argument("--min-d", type=int, default=0, help="leave out smaller states")
    parser.add_argument("--only", nargs="+", metavar="FILTER", help="time only these filters")
    parser.add_argument("--tempered-steps", type=int, default=TEMPERED_STEPS, metavar="K",
                        help=f"tempering steps K of lenff-tempered in --suite localized (default {TEMPERED_STEPS})")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: JSON of a single case
    parser.add_argument("--out", type=Path, help="default results/classical_speed.json (letkf_speed.json for --suite "
                        "letkf, letkf_line_search_speed.json for --suite line-search)")
    args = parser.parse_args()
    if args.tempered_steps < 1:
        parser.error(f"--tempered-steps must be at least 1, got {args.tempered_steps}")
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    if args.one:
        print(json.dumps(measure(json.loads(args.one), args.device, dtype, min_repeats=args.min_repeats)))
        return
    if args.out is None:
        args.out = RESULTS / {"letkf": "letkf_speed.json", "line-search": "letkf_line_search_speed.json"}.get(
            args.suite, "classical_speed.json")
    load_before = os.getloadavg()
    baseline = [sys.executable, "-c", "import resource, enff.filters; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"]
    rows = []
    suites = {"classical": cases, "localized": lambda max_d: localized_cases(max_d, args.tempered_steps),
              "letkf": lambda max_d: letkf_cases(max_d, args.device), "line-search": line_search_cases}
    selected = [case for case in suites[args.suite](args.max_d)
                if case["d"] >= args.min_d and (not args.only or case["filter"] in args.only)]
    for case in selected:
        rows.append(measure_in_subprocess(case, args.threads, args.device, args.dtype, args.min_repeats))
        print(json.dumps(rows[-1]), flush=True)
    setup = {
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        "torch_threads": args.threads,
        "dtype": args.dtype,
        "suite": args.suite,
        **({"tempered_steps": args.tempered_steps} if args.suite == "localized" else {}),
        "members": MEMBERS,
        "torch": torch.__version__,
        "import_peak_rss_mib": float(subprocess.run(baseline, capture_output=True, text=True).stdout),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "cpu_model": _cpu_model(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"setup": setup, "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")
    summaries = {"letkf": letkf_summary, "line-search": line_search_summary}
    if args.suite in summaries:
        markdown = args.out.with_suffix(".md")
        markdown.write_text(summaries[args.suite](setup, rows))
        print(f"wrote {markdown}")


def _cpu_model() -> str | None:
    """The CPU's model name from ``/proc/cpuinfo`` (``None`` where there is none)."""
    try:
        with open("/proc/cpuinfo") as info:
            return next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), None)
    except OSError:
        return None


def _measured_on(setup: dict[str, Any]) -> str:
    """"Measured <when> on <cpu> (<n> cores, shared with other jobs)" of a result's ``setup``."""
    return (f"Measured {setup['created']} on {setup['cpu_model'] or setup['machine']} ({setup['cpu_count']} cores, "
            "shared with other jobs)")


def _load(setup: dict[str, Any]) -> str:
    """The load averages before and after the measurement, as a sentence without its full stop."""
    return (f"Load average (1, 5, 15 min) before {', '.join(f'{v:.1f}' for v in setup['load_average_before'])}, "
            f"after {', '.join(f'{v:.1f}' for v in setup['load_average_after'])}")


def _table_head(title: str, text: str, columns: list[str]) -> list[str]:
    """The lines of a summary's title, its paragraph and the head of its table."""
    return [f"# {title}", "", text, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def letkf_summary(setup: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """Markdown table of ``--suite letkf``: seconds per analysis of each backend and their ratio."""
    lines = _table_head(
        "LETKF: seconds per analysis, batched torch eigh against the numba kernel",
        f"{_measured_on(setup)}, device {setup['device']}, {setup['torch_threads']} torch thread(s), "
        f"{setup['dtype']}, N = {setup['members']}, every state element observed (unit error std), "
        f"torch {setup['torch']}. {_load(setup)}: on a loaded machine every time is "
        "inflated, the ratio much less. One analysis = `observe` + `letkf_update`; the first call also builds "
        "the neighbour lists; `median` over the repeated calls. `analysis sum`: the sum of every analysis "
        "value, the same for both backends to round-off.",
        ["geometry", "d", "radius", "backend", "first call (s)", "median (s)", "repeats", "torch / numba",
         "analysis sum"])
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['grid']} | {row['d']:,} | {row['hyper']['radius']:g} | {row['backend']} | "
                         f"error: {row['error']} | | | | |")
            continue
        torch_row = next((r for r in rows if r["grid"] == row["grid"] and r["backend"] == "torch"
                          and "error" not in r), None)
        ratio = f"{torch_row['median_s'] / row['median_s']:.1f}" if torch_row and row["backend"] != "torch" else ""
        lines.append(f"| {row['grid']} | {row['d']:,} | {row['hyper']['radius']:g} | {row['backend']} | "
                     f"{row['first_call_s']:.2f} | {row['median_s']:.2f} | {row['repeats']} | {ratio} | "
                     f"{row['analysis_sum']:.10g} |")
    return "\n".join(lines) + "\n"


def line_search_summary(setup: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """Markdown table of ``--suite line-search``: seconds per analysis with and without the line search."""
    text = (f"{_measured_on(setup)}, {setup['torch_threads']} torch thread(s), {setup['dtype']}, N = "
            f"{setup['members']}, numba kernel, a ring observed through arctan (error std {ATAN_STD:g}) with a "
            f"forecast spread of 1, torch {setup['torch']}. {_load(setup)}. One analysis = `observe` + "
            "`letkf_update`; `median` over the repeated calls; `shortened`: the fraction of local steps the "
            "search shortened.")
    columns = ["d", "radius", "line search", "first call (s)", "median (s)", "repeats", "/ plain", "shortened",
               "analysis sum"]
    lines = _table_head("LETKF with and without its line search: seconds per analysis", text, columns)
    plain = next((r for r in rows if not r["hyper"].get("line_search") and "error" not in r), None)
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['d']:,} | {row['hyper']['radius']:g} | {row['hyper'].get('line_search')} | "
                         f"error: {row['error']} | | | | | |")
            continue
        ratio = f"{row['median_s'] / plain['median_s']:.2f}" if plain else ""
        lines.append(f"| {row['d']:,} | {row['hyper']['radius']:g} | {row['hyper'].get('line_search', False)} | "
                     f"{row['first_call_s']:.2f} | {row['median_s']:.2f} | {row['repeats']} | {ratio} | "
                     f"{row['shortened_steps']:.3f} | {row['analysis_sum']:.10g} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
