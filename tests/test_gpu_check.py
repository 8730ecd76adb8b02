"""benchmarks/gpu_check.sh without CUDA: a clear message, exit status 0, nothing run or written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
OUTPUTS = ("gpu_check_tests.txt", "gpu_letkf_speed.json", "gpu_letkf_speed.md", "gpu_classical_speed.json")


def _stamps() -> dict[str, float | None]:
    results = ROOT / "benchmarks" / "results"
    return {name: (results / name).stat().st_mtime if (results / name).exists() else None for name in OUTPUTS}


def test_gpu_check_without_cuda_says_so_and_exits_zero():
    before = _stamps()
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "GPU_CHECK_PYTHON": sys.executable}
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "no CUDA device visible to torch" in done.stdout
    assert "nothing run, nothing written" in done.stdout
    assert "CUDA tests" not in done.stdout  # stopped before the first step
    assert _stamps() == before


def test_gpu_check_with_a_broken_interpreter_still_exits_zero():
    env = {**os.environ, "GPU_CHECK_PYTHON": str(ROOT / "no-such-python")}
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0
    assert "torch not importable" in done.stdout
