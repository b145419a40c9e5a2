#!/usr/bin/env bash
# Build the sdist and the wheel, then install the wheel into a fresh venv whose PATH holds no
# compiler, import it, round-trip a small array through the codec and run `cachegen --version`.
# The build venv and CMake build folder persist under build/wheel-check, so a rerun only
# recompiles what changed. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

work=build/wheel-check
dist="$work/dist"
buildenv="$work/buildenv"
pip_q=(-q --disable-pip-version-check)
rm -rf "$dist"
mkdir -p "$dist"

# A stable build venv (not pip's throw-away isolation): CMake's cache keeps valid paths to its
# pybind11 between runs.
[ -x "$buildenv/bin/python" ] || python3 -m venv "$buildenv"
"$buildenv/bin/python" -m pip install "${pip_q[@]}" "scikit-build-core>=0.10" "pybind11>=2.12"

echo "wheel_check: sdist"
"$buildenv/bin/python" - "$dist" <<'EOF'
import sys
from scikit_build_core.build import build_sdist
print(build_sdist(sys.argv[1]))
EOF
echo "wheel_check: wheel (CUDA off: the wheel must import on any machine)"
CACHEGEN_CUDA=OFF "$buildenv/bin/python" -m pip wheel "${pip_q[@]}" --no-deps \
  --no-build-isolation -C build-dir="$work/cmake" -w "$dist" .
wheel=$(ls "$dist"/cachegen-*.whl)
python3 - "$wheel" <<'EOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
missing = [n for n in ("cachegen/py.typed", "cachegen/_core.pyi",
                        "cachegen/profiles/smollm2-135m-instruct.json")
           if n not in names]
if missing or not any(n.startswith("cachegen/_core") for n in names):
    sys.exit(f"wheel lacks {missing or 'the core module'}")
EOF

venv=$(mktemp -d)
trap 'rm -rf "$venv"' EXIT
python3 -m venv "$venv"
# Only the venv's own bin on PATH, and CC/CXX pointing nowhere: installing must need no compiler.
nocc=(env PATH="$venv/bin" CC=/nonexistent CXX=/nonexistent)
for tool in gcc g++ cc c++ clang; do
  if "${nocc[@]}" /bin/sh -c "command -v $tool" >/dev/null 2>&1; then
    echo "wheel_check: $tool is still on the stripped PATH" >&2
    exit 1
  fi
done
echo "wheel_check: install into a fresh venv without a compiler"
"${nocc[@]}" "$venv/bin/python" -m pip install "${pip_q[@]}" "$wheel"
"${nocc[@]}" "$venv/bin/python" - <<'EOF'
import numpy as np
import cachegen

kv = np.random.default_rng(0).standard_normal((2, 2, 40, 2, 8)).astype(np.float16)
out = cachegen.decode(cachegen.encode(kv, level=cachegen.DEFAULT_LEVEL))
assert out.shape == kv.shape and out.dtype == kv.dtype
assert float(np.abs(out.astype(np.float32) - kv).max()) < 1.0
print("wheel_check: import, encode, decode ok;", cachegen.build_info())
EOF
version=$("${nocc[@]}" "$venv/bin/cachegen" --version)
echo "wheel_check: $version"
# One version source: the wheel's metadata carries the package's __version__.
"${nocc[@]}" "$venv/bin/python" - "$version" <<'EOF'
import sys
from importlib.metadata import version

import cachegen

assert sys.argv[1] == f"cachegen {cachegen.__version__}" == f"cachegen {version('cachegen')}"
EOF

# The extras give ranges: cachegen[hf] next to python3's torch leaves that torch. Checked in a
# venv that sees python3's packages and holds this wheel (over any older cachegen there).
python3 -c "import torch" || { echo "wheel_check: python3 needs torch for this check" >&2; exit 1; }
python3 -m venv --system-site-packages "$venv/hf"
"$venv/hf/bin/python" -m pip install "${pip_q[@]}" --no-deps --force-reinstall "$wheel"
"$venv/hf/bin/python" -m pip install "${pip_q[@]}" --dry-run --report "$venv/hf.json" "$wheel[hf]"
"$venv/hf/bin/python" - "$venv/hf.json" <<'EOF'
import json
import sys
from importlib.metadata import requires

import torch

assert any(r.startswith("torch") and "<3" in r for r in requires("cachegen")), requires("cachegen")
names = {i["metadata"]["name"].lower() for i in json.load(open(sys.argv[1]))["install"]}
if "torch" in names:
    sys.exit(f"wheel_check: installing cachegen[hf] would replace torch {torch.__version__}")
print(f"wheel_check: cachegen[hf] keeps torch {torch.__version__}; would install {sorted(names)}")
EOF
echo "wheel_check: ok ($(basename "$wheel"), $(basename "$(ls "$dist"/*.tar.gz)"))"
