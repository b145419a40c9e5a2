#include "cpu_path.hpp"

#include <cstdlib>
#include <string>

#include "common.hpp"

namespace cachegen {

const char* cpu_path_name(CpuPath p) {
  switch (p) {
    case CpuPath::Avx512:
      return "avx512";
    case CpuPath::Avx2:
      return "avx2";
    case CpuPath::Scalar:
      break;
  }
  return "scalar";
}

bool cpu_supports(CpuPath p) {
#ifdef CG_X86_SIMD
  switch (p) {
    case CpuPath::Avx512: {
      static const bool yes =
          __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("popcnt");
      return yes;
    }
    case CpuPath::Avx2: {
      static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt");
      return yes;
    }
    case CpuPath::Scalar:
      return true;
  }
  return false;
#else
  return p == CpuPath::Scalar;
#endif
}

std::vector<CpuPath> available_cpu_paths() {
  std::vector<CpuPath> out;
  for (CpuPath p : {CpuPath::Scalar, CpuPath::Avx2, CpuPath::Avx512})
    if (cpu_supports(p)) out.push_back(p);
  return out;
}

CpuPath cpu_path() {
  const char* env = std::getenv("CACHEGEN_CPU_PATH");
  if (!env || !*env) return available_cpu_paths().back();
  for (CpuPath p : {CpuPath::Scalar, CpuPath::Avx2, CpuPath::Avx512}) {
    if (std::string(env) != cpu_path_name(p)) continue;
    if (!cpu_supports(p))
      throw InputError(std::string("CACHEGEN_CPU_PATH=") + env + ": this CPU or build lacks it");
    return p;
  }
  throw InputError(std::string("CACHEGEN_CPU_PATH=") + env +
                   ": unknown path (scalar, avx2 or avx512)");
}

}  // namespace cachegen
