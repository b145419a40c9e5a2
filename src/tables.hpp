// Static probability tables: fitted per (layer, K/V) group, shared by clusters of channels whose
// symbol statistics are alike, quantized to 12-bit frequencies and stored as Exp-Golomb codes
// (format v3; varints before).
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

#include "cpu_path.hpp"
#include "rans.hpp"

namespace cachegen {

constexpr int kAlphabet = 256;  // alphabet index = symbol + 128; index 0 only in lossless groups

using Histogram = std::array<uint32_t, kAlphabet>;

// Lloyd rounds per table count (the GPU encoder's table fit, csrc/cuda/table_fit.cu, runs them
// too).
constexpr int kLloydRounds = 3;
constexpr double kMinGain = 0.002;  // stop adding tables below this relative gain

struct Table {
  std::array<uint16_t, kAlphabet> freq{};  // sums to rans::kProbScale
};

struct TableSet {
  std::vector<Table> tables;           // 1..255 tables
  std::vector<uint8_t> channel_table;  // table index per channel
};

// Cluster channels into at most max_tables tables, choosing the count that minimizes the
// estimated coded size including the tables themselves; `path` picks the loops (every path
// gives the same tables).
TableSet fit_tables(const std::vector<Histogram>& hists, uint32_t max_tables,
                    CpuPath path = CpuPath::Scalar);

// bits[j] = the sum over e < n of count[e] * cost[bin[e] * stride + j] for each j < stride, in
// doubles and in the order of e: each channel's cross bits under a register of clusters. The
// vector kernels (src/simd/; stride a multiple of 8) give the same bits.
void cross_bits_scalar(const uint16_t* bin, const uint32_t* count, uint32_t n, const float* cost,
                       uint32_t stride, double* bits);
void cross_bits_avx2(const uint16_t* bin, const uint32_t* count, uint32_t n, const float* cost,
                     uint32_t stride, double* bits);
void cross_bits_avx512(const uint16_t* bin, const uint32_t* count, uint32_t n, const float* cost,
                       uint32_t stride, double* bits);

// The table counts fit_tables tries: 1, 2, 4, ... up to this.
uint32_t table_limit(uint32_t max_tables, uint32_t columns);

// One table count's clustering of a group's columns.
struct Clusters {
  std::vector<Histogram> merged;  // one per cluster: the sum of its columns' histograms
  std::vector<uint8_t> assign;    // each column's cluster
};

// The count search of fit_tables, shared with the GPU encoder (which clusters on the device):
// `fit(k)` for k = 1, 2, 4, ... up to `limit`, stopping at the first doubling that shrinks the
// group's size by less than kMinGain; the best count's tables. The size is the group's as
// written: its symbols at their ideal code length under the normalized tables, plus the bytes
// serialize_tables writes for the tables and the column map.
TableSet choose_tables(uint32_t limit, const std::function<Clusters(uint32_t k)>& fit);

// Bits per column of the column -> table map (format v3 on; a byte each before).
int table_map_bits(size_t num_tables);

// A group's table side data as the format stores it: the column map, bit-packed, if there is
// more than one table, then each table.
void serialize_tables(const TableSet& ts, std::vector<uint8_t>& out);

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
