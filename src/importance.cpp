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

void check_keys(const TensorView& keys) {
  if (keys.head_dim % 2) throw InputError("key pair magnitudes need an even head_dim");
  check_paging(keys, "keys");
}

bool all_finite(const float* m, uint32_t n) {
  bool ok = true;
  for (uint32_t i = 0; i < n; ++i) ok &= std::isfinite(m[i]);
  return ok;
}

}  // namespace

std::vector<float> key_pair_magnitudes(const TensorView& keys, int threads) {
  check_keys(keys);
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
      if (!all_finite(m, width)) throw InputError("keys contain nan or inf");
    }
  });
  return mag;
}

std::vector<double> key_pair_mean_squares(const TensorView& keys, uint32_t skip, int threads) {
  check_keys(keys);
  const uint32_t half = keys.head_dim / 2, first = keys.tokens > skip ? skip : 0;
  const CpuPath path = cpu_path();
  std::vector<double> mean(keys.heads * half);
  // Tasks take whole heads, so each pair's sum runs in token order; as few as the threads, so
  // each streams its heads' rows.
  const uint32_t tasks = std::min<uint32_t>(keys.heads, (uint32_t)resolve_threads(threads));
  parallel_for(tasks, threads, [&](size_t task) {
    const uint32_t h0 = (uint32_t)task * keys.heads / tasks;
    const uint32_t h1 = (uint32_t)(task + 1) * keys.heads / tasks, width = (h1 - h0) * half;
    TensorView part = keys;
    part.heads = h1 - h0;
    part.data = static_cast<uint8_t*>(keys.data) + h0 * keys.s_head * dtype_size(keys.dtype);
    std::vector<float> row(part.channels()), m(width);
    std::vector<double> sum(width, 0.0);
    for (uint32_t t = 0; t < keys.tokens; ++t) {
      load_row(part, t, row.data());
      for (uint32_t h = 0; h < part.heads; ++h)
        pair_magnitudes(path, row.data() + (size_t)h * keys.head_dim, half, m.data() + h * half);
      if (!all_finite(m.data(), width)) throw InputError("keys contain nan or inf");
      if (t < first) continue;
      for (uint32_t p = 0; p < width; ++p) sum[p] += (double)m[p] * m[p];
    }
    for (uint32_t p = 0; p < width; ++p) mean[h0 * half + p] = sum[p] / (keys.tokens - first);
  });
  return mean;
}

}  // namespace cachegen
