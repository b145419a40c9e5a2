#!/usr/bin/env bash
# One GPU check: build with CUDA ON, run the GPU tests, run the GPU benchmark (a table, and
# bench/results/gpu.{json,md}). About 3-4 minutes on one H100.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-16}
# On the device tool's machine, bring the figures back whatever happens.
if [ -n "${OUT:-}" ]; then
  trap 'cp -f bench/results/gpu.json bench/results/gpu.md "$OUT"/ 2>/dev/null || true' EXIT
fi
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
CACHEGEN_CUDA=ON $PY -m pip install --no-build-isolation --no-deps -q -e .
$PY -c "import cachegen, json; print(json.dumps(cachegen.build_info()))"
status=0
$PY -m pytest tests/test_cuda.py -q -rs || status=1
$PY bench/gpu_speed.py || status=1
exit $status
