#include "importance.hpp"

#include <cmath>

#include "parallel.hpp"

namespace cachegen {

std::vector<float> key_pair_magnitudes(const TensorView& keys, int threads) {
  if (keys.head_dim % 2) throw InputError("key pair magnitudes need an even head_dim");
  check_paging(keys, "keys");
  const uint32_t half = keys.head_dim / 2, width = keys.heads * half;
  constexpr uint32_t kTokensPerTask = 256;
  std::vector<float> mag((size_t)keys.tokens * width);
  parallel_for((keys.tokens + kTokensPerTask - 1) / kTokensPerTask, threads, [&](size_t task) {
    std::vector<float> row(keys.channels());
    const uint32_t end = std::min<uint32_t>(keys.tokens, (uint32_t)(task + 1) * kTokensPerTask);
    for (uint32_t t = (uint32_t)task * kTokensPerTask; t < end; ++t) {
      load_row(keys, t, row.data());
      float* m = mag.data() + (size_t)t * width;
      for (uint32_t h = 0; h < keys.heads; ++h) {
        const float* k = row.data() + (size_t)h * keys.head_dim;
        for (uint32_t p = 0; p < half; ++p)
          m[h * half + p] = std::sqrt(k[p] * k[p] + k[p + half] * k[p + half]);
      }
      for (uint32_t i = 0; i < width; ++i)
        if (!std::isfinite(m[i])) throw InputError("keys contain nan or inf");
    }
  });
  return mag;
}

}  // namespace cachegen
