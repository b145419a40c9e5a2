// AVX2 kernels: rANS decode and encode 8 lanes per register (4 registers per step of kLanes
// symbols; words move between the stream and the lanes that need them through permutation
// tables), and fused dequantization + fp16/bf16/fp32 conversion of a row; for the encoder,
// symbol counts, the table fit's cross bits and key pair magnitudes. Bit-exact with the scalar
// code.
#include <algorithm>

#include "importance.hpp"
#include "quant.hpp"
#include "segment.hpp"
#include "segment_encode.hpp"
#include "tables.hpp"

#ifdef CG_X86_SIMD
#include <immintrin.h>

#include <array>

#define CG_AVX2 __attribute__((target("avx2,f16c,popcnt")))

namespace cachegen {
namespace {

// For each 8-bit mask of lanes that need a word: lane i takes word (number of set bits below i),
// so the words, read in order, go to the needing lanes in ascending lane order.
using ExpandTable = std::array<std::array<uint32_t, 8>, 256>;
constexpr ExpandTable make_expand_table() {
  ExpandTable t{};
  for (uint32_t m = 0; m < 256; ++m) {
    uint32_t k = 0;
    for (uint32_t i = 0; i < 8; ++i) {
      t[m][i] = (m >> i) & 1 ? k : 0;
      k += (m >> i) & 1;
    }
  }
  return t;
}
alignas(32) constexpr ExpandTable kExpand = make_expand_table();

// For each 8-bit mask of lanes that flush: the flushing lanes, ascending, moved to the top
// lanes (8 - count .. 7), the encoder's words in stream order just below its top.
constexpr ExpandTable make_compress_high_table() {
  ExpandTable t{};
  for (uint32_t m = 0; m < 256; ++m) {
    uint32_t lanes[8] = {}, k = 0;
    for (uint32_t i = 0; i < 8; ++i)
      if ((m >> i) & 1) lanes[k++] = i;
    for (uint32_t j = 0; j < k; ++j) t[m][8 - k + j] = lanes[j];
  }
  return t;
}
alignas(32) constexpr ExpandTable kCompressHigh = make_compress_high_table();

// One decode step of 8 lanes: x advanced and renormalized with words taken from words[wp...].
CG_AVX2 inline __m256i step8(__m256i x, const uint32_t* off, const uint32_t* lut,
                             const uint8_t* words, size_t& wp, __m256i& sym) {
  const __m256i m12 = _mm256_set1_epi32(0xfff);
  const __m256i slot = _mm256_and_si256(x, m12);
  const __m256i idx = _mm256_add_epi32(_mm256_loadu_si256((const __m256i*)off), slot);
  const __m256i e = _mm256_i32gather_epi32((const int*)lut, idx, 4);
  const __m256i freq =
      _mm256_add_epi32(_mm256_and_si256(_mm256_srli_epi32(e, 12), m12), _mm256_set1_epi32(1));
  x = _mm256_add_epi32(_mm256_mullo_epi32(freq, _mm256_srli_epi32(x, rans::kProbBits)),
                       _mm256_and_si256(e, m12));
  const __m256i need = _mm256_cmpeq_epi32(_mm256_srli_epi32(x, 16), _mm256_setzero_si256());
  const int m = _mm256_movemask_ps(_mm256_castsi256_ps(need));
  __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)(words + 2 * wp)));
  w = _mm256_permutevar8x32_epi32(w, _mm256_load_si256((const __m256i*)kExpand[m].data()));
  x = _mm256_blendv_epi8(x, _mm256_or_si256(_mm256_slli_epi32(x, 16), w), need);
  wp += (size_t)_mm_popcnt_u32((unsigned)m);
  sym = _mm256_srli_epi32(e, 24);
  return x;
}

// Four registers of symbol indices (lanes 0-31) as 32 int8 symbols in lane order.
CG_AVX2 inline void store_symbols(__m256i s0, __m256i s1, __m256i s2, __m256i s3, int8_t* out) {
  const __m256i bytes =
      _mm256_packus_epi16(_mm256_packus_epi32(s0, s1), _mm256_packus_epi32(s2, s3));
  const __m256i order =
      _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  _mm256_storeu_si256((__m256i*)out, _mm256_xor_si256(order, _mm256_set1_epi8((char)0x80)));
}

// Up to `steps` whole steps (the cursor at lane 0) through `use(s0, s1, s2, s3, done)`, which
// takes the step's symbol indices (lanes 0-7, ..., 24-31); returns how many ran. Every step reads
// at most kLanes words, so it runs only while that many remain (whole_steps pads the last ones).
template <typename Use>
CG_AVX2 inline size_t run_steps(RansCursor& r, const DecodeTables& t, size_t steps, Use&& use) {
  // Locals, not fields: the stores could alias the cursor and the tables.
  const uint32_t *lut = t.lut, *chan_off = t.chan_off;
  const uint8_t* words = r.words;
  const size_t nwords = r.nwords;
  const uint32_t C = t.channels;
  __m256i x0 = _mm256_loadu_si256((const __m256i*)(r.state + 0));
  __m256i x1 = _mm256_loadu_si256((const __m256i*)(r.state + 8));
  __m256i x2 = _mm256_loadu_si256((const __m256i*)(r.state + 16));
  __m256i x3 = _mm256_loadu_si256((const __m256i*)(r.state + 24));
  size_t wp = r.wp, done = 0;
  uint32_t c = r.channel;
  for (; done < steps && wp + rans::kLanes <= nwords; ++done) {
    const uint32_t* off = chan_off + c;
    __m256i s0, s1, s2, s3;
    x0 = step8(x0, off, lut, words, wp, s0);
    x1 = step8(x1, off + 8, lut, words, wp, s1);
    x2 = step8(x2, off + 16, lut, words, wp, s2);
    x3 = step8(x3, off + 24, lut, words, wp, s3);
    use(s0, s1, s2, s3, done);
    for (c += rans::kLanes; c >= C;) c -= C;
  }
  _mm256_storeu_si256((__m256i*)(r.state + 0), x0);
  _mm256_storeu_si256((__m256i*)(r.state + 8), x1);
  _mm256_storeu_si256((__m256i*)(r.state + 16), x2);
  _mm256_storeu_si256((__m256i*)(r.state + 24), x3);
  r.wp = wp;
  r.channel = c;
  return done;
}

CG_AVX2 size_t decode_steps(RansCursor& r, const DecodeTables& t, size_t steps, int8_t* out) {
  return run_steps(r, t, steps,
                   [out](__m256i s0, __m256i s1, __m256i s2, __m256i s3, size_t k)
                       CG_AVX2 { store_symbols(s0, s1, s2, s3, out + k * rans::kLanes); });
}

// 8 reconstructions x' = v * a * b + o, rounded as dequantize() rounds them.
CG_AVX2 inline __m256 reconstruct8(__m256 v, __m256 a, const float* b, const float* o) {
  return _mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(v, a), _mm256_loadu_ps(b)), _mm256_loadu_ps(o));
}

// Of 8 int8 symbols.
CG_AVX2 inline __m256 dequant8(const int8_t* s, __m256 a, const float* b, const float* o) {
  const __m256 v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)s)));
  return reconstruct8(v, a, b, o);
}

// Of 8 symbol indices.
CG_AVX2 inline __m256 dequant_indices8(__m256i s, __m256 a, const float* b, const float* o) {
  const __m256i v = _mm256_sub_epi32(s, _mm256_set1_epi32(kSymbolBias));
  return reconstruct8(_mm256_cvtepi32_ps(v), a, b, o);
}

// f32_to_bf16 on 8 lanes: round to nearest even, NaN made quiet.
CG_AVX2 inline __m128i to_bf16(__m256 f) {
  const __m256i x = _mm256_castps_si256(f);
  const __m256i one = _mm256_set1_epi32(1);
  const __m256i rounded =
      _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(x, _mm256_set1_epi32(0x7fff)),
                                         _mm256_and_si256(_mm256_srli_epi32(x, 16), one)),
                        16);
  const __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(0x40));
  const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(x, _mm256_set1_epi32(0x7fffffff)),
                                         _mm256_set1_epi32(0x7f800000));
  const __m256i h =
      _mm256_blendv_epi8(rounded, _mm256_and_si256(quiet, _mm256_set1_epi32(0xffff)), nan);
  return _mm_packus_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

// Stores of 8 converted elements: non-temporal (Stream; d aligned to their size) or cached.
template <bool Stream>
CG_AVX2 inline void store8(void* d, __m128i x) {
  if constexpr (Stream) return _mm_stream_si128((__m128i*)d, x);
  _mm_storeu_si128((__m128i*)d, x);
}
template <bool Stream>
CG_AVX2 inline void store8(void* d, __m256 x) {
  if constexpr (Stream) return _mm256_stream_ps((float*)d, x);
  _mm256_storeu_ps((float*)d, x);
}

// 8 reconstructions in the dtype D: 16-bit ones in a 128-bit register, fp32 in a 256-bit one.
template <DType D>
CG_AVX2 inline auto convert8(__m256 x) {
  if constexpr (D == DType::F16)
    return _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT);
  else if constexpr (D == DType::BF16)
    return to_bf16(x);
  else
    return x;
}

// n rows of C symbols reconstructed into dst[k], laid out as `runs` (see dequantize_rows_avx2).
template <DType D, bool Stream>
CG_AVX2 void dequantize_rows_impl(const int8_t* sym, const float* a, const float* b, const float* o,
                                  uint32_t C, uint32_t n, RowRuns runs, uint8_t* const* dst) {
  constexpr size_t e = D == DType::F32 ? 4 : 2;
  for (uint32_t k = 0; k < n; ++k, sym += C) {
    const __m256 va = _mm256_set1_ps(a[k]);
    for (uint32_t r = 0, c = 0; r < runs.count; ++r) {
      uint8_t* d = dst[k] + r * runs.stride;
      const uint32_t end = c + runs.length;
      for (; c + 8 <= end; c += 8, d += 8 * e)
        store8<Stream>(d, convert8<D>(dequant8(sym + c, va, b + c, o + c)));
      if (c < end) dequantize_store_row(sym + c, a[k], b + c, o + c, end - c, D, d);
      c = end;
    }
  }
}

// decode_rows_avx2's steps [first, first + steps) of n rows: each step's 32 symbols
// reconstructed and stored where their channels go.
template <DType D, bool Stream>
CG_AVX2 size_t decode_rows_steps(RansCursor& r, const DecodeTables& t, const RowSink& s, uint32_t n,
                                 size_t first, size_t steps) {
  constexpr size_t e = D == DType::F32 ? 4 : 2;
  StepRows<e> at(s, t.channels, n, first);
  return run_steps(
      r, t, steps, [&](__m256i s0, __m256i s1, __m256i s2, __m256i s3, size_t) CG_AVX2 {
        const __m256 a = _mm256_set1_ps(at.a());
        const __m256i sym[4] = {s0, s1, s2, s3};
        for (int i = 0; i < 4; ++i)
          store8<Stream>(at.dst() + 8 * i * e,
                         convert8<D>(dequant_indices8(sym[i], a, at.b() + 8 * i, at.o() + 8 * i)));
        at.next();
      });
}

// q = x / freq and r = x % freq for 8 lanes with x < freq << 20 (so q < 2^20): x (converted
// exactly in two halves) times a reciprocal refined once (about 22 correct bits) lies within 0.3
// of x / freq, so its truncation is q - 1, q or q + 1, and the remainder corrects it exactly.
CG_AVX2 inline __m256i divide8(__m256i x, __m256i freq, __m256i& r) {
  const __m256 f = _mm256_cvtepi32_ps(freq);
  __m256 inv = _mm256_rcp_ps(f);
  inv = _mm256_mul_ps(inv, _mm256_sub_ps(_mm256_set1_ps(2.0f), _mm256_mul_ps(f, inv)));
  const __m256 xf = _mm256_add_ps(
      _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(x, 16)), _mm256_set1_ps(65536.0f)),
      _mm256_cvtepi32_ps(_mm256_and_si256(x, _mm256_set1_epi32(0xffff))));
  __m256i q = _mm256_cvttps_epi32(_mm256_mul_ps(xf, inv));
  r = _mm256_sub_epi32(x, _mm256_mullo_epi32(q, freq));  // in [-freq, 2 freq)
  const __m256i low = _mm256_cmpgt_epi32(_mm256_setzero_si256(), r);
  q = _mm256_add_epi32(q, low);
  r = _mm256_add_epi32(r, _mm256_and_si256(freq, low));
  const __m256i high = _mm256_cmpgt_epi32(r, _mm256_sub_epi32(freq, _mm256_set1_epi32(1)));
  q = _mm256_sub_epi32(q, high);
  r = _mm256_sub_epi32(r, _mm256_and_si256(freq, high));
  return q;
}

// One encode step of 8 lanes (symbols s[0..8), channel offsets off[0..8)): flushed words go
// below top in ascending lane order, then x = (q << 12) + r + cum.
CG_AVX2 inline __m256i enc8(__m256i x, const int8_t* s, const uint32_t* off,
                            const uint32_t* freq_cum, uint16_t*& top) {
  const __m256i idx =
      _mm256_add_epi32(_mm256_loadu_si256((const __m256i*)off),
                       _mm256_add_epi32(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)s)),
                                        _mm256_set1_epi32(kSymbolBias)));
  const __m256i fc = _mm256_i32gather_epi32((const int*)freq_cum, idx, 4);
  const __m256i freq = _mm256_and_si256(fc, _mm256_set1_epi32(0x1fff));
  const __m256i cum = _mm256_srli_epi32(fc, 13);
  // Flush where x >= freq << 20, compared unsigned (never for freq 4096: the bound is 2^32).
  const __m256i sign = _mm256_set1_epi32((int)0x80000000u);
  const __m256i bound = _mm256_sub_epi32(_mm256_slli_epi32(freq, 20), _mm256_set1_epi32(1));
  const __m256i flush =
      _mm256_cmpgt_epi32(_mm256_xor_si256(x, sign), _mm256_xor_si256(bound, sign));
  const int m = _mm256_movemask_ps(_mm256_castsi256_ps(flush));
  const __m256i w =
      _mm256_permutevar8x32_epi32(x, _mm256_load_si256((const __m256i*)kCompressHigh[m].data()));
  // Low halves of the 8 lanes into the low 128 bits.
  const __m256i low = _mm256_shuffle_epi8(
      w, _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1, 0, 1, 4, 5, 8,
                          9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1));
  _mm_storeu_si128((__m128i*)(top - 8),
                   _mm256_castsi256_si128(_mm256_permute4x64_epi64(low, 0x08)));
  top -= _mm_popcnt_u32((unsigned)m);
  x = _mm256_blendv_epi8(x, _mm256_srli_epi32(x, 16), flush);
  __m256i r;
  const __m256i q = divide8(x, freq, r);
  return _mm256_add_epi32(_mm256_add_epi32(_mm256_slli_epi32(q, rans::kProbBits), r), cum);
}

// Whole steps [0, steps) backwards, after the scalar code has done the partial last one.
CG_AVX2 uint16_t* encode_steps(const int8_t* sym, size_t steps, const EncodeTables& t,
                               uint32_t* state, uint16_t* top) {
  __m256i x0 = _mm256_loadu_si256((const __m256i*)(state + 0));
  __m256i x1 = _mm256_loadu_si256((const __m256i*)(state + 8));
  __m256i x2 = _mm256_loadu_si256((const __m256i*)(state + 16));
  __m256i x3 = _mm256_loadu_si256((const __m256i*)(state + 24));
  const uint32_t C = t.channels;
  uint32_t c = (uint32_t)((steps * rans::kLanes) % C);
  for (size_t k = steps; k-- > 0;) {
    for (c += C - rans::kLanes % C; c >= C;) c -= C;  // channel of the step's first symbol
    const int8_t* s = sym + k * rans::kLanes;
    const uint32_t* off = t.chan_off + c;
    x3 = enc8(x3, s + 24, off + 24, t.freq_cum, top);
    x2 = enc8(x2, s + 16, off + 16, t.freq_cum, top);
    x1 = enc8(x1, s + 8, off + 8, t.freq_cum, top);
    x0 = enc8(x0, s, off, t.freq_cum, top);
  }
  _mm256_storeu_si256((__m256i*)(state + 0), x0);
  _mm256_storeu_si256((__m256i*)(state + 8), x1);
  _mm256_storeu_si256((__m256i*)(state + 16), x2);
  _mm256_storeu_si256((__m256i*)(state + 24), x3);
  return top;
}

// Symbols within kWindow of zero are counted 32 channels at a time in 8-bit counters, one
// register per value (as many as leave registers for the loop), by comparison; the rest one by
// one.
constexpr int kWindow = 6;

CG_AVX2 void count32(const int8_t* sym, uint32_t rows, uint32_t C, uint32_t c0, uint32_t* count) {
  const uint32_t width = std::min<uint32_t>(32, C - c0);
  const uint32_t lanes = width == 32 ? ~0u : (1u << width) - 1;
  __m256i cnt[2 * kWindow + 1];
  for (__m256i& v : cnt) v = _mm256_setzero_si256();
  alignas(32) int8_t tail[32] = {};
  for (uint32_t t = 0; t < rows; ++t) {
    const int8_t* row = sym + (size_t)t * C + c0;
    if (width < 32) std::copy_n(row, width, tail);  // lanes past the row count as 0, then drop
    const __m256i s = _mm256_loadu_si256((const __m256i*)(width < 32 ? tail : row));
#pragma GCC unroll 13
    for (int b = 0; b <= 2 * kWindow; ++b)
      cnt[b] = _mm256_sub_epi8(cnt[b], _mm256_cmpeq_epi8(s, _mm256_set1_epi8((char)(b - kWindow))));
    const __m256i shifted = _mm256_add_epi8(s, _mm256_set1_epi8(kWindow));
    const __m256i top = _mm256_set1_epi8(2 * kWindow);
    uint32_t out =
        ~(uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(_mm256_max_epu8(shifted, top), top)) &
        lanes;
    for (; out; out &= out - 1) {
      const uint32_t i = (uint32_t)__builtin_ctz(out);
      count[(size_t)(row[i] + 128) * C + c0 + i]++;
    }
  }
  for (int b = 0; b <= 2 * kWindow; ++b) {
    alignas(32) uint8_t n[32];
    _mm256_store_si256((__m256i*)n, cnt[b]);
    uint32_t* dst = count + (size_t)(b - kWindow + 128) * C + c0;
    for (uint32_t i = 0; i < width; ++i) dst[i] += n[i];
  }
}

// bits[j] for 4 clusters j: count[e] * cost, both as doubles, added in the order of e.
CG_AVX2 void cross_bits4(const uint16_t* bin, const uint32_t* count, uint32_t n, const float* cost,
                         uint32_t stride, double* bits) {
  __m256d acc = _mm256_setzero_pd();
  for (uint32_t e = 0; e < n; ++e) {
    const __m256d c = _mm256_cvtps_pd(_mm_loadu_ps(cost + (size_t)bin[e] * stride));
    acc = _mm256_add_pd(acc, _mm256_mul_pd(_mm256_set1_pd((double)count[e]), c));
  }
  _mm256_storeu_pd(bits, acc);
}

// pair_magnitudes_scalar 8 pairs at a time: the same multiplies, add, correctly rounded square
// root and float64 squares.
CG_AVX2 bool pair_magnitudes8(const float* k, uint32_t half, float* m, double* sum) {
  const __m256i exp = _mm256_set1_epi32(0x7f800000);
  __m256i bad = _mm256_setzero_si256();
  uint32_t p = 0;
  for (; p + 8 <= half; p += 8) {
    const __m256 a = _mm256_loadu_ps(k + p), b = _mm256_loadu_ps(k + p + half);
    const __m256 v = _mm256_sqrt_ps(_mm256_add_ps(_mm256_mul_ps(a, a), _mm256_mul_ps(b, b)));
    _mm256_storeu_ps(m + p, v);
    bad = _mm256_or_si256(bad,
                          _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_castps_si256(v), exp), exp));
    if (!sum) continue;
    const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
    const __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
    _mm256_storeu_pd(sum + p, _mm256_add_pd(_mm256_loadu_pd(sum + p), _mm256_mul_pd(lo, lo)));
    _mm256_storeu_pd(sum + p + 4,
                     _mm256_add_pd(_mm256_loadu_pd(sum + p + 4), _mm256_mul_pd(hi, hi)));
  }
  const bool tail = pair_magnitudes_scalar(k, p, half, m, sum);
  return _mm256_testz_si256(bad, bad) && tail;
}

}  // namespace

void decode_avx2(RansCursor& r, const DecodeTables& t, size_t n, int8_t* out) {
  decode_vector(r, t, n, out, [&](RansCursor& c, size_t steps, int8_t* o) {
    return decode_steps(c, t, steps, o);
  });
}

void decode_rows_avx2(RansCursor& r, const DecodeTables& t, uint32_t n, const RowSink& sink) {
  decode_rows_with(r, t, n, sink, [&](auto d, auto stream, RansCursor& c, size_t first, size_t k) {
    return decode_rows_steps<decltype(d)::value, decltype(stream)::value>(c, t, sink, n, first, k);
  });
}

void dequantize_rows_avx2(const int8_t* sym, const float* a, const float* b, const float* o,
                          uint32_t C, uint32_t n, RowRuns runs, DType dtype, uint8_t* const* dst) {
  with_row_kind(dtype, runs, dst, n, [&](auto d, auto stream) {
    dequantize_rows_impl<decltype(d)::value, decltype(stream)::value>(sym, a, b, o, C, n, runs,
                                                                      dst);
  });
}

void stream_fence() { _mm_sfence(); }

void count_symbols_avx2(const int8_t* symbols, uint32_t rows, uint32_t channels, uint32_t* count) {
  for (uint32_t c0 = 0; c0 < channels; c0 += 32) count32(symbols, rows, channels, c0, count);
}

void cross_bits_avx2(const uint16_t* bin, const uint32_t* count, uint32_t n, const float* cost,
                     uint32_t stride, double* bits) {
  for (uint32_t j = 0; j < stride; j += 4) cross_bits4(bin, count, n, cost + j, stride, bits + j);
}

bool pair_magnitudes_avx2(const float* k, uint32_t half, float* m, double* sum) {
  return pair_magnitudes8(k, half, m, sum);
}

uint16_t* encode_avx2(const int8_t* sym, size_t n, const EncodeTables& t, uint32_t* state,
                      uint16_t* top) {
  const size_t steps = n / rans::kLanes;
  top = encode_scalar(sym, steps * rans::kLanes, n, t, state, top);
  return encode_steps(sym, steps, t, state, top);
}

}  // namespace cachegen

#else

namespace cachegen {
void decode_avx2(RansCursor& r, const DecodeTables& t, size_t n, int8_t* out) {
  decode_scalar(r, t, n, out);
}
void decode_rows_avx2(RansCursor& r, const DecodeTables& t, uint32_t n, const RowSink& sink) {
  decode_rows_scalar(r, t, n, sink);
}
void dequantize_rows_avx2(const int8_t* sym, const float* a, const float* b, const float* o,
                          uint32_t C, uint32_t n, RowRuns runs, DType dtype, uint8_t* const* dst) {
  dequantize_rows_scalar(sym, a, b, o, C, n, runs, dtype, dst);
}
void stream_fence() {}
uint16_t* encode_avx2(const int8_t* sym, size_t n, const EncodeTables& t, uint32_t* state,
                      uint16_t* top) {
  return encode_scalar(sym, 0, n, t, state, top);
}
void count_symbols_avx2(const int8_t* symbols, uint32_t rows, uint32_t channels, uint32_t* count) {
  count_symbols_scalar(symbols, rows, channels, count);
}
void cross_bits_avx2(const uint16_t* bin, const uint32_t* count, uint32_t n, const float* cost,
                     uint32_t stride, double* bits) {
  cross_bits_scalar(bin, count, n, cost, stride, bits);
}
bool pair_magnitudes_avx2(const float* k, uint32_t half, float* m, double* sum) {
  return pair_magnitudes_scalar(k, 0, half, m, sum);
}
}  // namespace cachegen
#endif
