// Which CPU code path decodes: the widest vector path this CPU runs, or the one the environment
// variable CACHEGEN_CPU_PATH names (scalar, avx2, avx512), so tests and benchmarks run each.
#pragma once
#include <cstdint>
#include <vector>

// The x86 vector kernels build with GCC or Clang on x86-64; elsewhere (or with
// -DCACHEGEN_SCALAR_ONLY) only the scalar path exists.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(CACHEGEN_SCALAR_ONLY)
#define CG_X86_SIMD 1
#endif

namespace cachegen {

enum class CpuPath : uint8_t { Scalar, Avx2, Avx512 };

const char* cpu_path_name(CpuPath p);
bool cpu_supports(CpuPath p);
std::vector<CpuPath> available_cpu_paths();  // scalar first

// The path in effect, CACHEGEN_CPU_PATH read on each call; throws InputError on an unknown name
// or a path this CPU (or this build) lacks.
CpuPath cpu_path();

// The kernel of `path` among one per path with the same signature: every path-dispatched call
// (decode, encode, dequantization, symbol counts, key statistics) goes through here.
template <typename F>
F* on_path(CpuPath path, F* scalar, F* avx2, F* avx512) {
  return path == CpuPath::Avx512 ? avx512 : path == CpuPath::Avx2 ? avx2 : scalar;
}

}  // namespace cachegen
