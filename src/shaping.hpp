// Key rounding shaped away from the directions the queries share (an encoder choice: the format
// and the decoders are unchanged). A key's error e moves query q's score by q . e, and the
// queries a key meets are far from isotropic: a few directions per head carry much of their
// energy. Starting from nearest rounding, a token's symbols are flipped to their other
// neighbour, best first, while a flip lowers
//   J = sum_d (dirs[d] . e)^2 + sum_c diag[c] e_c^2,   e_c = x'_c - x_c,
// at most kMaxShapeFlips a token; every symbol stays within one step of its value.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace cachegen {

constexpr uint32_t kMaxShapeDirections = 64;
constexpr int kMaxShapeFlips = 16;

struct Shaping {
  uint32_t count = 0;  // directions per token (0: no shaping)
  // tokens x count x channels (dirs_size floats), shared and not copied: a request's groups
  // read the caller's buffer in place (a large one: a float per key element and direction)
  std::shared_ptr<const float> dirs;
  size_t dirs_size = 0;
  std::vector<float> diag;  // channels, >= 0
  bool empty() const { return count == 0; }
};

// Throws InputError unless `s` is empty or holds tokens x count x channels finite directions
// (count <= kMaxShapeDirections) and channels finite diag entries >= 0.
void check_shaping(const Shaping& s, uint32_t tokens, uint32_t channels);

// Shapes token `t`'s symbols `s` (nearest rounding of row x under steps a * b[c] and offsets
// o[c]), keeping |s| <= limit.
void shape_symbols(const Shaping& sh, uint32_t t, const float* x, float a, const float* b,
                   const float* o, int limit, uint32_t channels, int32_t* s);

}  // namespace cachegen
