#!/usr/bin/env bash
# Build the libFuzzer targets (fuzz/*.cpp: blob head, tables, step codes, whole decode) with
# clang, ASan and UBSan, replay every saved regression, then fuzz each target for a bounded time
# from the seed corpus in fuzz/corpus/<target>/. Fails on the first crash, sanitizer report,
# leak, single allocation over 256 MiB or RSS over 2 GiB; the crashing input is left in
# build/fuzz/artifacts/ (copy it to fuzz/regressions/<target>/ once fixed).
#
# usage: scripts/fuzz.sh [seconds per target, default 60] [target ...]
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(head tables step_codes decode)

if ! command -v clang++ >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang >/dev/null
fi
build=build/fuzz
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
cmake -S . -B "$build" "${generator[@]}" -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCACHEGEN_FUZZ=ON -DCACHEGEN_SANITIZE=ON -DCACHEGEN_CUDA=OFF >/dev/null
cmake --build "$build" --parallel "$(nproc)" >/dev/null

export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
limits=(-rss_limit_mb=2048 -malloc_limit_mb=256 -max_len=16384 -timeout=20)
for t in "${targets[@]}"; do
  bin="$build/fuzz_$t"
  if compgen -G "fuzz/regressions/$t/*" >/dev/null; then
    "$bin" "${limits[@]}" fuzz/regressions/"$t"/* >"$build/$t.replay.log" 2>&1 ||
      { cat "$build/$t.replay.log"; echo "fuzz: $t regression replay failed" >&2; exit 1; }
  fi
  # The working corpus grows in build/; the seeds in the repository stay as they are.
  mkdir -p "$build/corpus/$t" "$build/artifacts/$t"
  log="$build/$t.log"
  if ! "$bin" "${limits[@]}" -max_total_time="$seconds" -print_final_stats=1 \
    -artifact_prefix="$build/artifacts/$t/" "$build/corpus/$t" "fuzz/corpus/$t" >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz: $t crashed; input in $build/artifacts/$t/" >&2
    exit 1
  fi
  last=$(grep -E "^#[0-9]+" "$log" | tail -n 1)
  execs=$(grep -oP "stat::number_of_executed_units:\s*\K[0-9]+" "$log")
  rate=$(grep -oP "stat::average_exec_per_sec:\s*\K[0-9]+" "$log")
  cov=$(grep -oP "cov: \K[0-9]+" <<<"$last")
  ft=$(grep -oP "ft: \K[0-9]+" <<<"$last")
  echo "fuzz: $t ok: ${execs} execs in ${seconds} s (${rate}/s), cov ${cov}, ft ${ft}"
done
