#!/usr/bin/env bash
# GPU check (issue 20, point 5): on a machine with CUDA, run the CUDA tests and time the LETKF and the
# classical analyses on the GPU (torch.cuda.synchronize around every timed call), writing
#   benchmarks/results/gpu_check_tests.txt      the CUDA tests' pytest summary
#   benchmarks/results/gpu_letkf_speed.{json,md} LETKF (torch backend) on the 1e6 ring and the 256 x 256 grid
#   benchmarks/results/gpu_classical_speed.json  ETKF, EnKF, LETKF (plain, line search), bootstrap PF at d = 1e6
# Each step has its own time limit so that the whole check stays under 5 minutes. Without CUDA it says so
# and exits 0 without running or writing anything (GPU_CHECK_PYTHON picks the interpreter; default: the
# project's .venv if present, else python3).
set -u
cd "$(dirname "$0")/.."
PYTHON="${GPU_CHECK_PYTHON:-}"
if [ -z "$PYTHON" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no CUDA device visible to torch ($("$PYTHON" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo 'torch not importable')); nothing run, nothing written."
    exit 0
fi
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 NUMBA_NUM_THREADS=1
RESULTS=benchmarks/results
mkdir -p "$RESULTS"
status=0
"$PYTHON" -c "import torch; print('gpu_check on', torch.cuda.get_device_name(0), 'torch', torch.__version__)"
uptime

echo "== CUDA tests (every test parametrized over devices, the CUDA ones only)"
timeout 120 "$PYTHON" -m pytest -q -k cuda -p no:cacheprovider tests/ > "$RESULTS/gpu_check_tests.txt" 2>&1
rc=$?
tail -3 "$RESULTS/gpu_check_tests.txt"
[ $rc -eq 0 ] || { echo "gpu_check: CUDA tests failed or timed out (rc $rc)"; status=1; }

echo "== LETKF on the GPU (d = 1e6 ring, radius 4; 256 x 256 grid, radius 0.025; N = 20)"
timeout 75 "$PYTHON" benchmarks/classical_speed.py --device cuda --suite letkf --max-d 1000000 \
    --out "$RESULTS/gpu_letkf_speed.json" || { echo "gpu_check: LETKF timing failed or timed out"; status=1; }

echo "== classical analyses on the GPU (d = 1e6 ring)"
timeout 90 "$PYTHON" benchmarks/classical_speed.py --device cuda --suite classical --max-d 1000000 \
    --min-d 1000000 --min-repeats 1 --out "$RESULTS/gpu_classical_speed.json" || { echo "gpu_check: classical timing failed or timed out"; status=1; }
uptime
exit $status
