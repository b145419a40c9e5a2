// Encoding one segment's symbols on the CPU: steps and lanes run backwards (rans.hpp), and each
// flushed word is written just below the previous one, so the words come out in decode order
// without a reversal. The vector kernels (src/simd/) code whole steps a register of lanes at a
// time and store a register of words below the top, which needs kWordSlack free words there.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "cpu_path.hpp"
#include "rans.hpp"
#include "tables.hpp"

namespace cachegen {

// Free words a word buffer keeps below its lowest word for the vector kernels' stores.
constexpr size_t kWordSlack = 32;

// A group's encoder parameters, indexed by kAlphabet * table + alphabet index: EncSym (scalar)
// and freq | cum << 13 (vector kernels). chan_off[i] = kAlphabet * (table of channel
// i % channels) for i < channels + kLanes, as in DecodeTables.
struct EncodeTables {
  const rans::EncSym* sym;
  const uint32_t* freq_cum;
  const uint32_t* chan_off;
  uint32_t channels;
};

// Owns the arrays an EncodeTables points into.
class EncoderTables {
 public:
  explicit EncoderTables(const TableSet& ts) {
    for (const Table& t : ts.tables)
      for (const rans::EncSym& e : encoder_symbols(t)) {
        sym_.push_back(e);
        freq_cum_.push_back(e.freq | e.cum << 13);
      }
    const size_t C = ts.channel_table.size();
    for (size_t i = 0; i < C + rans::kLanes; ++i)
      off_.push_back(ts.channel_table[i % C] * kAlphabet);
  }
  EncodeTables view() const {
    return {sym_.data(), freq_cum_.data(), off_.data(), (uint32_t)(off_.size() - rans::kLanes)};
  }

 private:
  std::vector<rans::EncSym> sym_;
  std::vector<uint32_t> freq_cum_;
  std::vector<uint32_t> off_;
};

// Codes symbols [begin, end) of a segment (positions from its start, so symbol p is on lane
// p % kLanes and channel p % channels) backwards into `state`, writing words below `top`;
// returns the new top. One word below the lowest is scratch (the store comes before the test).
inline uint16_t* encode_scalar(const int8_t* sym, size_t begin, size_t end, const EncodeTables& t,
                               uint32_t* state, uint16_t* top) {
  uint32_t c = end > begin ? (uint32_t)((end - 1) % t.channels) : 0;
  for (size_t p = end; p-- > begin;) {
    const rans::EncSym es = t.sym[t.chan_off[c] + sym[p] + kSymbolBias];
    top -= rans::enc_put(state[p % rans::kLanes], es, top - 1);
    c = c ? c - 1 : t.channels - 1;
  }
  return top;
}

// Vector kernels: the same words and states as encode_scalar over [0, n), bit for bit.
uint16_t* encode_avx2(const int8_t* sym, size_t n, const EncodeTables& t, uint32_t* state,
                      uint16_t* top);
uint16_t* encode_avx512(const int8_t* sym, size_t n, const EncodeTables& t, uint32_t* state,
                        uint16_t* top);

inline uint16_t* encode_symbols(CpuPath path, const int8_t* sym, size_t n, const EncodeTables& t,
                                uint32_t* state, uint16_t* top) {
  const auto scalar = +[](const int8_t* s, size_t m, const EncodeTables& e, uint32_t* x,
                          uint16_t* w) { return encode_scalar(s, 0, m, e, x, w); };
  return on_path(path, scalar, encode_avx2, encode_avx512)(sym, n, t, state, top);
}

}  // namespace cachegen
