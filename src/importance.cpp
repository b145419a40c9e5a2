#include "importance.hpp"

#include <cmath>

#include "cpu_path.hpp"
#include "parallel.hpp"

namespace cachegen {
namespace {

bool pair_magnitudes(CpuPath path, const float* k, uint32_t half, float* m, double* sum) {
  switch (path) {
    case CpuPath::Avx512:
      return pair_magnitudes_avx512(k, half, m, sum);
    case CpuPath::Avx2:
      return pair_magnitudes_avx2(k, half, m, sum);
    case CpuPath::Scalar:
      break;
  }
  return pair_magnitudes_scalar(k, 0, half, m, sum);
}

void check_keys(const TensorView& keys) {
  if (keys.head_dim % 2) throw InputError("key pair magnitudes need an even head_dim");
  check_paging(keys, "keys");
}

}  // namespace

bool pair_magnitudes_scalar(const float* k, uint32_t begin, uint32_t half, float* m, double* sum) {
  bool ok = true;
  for (uint32_t p = begin; p < half; ++p) {
    m[p] = std::sqrt(k[p] * k[p] + k[p + half] * k[p + half]);
    ok &= std::isfinite(m[p]);
    if (sum) sum[p] += (double)m[p] * m[p];
  }
  return ok;
}

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
      bool finite = true;
      for (uint32_t h = 0; h < keys.heads; ++h)
        finite &= pair_magnitudes(path, row.data() + (size_t)h * keys.head_dim, half, m + h * half,
                                  nullptr);
      if (!finite) throw InputError("keys contain nan or inf");
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
    std::vector<float> row(part.channels()), m(half);
    std::vector<double> sum(width, 0.0);
    for (uint32_t t = 0; t < keys.tokens; ++t) {
      load_row(part, t, row.data());
      bool finite = true;
      for (uint32_t h = 0; h < part.heads; ++h)
        finite &= pair_magnitudes(path, row.data() + (size_t)h * keys.head_dim, half, m.data(),
                                  t < first ? nullptr : sum.data() + h * half);
      if (!finite) throw InputError("keys contain nan or inf");
    }
    for (uint32_t p = 0; p < width; ++p) mean[h0 * half + p] = sum[p] / (keys.tokens - first);
  });
  return mean;
}

}  // namespace cachegen
