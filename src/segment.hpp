// Decoding one segment on the CPU: lanes served in ascending order within each step, exactly as
// a GPU warp serves them (see rans.hpp), handing each symbol to a sink with its position.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "rans.hpp"

namespace cachegen {

template <typename Sink>
void decode_segment(const uint8_t* seg, size_t bytes, uint32_t token_begin, uint32_t tokens,
                    uint32_t channels, const uint32_t* const* lut_of_channel, Sink& sink) {
  uint32_t state[rans::kLanes];
  std::memcpy(state, seg, rans::kStateBytes);
  const uint8_t* words = seg + rans::kStateBytes;
  const size_t nwords = (bytes - rans::kStateBytes) / 2;
  const size_t n = (size_t)tokens * channels;
  size_t wp = 0;
  bool overrun = false;
  uint32_t t = token_begin, c = 0;
  for (size_t p = 0; p < n; ++p) {
    uint32_t& x = state[p % rans::kLanes];
    const uint32_t e = lut_of_channel[c][x & (rans::kProbScale - 1)];
    x = rans::dec_advance(x, e);
    const bool need = rans::dec_needs_word(x);
    const bool have = wp < nwords;
    uint16_t w = 0;
    if (have) std::memcpy(&w, words + 2 * wp, 2);
    overrun |= need & !have;
    x = need ? rans::dec_refill(x, w) : x;
    wp += need & have;
    sink(t, c, (int)rans::dec_symbol_index(e) - 128);
    if (++c == channels) c = 0, ++t;
  }
  bool clean = !overrun && wp == nwords;
  for (uint32_t l = 0; l < rans::kLanes; ++l) clean &= state[l] == rans::kLowerBound;
  if (!clean) throw FormatError("segment payload is corrupt (rANS stream did not close)");
}

}  // namespace cachegen
