// AVX-512 kernels: rANS decode and encode 16 lanes per register (2 registers per step of kLanes
// symbols; words move between the stream and the lanes that need them with expand / compress),
// and fused dequantization + conversion of a row; for the encoder, quantized rows, symbol
// counts, the table fit's cross bits and key pair magnitudes. Bit-exact with the scalar code.
#include <algorithm>

#include "importance.hpp"
#include "quant.hpp"
#include "segment.hpp"
#include "segment_encode.hpp"
#include "tables.hpp"
#include "tensor_view.hpp"

#ifdef CG_X86_SIMD
#include <immintrin.h>

// GCC 12 warns inside its own AVX-512 headers (their _mm512_undefined_* values), not here.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#define CG_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,f16c,popcnt")))

namespace cachegen {
namespace {

// One decode step of 16 lanes: x advanced and renormalized with words taken from words[wp...];
// e gets the lanes' decode entries (their symbols in the top bytes).
CG_AVX512 inline __m512i step16(__m512i x, const uint32_t* off, const uint32_t* lut,
                                const uint8_t* words, size_t& wp, __m512i& e) {
  const __m512i m12 = _mm512_set1_epi32(0xfff);
  const __m512i idx = _mm512_add_epi32(_mm512_loadu_si512(off), _mm512_and_si512(x, m12));
  e = _mm512_i32gather_epi32(idx, lut, 4);
  const __m512i freq =
      _mm512_add_epi32(_mm512_and_si512(_mm512_srli_epi32(e, 12), m12), _mm512_set1_epi32(1));
  x = _mm512_add_epi32(_mm512_mullo_epi32(freq, _mm512_srli_epi32(x, rans::kProbBits)),
                       _mm512_and_si512(e, m12));
  const __mmask16 need = _mm512_cmplt_epu32_mask(x, _mm512_set1_epi32((int)rans::kLowerBound));
  const __m512i w = _mm512_maskz_expand_epi32(
      need, _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)(words + 2 * wp))));
  x = _mm512_mask_or_epi32(x, need, _mm512_slli_epi32(x, 16), w);
  wp += (size_t)_mm_popcnt_u32(need);
  return x;
}

// The 16 symbols of decode entries e, as int8.
CG_AVX512 inline void store_symbols(__m512i e, int8_t* out) {
  const __m128i sym = _mm512_cvtepi32_epi8(_mm512_srli_epi32(e, 24));
  _mm_storeu_si128((__m128i*)out, _mm_xor_si128(sym, _mm_set1_epi8((char)0x80)));
}

// Up to `steps` whole steps (the cursor at lane 0) through `use(e0, e1, done)`, which takes the
// step's entries (lanes 0-15, 16-31); returns how many ran. Every step reads at most kLanes
// words, so it runs only while that many remain (whole_steps pads the last ones).
template <typename Use>
CG_AVX512 inline size_t run_steps(RansCursor& r, const DecodeTables& t, size_t steps, Use&& use) {
  // Locals, not fields: the stores could alias the cursor and the tables.
  const uint32_t *lut = t.lut, *off = t.chan_off;
  const uint8_t* words = r.words;
  const size_t nwords = r.nwords;
  const uint32_t C = t.channels;
  __m512i x0 = _mm512_loadu_si512(r.state);
  __m512i x1 = _mm512_loadu_si512(r.state + 16);
  size_t wp = r.wp, done = 0;
  uint32_t c = r.channel;
  for (; done < steps && wp + rans::kLanes <= nwords; ++done) {
    __m512i e0, e1;
    x0 = step16(x0, off + c, lut, words, wp, e0);
    x1 = step16(x1, off + c + 16, lut, words, wp, e1);
    use(e0, e1, done);
    for (c += rans::kLanes; c >= C;) c -= C;
  }
  _mm512_storeu_si512(r.state, x0);
  _mm512_storeu_si512(r.state + 16, x1);
  r.wp = wp;
  r.channel = c;
  return done;
}

CG_AVX512 size_t decode_steps(RansCursor& r, const DecodeTables& t, size_t steps, int8_t* out) {
  return run_steps(r, t, steps, [out](__m512i e0, __m512i e1, size_t k) CG_AVX512 {
    store_symbols(e0, out + k * rans::kLanes);
    store_symbols(e1, out + k * rans::kLanes + 16);
  });
}

// 16 reconstructions x' = v * a * b + o, rounded as dequantize() rounds them.
CG_AVX512 inline __m512 reconstruct16(__m512 v, __m512 a, const float* b, const float* o) {
  return _mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(v, a), _mm512_loadu_ps(b)), _mm512_loadu_ps(o));
}

// Of 16 int8 symbols.
CG_AVX512 inline __m512 dequant16(const int8_t* s, __m512 a, const float* b, const float* o) {
  const __m512 v = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)s)));
  return reconstruct16(v, a, b, o);
}

// Of the symbols of 16 decode entries.
CG_AVX512 inline __m512 dequant_entries16(__m512i e, __m512 a, const float* b, const float* o) {
  const __m512i s = _mm512_sub_epi32(_mm512_srli_epi32(e, 24), _mm512_set1_epi32(kSymbolBias));
  return reconstruct16(_mm512_cvtepi32_ps(s), a, b, o);
}

// f32_to_bf16 on 16 lanes: round to nearest even, NaN made quiet.
CG_AVX512 inline __m256i to_bf16(__m512 f) {
  const __m512i x = _mm512_castps_si512(f);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(1));
  __m512i h =
      _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(x, _mm512_set1_epi32(0x7fff)), lsb), 16);
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(x, _mm512_set1_epi32(0x7fffffff)),
                                                _mm512_set1_epi32(0x7f800000));
  h = _mm512_mask_or_epi32(h, nan, _mm512_srli_epi32(x, 16), _mm512_set1_epi32(0x40));
  return _mm512_cvtepi32_epi16(h);
}

// Stores of 16 converted elements: non-temporal (Stream; d aligned to their size) or cached.
template <bool Stream>
CG_AVX512 inline void store16(void* d, __m256i x) {
  if constexpr (Stream) return _mm256_stream_si256((__m256i*)d, x);
  _mm256_storeu_si256((__m256i*)d, x);
}
template <bool Stream>
CG_AVX512 inline void store16(void* d, __m512 x) {
  if constexpr (Stream) return _mm512_stream_ps((float*)d, x);
  _mm512_storeu_ps((float*)d, x);
}

// 16 reconstructions in the dtype D: 16-bit ones in a 256-bit register, fp32 in a 512-bit one.
template <DType D>
CG_AVX512 inline auto convert16(__m512 x) {
  if constexpr (D == DType::F16)
    return _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT);
  else if constexpr (D == DType::BF16)
    return to_bf16(x);
  else
    return x;
}

// The first lanes of `m` of a run's last 16: masked loads and a cached masked store (no call
// and no spill in the row loop).
template <DType D>
CG_AVX512 inline void tail16(const int8_t* s, __m512 a, const float* b, const float* o, __mmask16 m,
                             uint8_t* d) {
  const __m512 v = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, s)));
  const __m512 x = _mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(v, a), _mm512_maskz_loadu_ps(m, b)),
                                 _mm512_maskz_loadu_ps(m, o));
  if constexpr (D == DType::F32)
    _mm512_mask_storeu_ps(d, m, x);
  else
    _mm256_mask_storeu_epi16(d, m, convert16<D>(x));
}

// n rows of C symbols reconstructed into dst[k], laid out as `runs` (see dequantize_rows_avx512).
template <DType D, bool Stream>
CG_AVX512 void dequantize_rows_impl(const int8_t* sym, const float* a, const float* b,
                                    const float* o, uint32_t C, uint32_t n, RowRuns runs,
                                    uint8_t* const* dst) {
  constexpr size_t e = D == DType::F32 ? 4 : 2;
  for (uint32_t k = 0; k < n; ++k, sym += C) {
    const __m512 va = _mm512_set1_ps(a[k]);
    for (uint32_t r = 0, c = 0; r < runs.count; ++r) {
      uint8_t* d = dst[k] + r * runs.stride;
      const uint32_t end = c + runs.length;
      for (; c + 16 <= end; c += 16, d += 16 * e)
        store16<Stream>(d, convert16<D>(dequant16(sym + c, va, b + c, o + c)));
      if (c < end) tail16<D>(sym + c, va, b + c, o + c, (__mmask16)((1u << (end - c)) - 1), d);
      c = end;
    }
  }
}

// decode_rows_avx512's steps [first, first + steps) of n rows: each step's 32 entries
// reconstructed and stored where their channels go.
template <DType D, bool Stream>
CG_AVX512 size_t decode_rows_steps(RansCursor& r, const DecodeTables& t, const RowSink& s,
                                   uint32_t n, size_t first, size_t steps) {
  constexpr size_t e = D == DType::F32 ? 4 : 2;
  StepRows<e> at(s, t.channels, n, first);
  return run_steps(r, t, steps, [&](__m512i e0, __m512i e1, size_t) CG_AVX512 {
    const __m512 a = _mm512_set1_ps(at.a());
    store16<Stream>(at.dst(), convert16<D>(dequant_entries16(e0, a, at.b(), at.o())));
    store16<Stream>(at.dst() + 16 * e,
                    convert16<D>(dequant_entries16(e1, a, at.b() + 16, at.o() + 16)));
    at.next();
  });
}

// q = x / freq and r = x % freq for 16 lanes with x < freq << 20 (so q < 2^20): x times a
// reciprocal refined once (about 22 correct bits) lies within 0.3 of x / freq = q + r / freq,
// so rounded to nearest it is q or q + 1, and the remainder's sign corrects it exactly.
CG_AVX512 inline __m512i divide16(__m512i x, __m512i freq, __m512i& r) {
  const __m512 f = _mm512_cvtepu32_ps(freq);
  __m512 inv = _mm512_rcp14_ps(f);
  inv = _mm512_mul_ps(inv, _mm512_sub_ps(_mm512_set1_ps(2.0f), _mm512_mul_ps(f, inv)));
  __m512i q = _mm512_cvt_roundps_epu32(_mm512_mul_ps(_mm512_cvtepu32_ps(x), inv),
                                       _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  r = _mm512_sub_epi32(x, _mm512_mullo_epi32(q, freq));  // in [-freq, freq)
  const __mmask16 over = _mm512_cmplt_epi32_mask(r, _mm512_setzero_si512());
  q = _mm512_mask_sub_epi32(q, over, q, _mm512_set1_epi32(1));
  r = _mm512_mask_add_epi32(r, over, r, freq);
  return q;
}

// One encode step of 16 lanes (symbols s[0..16), channel offsets off[0..16)): flushed words go
// below top in ascending lane order, then x = (q << 12) + r + cum.
CG_AVX512 inline __m512i enc16(__m512i x, const int8_t* s, const uint32_t* off,
                               const uint32_t* freq_cum, uint16_t*& top) {
  const __m512i idx =
      _mm512_add_epi32(_mm512_loadu_si512(off),
                       _mm512_add_epi32(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)s)),
                                        _mm512_set1_epi32(kSymbolBias)));
  const __m512i fc = _mm512_i32gather_epi32(idx, freq_cum, 4);
  const __m512i freq = _mm512_and_si512(fc, _mm512_set1_epi32(0x1fff));
  const __m512i cum = _mm512_srli_epi32(fc, 13);
  // Flush where x >= freq << 20 (never for freq 4096, whose bound is 2^32).
  const __mmask16 flush = _mm512_cmpgt_epu32_mask(
      x, _mm512_sub_epi32(_mm512_slli_epi32(freq, 20), _mm512_set1_epi32(1)));
  const int cnt = _mm_popcnt_u32(flush);
  const __mmask16 high = (__mmask16)(0xffffu << (16 - cnt));
  const __m512i w = _mm512_maskz_expand_epi32(high, _mm512_maskz_compress_epi32(flush, x));
  _mm256_storeu_si256((__m256i*)(top - 16), _mm512_cvtepi32_epi16(w));
  top -= cnt;
  x = _mm512_mask_srli_epi32(x, flush, x, 16);
  __m512i r;
  const __m512i q = divide16(x, freq, r);
  return _mm512_add_epi32(_mm512_add_epi32(_mm512_slli_epi32(q, rans::kProbBits), r), cum);
}

// Whole steps [0, steps) backwards, after the scalar code has done the partial last one.
CG_AVX512 uint16_t* encode_steps(const int8_t* sym, size_t steps, const EncodeTables& t,
                                 uint32_t* state, uint16_t* top) {
  __m512i x0 = _mm512_loadu_si512(state), x1 = _mm512_loadu_si512(state + 16);
  const uint32_t C = t.channels;
  uint32_t c = (uint32_t)((steps * rans::kLanes) % C);
  for (size_t k = steps; k-- > 0;) {
    for (c += C - rans::kLanes % C; c >= C;) c -= C;  // channel of the step's first symbol
    const int8_t* s = sym + k * rans::kLanes;
    x1 = enc16(x1, s + 16, t.chan_off + c + 16, t.freq_cum, top);
    x0 = enc16(x0, s, t.chan_off + c, t.freq_cum, top);
  }
  _mm512_storeu_si512(state, x0);
  _mm512_storeu_si512(state + 16, x1);
  return top;
}

// transpose_tile_avx512's 32 tokens of 8 channels: four 8x8 blocks (rows k..k+8, k+8..k+16, ...)
// side by side in the 128-bit lanes of eight registers, transposed at once by the SSE2 unpack
// sequence.
CG_AVX512 void transpose32x8(const uint16_t* src, uint32_t src_stride, uint16_t* dst,
                             int64_t dst_stride, bool stream) {
  __m512i r[8], t[8], u[8];
  for (int i = 0; i < 8; ++i) {
    const uint16_t* row = src + (size_t)i * src_stride;
    __m512i x = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i*)row));
    x = _mm512_inserti32x4(x, _mm_loadu_si128((const __m128i*)(row + 8 * src_stride)), 1);
    x = _mm512_inserti32x4(x, _mm_loadu_si128((const __m128i*)(row + 16 * src_stride)), 2);
    r[i] = _mm512_inserti32x4(x, _mm_loadu_si128((const __m128i*)(row + 24 * src_stride)), 3);
  }
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm512_unpacklo_epi16(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi16(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j) {
      u[4 * i + 2 * j] = _mm512_unpacklo_epi32(t[4 * i + j], t[4 * i + j + 2]);
      u[4 * i + 2 * j + 1] = _mm512_unpackhi_epi32(t[4 * i + j], t[4 * i + j + 2]);
    }
  for (int i = 0; i < 8; ++i) {
    const __m512i col = i % 2 ? _mm512_unpackhi_epi64(u[i / 2], u[i / 2 + 4])
                              : _mm512_unpacklo_epi64(u[i / 2], u[i / 2 + 4]);
    if (stream)
      _mm512_stream_si512((__m512i*)(dst + i * dst_stride), col);
    else
      _mm512_storeu_si512(dst + i * dst_stride, col);
  }
}

// transpose_tile_avx512: the view's strides are whole lines or not for the whole tile.
CG_AVX512 void transpose_tile(const uint16_t* tile, uint32_t C, uint32_t m, const TensorView& v,
                              uint16_t* base) {
  const bool stream = (uintptr_t)base % 64 == 0 && v.s_dim * 2 % 64 == 0 && v.s_head * 2 % 64 == 0;
  for (uint32_t h = 0; h < v.heads; ++h)
    for (uint32_t d = 0; d + 8 <= v.head_dim; d += 8) {
      const uint16_t* src = tile + h * v.head_dim + d;
      uint16_t* dst = base + h * v.s_head + d * v.s_dim;
      for (uint32_t k = 0; k < m; k += 32)
        transpose32x8(src + (size_t)k * C, C, dst + k, v.s_dim, stream);
    }
}

// -v, exactly (the sign bit flipped).
CG_AVX512 inline __m512 negate(__m512 v) {
  return _mm512_castsi512_ps(
      _mm512_xor_si512(_mm512_castps_si512(v), _mm512_set1_epi32((int)0x80000000u)));
}

// quantize() on 16 lanes: (x - o) * (inv_a * inv_b), clamped to [-m, m] (max and min keep y
// where the scalar comparisons would), rounded half to even by the 1.5 * 2^23 trick.
CG_AVX512 inline __m128i quantize16(const float* x, __m512 inv_a, const float* inv_b,
                                    const float* o, __m512 m) {
  const __m512 inv = _mm512_mul_ps(inv_a, _mm512_loadu_ps(inv_b));
  __m512 y = _mm512_mul_ps(_mm512_add_ps(_mm512_loadu_ps(x), negate(_mm512_loadu_ps(o))), inv);
  y = _mm512_min_ps(m, _mm512_max_ps(negate(m), y));
  y = _mm512_add_ps(_mm512_add_ps(y, _mm512_set1_ps(12582912.0f)), _mm512_set1_ps(-12582912.0f));
  return _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(y));
}

// Adds the 8-bit counts of 16 lanes from lane 16 * K (the lanes in `lanes`) to 32-bit ones. K is a
// template parameter: the extract's lane index must be an immediate in unoptimized builds too.
template <int K>
CG_AVX512 inline void add_counts16(__m512i counts, __mmask64 lanes, uint32_t* dst) {
  const __mmask16 m = (__mmask16)(lanes >> (16 * K));
  const __m512i wide = _mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(counts, K));
  const __m512i sum = _mm512_add_epi32(_mm512_maskz_loadu_epi32(m, dst + 16 * K), wide);
  _mm512_mask_storeu_epi32(dst + 16 * K, m, sum);
}

// Adds 64 8-bit counts (the lanes in `lanes`) to 64 32-bit ones.
CG_AVX512 inline void add_counts64(__m512i counts, __mmask64 lanes, uint32_t* dst) {
  add_counts16<0>(counts, lanes, dst);
  add_counts16<1>(counts, lanes, dst);
  add_counts16<2>(counts, lanes, dst);
  add_counts16<3>(counts, lanes, dst);
}

// Symbols within kWindow of zero (all but ~1% of them) are counted 64 channels at a time in
// 8-bit counters, one register per value, by comparison; the rest one by one.
constexpr int kWindow = 8;

CG_AVX512 void count64(const int8_t* sym, uint32_t rows, uint32_t C, uint32_t c0, uint32_t* count) {
  const __mmask64 lanes = C - c0 >= 64 ? ~0ull : (1ull << (C - c0)) - 1;
  __m512i cnt[2 * kWindow + 1];
  for (__m512i& v : cnt) v = _mm512_setzero_si512();
  for (uint32_t t = 0; t < rows; ++t) {
    const int8_t* row = sym + (size_t)t * C + c0;
    const __m512i s = _mm512_maskz_loadu_epi8(lanes, row);
#pragma GCC unroll 17
    for (int b = 0; b <= 2 * kWindow; ++b)
      cnt[b] = _mm512_mask_sub_epi8(
          cnt[b], _mm512_cmpeq_epi8_mask(s, _mm512_set1_epi8((char)(b - kWindow))), cnt[b],
          _mm512_set1_epi8(-1));
    uint64_t out = _mm512_mask_cmpgt_epu8_mask(lanes, _mm512_add_epi8(s, _mm512_set1_epi8(kWindow)),
                                               _mm512_set1_epi8(2 * kWindow));
    for (; out; out &= out - 1) {
      const uint32_t i = (uint32_t)__builtin_ctzll(out);
      count[(size_t)(row[i] + 128) * C + c0 + i]++;
    }
  }
  for (int b = 0; b <= 2 * kWindow; ++b)
    add_counts64(cnt[b], lanes, count + (size_t)(b - kWindow + 128) * C + c0);
}

CG_AVX512 void quantize_row(const float* x, float inv_a, const float* inv_b, const float* o,
                            int max_symbol, uint32_t n, int8_t* out) {
  const __m512 va = _mm512_set1_ps(inv_a), m = _mm512_set1_ps((float)max_symbol);
  uint32_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm_storeu_si128((__m128i*)(out + i), quantize16(x + i, va, inv_b + i, o + i, m));
  for (; i < n; ++i) out[i] = (int8_t)quantize(x[i], mul_rn(inv_a, inv_b[i]), o[i], max_symbol);
}

// bits[j] for 8 clusters j: count[e] * cost, both as doubles, added in the order of e.
CG_AVX512 void cross_bits8(const uint16_t* bin, const uint32_t* count, uint32_t n,
                           const float* cost, uint32_t stride, double* bits) {
  __m512d acc = _mm512_setzero_pd();
  for (uint32_t e = 0; e < n; ++e) {
    const __m512d c = _mm512_cvtps_pd(_mm256_loadu_ps(cost + (size_t)bin[e] * stride));
    acc = _mm512_add_pd(acc, _mm512_mul_pd(_mm512_set1_pd((double)count[e]), c));
  }
  _mm512_storeu_pd(bits, acc);
}

// pair_magnitudes_scalar 16 pairs at a time: the same multiplies, add, correctly rounded
// square root and float64 squares.
CG_AVX512 bool pair_magnitudes16(const float* k, uint32_t half, float* m, double* sum) {
  const __m512i exp = _mm512_set1_epi32(0x7f800000);
  __mmask16 bad = 0;
  uint32_t p = 0;
  for (; p + 16 <= half; p += 16) {
    const __m512 a = _mm512_loadu_ps(k + p), b = _mm512_loadu_ps(k + p + half);
    const __m512 v = _mm512_sqrt_ps(_mm512_add_ps(_mm512_mul_ps(a, a), _mm512_mul_ps(b, b)));
    _mm512_storeu_ps(m + p, v);
    bad |= _mm512_cmpeq_epi32_mask(_mm512_and_si512(_mm512_castps_si512(v), exp), exp);
    if (!sum) continue;
    const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
    const __m512d hi =
        _mm512_cvtps_pd(_mm256_castsi256_ps(_mm512_extracti64x4_epi64(_mm512_castps_si512(v), 1)));
    _mm512_storeu_pd(sum + p, _mm512_add_pd(_mm512_loadu_pd(sum + p), _mm512_mul_pd(lo, lo)));
    _mm512_storeu_pd(sum + p + 8,
                     _mm512_add_pd(_mm512_loadu_pd(sum + p + 8), _mm512_mul_pd(hi, hi)));
  }
  const bool tail = pair_magnitudes_scalar(k, p, half, m, sum);
  return !bad && tail;
}

}  // namespace

void decode_avx512(RansCursor& r, const DecodeTables& t, size_t n, int8_t* out) {
  decode_vector(r, t, n, out, [&](RansCursor& c, size_t steps, int8_t* o) {
    return decode_steps(c, t, steps, o);
  });
}

void decode_rows_avx512(RansCursor& r, const DecodeTables& t, uint32_t n, const RowSink& sink) {
  decode_rows_with(r, t, n, sink, [&](auto d, auto stream, RansCursor& c, size_t first, size_t k) {
    return decode_rows_steps<decltype(d)::value, decltype(stream)::value>(c, t, sink, n, first, k);
  });
}

void transpose_tile_avx512(const uint16_t* tile, uint32_t C, uint32_t m, const TensorView& v,
                           uint16_t* base) {
  transpose_tile(tile, C, m, v, base);
}

void dequantize_rows_avx512(const int8_t* sym, const float* a, const float* b, const float* o,
                            uint32_t C, uint32_t n, RowRuns runs, DType dtype,
                            uint8_t* const* dst) {
  with_row_kind(dtype, runs, dst, n, [&](auto d, auto stream) {
    dequantize_rows_impl<decltype(d)::value, decltype(stream)::value>(sym, a, b, o, C, n, runs,
                                                                      dst);
  });
}

void quantize_row_avx512(const float* x, float inv_a, const float* inv_b, const float* o,
                         int max_symbol, uint32_t n, int8_t* out) {
  quantize_row(x, inv_a, inv_b, o, max_symbol, n, out);
}

void count_symbols_avx512(const int8_t* symbols, uint32_t rows, uint32_t channels,
                          uint32_t* count) {
  for (uint32_t c0 = 0; c0 < channels; c0 += 64) count64(symbols, rows, channels, c0, count);
}

void cross_bits_avx512(const uint16_t* bin, const uint32_t* count, uint32_t n, const float* cost,
                       uint32_t stride, double* bits) {
  for (uint32_t j = 0; j < stride; j += 8) cross_bits8(bin, count, n, cost + j, stride, bits + j);
}

bool pair_magnitudes_avx512(const float* k, uint32_t half, float* m, double* sum) {
  return pair_magnitudes16(k, half, m, sum);
}

uint16_t* encode_avx512(const int8_t* sym, size_t n, const EncodeTables& t, uint32_t* state,
                        uint16_t* top) {
  const size_t steps = n / rans::kLanes;
  top = encode_scalar(sym, steps * rans::kLanes, n, t, state, top);
  return encode_steps(sym, steps, t, state, top);
}

}  // namespace cachegen

#else

namespace cachegen {
void decode_avx512(RansCursor& r, const DecodeTables& t, size_t n, int8_t* out) {
  decode_scalar(r, t, n, out);
}
void decode_rows_avx512(RansCursor& r, const DecodeTables& t, uint32_t n, const RowSink& sink) {
  decode_rows_scalar(r, t, n, sink);
}
uint16_t* encode_avx512(const int8_t* sym, size_t n, const EncodeTables& t, uint32_t* state,
                        uint16_t* top) {
  return encode_scalar(sym, 0, n, t, state, top);
}
void transpose_tile_avx512(const uint16_t* tile, uint32_t C, uint32_t m, const TensorView& v,
                           uint16_t* base) {
  for (uint32_t h = 0; h < v.heads; ++h)
    for (uint32_t d = 0; d + 8 <= v.head_dim; d += 8)
      for (uint32_t j = 0; j < 8; ++j)
        for (uint32_t k = 0; k < m; ++k)
          base[h * v.s_head + (d + j) * v.s_dim + k] = tile[(size_t)k * C + h * v.head_dim + d + j];
}

void dequantize_rows_avx512(const int8_t* sym, const float* a, const float* b, const float* o,
                            uint32_t C, uint32_t n, RowRuns runs, DType dtype,
                            uint8_t* const* dst) {
  dequantize_rows_scalar(sym, a, b, o, C, n, runs, dtype, dst);
}
void quantize_row_avx512(const float* x, float inv_a, const float* inv_b, const float* o,
                         int max_symbol, uint32_t n, int8_t* out) {
  for (uint32_t i = 0; i < n; ++i)
    out[i] = (int8_t)quantize(x[i], mul_rn(inv_a, inv_b[i]), o[i], max_symbol);
}
void count_symbols_avx512(const int8_t* symbols, uint32_t rows, uint32_t channels,
                          uint32_t* count) {
  count_symbols_scalar(symbols, rows, channels, count);
}

void cross_bits_avx512(const uint16_t* bin, const uint32_t* count, uint32_t n, const float* cost,
                       uint32_t stride, double* bits) {
  cross_bits_scalar(bin, count, n, cost, stride, bits);
}
bool pair_magnitudes_avx512(const float* k, uint32_t half, float* m, double* sum) {
  return pair_magnitudes_scalar(k, 0, half, m, sum);
}
}  // namespace cachegen
#endif
