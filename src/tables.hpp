// Static probability tables: fitted per (layer, K/V) group, shared by clusters of channels whose
// symbol statistics are alike, quantized to 12-bit frequencies and stored as Exp-Golomb codes
// (format v3; varints before).
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

#include "rans.hpp"

namespace cachegen {

constexpr int kAlphabet = 256;  // alphabet index = symbol + 128; index 0 only in lossless groups

using Histogram = std::array<uint32_t, kAlphabet>;

// Lloyd rounds per table count (the GPU encoder's table fit, csrc/cuda/table_fit.cu, runs them
// too).
constexpr int kLloydRounds = 3;
constexpr double kBitsPerTableEntry = 6.0;  // rough varint cost, used only to choose a count
constexpr double kMinGain = 0.002;          // stop adding tables below this relative gain

struct Table {
  std::array<uint16_t, kAlphabet> freq{};  // sums to rans::kProbScale
};

struct TableSet {
  std::vector<Table> tables;           // 1..255 tables
  std::vector<uint8_t> channel_table;  // table index per channel
};

// Cluster channels into at most max_tables tables, choosing the count that minimizes the
// estimated coded size including the tables themselves.
TableSet fit_tables(const std::vector<Histogram>& hists, uint32_t max_tables);

// The table counts fit_tables tries: 1, 2, 4, ... up to this.
uint32_t table_limit(uint32_t max_tables, uint32_t columns);

// One table count's clustering of a group's columns.
struct Clusters {
  std::vector<Histogram> merged;  // one per cluster: the sum of its columns' histograms
  std::vector<uint8_t> assign;    // each column's cluster
  double bits = 0.0;              // estimated coded size of the symbols (Lloyd's last round)
};

// The count search of fit_tables, shared with the GPU encoder (which clusters on the device):
// `fit(k)` for k = 1, 2, 4, ... up to `limit`, stopping at the first doubling that shrinks the
// estimated size (symbols, tables and table map) by less than kMinGain; the best count's tables.
TableSet choose_tables(uint32_t limit, const std::function<Clusters(uint32_t k)>& fit);

// Scale counts to frequencies summing to 4096, every present symbol at least 1.
Table normalize(const Histogram& counts);

void serialize_table(const Table& t, std::vector<uint8_t>& out);

// Parses one table at data[pos..end), advancing pos; throws FormatError on anything invalid.
// `golomb`: the format v3 code, else v1/v2 varints. `full_alphabet`: index 0 (symbol -128) may
// occur (lossless groups, format v4); quantized symbols never use it.
Table parse_table(const uint8_t* data, size_t& pos, size_t end, bool golomb,
                  bool full_alphabet = false);

std::array<rans::EncSym, kAlphabet> encoder_symbols(const Table& t);

// Fill kProbScale packed decode entries (see rans::pack_dec_entry).
void fill_decoder_lut(const Table& t, uint32_t* lut);

// Ideal code length in bits of `counts` under table t (the entropy-coder efficiency yardstick).
double code_length_bits(const Histogram& counts, const Table& t);

}  // namespace cachegen
