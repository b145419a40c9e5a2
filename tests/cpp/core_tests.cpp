// Unit tests of the core pieces that Python cannot reach one at a time: bit streams, scale codes,
// probability tables and the table-count search, one rANS segment (every CPU path against the
// scalar one), the fused dequantize-and-convert rows, the checksum and the half-precision
// conversions. Built and run by CTest (CMake option CACHEGEN_TESTS), also under ASan + UBSan.
#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <mutex>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#ifdef __linux__
#include <dirent.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "bits.hpp"
#include "cpu_path.hpp"
#include "crc32c.hpp"
#include "half.hpp"
#include "parallel.hpp"
#include "quant.hpp"
#include "rans.hpp"
#include "segment.hpp"
#include "segment_encode.hpp"
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

// rice_codes against rice() one code at a time, on streams of short codes with runs of ones
// longer than a window and than the limit mixed in, cut anywhere: the same values, the same end
// position, and an error exactly where rice() gives one.
void rice_codes_match_rice() {
  std::mt19937 rng(3);
  for (int trial = 0; trial < 300; ++trial) {
    const int k = (int)(rng() % 6);
    const uint32_t limit = 60 + rng() % 100, n = 1 + rng() % 200;
    const uint32_t longest = trial % 3 ? limit : limit + 10;  // a third may break the limit
    std::vector<uint8_t> bytes;
    BitWriter w(bytes);
    for (uint32_t i = 0; i < n; ++i) {
      w.ones(rng() % 8 ? rng() % 5 : rng() % (longest + 1));
      w.bits(0, 1);
      w.bits(rng(), k);
    }
    w.finish();
    const size_t end = rng() % 4 ? bytes.size() : rng() % (bytes.size() + 1);
    std::vector<uint32_t> want, got;
    BitReader one(bytes.data(), 0, end, "t"), many(bytes.data(), 0, end, "t");
    const bool want_error = throws<FormatError>([&] {
      for (uint32_t i = 0; i < n; ++i) want.push_back(one.rice(k, limit));
    });
    const bool got_error = throws<FormatError>(
        [&] { many.rice_codes(n, k, limit, [&](uint32_t v) { got.push_back(v); }); });
    CHECK(want_error == got_error);
    if (!want_error) CHECK(got == want && many.end_pos() == one.end_pos());
  }
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
  for (size_t cut = 0; cut < out.size(); ++cut) {  // every truncation is reported
    size_t p = 0;
    CHECK(throws<FormatError>([&] { parse_table(out.data(), p, cut, true); }));
  }
  // A code whose unary prefix is longer than any frequency needs (here 16 ones) is refused.
  const uint8_t long_code[] = {100, 3, 0xff, 0xff, 0, 0, 0, 0};
  size_t p = 0;
  CHECK(throws<FormatError>([&] { parse_table(long_code, p, sizeof(long_code), true); }));
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
// backwards, words reversed), independently of the codec's own encoder; symbol p uses the table
// of its channel p % channels.
std::vector<uint8_t> encode_segment(const std::vector<int8_t>& sym,
                                    const std::vector<Table>& tables,
                                    const std::vector<uint8_t>& channel_table) {
  std::vector<std::array<rans::EncSym, kAlphabet>> enc;
  for (const Table& t : tables) enc.push_back(encoder_symbols(t));
  uint32_t state[rans::kLanes];
  std::fill(state, state + rans::kLanes, rans::kLowerBound);
  std::vector<uint16_t> words;
  for (size_t p = sym.size(); p-- > 0;) {
    uint16_t w;
    const auto& e = enc[channel_table[p % channel_table.size()]];
    if (rans::enc_put(state[p % rans::kLanes], e[sym[p] + kSymbolBias], &w)) words.push_back(w);
  }
  std::vector<uint8_t> out(rans::kStateBytes + 2 * words.size());
  std::memcpy(out.data(), state, rans::kStateBytes);
  for (size_t i = 0; i < words.size(); ++i)
    std::memcpy(out.data() + rans::kStateBytes + 2 * i, &words[words.size() - 1 - i], 2);
  return out;
}

// A segment's symbols drawn from its channels' tables, with the decoder tables to read it.
struct TestSegment {
  uint32_t tokens, channels;
  std::vector<Table> tables;
  std::vector<uint8_t> channel_table;
  std::vector<int8_t> symbols;
  std::vector<uint8_t> bytes;
  std::vector<uint32_t> lut, offsets;
  DecodeTables dec() const { return {lut.data(), offsets.data(), channels}; }
};

TestSegment make_segment(uint32_t tokens, uint32_t channels, uint32_t num_tables, uint32_t seed) {
  TestSegment s{tokens, channels, {}, {}, {}, {}, {}, {}};
  std::mt19937 rng(seed);
  std::vector<std::discrete_distribution<int>> pick;
  for (uint32_t k = 0; k < num_tables; ++k) {
    const Histogram h = skewed_counts(seed * 31 + k);
    s.tables.push_back(normalize(h));
    pick.emplace_back(h.begin(), h.end());
  }
  for (uint32_t c = 0; c < channels; ++c) s.channel_table.push_back((uint8_t)(rng() % num_tables));
  s.symbols.resize((size_t)tokens * channels);
  for (size_t p = 0; p < s.symbols.size(); ++p)
    s.symbols[p] = (int8_t)(pick[s.channel_table[p % channels]](rng) - kSymbolBias);
  s.bytes = encode_segment(s.symbols, s.tables, s.channel_table);
  s.lut.resize(num_tables * rans::kProbScale);
  for (uint32_t k = 0; k < num_tables; ++k)
    fill_decoder_lut(s.tables[k], s.lut.data() + k * rans::kProbScale);
  fill_channel_offsets(s.channel_table, s.offsets);
  return s;
}

void rans_segment_round_trip() {
  const TestSegment s = make_segment(97, 13, 1, 4);  // not a multiple of the lane count
  for (CpuPath path : available_cpu_paths()) {
    std::vector<int8_t> got(s.symbols.size());
    decode_segment(path, s.bytes.data(), s.bytes.size(), s.tokens, s.dec(), got.data());
    CHECK(got == s.symbols);
    // A flipped word or a missing tail is reported, never read past.
    std::vector<uint8_t> bad = s.bytes;
    bad[rans::kStateBytes + 3] ^= 0x40;
    CHECK(throws<FormatError>(
        [&] { decode_segment(path, bad.data(), bad.size(), s.tokens, s.dec(), got.data()); }));
    const std::vector<uint8_t> cut(s.bytes.begin(), s.bytes.end() - 2);
    CHECK(throws<FormatError>(
        [&] { decode_segment(path, cut.data(), cut.size(), s.tokens, s.dec(), got.data()); }));
  }
}

// Everything a decode leaves behind: symbols, states, words used, overrun, whether it closed.
struct DecodeResult {
  std::vector<int8_t> symbols;
  std::vector<uint32_t> state;
  size_t wp;
  uint32_t overrun;
  bool clean;
  bool operator==(const DecodeResult& o) const {
    return symbols == o.symbols && state == o.state && wp == o.wp && overrun == o.overrun &&
           clean == o.clean;
  }
};

// Decodes `bytes` (exactly that long, so a sanitizer sees any read past it) in chunks of the
// given sizes (the rest in one), as the fused decode does a tile at a time.
DecodeResult decode_chunks(CpuPath path, const std::vector<uint8_t>& bytes, const TestSegment& s,
                           const std::vector<size_t>& chunks) {
  const std::vector<uint8_t> seg(bytes);
  DecodeResult d{std::vector<int8_t>(s.symbols.size()), {}, 0, 0, true};
  RansCursor r(seg.data(), seg.size());
  size_t at = 0;
  for (size_t n : chunks) {
    n = std::min(n, d.symbols.size() - at);
    decode_symbols(path, r, s.dec(), n, d.symbols.data() + at);
    at += n;
  }
  decode_symbols(path, r, s.dec(), d.symbols.size() - at, d.symbols.data() + at);
  d.state.assign(r.state, r.state + rans::kLanes);
  d.wp = r.wp;
  d.overrun = r.overrun;
  d.clean = !throws<FormatError>([&] { r.finish(); });
  return d;
}

// The vector paths against the scalar one on random streams, whole and in odd chunks, intact,
// corrupted, truncated and padded: the same symbols, states, words and verdict, bit for bit.
void vector_paths_match_scalar() {
  std::mt19937 rng(11);
  const uint32_t shapes[][3] = {{64, 192, 3}, {40, 1, 1}, {33, 7, 2}, {5, 1024, 8},
                                {300, 32, 4}, {1, 5, 1},  {17, 48, 2}};
  for (const auto& [tokens, channels, tables] : shapes) {
    const TestSegment s = make_segment(tokens, channels, tables, tokens + channels);
    std::vector<std::vector<uint8_t>> streams = {s.bytes};
    for (int k = 0; k < 6; ++k) {  // flipped bytes anywhere, states included
      std::vector<uint8_t> bad = s.bytes;
      for (int f = 0; f <= k; ++f) bad[rng() % bad.size()] ^= (uint8_t)(1 + rng() % 255);
      streams.push_back(bad);
    }
    for (size_t cut :
         {size_t{2}, size_t{7}, s.bytes.size() / 2, s.bytes.size() - rans::kStateBytes}) {
      if (cut <= s.bytes.size() - rans::kStateBytes)
        streams.emplace_back(s.bytes.begin(), s.bytes.end() - cut);
    }
    std::vector<uint8_t> padded = s.bytes;
    padded.insert(padded.end(), 66, 0x5a);
    streams.push_back(padded);
    std::vector<uint8_t> noise(s.bytes.size());
    for (auto& b : noise) b = (uint8_t)rng();
    streams.push_back(noise);
    const std::vector<size_t> chunks = {1, 31, 64, 3, (size_t)channels * 2 + 5, 100};
    for (const auto& bytes : streams) {
      const DecodeResult want = decode_chunks(CpuPath::Scalar, bytes, s, {});
      CHECK(want.clean == (bytes == s.bytes));
      if (bytes == s.bytes) CHECK(want.symbols == s.symbols);
      for (CpuPath path : available_cpu_paths()) {
        CHECK(decode_chunks(path, bytes, s, {}) == want);
        CHECK(decode_chunks(path, bytes, s, chunks) == want);
      }
    }
  }
}

// Every path's encoder against the reference encoder above: the same states and words, for
// segments whose length is and is not a whole number of steps.
void vector_encoders_match_reference() {
  const uint32_t shapes[][3] = {{64, 192, 3}, {40, 1, 1}, {33, 7, 2}, {5, 1024, 8}, {1, 5, 1}};
  for (const auto& [tokens, channels, tables] : shapes) {
    const TestSegment s = make_segment(tokens, channels, tables, 7 * tokens + channels);
    TableSet ts{s.tables, s.channel_table};
    const EncoderTables enc(ts);
    for (CpuPath path : available_cpu_paths()) {
      std::vector<uint16_t> words(s.symbols.size() + kWordSlack);
      uint32_t state[rans::kLanes];
      std::fill(state, state + rans::kLanes, rans::kLowerBound);
      uint16_t* end = words.data() + words.size();
      const uint16_t* top =
          encode_symbols(path, s.symbols.data(), s.symbols.size(), enc.view(), state, end);
      std::vector<uint8_t> got(rans::kStateBytes);
      std::memcpy(got.data(), state, rans::kStateBytes);
      got.insert(got.end(), reinterpret_cast<const uint8_t*>(top),
                 reinterpret_cast<const uint8_t*>(end));
      CHECK(got == s.bytes);
    }
  }
}

// The fused dequantize-and-convert rows of each path against dequantize() and the scalar
// conversions, for every dtype, with values that round to subnormals, ties and infinities.
void dequantize_rows_match_scalar() {
  std::mt19937 rng(12);
  for (uint32_t n : {1u, 7u, 8u, 16u, 37u, 192u}) {
    std::vector<int8_t> sym(n);
    std::vector<float> b(n), o(n);
    for (uint32_t c = 0; c < n; ++c) {
      sym[c] = (int8_t)((int)(rng() % 255) - 127);
      b[c] = std::ldexp(1.0f + (float)(rng() % 1024) / 1024, (int)(rng() % 40) - 30);
      o[c] = (rng() % 3) ? std::ldexp((float)(rng() % 2048) - 1024, (int)(rng() % 20) - 24) : 0.f;
    }
    for (float a : {1.0f, 3.1e-5f, 517.f, 1e-9f}) {
      for (DType dt : {DType::F16, DType::BF16, DType::F32}) {
        const size_t bytes = n * dtype_size(dt);
        std::vector<uint8_t> want(bytes), got(bytes);
        dequantize_store_row(sym.data(), a, b.data(), o.data(), n, dt, want.data());
        for (uint32_t c = 0; c < n; ++c) {
          const float x = dequantize(sym[c], a, b[c], o[c]);
          uint32_t bits = dt == DType::F32   ? f32_bits(x)
                          : dt == DType::F16 ? f32_to_f16(x)
                                             : f32_to_bf16(x);
          CHECK(std::memcmp(want.data() + c * dtype_size(dt), &bits, dtype_size(dt)) == 0);
        }
        for (CpuPath path : available_cpu_paths()) {
          uint8_t* dst = got.data();
          const auto rows = path == CpuPath::Avx512 ? dequantize_rows_avx512
                            : path == CpuPath::Avx2 ? dequantize_rows_avx2
                                                    : dequantize_rows_scalar;
          rows(sym.data(), &a, b.data(), o.data(), n, 1, RowRuns{1, n, 0}, dt, &dst);
          CHECK(got == want);
        }
      }
    }
  }
}

// Each path's fused rows decode against the scalar symbols dequantized by the scalar rows code,
// tile by tile as decode_fused calls it: whole rows and rows split into runs (head by head, with
// gaps no kernel may touch), every dtype, intact and damaged streams with the same verdict.
void fused_rows_match_unfused() {
  std::mt19937 rng(13);
  const uint32_t shapes[][3] = {{64, 192, 3}, {5, 1024, 8}, {300, 32, 4}, {17, 64, 2}};
  for (const auto& [tokens, channels, tables] : shapes) {
    const TestSegment s = make_segment(tokens, channels, tables, 3 * tokens + channels);
    std::vector<float> a(tokens), b(channels), o(channels);
    for (float& x : a) x = std::ldexp(1.0f + (float)(rng() % 1024) / 1024, (int)(rng() % 20) - 10);
    for (uint32_t c = 0; c < channels; ++c) {
      b[c] = std::ldexp(1.0f + (float)(rng() % 1024) / 1024, (int)(rng() % 20) - 16);
      o[c] = (float)((int)(rng() % 200) - 100) / 64;
    }
    std::vector<uint8_t> bad = s.bytes, cut(s.bytes.begin(), s.bytes.end() - 6);
    bad[rans::kStateBytes + bad.size() / 3] ^= 0x21;
    for (const std::vector<uint8_t>& bytes : {s.bytes, bad, cut})
      for (DType dt : {DType::F16, DType::BF16, DType::F32})
        for (uint32_t len : {channels, 32u}) {
          const size_t e = dtype_size(dt), row = (channels + 16 * (channels / len)) * e;
          const RowRuns runs{channels / len, len, (int64_t)((len + 16) * e)};
          // The rows a decode writes (gaps kept at 0xab) and whether its stream closed.
          const auto rows = [&](const auto& decode_tile) {
            std::vector<uint8_t> out(tokens * row, 0xab);
            std::vector<uint8_t*> dst;
            for (uint32_t k = 0; k < tokens; ++k) dst.push_back(out.data() + k * row);
            RansCursor r(bytes.data(), bytes.size());
            for (uint32_t k0 = 0, n; k0 < tokens; k0 += n) {
              n = std::min<uint32_t>(7, tokens - k0);
              decode_tile(r, n, RowSink{a.data() + k0, b.data(), o.data(), runs, dt, &dst[k0]});
            }
            return std::make_pair(out, !throws<FormatError>([&] { r.finish(); }));
          };
          const auto want = rows([&](RansCursor& r, uint32_t n, const RowSink& sink) {
            std::vector<int8_t> sym((size_t)n * channels);
            decode_symbols(CpuPath::Scalar, r, s.dec(), sym.size(), sym.data());
            dequantize_rows_scalar(sym.data(), sink.a, b.data(), o.data(), channels, n, runs, dt,
                                   sink.dst);
          });
          CHECK(want.second == (bytes == s.bytes));
          for (CpuPath path : available_cpu_paths()) {
            const auto got = rows([&](RansCursor& r, uint32_t n, const RowSink& sink) {
              on_path(path, decode_rows_scalar, decode_rows_avx2, decode_rows_avx512)(r, s.dec(), n,
                                                                                      sink);
            });
            CHECK(got.second == want.second);
            if (want.second) CHECK(got.first == want.first);
          }
        }
  }
}

// CRC32C one bit at a time: the reference the table, three-stream and parallel paths must match.
uint32_t crc_bitwise(const uint8_t* p, size_t n, uint32_t crc = 0) {
  crc = ~crc;
  for (size_t i = 0; i < n; ++i) {
    crc ^= p[i];
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (kCrc32cPoly & (0u - (crc & 1)));
  }
  return ~crc;
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
  // Lengths on either side of the three-stream and parallel-chunk thresholds, odd offsets.
  std::vector<uint8_t> big(3u << 20 | 11);
  for (auto& b : big) b = (uint8_t)rng();
  for (size_t n : {size_t{0}, size_t{1}, size_t{7}, size_t{3071}, size_t{3072}, size_t{3077},
                   size_t{65539}, size_t{(1u << 20) - 1}, size_t{(2u << 20) + 5}, big.size() - 3})
    for (size_t at : {size_t{0}, size_t{3}}) {
      CHECK(crc32c(big.data() + at, n) == crc_bitwise(big.data() + at, n));
      CHECK(crc32c(big.data() + at, n, 0x1234567u) == crc_bitwise(big.data() + at, n, 0x1234567u));
    }
}

// The pool: every index once, nested calls, an exception reported and the pool still serving,
// several callers at once, and the same helper threads from one call to the next.
void parallel_for_runs_every_index() {
  std::vector<std::atomic<int>> hits(5000);
  parallel_for(hits.size(), 4, [&](size_t i) { hits[i]++; });
  bool once = true;
  for (auto& h : hits) once &= h.exchange(0) == 1;
  CHECK(once);
  parallel_for(50, 3,
               [&](size_t i) { parallel_for(100, 3, [&](size_t j) { hits[i * 100 + j]++; }); });
  once = true;
  for (auto& h : hits) once &= h.exchange(0) == 1;
  CHECK(once);
  bool raised = false;
  try {
    parallel_for(1000, 4, [](size_t i) {
      if (i == 500) throw std::runtime_error("index 500");
    });
  } catch (const std::runtime_error& e) {
    raised = std::string(e.what()) == "index 500";
  }
  CHECK(raised);
  std::vector<std::thread> callers;
  for (int c = 0; c < 4; ++c)
    callers.emplace_back([&] {
      for (int k = 0; k < 20; ++k) parallel_for(hits.size(), 3, [&](size_t i) { hits[i]++; });
    });
  for (auto& t : callers) t.join();
  once = true;
  for (auto& h : hits) once &= h.exchange(0) == 80;
  CHECK(once);
#ifdef __linux__
  // A call's helpers are threads that were alive before it: the pool's, not new ones.
  auto tasks = [] {
    std::set<long> ids;
    if (DIR* d = opendir("/proc/self/task")) {
      while (dirent* e = readdir(d))
        if (e->d_name[0] != '.') ids.insert(std::atol(e->d_name));
      closedir(d);
    }
    return ids;
  };
  auto nap = [](size_t) { std::this_thread::sleep_for(std::chrono::milliseconds(20)); };
  parallel_for(8, 3, nap);
  const std::set<long> before = tasks();
  std::mutex m;
  std::set<long> used;
  parallel_for(8, 3, [&](size_t i) {
    nap(i);
    std::lock_guard<std::mutex> lock(m);
    used.insert((long)syscall(SYS_gettid));
  });
  CHECK(used.size() == 3 && std::includes(before.begin(), before.end(), used.begin(), used.end()));
#endif
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
  rice_codes_match_rice();
  step_codes_round_trip();
  grid_codes_are_nearest_in_log_domain();
  tables_normalize_and_parse();
  table_count_follows_written_size();
  table_map_is_packed();
  rans_segment_round_trip();
  vector_paths_match_scalar();
  vector_encoders_match_reference();
  dequantize_rows_match_scalar();
  fused_rows_match_unfused();
  std::printf("cpu paths checked:");
  for (CpuPath p : available_cpu_paths()) std::printf(" %s", cpu_path_name(p));
  std::printf("\n");
  crc32c_known_values();
  parallel_for_runs_every_index();
  half_conversions_round_trip();
  if (g_failures) {
    std::fprintf(stderr, "%d check(s) failed\n", g_failures);
    return 1;
  }
  std::puts("core tests: all checks passed");
  return 0;
}
