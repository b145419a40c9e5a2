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
  // A task per head, so each pair's sum runs in token order.
  parallel_for(keys.heads, threads, [&](size_t h) {
    TensorView head = keys;
    head.heads = 1;
    head.data = static_cast<uint8_t*>(keys.data) + h * keys.s_head * dtype_size(keys.dtype);
    std::vector<float> row(keys.head_dim), m(half);
    std::vector<double> sum(half, 0.0);
    for (uint32_t t = 0; t < keys.tokens; ++t) {
      load_row(head, t, row.data());
      pair_magnitudes(path, row.data(), half, m.data());
      if (!all_finite(m.data(), half)) throw InputError("keys contain nan or inf");
      if (t < first) continue;
      for (uint32_t p = 0; p < half; ++p) sum[p] += (double)m[p] * m[p];
    }
    for (uint32_t p = 0; p < half; ++p) mean[h * half + p] = sum[p] / (keys.tokens - first);
  });
  return mean;
}

}  // namespace cachegen
