// Token importance features: the RoPE pair magnitudes of each token's keys, and their squared
// sums over tokens (the key spread's statistic, kvstats.py).
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
