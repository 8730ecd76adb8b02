"""Model throughput at the reference sizes: member-steps and state values per second.

Lorenz-96 20 x 1e6 (numba fused kernel vs the torch path, side by side), Kuramoto-Sivashinsky 20 x 1024
and Navier-Stokes 20 x 256^2, in float64 and float32, on CPU and on CUDA when present. Each
configuration runs in its own subprocess so that its peak memory is its own.

    python benchmarks/model_throughput.py [--repeats 3] [--quick]

Writes results/model_throughput.json and results/model_throughput.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, peak_rss_mb, time_call, write_results  # noqa: E402

CONFIGS = {
    # name: (constructor expression, members, steps per timed call)
    "lorenz96_1e6_numba": ("Lorenz96(dim=1_000_000, dt=0.01, backend='numba')", 20, 1),
    "lorenz96_1e6_torch": ("Lorenz96(dim=1_000_000, dt=0.01, backend='torch')", 20, 1),
    "ks_1024": ("KuramotoSivashinsky(dim=1024, dt=0.25)", 20, 10),
    "ns_256": ("NavierStokes2D(n=256, dt=0.001)", 20, 1),
}


def run_one(name: str, device: str, dtype: str, repeats: int, threads: int | None) -> dict:
    import enff.models as models

    if threads:
        import numba

        torch.set_num_threads(threads)
        numba.set_num_threads(threads)

    expr, members, steps = CONFIGS[name]
    model = eval(expr, vars(models))  # noqa: S307 - expressions are the constants above
    torch_dtype = getattr(torch, dtype)
    dev = torch.device(device)
    gen = torch.Generator(device=dev).manual_seed(0)
    x = model.initial_state(gen, members, dtype=torch_dtype, device=dev)
    model.step(x, steps)  # warm-up: compiles kernels, builds coefficient caches
    times = time_call(lambda: model.step(x, steps), repeats, dev)
    best = min(times)
    values = members * x[0].numel()
    return {
        "config": name, "device": device, "dtype": dtype, "members": members, "state_size": x[0].numel(),
        "steps_per_call": steps, "seconds_per_step_best": best / steps,
        "seconds_per_step_median": statistics.median(times) / steps,
        "member_steps_per_second": members * steps / best, "values_per_second": values * steps / best,
        "peak_rss_mib": peak_rss_mb(), "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="float64 on CPU only")
    parser.add_argument("--threads", type=int, default=None, help="torch and numba threads (default: theirs)")
    parser.add_argument("--one", nargs=3, metavar=("CONFIG", "DEVICE", "DTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(*args.one, repeats=args.repeats, threads=args.threads)))
        return
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    dtypes = ["float64"] if args.quick else ["float64", "float32"]
    rows = []
    for device in devices:
        for dtype in dtypes:
            for name in CONFIGS:
                if device == "cuda" and name.endswith("numba"):
                    continue
                extra = ["--threads", str(args.threads)] if args.threads else []
                out = subprocess.run([sys.executable, __file__, "--one", name, device, dtype,
                                      "--repeats", str(args.repeats), *extra], capture_output=True, text=True)
                if out.returncode != 0:
                    rows.append({"config": name, "device": device, "dtype": dtype, "error": out.stderr[-500:]})
                else:
                    rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(json.dumps(rows[-1]), flush=True)
    info = machine()
    lines = [
        "# Model throughput",
        "",
        f"Machine: {info.get('cpu_model', info['processor'])}, {info['cpu_count']} cores, torch and numba threads "
        f"{args.threads or 'default (' + str(info['torch_threads']) + ')'}, CUDA: {info['cuda'] or 'none'}, 1-minute load average at the end "
        f"{info['load_average_1min']:.1f} (above 2 means other jobs shared the 2 cores). Best of {args.repeats} timed calls after a warm-up; "
        "each configuration in its own process (peak RSS is that process's).",
        "",
        "| config | device | dtype | members x size | s / step | member-steps / s | values / s | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['config']} | {r['device']} | {r['dtype']} | failed | | | | |")
            continue
        lines.append(
            f"| {r['config']} | {r['device']} | {r['dtype']} | {r['members']} x {r['state_size']:,} | "
            f"{r['seconds_per_step_best']:.4g} | {r['member_steps_per_second']:.4g} | "
            f"{r['values_per_second']:.3g} | {r['peak_rss_mib']:.0f} |")
    by = {(r["config"], r["device"], r["dtype"]): r for r in rows if "error" not in r}
    for dtype in dtypes:
        a, b = by.get(("lorenz96_1e6_numba", "cpu", dtype)), by.get(("lorenz96_1e6_torch", "cpu", dtype))
        if a and b:
            lines += ["", f"Lorenz-96 20 x 1e6 {dtype} on CPU: numba kernel "
                      f"{b['seconds_per_step_best'] / a['seconds_per_step_best']:.2f}x the speed of the torch path "
                      "(same run, side by side)."]
    write_results("model_throughput", {"repeats": args.repeats, "rows": rows}, "\n".join(lines))


if __name__ == "__main__":
    main()
