// Decoding one segment's symbols on the CPU: lanes served in ascending order within each step,
// exactly as a GPU warp serves them (see rans.hpp).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "rans.hpp"

namespace cachegen {

// Decodes tokens*channels symbols into out ([tokens, channels]); throws FormatError if the
// stream does not close exactly (all words used, every state back at its initial value).
inline void decode_segment(const uint8_t* seg, size_t bytes, uint32_t tokens, uint32_t channels,
                           const uint32_t* const* lut_of_channel, int8_t* out) {
  static const uint8_t kZeroWord[2] = {0, 0};
  uint32_t state[rans::kLanes];
  std::memcpy(state, seg, rans::kStateBytes);
  const size_t nwords = (bytes - rans::kStateBytes) / 2;
  // The overrun of a corrupt stream is detected and reported after the loop.
  const uint8_t* words = nwords ? seg + rans::kStateBytes : kZeroWord;
  const size_t n = (size_t)tokens * channels;
  size_t wp = 0;
  uint32_t overrun = 0, c = 0;
  for (size_t p = 0; p < n; ++p) {
    uint32_t& x = state[p % rans::kLanes];
    const uint32_t e = lut_of_channel[c][x & (rans::kProbScale - 1)];
    x = rans::dec_advance(x, e);
    const uint32_t need = rans::dec_needs_word(x);
    uint16_t w;
    std::memcpy(&w, words + 2 * rans::clamp_word(wp, nwords, need, overrun), 2);
    x = rans::dec_renorm(x, need, w);
    wp += need;
    out[p] = (int8_t)((int)rans::dec_symbol_index(e) - kSymbolBias);
    c = c + 1 == channels ? 0 : c + 1;
  }
  bool clean = !overrun && wp == nwords;
  for (uint32_t l = 0; l < rans::kLanes; ++l) clean &= state[l] == rans::kLowerBound;
  if (!clean) throw FormatError("segment payload is corrupt (rANS stream did not close)");
}

}  // namespace cachegen
