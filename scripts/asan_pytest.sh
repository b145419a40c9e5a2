#!/usr/bin/env bash
# The Python codec tests against the core built with AddressSanitizer + UndefinedBehaviorSanitizer
# (gcc, CACHEGEN_SANITIZE=ON, build/asan): the package is copied next to the sanitized module so
# it is found first, and the sanitizer runtimes are preloaded into the (unsanitized) interpreter.
# Any report aborts the test run. Extra arguments go to pytest.
#
# Not run here: tests/test_hostile_memory.py (it measures RSS, which ASan's shadow memory and
# quarantine inflate) and the failed-thread-start test (it caps the address space, which ASan
# reserves by the terabyte).
#
# usage: scripts/asan_pytest.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

build=build/asan
python3 -c "import pybind11" 2>/dev/null || python3 -m pip install -q --disable-pip-version-check pybind11
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
cmake -S . -B "$build" "${generator[@]}" -DSKBUILD=ON -DCACHEGEN_SANITIZE=ON -DCACHEGEN_CUDA=OFF \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -Dpybind11_DIR="$(python3 -m pybind11 --cmakedir)" >/dev/null
cmake --build "$build" --parallel "$(nproc)" >/dev/null
rm -rf "$build/python"
mkdir -p "$build/python"
cp -r python/cachegen "$build/python/"
rm -f "$build"/python/cachegen/_core*.so
cp "$build"/_core*.so "$build/python/cachegen/"

export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export PYTHONPATH="$PWD/$build/python"
python3 -m pytest -q -p no:cacheprovider \
  tests/test_roundtrip.py tests/test_hostile.py tests/test_hostile_values.py tests/test_api.py \
  tests/test_golden.py tests/test_buffers.py tests/test_lossless.py tests/test_paged.py \
  tests/test_quantizer_reference.py tests/test_transform_blob.py tests/test_weights.py \
  tests/test_shaping.py \
  --deselect tests/test_buffers.py::test_failed_thread_start_is_not_an_abort "$@"
