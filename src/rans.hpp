// Interleaved rANS: 32-bit states, 16-bit renormalization words, 12-bit probabilities.
//
// A segment's symbols are dealt round-robin to kLanes states (symbol p goes to lane p % kLanes),
// and all lanes share one word stream. Within each step of kLanes symbols the decoder serves
// lanes in ascending order, so a GPU warp decodes a step in lockstep (one lane per thread, a
// ballot + prefix count to find each lane's word) and a CPU loop decodes it lane by lane; both
// read the same bytes. The encoder runs steps and lanes backwards and reverses its words.
#pragma once
#include <cstddef>
#include <cstdint>

#include "common.hpp"

namespace cachegen::rans {

constexpr uint32_t kProbBits = 12;
constexpr uint32_t kProbScale = 1u << kProbBits;
constexpr uint32_t kLowerBound = 1u << 16;  // states live in [2^16, 2^32)
constexpr uint32_t kLanes = 32;
constexpr uint32_t kStateBytes = kLanes * 4;

// One symbol's coding parameters: frequency in [1, 4096], cumulative start, and
// rcp = ceil(2^44 / freq), which turns x / freq into a multiply: for x < 2^32 the error of
// x * rcp / 2^44 is below 2^-12 <= 1/freq, too small to cross an integer.
struct EncSym {
  uint32_t freq;
  uint32_t cum;
  uint64_t rcp;
};

inline EncSym make_enc_sym(uint32_t freq, uint32_t cum) {
  return {freq, cum, freq ? ((uint64_t{1} << 44) + freq - 1) / freq : 0};
}

CG_HD uint32_t div_by_freq(uint32_t x, EncSym s) {
#if defined(__CUDA_ARCH__)
  const uint64_t hi = __umul64hi(x, s.rcp), lo = (uint64_t)x * s.rcp;
  return (uint32_t)((hi << 20) | (lo >> 44));
#else
  return (uint32_t)(((unsigned __int128)x * s.rcp) >> 44);
#endif
}

// Whether encoding `s` from state x first flushes one 16-bit word.
// The bound reaches 2^32 for freq 4096, hence 64 bits.
CG_HD bool enc_needs_flush(uint32_t x, EncSym s) {
  return x >= (uint64_t)((kLowerBound >> kProbBits) << 16) * s.freq;
}

CG_HD uint32_t enc_step(uint32_t x, EncSym s) {
  const uint32_t q = div_by_freq(x, s);
  return (q << kProbBits) + (x - q * s.freq) + s.cum;
}

// Encode one symbol into x; returns 1 if the low word of x was flushed first (into *word).
CG_HD uint32_t enc_put(uint32_t& x, EncSym s, uint16_t* word) {
  const uint32_t flush = enc_needs_flush(x, s);
  *word = (uint16_t)x;
  x = enc_step(x >> (flush * 16), s);
  return flush;
}

// A decode table entry packs symbol index (8 bits), freq-1 (12 bits) and slot-cum (12 bits),
// so a decode step is one table load and one multiply-add.
CG_HD uint32_t pack_dec_entry(uint32_t sym_index, uint32_t freq, uint32_t slot_minus_cum) {
  return (sym_index << 24) | ((freq - 1) << 12) | slot_minus_cum;
}

// pack_dec_entry(sym, freq, slot - cum) == dec_entry_base(sym, freq, cum) + slot (mod 2^32), so
// a decoder may keep one byte per slot (its symbol) plus one base per symbol: 5 KB, not 16 KB.
CG_HD uint32_t dec_entry_base(uint32_t sym_index, uint32_t freq, uint32_t cum) {
  return pack_dec_entry(sym_index, freq, 0) - cum;
}

CG_HD uint32_t dec_symbol_index(uint32_t entry) { return entry >> 24; }

CG_HD uint32_t dec_advance(uint32_t x, uint32_t entry) {
  return (((entry >> 12) & 0xfffu) + 1) * (x >> kProbBits) + (entry & 0xfffu);
}

CG_HD bool dec_needs_word(uint32_t x) { return x < kLowerBound; }

// Shift in `word` if need is 1, keep x if 0: branch-free, since need is 1 at random.
CG_HD uint32_t dec_renorm(uint32_t x, uint32_t need, uint16_t word) {
  return (x << (need * 16)) | (word & (0u - need));
}

// The word a lane reads, clamped into the segment so a corrupt stream never reads past it (the
// caller keeps a readable word for nwords == 0); flags `overrun` if a needed word is missing.
CG_HD size_t clamp_word(size_t index, size_t nwords, uint32_t need, uint32_t& overrun) {
  overrun |= need & (index >= nwords);
  return index < nwords ? index : (nwords ? nwords - 1 : 0);
}

}  // namespace cachegen::rans
