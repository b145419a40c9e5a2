// Token importance features: the RoPE pair magnitudes of each token's keys.
#pragma once
#include <vector>

#include "tensor_view.hpp"

namespace cachegen {

// [tokens, heads * head_dim/2], row-major: |(k[t, h, p], k[t, h, p + head_dim/2])| at
// (t, h * head_dim/2 + p). RoPE rotates each such pair by a position-dependent angle, so the
// magnitudes describe a token's key whatever its position. Computed in float32 with one rounding
// per operation (no contraction). Throws InputError on an odd head_dim or a non-finite key.
std::vector<float> key_pair_magnitudes(const TensorView& keys, int threads);

}  // namespace cachegen
