#include "tables.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "bits.hpp"

namespace cachegen {
namespace {

std::pair<int, int> used_range(const Histogram& h) {
  int lo = 0, hi = -1;
  for (int i = 0; i < kAlphabet; ++i) {
    if (!h[i]) continue;
    if (hi < 0) lo = i;
    hi = i;
  }
  return {lo, hi};
}

// -log2 probabilities of a merged histogram, with a small floor so unseen symbols stay finite.
std::array<float, kAlphabet> neg_log2(const Histogram& h, int lo, int hi) {
  std::array<float, kAlphabet> cost{};
  double total = 0.0;
  for (int i = lo; i <= hi; ++i) total += h[i] + 0.5;
  for (int i = lo; i <= hi; ++i) cost[i] = (float)-std::log2((h[i] + 0.5) / total);
  return cost;
}

// Channels' nonzero bins in ascending order. Sums over them skip only zero terms, which add
// exactly 0, so every result is bit-identical to the dense loop (the GPU table fit relies on it).
struct SparseHists {
  std::vector<uint32_t> begin;  // channels + 1 offsets into bin/count
  std::vector<uint16_t> bin;
  std::vector<uint32_t> count;

  // [lo, hi]: the bins any channel uses.
  SparseHists(const std::vector<Histogram>& hists, int lo, int hi) {
    begin.push_back(0);
    for (const Histogram& h : hists) {
      for (int i = lo; i <= hi; ++i)
        if (h[i]) bin.push_back((uint16_t)i), count.push_back(h[i]);
      begin.push_back((uint32_t)bin.size());
    }
  }
  size_t channels() const { return begin.size() - 1; }
};

double cross_bits(const SparseHists& sh, size_t c, const std::array<float, kAlphabet>& cost) {
  double bits = 0.0;
  for (uint32_t e = sh.begin[c]; e < sh.begin[c + 1]; ++e)
    bits += sh.count[e] * (double)cost[sh.bin[e]];
  return bits;
}

std::vector<Histogram> merge(const SparseHists& sh, const std::vector<uint8_t>& assign,
                             uint32_t k) {
  std::vector<Histogram> merged(k, Histogram{});
  for (size_t c = 0; c < sh.channels(); ++c)
    for (uint32_t e = sh.begin[c]; e < sh.begin[c + 1]; ++e)
      merged[assign[c]][sh.bin[e]] += sh.count[e];
  return merged;
}

// Channels sorted by spread (mean |index - 128|), the same for every table count.
std::vector<uint32_t> spread_order(const SparseHists& sh) {
  std::vector<double> spread(sh.channels());
  for (size_t c = 0; c < sh.channels(); ++c) {
    double n = 0.0, s = 0.0;
    for (uint32_t e = sh.begin[c]; e < sh.begin[c + 1]; ++e) {
      n += sh.count[e];
      s += sh.count[e] * std::abs(sh.bin[e] - 128);
    }
    spread[c] = n > 0 ? s / n : 0.0;
  }
  std::vector<uint32_t> order(sh.channels());
  std::iota(order.begin(), order.end(), 0u);
  std::stable_sort(order.begin(), order.end(),
                   [&](uint32_t a, uint32_t b) { return spread[a] < spread[b]; });
  return order;
}

// Initial clusters: the channels in spread order cut into k equal runs.
std::vector<uint8_t> initial_assignment(const std::vector<uint32_t>& order, uint32_t k) {
  std::vector<uint8_t> assign(order.size());
  for (size_t r = 0; r < order.size(); ++r) assign[order[r]] = (uint8_t)(r * k / order.size());
  return assign;
}

// Every cluster's costs transposed to cost[bin * stride + cluster], stride = the cluster count
// rounded up to a register of 8, so a vector kernel scores a channel under 8 clusters at once.
std::vector<float> transposed_costs(const std::vector<std::array<float, kAlphabet>>& costs,
                                    uint32_t stride) {
  std::vector<float> cost((size_t)kAlphabet * stride);
  for (size_t j = 0; j < costs.size(); ++j)
    for (int i = 0; i < kAlphabet; ++i) cost[(size_t)i * stride + j] = costs[j][i];
  return cost;
}

// Channel c's cross bits under every cluster (bits[0, stride)) by a vector kernel.
void vector_cross_bits(CpuPath path, const SparseHists& sh, size_t c,
                       const std::vector<float>& cost, uint32_t stride, double* bits) {
  const uint32_t b = sh.begin[c], n = sh.begin[c + 1] - b;
  if (path == CpuPath::Avx512)
    cross_bits_avx512(sh.bin.data() + b, sh.count.data() + b, n, cost.data(), stride, bits);
  else
    cross_bits_avx2(sh.bin.data() + b, sh.count.data() + b, n, cost.data(), stride, bits);
}

Clusters cluster(const SparseHists& sh, const std::vector<uint32_t>& order, uint32_t k, int lo,
                 int hi, CpuPath path) {
  Clusters cl{{}, initial_assignment(order, k)};
  const uint32_t stride = (k + 7) / 8 * 8;
  std::vector<double> bits(stride);
  for (int round = 0; round < kLloydRounds; ++round) {
    std::vector<Histogram> merged = merge(sh, cl.assign, k);
    std::vector<std::array<float, kAlphabet>> costs;
    for (auto& m : merged) costs.push_back(neg_log2(m, lo, hi));
    const bool vector = path != CpuPath::Scalar;
    const std::vector<float> cost = vector ? transposed_costs(costs, stride) : std::vector<float>{};
    for (size_t c = 0; c < sh.channels(); ++c) {
      if (vector) vector_cross_bits(path, sh, c, cost, stride, bits.data());
      double best = INFINITY;
      for (uint32_t j = 0; j < k; ++j) {
        double b = vector ? bits[j] : cross_bits(sh, c, costs[j]);
        if (b < best) best = b, cl.assign[c] = (uint8_t)j;
      }
    }
  }
  cl.merged = merge(sh, cl.assign, k);
  return cl;
}

// The tables of a clustering: one per nonempty cluster, indices compacted so that every table is
// used.
TableSet tables_of(const Clusters& cl) {
  TableSet ts;
  std::vector<int> remap(cl.merged.size(), -1);
  for (size_t j = 0; j < cl.merged.size(); ++j) {
    if (used_range(cl.merged[j]).second < 0) continue;
    remap[j] = (int)ts.tables.size();
    ts.tables.push_back(normalize(cl.merged[j]));
  }
  for (uint8_t t : cl.assign) ts.channel_table.push_back((uint8_t)remap[t]);
  return ts;
}

// A group's size as written with the tables `ts` of clustering `cl`: the symbols at their ideal
// code length under the tables, and the table side data byte for byte.
double written_bits(const Clusters& cl, const TableSet& ts) {
  std::vector<uint8_t> side;
  serialize_tables(ts, side);
  double bits = 8.0 * side.size();
  size_t t = 0;
  for (const Histogram& m : cl.merged)
    if (used_range(m).second >= 0) bits += code_length_bits(m, ts.tables[t++]);
  return bits;
}

// Frequencies (format v3) as Exp-Golomb codes whose order follows the previous frequency: a
// table's frequencies rise and fall smoothly, so the order tracks their magnitude.
int bit_length(uint32_t v) { return v ? 32 - __builtin_clz(v) : 0; }
int golomb_order(uint32_t prev) { return std::max(bit_length(prev) - 2, 0); }

void put_golomb(uint32_t v, int k, BitWriter& w) {
  const uint32_t u = (v >> k) + 1;
  const int m = bit_length(u) - 1;
  w.ones((uint32_t)m);
  w.bits(0, 1);
  w.bits(u, m);  // below the implicit top bit
  w.bits(v, k);
}

// One window read serves the whole code: at most 13 + 1 + 13 + 11 bits.
uint32_t get_golomb(int k, BitReader& r) {
  const uint64_t w = r.peek();
  const uint32_t m = ones_run(w);
  if (m > 13) throw FormatError("probability table: code out of range");  // u <= 4097 < 2^13
  const uint32_t u = (1u << m) | (uint32_t)((w >> (m + 1)) & ((1u << m) - 1));
  const uint32_t low = (uint32_t)((w >> (2 * m + 1)) & ((1u << k) - 1));
  r.skip(2 * m + 1 + (uint32_t)k);
  return ((u - 1) << k) | low;
}

void check_range(int lo, int n, bool full_alphabet) {
  if (lo < (full_alphabet ? 0 : 1) || lo + n > kAlphabet)
    throw FormatError("probability table symbol range invalid");
}

// log2((f + 1) / f) and log2(f / (f - 1)) for every frequency f, computed once: the drift fix
// of normalize() reads them instead of calling log2 per candidate (the same doubles).
struct DriftLogs {
  std::array<double, rans::kProbScale + 1> up{}, down{};
};

const DriftLogs& drift_logs() {
  static const DriftLogs logs = [] {
    DriftLogs l;
    for (uint32_t i = 1; i <= rans::kProbScale; ++i) {
      const double f = i;
      l.up[i] = std::log2((f + 1) / f);
      l.down[i] = std::log2(f / (f - 1));
    }
    return l;
  }();
  return logs;
}

}  // namespace

void cross_bits_scalar(const uint16_t* bin, const uint32_t* count, uint32_t n, const float* cost,
                       uint32_t stride, double* bits) {
  for (uint32_t j = 0; j < stride; ++j) {
    bits[j] = 0.0;
    for (uint32_t e = 0; e < n; ++e)
      bits[j] += count[e] * (double)cost[(size_t)bin[e] * stride + j];
  }
}

TableSet fit_tables(const std::vector<Histogram>& hists, uint32_t max_tables, CpuPath path) {
  Histogram all{};
  for (auto& h : hists)
    for (int i = 0; i < kAlphabet; ++i) all[i] += h[i];
  const std::pair<int, int> range = used_range(all);
  const SparseHists sparse(hists, range.first, range.second);
  const std::vector<uint32_t> order = spread_order(sparse);
  return choose_tables(table_limit(max_tables, (uint32_t)hists.size()), [&](uint32_t k) {
    return cluster(sparse, order, k, range.first, range.second, path);
  });
}

uint32_t table_limit(uint32_t max_tables, uint32_t columns) {
  return std::min<uint32_t>({max_tables, columns, 255});
}

TableSet choose_tables(uint32_t limit, const std::function<Clusters(uint32_t k)>& fit) {
  TableSet best;
  double best_bits = INFINITY;
  for (uint32_t k = 1; k <= std::max(limit, 1u); k *= 2) {
    const Clusters cl = fit(k);
    TableSet ts = tables_of(cl);
    const double bits = written_bits(cl, ts);
    if (bits > best_bits * (1.0 - kMinGain)) break;  // doubling again would gain even less
    best_bits = bits;
    best = std::move(ts);
  }
  return best;
}

int table_map_bits(size_t num_tables) {
  int b = 1;
  while ((size_t{1} << b) < num_tables) ++b;
  return b;
}

void serialize_tables(const TableSet& ts, std::vector<uint8_t>& out) {
  if (ts.tables.size() > 1) {
    BitWriter w(out);
    const int b = table_map_bits(ts.tables.size());
    for (uint8_t t : ts.channel_table) w.bits(t, b);
    w.finish();
  }
  for (const Table& t : ts.tables) serialize_table(t, out);
}

Table normalize(const Histogram& counts) {
  const uint64_t total = std::accumulate(counts.begin(), counts.end(), uint64_t{0});
  Table t;
  if (total == 0) {
    t.freq[128] = rans::kProbScale;
    return t;
  }
  int sum = 0;
  for (int i = 0; i < kAlphabet; ++i) {
    if (!counts[i]) continue;
    uint32_t f = (uint32_t)std::llround((double)counts[i] * rans::kProbScale / total);
    t.freq[i] = (uint16_t)std::max<uint32_t>(f, 1);
    sum += t.freq[i];
  }
  // Fix the rounding drift one unit at a time where it costs the fewest bits.
  const DriftLogs& logs = drift_logs();
  while (sum != (int)rans::kProbScale) {
    const bool grow = sum < (int)rans::kProbScale;
    int pick = -1;
    double best = INFINITY;
    for (int i = 0; i < kAlphabet; ++i) {
      if (!counts[i] || (!grow && t.freq[i] <= 1)) continue;
      const int f = t.freq[i];
      double cost = grow ? -counts[i] * logs.up[f] : counts[i] * logs.down[f];
      if (cost < best) best = cost, pick = i;
    }
    t.freq[pick] = (uint16_t)(t.freq[pick] + (grow ? 1 : -1));
    sum += grow ? 1 : -1;
  }
  return t;
}

void serialize_table(const Table& t, std::vector<uint8_t>& out) {
  int lo = 0, hi = -1;
  for (int i = 0; i < kAlphabet; ++i) {
    if (!t.freq[i]) continue;
    if (hi < 0) lo = i;
    hi = i;
  }
  out.push_back((uint8_t)lo);
  out.push_back((uint8_t)(hi - lo));
  BitWriter w(out);
  for (int i = lo, prev = 0; i <= hi; prev = t.freq[i++])
    put_golomb(t.freq[i], golomb_order(prev), w);
  w.finish();
}

Table parse_table(const uint8_t* data, size_t& pos, size_t end, bool golomb, bool full_alphabet) {
  if (end - pos < 2) throw FormatError("truncated probability table");
  const int lo = data[pos], n = data[pos + 1] + 1;
  pos += 2;
  check_range(lo, n, full_alphabet);
  Table t;
  uint32_t sum = 0;
  BitReader r(data, pos, end, "probability table");
  for (int i = lo; i < lo + n; ++i) {
    const uint32_t f = golomb ? get_golomb(golomb_order(i > lo ? t.freq[i - 1] : 0), r)
                              : read_varint(data, pos, end, 3, "probability table");
    if (f > rans::kProbScale) throw FormatError("probability table frequency out of range");
    t.freq[i] = (uint16_t)f;
    sum += f;
  }
  if (golomb) pos = r.end_pos();
  if (sum != rans::kProbScale) throw FormatError("probability table does not sum to 4096");
  return t;
}

std::array<rans::EncSym, kAlphabet> encoder_symbols(const Table& t) {
  std::array<rans::EncSym, kAlphabet> e{};
  uint32_t cum = 0;
  for (int i = 0; i < kAlphabet; ++i) {
    e[i] = rans::make_enc_sym(t.freq[i], cum);
    cum += t.freq[i];
  }
  return e;
}

void fill_decoder_lut(const Table& t, uint32_t* lut) {
  // A slot's entry is its symbol's base plus the slot: runs of bases, then the slots added in
  // one pass (two loops the compiler vectorizes, where a per-symbol ramp is mostly loop tails).
  uint32_t cum = 0;
  for (int i = 0; i < kAlphabet; ++i) {
    std::fill_n(lut + cum, t.freq[i], rans::dec_entry_base(i, t.freq[i], cum));
    cum += t.freq[i];
  }
  for (uint32_t slot = 0; slot < rans::kProbScale; ++slot) lut[slot] += slot;
}

double code_length_bits(const Histogram& counts, const Table& t) {
  double bits = 0.0;
  for (int i = 0; i < kAlphabet; ++i) {
    if (!counts[i]) continue;
    bits += counts[i] * -std::log2((double)t.freq[i] / rans::kProbScale);
  }
  return bits;
}

}  // namespace cachegen
