// Interleaved rANS: 32-bit states, 16-bit renormalization words, 12-bit probabilities.
//
// A segment's symbols are dealt round-robin to kLanes states (symbol p goes to lane p % kLanes),
// and all lanes share one word stream. Within each step of kLanes symbols the decoder serves
// lanes in ascending order, so a GPU warp decodes a step in lockstep (one lane per thread, a
// ballot + prefix count to find each lane's word) and a CPU loop decodes it lane by lane; both
// read the same bytes. The encoder runs steps and lanes backwards and reverses its words.
#pragma once
#include <cstdint>

#include "common.hpp"

namespace cachegen::rans {

constexpr uint32_t kProbBits = 12;
constexpr uint32_t kProbScale = 1u << kProbBits;
constexpr uint32_t kLowerBound = 1u << 16;  // states live in [2^16, 2^32)
constexpr uint32_t kLanes = 32;
constexpr uint32_t kStateBytes = kLanes * 4;

// One symbol's coding parameters: frequency in [1, 4096] and cumulative start.
struct EncSym {
  uint32_t freq;
  uint32_t cum;
};

// Whether encoding `s` from state x first flushes one 16-bit word.
// The bound reaches 2^32 for freq 4096, hence 64 bits.
CG_HD bool enc_needs_flush(uint32_t x, EncSym s) {
  return x >= (uint64_t)((kLowerBound >> kProbBits) << 16) * s.freq;
}

CG_HD uint32_t enc_step(uint32_t x, EncSym s) {
  return ((x / s.freq) << kProbBits) + (x % s.freq) + s.cum;
}

// A decode table entry packs symbol index (8 bits), freq-1 (12 bits) and slot-cum (12 bits),
// so a decode step is one table load and one multiply-add.
CG_HD uint32_t pack_dec_entry(uint32_t sym_index, uint32_t freq, uint32_t slot_minus_cum) {
  return (sym_index << 24) | ((freq - 1) << 12) | slot_minus_cum;
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

}  // namespace cachegen::rans
