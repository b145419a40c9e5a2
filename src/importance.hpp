// Token importance features: a linear score of each token's key RoPE pair magnitudes.
#pragma once
#include <vector>

#include "tensor_view.hpp"

namespace cachegen {

// Per token t: sum over heads h and pairs p < head_dim/2 of
// coeffs[h * head_dim/2 + p] * |(k[t, h, p], k[t, h, p + head_dim/2])|. The magnitudes are
// float32 with one rounding per operation (no contraction), as a GPU computes them elementwise;
// the sum is double.
// Throws InputError on an odd head_dim, a coefficient count other than heads * head_dim/2, or
// a non-finite key.
std::vector<double> key_pair_scores(const TensorView& keys, const std::vector<double>& coeffs,
                                    int threads);

}  // namespace cachegen
