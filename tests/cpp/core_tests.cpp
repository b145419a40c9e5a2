// Unit tests of the core pieces that Python cannot reach one at a time: bit streams, scale codes,
// probability tables and the table-count search, one rANS segment, the checksum and the
// half-precision conversions. Built and run by CTest (CMake option CACHEGEN_TESTS), also under
// ASan + UBSan.
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "bits.hpp"
#include "crc32c.hpp"
#include "half.hpp"
#include "quant.hpp"
#include "rans.hpp"
#include "segment.hpp"
#include "step_codes.hpp"
#include "tables.hpp"

using namespace cachegen;

namespace {

int g_failures = 0;

#define CHECK(cond)                                                          \
  do {                                                                       \
    if (!(cond)) {                                                           \
      std::fprintf(stderr, "%s:%d: CHECK(%s)\n", __FILE__, __LINE__, #cond); \
      ++g_failures;                                                          \
    }                                                                        \
  } while (0)

template <typename E>
bool throws(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const E&) {
    return true;
  }
  return false;
}

void bit_streams_round_trip() {
  std::mt19937 rng(1);
  std::vector<std::pair<uint32_t, int>> fields;
  std::vector<uint8_t> out;
  BitWriter w(out);
  for (int i = 0; i < 2000; ++i) {
    const int n = (int)(rng() % 33);
    const uint32_t v = n == 32 ? rng() : rng() & ((1u << n) - 1);
    fields.push_back({v, n});
    w.bits(v, n);
  }
  w.ones(70);
  w.bits(0, 1);
  w.finish();
  BitReader r(out.data(), 0, out.size(), "test bits");
  for (const auto& [v, n] : fields) CHECK(r.take(n) == v);
  CHECK(r.unary(100) == 70);
  CHECK(throws<FormatError>(
      [&] { BitReader(out.data(), 0, out.size(), "t").skip(8 * out.size() + 1); }));
  // A run of ones longer than the limit is corrupt, not an endless read.
  std::vector<uint8_t> ones(16, 0xff);
  CHECK(throws<FormatError>([&] { BitReader(ones.data(), 0, ones.size(), "t").unary(50); }));
}

void step_codes_round_trip() {
  std::mt19937 rng(2);
  std::vector<uint16_t> steps;
  for (int i = 0; i < 500; ++i) steps.push_back(step_code_value((int)(rng() % 80) - 60));
  std::vector<uint8_t> out;
  write_step_codes(steps, out);
  size_t pos = 0;
  CHECK(read_step_codes(out.data(), pos, out.size(), (uint32_t)steps.size()) == steps);
  CHECK(pos == out.size());
  for (size_t cut = 0; cut + 1 < out.size(); cut += 7) {
    size_t p = 0;
    CHECK(
        throws<FormatError>([&] { read_step_codes(out.data(), p, cut, (uint32_t)steps.size()); }));
  }
}

void grid_codes_are_nearest_in_log_domain() {
  // fp16 normals only: among subnormals neighbouring codes share a value.
  for (int k = -14 * kStepCodesPerOctave; k < kMaxStepCode; ++k) {
    const float s = f16_to_f32(step_code_value(k));
    CHECK(nearest_step_code(s) == k);
  }
}

Histogram skewed_counts(uint32_t seed) {
  std::mt19937 rng(seed);
  std::geometric_distribution<int> g(0.35);
  Histogram h{};
  for (int i = 0; i < 20000; ++i) {
    const int s = std::min(g(rng), kMaxSymbol) * (rng() % 2 ? 1 : -1);
    h[s + kSymbolBias]++;
  }
  return h;
}

void tables_normalize_and_parse() {
  const Histogram h = skewed_counts(3);
  const Table t = normalize(h);
  uint32_t sum = 0;
  for (int i = 0; i < kAlphabet; ++i) {
    sum += t.freq[i];
    CHECK((h[i] > 0) == (t.freq[i] > 0));  // present symbols keep a slot, absent ones get none
  }
  CHECK(sum == rans::kProbScale);
  std::vector<uint8_t> out;
  serialize_table(t, out);
  size_t pos = 0;
  CHECK(parse_table(out.data(), pos, out.size(), true).freq == t.freq);
  CHECK(pos == out.size());
  size_t p = 0;
  CHECK(throws<FormatError>([&] { parse_table(out.data(), p, out.size() / 2, true); }));
}

// `columns` columns of `n` symbols each: the first half narrow (three symbols), the rest wide.
std::vector<Histogram> two_kinds(uint32_t columns, uint32_t n) {
  std::vector<Histogram> h(columns);
  for (uint32_t c = 0; c < columns; ++c)
    for (uint32_t t = 0; t < n; ++t) {
      const int s = c < columns / 2 ? (int)((t + c) % 3) - 1 : (int)((t * 7 + c) % 41) - 20;
      h[c][s + kSymbolBias]++;
    }
  return h;
}

Clusters clusters_of(const std::vector<Histogram>& hists, std::vector<uint8_t> assign) {
  Clusters cl{{}, std::move(assign)};
  for (size_t c = 0; c < hists.size(); ++c) {
    if (cl.assign[c] >= cl.merged.size()) cl.merged.resize(cl.assign[c] + 1);
    for (int i = 0; i < kAlphabet; ++i) cl.merged[cl.assign[c]][i] += hists[c][i];
  }
  return cl;
}

// A group's size as docs/FORMAT.md lays it out: each table as serialized, the column map at
// ceil(log2 tables) bits a column padded to a byte, and the symbols at their ideal code length.
double written_bits_reference(const Clusters& cl) {
  std::vector<uint8_t> tables;
  double bits = 0.0;
  for (const Histogram& m : cl.merged) {
    const Table t = normalize(m);
    serialize_table(t, tables);
    bits += code_length_bits(m, t);
  }
  int map_bits = 0;
  while ((1u << map_bits) < cl.merged.size()) ++map_bits;
  const size_t map_bytes = cl.merged.size() > 1 ? (cl.assign.size() * map_bits + 7) / 8 : 0;
  return bits + 8.0 * (tables.size() + map_bytes);
}

// The table count is chosen by the size the format writes: over a sweep of token counts the
// choice between one table and two follows the reference size, and the sweep crosses the
// break-even point.
void table_count_follows_written_size() {
  const uint32_t columns = 256;
  int one_table = 0, two_tables = 0;
  for (uint32_t n = 1; n <= 256; n *= 2) {
    const std::vector<Histogram> hists = two_kinds(columns, n);
    const Clusters one = clusters_of(hists, std::vector<uint8_t>(columns, 0));
    std::vector<uint8_t> halves(columns, 0);
    std::fill(halves.begin() + columns / 2, halves.end(), 1);
    const Clusters two = clusters_of(hists, halves);
    const bool split = written_bits_reference(two) < written_bits_reference(one) * (1.0 - kMinGain);
    const TableSet ts = choose_tables(2, [&](uint32_t k) { return k == 1 ? one : two; });
    CHECK(ts.tables.size() == (split ? 2u : 1u));
    CHECK(ts.channel_table == (split ? halves : std::vector<uint8_t>(columns, 0)));
    ++(split ? two_tables : one_table);
  }
  CHECK(one_table > 0 && two_tables > 0);
}

// The column map is bit-packed ahead of the tables, least significant bit first.
void table_map_is_packed() {
  const std::vector<Histogram> hists = two_kinds(6, 16);
  TableSet ts;
  for (int i = 0; i < 3; ++i) ts.tables.push_back(normalize(hists[i + 3]));
  ts.channel_table = {0, 1, 2, 1, 0, 2};  // 2 bits each
  std::vector<uint8_t> out, tables;
  serialize_tables(ts, out);
  for (const Table& t : ts.tables) serialize_table(t, tables);
  CHECK(out.size() == 2 + tables.size());
  CHECK(out[0] == (1 << 2 | 2 << 4 | 1 << 6) && out[1] == 2 << 2);
  CHECK(std::equal(tables.begin(), tables.end(), out.begin() + 2));
}

// Encodes one segment as the format specifies (rans.hpp: symbol p on lane p % kLanes, coded
// backwards, words reversed), independently of the codec's own encoder.
std::vector<uint8_t> encode_segment(const std::vector<int8_t>& sym, const Table& t) {
  const auto enc = encoder_symbols(t);
  uint32_t state[rans::kLanes];
  std::fill(state, state + rans::kLanes, rans::kLowerBound);
  std::vector<uint16_t> words;
  for (size_t p = sym.size(); p-- > 0;) {
    uint16_t w;
    if (rans::enc_put(state[p % rans::kLanes], enc[sym[p] + kSymbolBias], &w)) words.push_back(w);
  }
  std::vector<uint8_t> out(rans::kStateBytes + 2 * words.size());
  std::memcpy(out.data(), state, rans::kStateBytes);
  for (size_t i = 0; i < words.size(); ++i)
    std::memcpy(out.data() + rans::kStateBytes + 2 * i, &words[words.size() - 1 - i], 2);
  return out;
}

void rans_segment_round_trip() {
  const Histogram h = skewed_counts(4);
  const Table t = normalize(h);
  std::vector<uint32_t> lut(rans::kProbScale);
  fill_decoder_lut(t, lut.data());
  std::mt19937 rng(5);
  std::discrete_distribution<int> pick(h.begin(), h.end());
  const uint32_t tokens = 97, channels = 13;  // not a multiple of the lane count
  std::vector<int8_t> sym(tokens * channels);
  for (auto& s : sym) s = (int8_t)(pick(rng) - kSymbolBias);
  const std::vector<uint8_t> seg = encode_segment(sym, t);
  std::vector<const uint32_t*> by_channel(channels, lut.data());
  std::vector<int8_t> got(sym.size());
  decode_segment(seg.data(), seg.size(), tokens, channels, by_channel.data(), got.data());
  CHECK(got == sym);
  // A flipped word or a missing tail is reported, never read past.
  std::vector<uint8_t> bad = seg;
  bad[rans::kStateBytes + 3] ^= 0x40;
  CHECK(throws<FormatError>([&] {
    decode_segment(bad.data(), bad.size(), tokens, channels, by_channel.data(), got.data());
  }));
  CHECK(throws<FormatError>([&] {
    decode_segment(seg.data(), seg.size() - 2, tokens, channels, by_channel.data(), got.data());
  }));
}

void crc32c_known_values() {
  const char* check = "123456789";
  CHECK(crc32c(reinterpret_cast<const uint8_t*>(check), 9) == 0xe3069283u);
  std::vector<uint8_t> data(1 << 20);
  std::mt19937 rng(6);
  for (auto& b : data) b = (uint8_t)rng();
  const uint32_t whole = crc32c(data.data(), data.size());
  const size_t cut = 123457;
  const uint32_t a = crc32c(data.data(), cut), b = crc32c(data.data() + cut, data.size() - cut);
  CHECK(crc_combine(a, b, data.size() - cut, crc_powers()) == whole);
  CHECK(crc32c(data.data() + cut, data.size() - cut, a) == whole);  // streaming form
}

void half_conversions_round_trip() {
  for (uint32_t h = 0; h < 65536; ++h) {
    const bool nan16 = (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu);
    if (!nan16) CHECK(f32_to_f16(f16_to_f32((uint16_t)h)) == h);
    const bool nan_bf = (h & 0x7f80u) == 0x7f80u && (h & 0x7fu);
    if (!nan_bf) CHECK(f32_to_bf16(bf16_to_f32((uint16_t)h)) == h);
  }
  CHECK(f32_to_f16(1.0f + 1.0f / 2048) == 0x3c00u);  // a tie rounds to even
  CHECK(f32_to_f16(70000.0f) == 0x7c00u);            // overflow is infinity
}

}  // namespace

int main() {
  bit_streams_round_trip();
  step_codes_round_trip();
  grid_codes_are_nearest_in_log_domain();
  tables_normalize_and_parse();
  table_count_follows_written_size();
  table_map_is_packed();
  rans_segment_round_trip();
  crc32c_known_values();
  half_conversions_round_trip();
  if (g_failures) {
    std::fprintf(stderr, "%d check(s) failed\n", g_failures);
    return 1;
  }
  std::puts("core tests: all checks passed");
  return 0;
}
