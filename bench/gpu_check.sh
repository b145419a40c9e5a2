#!/usr/bin/env bash
# One GPU check: build with CUDA ON, run the GPU tests, run the GPU benchmark (a table, and
# bench/results/gpu.{json,md}), then profile the codec's main kernels once with Nsight Compute.
# About 5 minutes on one H200. On the device tool's machine the logs come back through $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOGS=${OUT:-build/gpu_check}
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-16}
if [ -n "${OUT:-}" ]; then
  trap 'cp -f bench/results/gpu.json bench/results/gpu.md "$OUT"/ 2>/dev/null || true' EXIT
fi
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader || true
CACHEGEN_CUDA=ON $PY -m pip install --no-build-isolation --no-deps -q -e . \
  >"$LOGS/build.log" 2>&1 || { tail -40 "$LOGS/build.log"; exit 1; }
$PY -c "import cachegen, json; print(json.dumps(cachegen.build_info()))"
status=0
timeout 300 $PY -m pytest tests/test_cuda.py tests/test_transform_blob.py -q -rs -p no:cacheprovider \
  --timeout 120 -n 8 \
  >"$LOGS/tests.log" 2>&1 || status=1
tail -15 "$LOGS/tests.log"
# The per-symbol decode path on the outputs the staged one takes, and the two timed alternately.
CACHEGEN_GPU_DECODE=direct timeout 200 $PY -m pytest tests/test_cuda.py -q -p no:cacheprovider \
  --timeout 120 -n 8 >"$LOGS/tests_direct.log" 2>&1 || status=1
tail -3 "$LOGS/tests_direct.log"
for round in 1 2; do
  for path in direct staged; do
    CACHEGEN_GPU_DECODE=$path timeout 100 $PY bench/gpu_decode_paths.py || status=1
  done
done 2>&1 | tee "$LOGS/decode_paths.log"
timeout 200 $PY bench/gpu_speed.py >"$LOGS/bench.log" 2>&1 || status=1
tail -25 "$LOGS/bench.log"
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
if [ -n "$NCU" ] && [ -z "${SKIP_NCU:-}" ]; then
  timeout 200 "$NCU" --clock-control none -c 6 \
    -k 'regex:decode_kernel|encode_kernel|quantize_hist|fit_tables_kernel' \
    --section SpeedOfLight --section Occupancy --section LaunchStats \
    --section WarpStateStats --section MemoryWorkloadAnalysis \
    $PY bench/gpu_kernels.py >"$LOGS/ncu.txt" 2>&1 || echo "ncu failed (see ncu.txt)"
  grep -E "decode_kernel|encode_kernel|quantize_hist|fit_tables|Duration|Achieved Occupancy|Registers Per|Stall|Memory Throughput|Compute \(SM\)" \
    "$LOGS/ncu.txt" | head -60
fi
exit $status
