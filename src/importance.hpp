// Token importance features: the RoPE pair magnitudes of each token's keys.
#pragma once
#include <cstdint>
#include <vector>

#include "tensor_view.hpp"

namespace cachegen {

// [tokens, heads * head_dim/2], row-major: |(k[t, h, p], k[t, h, p + head_dim/2])| at
// (t, h * head_dim/2 + p). RoPE rotates each such pair by a position-dependent angle, so the
// magnitudes describe a token's key whatever its position. Computed in float32 with one rounding
// per operation (no contraction). Throws InputError on an odd head_dim or a non-finite key.
// The CPU path in effect (cpu_path()) picks the loop; every path gives the same bits.
std::vector<float> key_pair_magnitudes(const TensorView& keys, int threads);

// Per pair (h * head_dim/2 + p), the mean over tokens [skip, tokens) (all tokens if that is
// none) of its squared magnitude in float64: each magnitude as key_pair_magnitudes gives it,
// squared and summed in token order, as numpy's mean(square(m, float64), axis=0) sums a
// [tokens, pairs] array. Throws as key_pair_magnitudes does.
std::vector<double> key_pair_mean_squares(const TensorView& keys, uint32_t skip, int threads);

// m[p] = |(k[p], k[p + half])| for p in [begin, half) and, if `sum` is given, sum[p] += m[p]^2
// in float64; returns whether every m[p] is finite. The vector kernels (src/simd/, p from 0) give
// the same bits.
bool pair_magnitudes_scalar(const float* k, uint32_t begin, uint32_t half, float* m, double* sum);
bool pair_magnitudes_avx2(const float* k, uint32_t half, float* m, double* sum);
bool pair_magnitudes_avx512(const float* k, uint32_t half, float* m, double* sum);

}  // namespace cachegen
