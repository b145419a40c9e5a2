#include "quant.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "cpu_path.hpp"
#include "half.hpp"

#ifdef CG_X86_SIMD
#include <immintrin.h>
#endif

// Per-element loops also built for AVX2 and picked at load time: each lane computes what the
// baseline build computes (no fused operations), so the bits do not change.
#if defined(CG_X86_SIMD) && defined(__linux__)
#define CG_VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CG_VECTOR_CLONES
#endif

namespace cachegen {
namespace {

// Cloned functions do not throw: an exception unwinding through the clone's dispatch aborts in
// sanitized builds.
CG_VECTOR_CLONES bool all_finite(const float* row, uint32_t n) {
  uint32_t bad = 0;
  for (uint32_t i = 0; i < n; ++i) bad |= (f32_bits(row[i]) & 0x7f800000u) == 0x7f800000u;
  return !bad;
}

void check_finite(const float* row, uint32_t n) {
  if (!all_finite(row, n)) throw InputError("KV tensor contains NaN or Inf");
}

// Per-token statistics of one row from eight partial sums (lane k takes elements i + k), the
// maximum |x| taken on the bits (finite floats >= 0 order as their integer patterns).
struct RowStats {
  double sum_sq = 0.0;
  float absmax = 0.0f;
};

// The partial sums' tail (elements row[i..n) into lane 0) and their reduction.
RowStats finish_row_stats(float* sq, uint32_t* mx, const float* row, uint32_t i, uint32_t n) {
  for (; i < n; ++i) {
    sq[0] += row[i] * row[i];
    mx[0] = std::max(mx[0], f32_bits(row[i]) & 0x7fffffffu);
  }
  RowStats s;
  for (int k = 0; k < 8; ++k) {
    s.sum_sq += sq[k];
    s.absmax = std::max(s.absmax, bits_f32(mx[k]));
  }
  return s;
}

#ifdef CG_X86_SIMD
// The same eight lanes in one AVX2 register each.
__attribute__((target("avx2"))) RowStats row_stats_avx2(const float* row, uint32_t n) {
  __m256 sq = _mm256_setzero_ps();
  __m256i mx = _mm256_setzero_si256();
  const __m256i abs = _mm256_set1_epi32(0x7fffffff);
  uint32_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 x = _mm256_loadu_ps(row + i);
    sq = _mm256_add_ps(sq, _mm256_mul_ps(x, x));
    mx = _mm256_max_epu32(mx, _mm256_and_si256(_mm256_castps_si256(x), abs));
  }
  float s[8];
  uint32_t m[8];
  _mm256_storeu_ps(s, sq);
  _mm256_storeu_si256((__m256i*)m, mx);
  return finish_row_stats(s, m, row, i, n);
}

// The vector paths' pass over a token's row: whether it is finite, and row_stats of the row
// scaled by inv_b (if any), with row_stats_avx2's lanes and order.
__attribute__((target("avx2"))) bool scaled_row_stats_avx2(float* row, const float* inv_b,
                                                           uint32_t n, RowStats& stats) {
  __m256 sq = _mm256_setzero_ps();
  __m256i mx = _mm256_setzero_si256(), bad = _mm256_setzero_si256();
  const __m256i abs = _mm256_set1_epi32(0x7fffffff), exp = _mm256_set1_epi32(0x7f800000);
  uint32_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 x = _mm256_loadu_ps(row + i);
    const __m256i bits = _mm256_castps_si256(x);
    bad = _mm256_or_si256(bad, _mm256_cmpeq_epi32(_mm256_and_si256(bits, exp), exp));
    if (inv_b) x = _mm256_mul_ps(x, _mm256_loadu_ps(inv_b + i));
    sq = _mm256_add_ps(sq, _mm256_mul_ps(x, x));
    mx = _mm256_max_epu32(mx, _mm256_and_si256(_mm256_castps_si256(x), abs));
  }
  if (!_mm256_testz_si256(bad, bad) || !all_finite(row + i, n - i)) return false;
  for (uint32_t c = i; inv_b && c < n; ++c) row[c] *= inv_b[c];
  float s[8];
  uint32_t m[8];
  _mm256_storeu_ps(s, sq);
  _mm256_storeu_si256((__m256i*)m, mx);
  stats = finish_row_stats(s, m, row, i, n);
  return true;
}
#endif

RowStats row_stats(const float* row, uint32_t n) {
#ifdef CG_X86_SIMD
  if (cpu_supports(CpuPath::Avx2)) return row_stats_avx2(row, n);
#endif
  float sq[8] = {};
  uint32_t mx[8] = {};
  uint32_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) {
      sq[k] += row[i + k] * row[i + k];
      mx[k] = std::max(mx[k], f32_bits(row[i + k]) & 0x7fffffffu);
    }
  return finish_row_stats(sq, mx, row, i, n);
}

// Per-channel running statistics over tokens.
struct ChannelStats {
  std::vector<double> sum, sum_sq;
  std::vector<float> lo, hi;
  explicit ChannelStats(uint32_t c) : sum(c), sum_sq(c), lo(c, INFINITY), hi(c, -INFINITY) {}
  void add(const float* row) {
    for (size_t c = 0; c < sum.size(); ++c) {
      sum[c] += row[c];
      sum_sq[c] += (double)row[c] * row[c];
      lo[c] = std::min(lo[c], row[c]);
      hi[c] = std::max(hi[c], row[c]);
    }
  }
};

// A per-token quantizer's row statistics (the row scaled by inv_b, if any) after checking that
// the row is finite; `row` may be scaled in place.
RowStats token_row_stats([[maybe_unused]] CpuPath path, float* row, const std::vector<float>& inv_b,
                         uint32_t n) {
#ifdef CG_X86_SIMD
  RowStats rs;
  if (path != CpuPath::Scalar) {
    if (!scaled_row_stats_avx2(row, inv_b.empty() ? nullptr : inv_b.data(), n, rs))
      throw InputError("KV tensor contains NaN or Inf");
    return rs;
  }
#endif
  check_finite(row, n);
  for (size_t c = 0; c < inv_b.size(); ++c) row[c] *= inv_b[c];
  return row_stats(row, n);
}

void fit_channel_steps(const ChannelStats& s, uint32_t tokens, float q, GroupQuant& g) {
  const size_t C = s.sum.size();
  g.channel_offset.resize(C);
  g.channel_scale.resize(C);
  for (size_t c = 0; c < C; ++c) {
    const ChannelFit f = channel_fit(s.sum[c], s.sum_sq[c], s.lo[c], s.hi[c], tokens, q);
    g.channel_offset[c] = f.offset;
    g.channel_scale[c] = f.step;
  }
}

// TokenStep with `center`: every channel's offset, its mean over all tokens (as the GPU's
// channel statistics take it); finiteness is checked by the token pass that follows.
void center_channels(const TensorView& v, GroupQuant& g) {
  const uint32_t C = v.channels();
  ChannelStats s(C);
  std::vector<float> row(C);
  for (uint32_t t = 0; t < v.tokens; ++t) {
    load_row(v, t, row.data());
    s.add(row.data());
  }
  g.channel_offset.resize(C);
  for (uint32_t c = 0; c < C; ++c)
    g.channel_offset[c] =
        channel_fit(s.sum[c], s.sum_sq[c], s.lo[c], s.hi[c], v.tokens, 1.0f).offset;
}

// LayerStep: offsets as per channel, one step from the pooled deviation statistics.
void fit_layer_step(const ChannelStats& s, uint32_t tokens, float q, GroupQuant& g) {
  const size_t C = s.sum.size();
  double var = 0.0, range = 0.0;
  g.channel_offset.resize(C);
  for (size_t c = 0; c < C; ++c) {
    const ChannelFit f = channel_fit(s.sum[c], s.sum_sq[c], s.lo[c], s.hi[c], tokens, q);
    g.channel_offset[c] = f.offset;
    var += f.var;
    range = std::max(range, f.range);
  }
  g.channel_scale.assign(C, spread_step(q, var / C, range));
}

// restrict: int8 stores may alias anything, which would otherwise block vectorization.
CG_VECTOR_CLONES void quantize_row(const float* __restrict x, float inv_a,
                                   const float* __restrict inv_b, const float* __restrict o,
                                   int max_symbol, uint32_t n, int8_t* __restrict out) {
  for (uint32_t c = 0; c < n; ++c)
    out[c] = (int8_t)quantize(x[c], mul_rn(inv_a, inv_b[c]), o[c], max_symbol);
}

uint8_t reference_max_symbol(float param) {
  const int bins = (int)param;
  if (bins < 3 || bins > 256 || (float)bins != param)
    throw InputError("CacheGen reference bins must be an integer in [3, 256], got " +
                     std::to_string(param));
  return (uint8_t)std::min(bins / 2 - 1 + (bins % 2), kMaxSymbol);
}

void check_weights(const std::vector<float>& w, size_t n, const char* what) {
  if (w.empty()) return;
  if (w.size() != n) throw InputError(std::string(what) + " weights: wrong count");
  for (float x : w)
    if (!(x >= kMinWeight && x <= kMaxWeight))
      throw InputError(std::string(what) + " weights must be in [2^-14, 2^14]");
}

}  // namespace

DequantParams expand_params(const GroupQuant& q, uint32_t tokens, uint32_t channels) {
  DequantParams p;
  p.a.assign(tokens, 1.0f);
  p.b.assign(channels, 1.0f);
  p.o.assign(channels, 0.0f);
  if (q.flags & kTokenScale)
    for (uint32_t t = 0; t < tokens; ++t) p.a[t] = f16_to_f32(q.token_scale[t]);
  if (q.flags & kChannelScale)
    for (uint32_t c = 0; c < channels; ++c) p.b[c] = f16_to_f32(q.channel_scale[c]);
  if (q.flags & kChannelOffset)
    for (uint32_t c = 0; c < channels; ++c) p.o[c] = f16_to_f32(q.channel_offset[c]);
  p.raw_rows = q.raw_rows;
  p.raw = q.raw;
  p.overflow = q.overflow;
  return p;
}

GroupQuant quantizer_layout(Quantizer kind, float param, const StepWeights& w, uint32_t tokens,
                            uint32_t channels, uint32_t raw_rows) {
  if (!std::isfinite(param) || param <= 0.0f) throw InputError("quantizer parameter must be > 0");
  if (!valid_quantizer((uint8_t)kind)) throw InputError("unknown quantizer id");
  if (!w.empty() && kind != Quantizer::TokenStep)
    throw InputError("step weights need the token-step quantizer");
  check_weights(w.token, tokens, "token");
  check_weights(w.channel, channels, "channel");
  check_shaping(w.shape, tokens, channels);
  GroupQuant g;
  if (kind == Quantizer::Lossless) {
    if (raw_rows) throw InputError("raw rows need a per-token quantizer");
    return g;  // no parameters: the symbols are the values' bytes
  }
  if (kind == Quantizer::TokenAbsmax) g.max_symbol = reference_max_symbol(param);
  const bool per_token = kind == Quantizer::TokenAbsmax || kind == Quantizer::TokenStep;
  g.flags = per_token ? kTokenScale : (kChannelScale | kChannelOffset);
  if (kind == Quantizer::TokenStep) g.flags |= kTokenCodes;
  if (raw_rows) {
    if (!per_token) throw InputError("raw rows need a per-token quantizer");
    if (raw_rows > tokens) throw InputError("more raw rows than tokens");
    g.flags |= kRawRows;
    g.raw_rows = raw_rows;
  }
  if (w.center) g.flags |= kChannelOffset;
  if (w.overflow) g.flags |= kOverflow;
  if (!w.channel.empty()) {  // stored as grid scales b; fits must use the stored values
    g.flags |= kChannelScale | kChannelCodes;
    for (float x : w.channel) g.channel_scale.push_back(step_code_value(nearest_step_code(x)));
  }
  return g;
}

GroupQuant fit_quantizer(Quantizer kind, float param, const TensorView& v, const StepWeights& w,
                         uint32_t raw_rows, CpuPath path) {
  const uint32_t T = v.tokens, C = v.channels();
  GroupQuant g = quantizer_layout(kind, param, w, T, C, raw_rows);
  if (kind == Quantizer::Lossless) return g;
  g.raw.resize((size_t)raw_rows * C);
  for (uint32_t t = 0; t < raw_rows; ++t) load_row(v, t, g.raw.data() + (size_t)t * C);
  const bool per_token = g.flags & kTokenScale;
  std::vector<float> row(C), inv_b;
  for (uint16_t b : g.channel_scale) inv_b.push_back(inverse_scale(b));
  if (w.center) center_channels(v, g);
  std::vector<float> o;
  for (uint16_t x : g.channel_offset) o.push_back(f16_to_f32(x));
  ChannelStats cs(per_token ? 0 : C);
  const int range_symbols = g.flags & kOverflow ? kMaxOverflowSymbol : kMaxSymbol;
  for (uint32_t t = 0; t < T; ++t) {
    load_row(v, t, row.data());
    if (!per_token) {
      check_finite(row.data(), C);
      cs.add(row.data());
      continue;
    }
    for (size_t c = 0; c < o.size(); ++c) row[c] = add_rn(row[c], -o[c]);  // centered keys
    const RowStats rs = token_row_stats(path, row.data(), inv_b, C);
    const float q = weighted_param(param, w.token.empty() ? nullptr : w.token.data(), t);
    g.token_scale.push_back(
        token_step(kind, q, g.max_symbol, rs.sum_sq, rs.absmax, C, range_symbols));
  }
  if (kind == Quantizer::LayerStep)
    fit_layer_step(cs, T, param, g);
  else if (!per_token)
    fit_channel_steps(cs, T, param, g);
  return g;
}

namespace {

// A row's symbols that quantize_row clamped at +-m, unclamped (the same rounding), appended to
// `out` where they lie beyond +-m.
void find_overflow(const float* x, float inv_a, const float* inv_b, const float* o, int m,
                   uint32_t token, uint32_t n, const int8_t* sym, std::vector<Overflow>& out) {
  for (uint32_t c = 0; c < n; ++c) {
    if (sym[c] != m && sym[c] != -m) continue;
    const int s = quantize(x[c], mul_rn(inv_a, inv_b[c]), o[c], kMaxOverflowSymbol);
    if (s > m || s < -m) out.push_back({token, c, s});
  }
}

// A row rounded over the full range, shaped, then clamped to +-m, what lies beyond appended
// to `out` (with overflow lists; without, the shaping keeps within +-m).
void quantize_shaped_row(const Shaping& sh, uint32_t t, const float* x, const DequantParams& p,
                         float inv_a, const float* inv_b, int m, bool overflow, uint32_t C,
                         int8_t* sym, std::vector<Overflow>& out) {
  thread_local std::vector<int32_t> s;
  s.resize(C);
  const int limit = overflow ? kMaxOverflowSymbol : m;
  for (uint32_t c = 0; c < C; ++c) s[c] = quantize(x[c], mul_rn(inv_a, inv_b[c]), p.o[c], limit);
  shape_symbols(sh, t, x, p.a[t], p.b.data(), p.o.data(), limit, C, s.data());
  for (uint32_t c = 0; c < C; ++c) {
    sym[c] = (int8_t)std::clamp(s[c], -m, m);
    if (s[c] > m || s[c] < -m) out.push_back({t, c, s[c]});
  }
}

}  // namespace

void quantize_group(const GroupQuant& q, const DequantParams& p, const TensorView& v, CpuPath path,
                    const Shaping& shape, int8_t* symbols, uint32_t* hist,
                    std::vector<Overflow>& overflow) {
  const uint32_t T = v.tokens, C = v.channels();
  std::vector<float> inv_b(C), row(C);
  for (uint32_t c = 0; c < C; ++c) inv_b[c] = safe_inverse(p.b[c]);
  const int m = q.max_symbol;
  // Counted bin-major (count[symbol][channel]): a row's symbols cluster in a few bins, so its
  // increments touch a few KB instead of one line in each channel's 1 KB histogram. Counted a
  // block of rows at a time, while the block's symbols are still in cache.
  // Only the bins of symbols in [-m, m] can be counted (raw rows are zeros): those are cleared
  // and read, not all 256 (a short group's counting is otherwise mostly clearing and scanning).
  thread_local std::vector<uint32_t> count;
  const uint32_t lo = (uint32_t)(kSymbolBias - m), hi = (uint32_t)(kSymbolBias + m);
  count.resize((size_t)256 * C);
  std::fill(count.begin() + (size_t)lo * C, count.begin() + (size_t)(hi + 1) * C, 0u);
  for (uint32_t t0 = 0; t0 < T; t0 += kCountRows) {
    const uint32_t rows = std::min(kCountRows, T - t0);
    for (uint32_t t = t0; t < t0 + rows; ++t) {
      load_row(v, t, row.data());
      int8_t* out = symbols + (size_t)t * C;
      const float inv_a = safe_inverse(p.a[t]);
      if (t < q.raw_rows) {
        std::fill(out, out + C, int8_t{0});
        continue;
      }
      if (!shape.empty()) {
        quantize_shaped_row(shape, t, row.data(), p, inv_a, inv_b.data(), m, q.flags & kOverflow, C,
                            out, overflow);
        continue;
      }
      if (path == CpuPath::Avx512)
        quantize_row_avx512(row.data(), inv_a, inv_b.data(), p.o.data(), m, C, out);
      else
        quantize_row(row.data(), inv_a, inv_b.data(), p.o.data(), m, C, out);
      if (q.flags & kOverflow)
        find_overflow(row.data(), inv_a, inv_b.data(), p.o.data(), m, t, C, out, overflow);
    }
    count_symbols(path, symbols + (size_t)t0 * C, rows, C, count.data());
  }
  std::vector<uint32_t> used;  // most bins are empty
  for (uint32_t i = lo; i <= hi; ++i) {
    const uint32_t* bin = count.data() + (size_t)i * C;
    if (!std::all_of(bin, bin + C, [](uint32_t n) { return n == 0; })) used.push_back(i);
  }
  // Added to the channels' histograms a block of channels at a time: the block's histograms stay
  // in L1 while every bin is added, where a bin at a time would touch a line of each channel's.
  constexpr uint32_t kBlock = 16;
  for (uint32_t c0 = 0; c0 < C; c0 += kBlock)
    for (uint32_t i : used) {
      const uint32_t* bin = count.data() + (size_t)i * C;
      for (uint32_t c = c0; c < std::min(C, c0 + kBlock); ++c) hist[(size_t)c * 256 + i] += bin[c];
    }
}

void count_symbols_scalar(const int8_t* sym, uint32_t rows, uint32_t C, uint32_t* count) {
  for (uint32_t r = 0; r < rows; ++r, sym += C)
    for (uint32_t c = 0; c < C; ++c) count[(size_t)(sym[c] + 128) * C + c]++;
}

void count_symbols(CpuPath path, const int8_t* sym, uint32_t rows, uint32_t C, uint32_t* count) {
  on_path(path, count_symbols_scalar, count_symbols_avx2, count_symbols_avx512)(sym, rows, C,
                                                                                count);
}

void split_planes(const TensorView& v, int8_t* symbols, uint32_t* hist) {
  const uint32_t C = v.channels(), P = (uint32_t)dtype_size(v.dtype), W = C * P;
  // The dtype's exponent field, all ones for nan/inf.
  const uint32_t exp = v.dtype == DType::F32    ? 0x7f800000u
                       : v.dtype == DType::BF16 ? 0x7f80u
                                                : 0x7c00u;
  std::vector<uint8_t> bits(W);
  for (uint32_t t = 0; t < v.tokens; ++t) {
    load_bits(v, t, bits.data());
    uint32_t bad = 0;
    for (uint32_t c = 0; c < C; ++c) {
      uint32_t x = 0;
      std::memcpy(&x, bits.data() + (size_t)c * P, P);
      bad |= (x & exp) == exp;
    }
    if (bad) throw InputError("KV tensor contains NaN or Inf");
    int8_t* out = symbols + (size_t)t * W;
    for (uint32_t p = 0; p < P; ++p)
      for (uint32_t c = 0; c < C; ++c) {
        const int8_t s = (int8_t)bits[(size_t)c * P + p];
        out[p * C + c] = s;
        hist[(p * C + c) * 256 + s + 128]++;
      }
  }
}

void join_planes(const int8_t* __restrict symbols, uint32_t channels, uint32_t planes,
                 uint8_t* __restrict bits) {
  for (uint32_t p = 0; p < planes; ++p)
    for (uint32_t c = 0; c < channels; ++c)
      bits[(size_t)c * planes + p] = (uint8_t)symbols[p * channels + c];
}

void dequantize_row(const int8_t* __restrict symbols, const DequantParams& p, uint32_t token,
                    uint32_t channels, float* __restrict row) {
  if (token < p.raw_rows) {
    std::copy_n(p.raw.data() + (size_t)token * channels, channels, row);
    return;
  }
  const float a = p.a[token];
  const float* __restrict b = p.b.data();
  const float* __restrict o = p.o.data();
  for (uint32_t c = 0; c < channels; ++c) row[c] = dequantize(symbols[c], a, b[c], o[c]);
}

void apply_overflow(const DequantParams& p, const TensorView& v, uint32_t begin, uint32_t end) {
  auto e = std::lower_bound(p.overflow.begin(), p.overflow.end(), begin,
                            [](const Overflow& x, uint32_t t) { return x.token < t; });
  if (e == p.overflow.end() || e->token >= end) return;  // most segments: nothing to patch
  std::vector<float> row(v.channels());
  while (e != p.overflow.end() && e->token < end) {
    const uint32_t t = e->token;
    load_row(v, t, row.data());
    for (; e != p.overflow.end() && e->token == t; ++e)
      row[e->channel] = dequantize(e->symbol, p.a[t], p.b[e->channel], p.o[e->channel]);
    store_row(v, t, row.data());
  }
}

void dequantize_store_row(const int8_t* __restrict symbols, float a, const float* __restrict b,
                          const float* __restrict o, uint32_t n, DType dtype, void* dst) {
  for (uint32_t c = 0; c < n; ++c) {
    const float x = dequantize(symbols[c], a, b[c], o[c]);
    if (dtype == DType::F32)
      static_cast<float*>(dst)[c] = x;
    else
      static_cast<uint16_t*>(dst)[c] = dtype == DType::F16 ? f32_to_f16(x) : f32_to_bf16(x);
  }
}

void dequantize_rows_scalar(const int8_t* sym, const float* a, const float* b, const float* o,
                            uint32_t C, uint32_t n, RowRuns runs, DType dtype,
                            uint8_t* const* dst) {
  for (uint32_t k = 0; k < n; ++k, sym += C)
    for_each_run(runs, dst[k], [&](uint32_t c, uint8_t* d) {
      dequantize_store_row(sym + c, a[k], b + c, o + c, runs.length, dtype, d);
    });
}

}  // namespace cachegen
