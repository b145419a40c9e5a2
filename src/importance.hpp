// Token importance features: the RoPE pair magnitudes of each token's keys, the scores a linear
// model gives them with the keys rotated back to position 0 (importance.py), and the magnitudes'
// squared sums over tokens (the key spread's statistic, kvstats.py).
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

#include "quant.hpp"
#include "tensor_view.hpp"

namespace cachegen {

// |(a, b)| in float32 with one rounding per operation (no contraction), host and device alike.
CG_HD float pair_magnitude(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsqrt_rn(add_rn(mul_rn(a, a), mul_rn(b, b)));
#else
  return std::sqrt(add_rn(mul_rn(a, a), mul_rn(b, b)));
#endif
}

// [tokens, heads * head_dim/2], row-major: |(k[t, h, p], k[t, h, p + head_dim/2])| at
// (t, h * head_dim/2 + p). RoPE rotates each such pair by a position-dependent angle, so the
// magnitudes describe a token's key whatever its position. Throws InputError on an odd
// head_dim or a non-finite key. The CPU path in effect (cpu_path()) picks the loop; every path
// gives the same bits.
std::vector<float> key_pair_magnitudes(const TensorView& keys, int threads);

// Per token t, in float64: sum over (h, p) of mag[h * half + p] * |pair p of head h|, then,
// with `inv_freq` (half entries; empty for none), the sum over channels c of
// sig[h * head_dim + c] * the key rotated back to position 0 from context position first + t,
// where coefficients = mag followed by sig. The rotation's cos and sin come from a float64
// recurrence restarted at every kScoreTokens-th token: the same scores whatever the thread count
// and CPU path. Throws InputError as key_pair_magnitudes does, or on a coefficient count or
// inv_freq size that does not fit the keys.
std::vector<double> key_scores(const TensorView& keys, const std::vector<double>& coefficients,
                               const std::vector<float>& inv_freq, uint64_t first, int threads);

// Tokens per task of key_scores (each starts its angle recurrence afresh).
constexpr uint32_t kScoreTokens = 256;

// Throws InputError unless `keys` can give pair magnitudes (even head_dim, valid paging): the
// check of every key statistic, host and device.
void check_keys(const TensorView& keys);

// Tokens per block of key_pair_square_sums.
constexpr uint32_t kPairSumTokens = 256;

// The first token key_pair_square_sums counts: `skip`, unless no tokens would be left.
CG_HD uint32_t pair_sum_first(uint32_t tokens, uint32_t skip) { return tokens > skip ? skip : 0; }

// Per pair (heads * head_dim/2 of them): the sum over tokens from pair_sum_first of the squared
// magnitude, in float64. Each block of kPairSumTokens tokens is summed in token order, then the
// blocks in order: the same float64 whatever the thread count and CPU path, and what the CUDA
// kernel (csrc/cuda/key_stats.cu) computes. Throws InputError as key_pair_magnitudes does.
std::vector<double> key_pair_square_sums(const TensorView& keys, uint32_t skip, int threads);

// m[p] = pair_magnitude(k[p], k[p + half]) for p in [begin, half) and, if `sum` is given,
// sum[p] += m[p]^2 in float64; returns whether every m[p] is finite. The vector kernels
// (src/simd/, p from 0) give the same bits.
bool pair_magnitudes_scalar(const float* k, uint32_t begin, uint32_t half, float* m, double* sum);
bool pair_magnitudes_avx2(const float* k, uint32_t half, float* m, double* sum);
bool pair_magnitudes_avx512(const float* k, uint32_t half, float* m, double* sum);

}  // namespace cachegen
