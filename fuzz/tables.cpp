// Fuzz target: probability tables. Byte 0 picks the code (bit 0: v3 Exp-Golomb, else v1/v2
// varints; bit 1: the full alphabet of lossless groups); the rest is parsed as tables back to
// back. Every table accepted must sum to 4096 and build encoder and decoder tables that agree.
#include "tables.hpp"

#include <cstdlib>

#include "common.hpp"

using namespace cachegen;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const bool golomb = data[0] & 1, full = data[0] & 2;
  size_t pos = 1;
  static uint32_t lut[rans::kProbScale];
  try {
    while (pos < size) {
      const size_t before = pos;
      const Table t = parse_table(data, pos, size, golomb, full);
      if (pos <= before || pos > size) std::abort();
      uint32_t sum = 0;
      for (uint16_t f : t.freq) sum += f;
      if (sum != rans::kProbScale || (!full && t.freq[0])) std::abort();
      fill_decoder_lut(t, lut);
      const auto enc = encoder_symbols(t);
      for (int i = 0; i < kAlphabet; ++i)
        if (t.freq[i] && (int)rans::dec_symbol_index(lut[enc[i].cum]) != i) std::abort();
    }
  } catch (const FormatError&) {
  }
  return 0;
}
