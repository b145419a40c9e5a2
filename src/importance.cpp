#include "importance.hpp"

#include <cmath>

#include "cpu_path.hpp"
#include "parallel.hpp"

namespace cachegen {
namespace {

void pair_magnitudes(CpuPath path, const float* k, uint32_t half, float* m) {
  switch (path) {
    case CpuPath::Avx512:
      return pair_magnitudes_avx512(k, half, m);
    case CpuPath::Avx2:
      return pair_magnitudes_avx2(k, half, m);
    case CpuPath::Scalar:
      for (uint32_t p = 0; p < half; ++p) m[p] = std::sqrt(k[p] * k[p] + k[p + half] * k[p + half]);
  }
}

}  // namespace

std::vector<float> key_pair_magnitudes(const TensorView& keys, int threads) {
  if (keys.head_dim % 2) throw InputError("key pair magnitudes need an even head_dim");
  check_paging(keys, "keys");
  const uint32_t half = keys.head_dim / 2, width = keys.heads * half;
  constexpr uint32_t kTokensPerTask = 256;
  const CpuPath path = cpu_path();
  std::vector<float> mag((size_t)keys.tokens * width);
  parallel_for((keys.tokens + kTokensPerTask - 1) / kTokensPerTask, threads, [&](size_t task) {
    std::vector<float> row(keys.channels());
    const uint32_t end = std::min<uint32_t>(keys.tokens, (uint32_t)(task + 1) * kTokensPerTask);
    for (uint32_t t = (uint32_t)task * kTokensPerTask; t < end; ++t) {
      load_row(keys, t, row.data());
      float* m = mag.data() + (size_t)t * width;
      for (uint32_t h = 0; h < keys.heads; ++h)
        pair_magnitudes(path, row.data() + (size_t)h * keys.head_dim, half, m + h * half);
      for (uint32_t i = 0; i < width; ++i)
        if (!std::isfinite(m[i])) throw InputError("keys contain nan or inf");
    }
  });
  return mag;
}

}  // namespace cachegen
