#include "importance.hpp"

#include <cmath>

#include "parallel.hpp"

namespace cachegen {
namespace {

void check_keys(const TensorView& keys) {
  if (keys.head_dim % 2) throw InputError("key pair magnitudes need an even head_dim");
  check_paging(keys, "keys");
}

// Token t's magnitudes into m (heads * head_dim/2); `row` is scratch of keys.channels().
void token_magnitudes(const TensorView& keys, uint32_t t, float* row, float* m) {
  const uint32_t half = keys.head_dim / 2;
  load_row(keys, t, row);
  for (uint32_t h = 0; h < keys.heads; ++h) {
    const float* k = row + (size_t)h * keys.head_dim;
    for (uint32_t p = 0; p < half; ++p) m[h * half + p] = pair_magnitude(k[p], k[p + half]);
  }
  for (uint32_t i = 0; i < keys.heads * half; ++i)
    if (!std::isfinite(m[i])) throw InputError("keys contain nan or inf");
}

}  // namespace

std::vector<float> key_pair_magnitudes(const TensorView& keys, int threads) {
  check_keys(keys);
  const uint32_t width = keys.heads * (keys.head_dim / 2);
  constexpr uint32_t kTokensPerTask = 256;
  std::vector<float> mag((size_t)keys.tokens * width);
  parallel_for((keys.tokens + kTokensPerTask - 1) / kTokensPerTask, threads, [&](size_t task) {
    std::vector<float> row(keys.channels());
    const uint32_t end = std::min<uint32_t>(keys.tokens, (uint32_t)(task + 1) * kTokensPerTask);
    for (uint32_t t = (uint32_t)task * kTokensPerTask; t < end; ++t)
      token_magnitudes(keys, t, row.data(), mag.data() + (size_t)t * width);
  });
  return mag;
}

std::vector<double> key_pair_square_sums(const TensorView& keys, uint32_t skip, int threads) {
  check_keys(keys);
  const uint32_t width = keys.heads * (keys.head_dim / 2);
  const uint32_t first = pair_sum_first(keys.tokens, skip), n = keys.tokens - first;
  const uint32_t blocks = (n + kPairSumTokens - 1) / kPairSumTokens;
  std::vector<double> partial((size_t)blocks * width);
  parallel_for(blocks, threads, [&](size_t b) {
    std::vector<float> row(keys.channels()), m(width);
    double* sum = partial.data() + b * width;
    const uint32_t begin = first + (uint32_t)b * kPairSumTokens;
    const uint32_t end = std::min(keys.tokens, begin + kPairSumTokens);
    for (uint32_t t = begin; t < end; ++t) {
      token_magnitudes(keys, t, row.data(), m.data());
      for (uint32_t i = 0; i < width; ++i) sum[i] += (double)m[i] * (double)m[i];
    }
  });
  std::vector<double> sums(width, 0.0);
  for (uint32_t b = 0; b < blocks; ++b)
    for (uint32_t i = 0; i < width; ++i) sums[i] += partial[(size_t)b * width + i];
  return sums;
}

}  // namespace cachegen
