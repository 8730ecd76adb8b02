"""Shared helpers of the benchmark scripts: machine description and result writing."""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from pathlib import Path
from typing import Any, Callable

import torch

from enff.filters._letkf_numba import LANES

RESULTS = Path(__file__).resolve().parent / "results"

__all__ = ["RESULTS", "machine", "peak_rss_mb", "time_call", "write_results"]


def machine() -> dict[str, Any]:
    """Where the numbers were measured: host, CPU count, torch threads and devices."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_1min": os.getloadavg()[0],
        "letkf_kernel_lanes": LANES,
    }
    try:
        info["cpu_model"] = next(
            line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return info


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_call(fn: Callable[[], Any], repeats: int, device: torch.device | None = None) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn`` (CUDA synchronised around each call)."""
    times = []
    for _ in range(repeats):
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def write_results(name: str, payload: dict[str, Any], summary_md: str) -> tuple[Path, Path]:
    """Write ``results/<name>.json`` (payload plus machine info) and ``results/<name>.md``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **payload}
    json_path, md_path = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    json_path.write_text(json.dumps(payload, indent=2) + "\n")
    md_path.write_text(summary_md.rstrip() + "\n")
    return json_path, md_path


def mean_std(rows: list[dict[str, Any]], key: str) -> str:
    """``"mean ± std"`` of ``rows[i][key]`` over the rows (population std), or the one value alone."""
    values = [float(r[key]) for r in rows]
    if len(values) == 1:
        return f"{values[0]:.4g}"
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5
    return f"{mean:.4g} ± {std:.2g}"


#: The cycling scores the learned-analysis tables show, in column order.
SCORE_COLUMNS = ("rmse_analysis", "spread_analysis", "crps_analysis", "analysis_seconds")


def score_cells_by_filter(rows: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """``(filter, cells)`` per filter in first-seen order: :func:`mean_std` of each :data:`SCORE_COLUMNS` over
    that filter's rows (one row per held-out seed)."""
    labels = dict.fromkeys(r["filter"] for r in rows)
    return [(label, [mean_std([r for r in rows if r["filter"] == label], key) for key in SCORE_COLUMNS])
            for label in labels]
