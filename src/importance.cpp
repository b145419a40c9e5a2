#include "importance.hpp"

#include <cmath>

#include "parallel.hpp"

namespace cachegen {

std::vector<double> key_pair_scores(const TensorView& keys, const std::vector<double>& coeffs,
                                    int threads) {
  const uint32_t half = keys.head_dim / 2;
  if (keys.head_dim % 2) throw InputError("key pair scores need an even head_dim");
  if (coeffs.size() != (size_t)keys.heads * half)
    throw InputError("need heads * head_dim/2 importance coefficients");
  constexpr uint32_t kTokensPerTask = 256;
  std::vector<double> scores(keys.tokens);
  parallel_for((keys.tokens + kTokensPerTask - 1) / kTokensPerTask, threads, [&](size_t task) {
    std::vector<float> row(keys.channels()), mag((size_t)keys.heads * half);
    const uint32_t end = std::min<uint32_t>(keys.tokens, (uint32_t)(task + 1) * kTokensPerTask);
    for (uint32_t t = (uint32_t)task * kTokensPerTask; t < end; ++t) {
      load_row(keys, t, row.data());
      for (uint32_t h = 0; h < keys.heads; ++h) {
        const float* k = row.data() + (size_t)h * keys.head_dim;
        float* m = mag.data() + (size_t)h * half;
        for (uint32_t p = 0; p < half; ++p)
          m[p] = std::sqrt(k[p] * k[p] + k[p + half] * k[p + half]);
      }
      double sum[4] = {0, 0, 0, 0};
      size_t i = 0;
      for (; i + 4 <= mag.size(); i += 4)
        for (int j = 0; j < 4; ++j) sum[j] += coeffs[i + j] * mag[i + j];
      for (; i < mag.size(); ++i) sum[0] += coeffs[i] * mag[i];
      const double score = (sum[0] + sum[1]) + (sum[2] + sum[3]);
      if (!std::isfinite(score)) throw InputError("keys contain nan or inf");
      scores[t] = score;
    }
  });
  return scores;
}

}  // namespace cachegen
