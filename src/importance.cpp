#include "importance.hpp"

#include <cmath>

#include "cpu_path.hpp"
#include "parallel.hpp"

namespace cachegen {
namespace {

bool pair_magnitudes(CpuPath path, const float* k, uint32_t half, float* m, double* sum) {
  const auto scalar = +[](const float* x, uint32_t h, float* y, double* s) {
    return pair_magnitudes_scalar(x, 0, h, y, s);
  };
  return on_path(path, scalar, pair_magnitudes_avx2, pair_magnitudes_avx512)(k, half, m, sum);
}

// Token t's magnitudes into m (heads * head_dim/2), their squares added to sum if given;
// `row` is scratch of keys.channels().
void token_magnitudes(const TensorView& keys, CpuPath path, uint32_t t, float* row, float* m,
                      double* sum) {
  const uint32_t half = keys.head_dim / 2;
  load_row(keys, t, row);
  bool finite = true;
  for (uint32_t h = 0; h < keys.heads; ++h)
    finite &= pair_magnitudes(path, row + (size_t)h * keys.head_dim, half, m + h * half,
                              sum ? sum + h * half : nullptr);
  if (!finite) throw InputError("keys contain nan or inf");
}

// One token's signed part: the key pairs (x1, x2) of every head rotated back by the angles
// whose cos and sin are given per pair, dotted with the weights (w1, w2).
double signed_score(const float* row, const double* sig, const double* cos, const double* sin,
                    uint32_t heads, uint32_t head_dim) {
  const uint32_t half = head_dim / 2;
  double score = 0.0;
  for (uint32_t h = 0; h < heads; ++h) {
    const float* x = row + (size_t)h * head_dim;
    const double* w = sig + (size_t)h * head_dim;
    for (uint32_t p = 0; p < half; ++p) {
      const double x1 = x[p], x2 = x[p + half];
      score += w[p] * (x1 * cos[p] + x2 * sin[p]) + w[p + half] * (x2 * cos[p] - x1 * sin[p]);
    }
  }
  return score;
}

void check_scores(const TensorView& keys, size_t coefficients, size_t inv_freq) {
  const size_t half = keys.head_dim / 2, mags = (size_t)keys.heads * half;
  if (inv_freq != 0 && inv_freq != half)
    throw InputError("RoPE inverse frequencies: " + std::to_string(inv_freq) + ", keys need " +
                     std::to_string(half));
  const size_t need = mags + (inv_freq ? (size_t)keys.heads * keys.head_dim : 0);
  if (coefficients != need)
    throw InputError("importance coefficients: " + std::to_string(coefficients) + ", keys need " +
                     std::to_string(need));
}

}  // namespace

void check_keys(const TensorView& keys) {
  if (keys.head_dim % 2) throw InputError("key pair magnitudes need an even head_dim");
  check_paging(keys, "keys");
}

bool pair_magnitudes_scalar(const float* k, uint32_t begin, uint32_t half, float* m, double* sum) {
  bool ok = true;
  for (uint32_t p = begin; p < half; ++p) {
    m[p] = pair_magnitude(k[p], k[p + half]);
    ok &= std::isfinite(m[p]);
    if (sum) sum[p] += (double)m[p] * m[p];
  }
  return ok;
}

std::vector<float> key_pair_magnitudes(const TensorView& keys, int threads) {
  check_keys(keys);
  const uint32_t width = keys.heads * (keys.head_dim / 2);
  constexpr uint32_t kTokensPerTask = 256;
  const CpuPath path = cpu_path();
  std::vector<float> mag((size_t)keys.tokens * width);
  parallel_for((keys.tokens + kTokensPerTask - 1) / kTokensPerTask, threads, [&](size_t task) {
    std::vector<float> row(keys.channels());
    const uint32_t end = std::min<uint32_t>(keys.tokens, (uint32_t)(task + 1) * kTokensPerTask);
    for (uint32_t t = (uint32_t)task * kTokensPerTask; t < end; ++t)
      token_magnitudes(keys, path, t, row.data(), mag.data() + (size_t)t * width, nullptr);
  });
  return mag;
}

std::vector<double> key_scores(const TensorView& keys, const std::vector<double>& coefficients,
                               const std::vector<float>& inv_freq, uint64_t first, int threads) {
  check_keys(keys);
  check_scores(keys, coefficients.size(), inv_freq.size());
  const uint32_t half = keys.head_dim / 2, width = keys.heads * half;
  const CpuPath path = cpu_path();
  std::vector<double> scores(keys.tokens);
  parallel_for((keys.tokens + kScoreTokens - 1) / kScoreTokens, threads, [&](size_t task) {
    std::vector<float> row(keys.channels()), m(width);
    std::vector<double> cos(half), sin(half), step_cos(half), step_sin(half);
    const uint32_t begin = (uint32_t)task * kScoreTokens;
    const uint32_t end = std::min(keys.tokens, begin + kScoreTokens);
    for (uint32_t p = 0; p < inv_freq.size(); ++p) {
      const double w = inv_freq[p], angle = (double)(first + begin) * w;
      cos[p] = std::cos(angle), sin[p] = std::sin(angle);
      step_cos[p] = std::cos(w), step_sin[p] = std::sin(w);
    }
    for (uint32_t t = begin; t < end; ++t) {
      token_magnitudes(keys, path, t, row.data(), m.data(), nullptr);
      double score = 0.0;
      for (uint32_t i = 0; i < width; ++i) score += coefficients[i] * m[i];
      if (!inv_freq.empty()) {
        score += signed_score(row.data(), coefficients.data() + width, cos.data(), sin.data(),
                              keys.heads, keys.head_dim);
        for (uint32_t p = 0; p < half; ++p) {  // one position on: angle + w
          const double c = cos[p] * step_cos[p] - sin[p] * step_sin[p];
          sin[p] = sin[p] * step_cos[p] + cos[p] * step_sin[p];
          cos[p] = c;
        }
      }
      scores[t] = score;
    }
  });
  return scores;
}

std::vector<double> key_pair_square_sums(const TensorView& keys, uint32_t skip, int threads) {
  check_keys(keys);
  const uint32_t width = keys.heads * (keys.head_dim / 2);
  const uint32_t first = pair_sum_first(keys.tokens, skip), n = keys.tokens - first;
  const uint32_t blocks = (n + kPairSumTokens - 1) / kPairSumTokens;
  const CpuPath path = cpu_path();
  std::vector<double> partial((size_t)blocks * width);
  parallel_for(blocks, threads, [&](size_t b) {
    std::vector<float> row(keys.channels()), m(width);
    const uint32_t begin = first + (uint32_t)b * kPairSumTokens;
    const uint32_t end = std::min(keys.tokens, begin + kPairSumTokens);
    for (uint32_t t = begin; t < end; ++t)
      token_magnitudes(keys, path, t, row.data(), m.data(), partial.data() + b * width);
  });
  std::vector<double> sums(width, 0.0);
  for (uint32_t b = 0; b < blocks; ++b)
    for (uint32_t i = 0; i < width; ++i) sums[i] += partial[(size_t)b * width + i];
  return sums;
}

}  // namespace cachegen
