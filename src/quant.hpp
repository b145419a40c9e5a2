// Quantizers: per-element arithmetic (shared by CPU and GPU) and per-group parameter fitting.
//
// Every quantizer reconstructs x' = s * a[token] * b[channel] + o[channel], where each of a, b, o
// is either stored (fp16, one per token or channel) or absent (1, 1, 0). Quantizers differ only in
// how they choose those parameters, so the decoder needs the flags, never the quantizer.
#pragma once
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "common.hpp"
#include "cpu_path.hpp"
#include "half.hpp"
#include "shaping.hpp"
#include "tensor_view.hpp"

namespace cachegen {

enum class Quantizer : uint8_t {
  // CacheGen's reference: symmetric, one scale per token = max |x| over channels / (bins/2 - 1).
  TokenAbsmax = 1,
  // Per-channel mean offset and step = max(param * channel rms, range / 127).
  ChannelStep = 2,
  // Per-token step = max(param * token rms, range / 127), no offset.
  TokenStep = 3,
  // Per-channel mean offset and ONE step for the whole group = max(param * rms, range / 127):
  // equal absolute error in every channel, which is what attention scores feel.
  LayerStep = 4,
  // Lossless (format v4): no quantization; the symbols are the bytes of each value in the
  // blob's dtype, one plane per byte (see split_planes), entropy coded like any symbols.
  Lossless = 5,
};

inline bool valid_quantizer(uint8_t q) { return q >= 1 && q <= 5; }

// kTokenCodes / kChannelCodes (format v2): the token / channel scales lie on the step-code grid
// below and travel as codes. kRawRows (format v3): the group's first tokens (attention sinks)
// travel verbatim in the blob's dtype; their symbols are zero. kOverflow (format v6, TokenStep):
// a token's step may be finer than its range / kMaxSymbol; a symbol beyond +-max_symbol is coded
// as +-max_symbol and its value travels in the group's overflow list.
enum QuantFlags : uint8_t {
  kTokenScale = 1,
  kChannelScale = 2,
  kChannelOffset = 4,
  kTokenCodes = 8,
  kChannelCodes = 16,
  kRawRows = 32,
  kOverflow = 64,
};

// The largest |symbol| an overflow entry holds: a token's step is never so fine that its largest
// |deviation| needs more steps than this.
constexpr int kMaxOverflowSymbol = 32767;

// One symbol beyond +-max_symbol: where it is and its value.
struct Overflow {
  uint32_t token, channel;
  int32_t symbol;
};

// Operations that the compiler must neither fuse nor reorder, so CPU and GPU agree bit for bit.
CG_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;  // the core builds with -ffp-contract=off
#endif
}

CG_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

CG_HD float div_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

CG_HD float safe_inverse(float step) { return step > 0.0f ? 1.0f / step : 0.0f; }

CG_HD float dequantize(int s, float a, float b, float o) {
  return add_rn(mul_rn(mul_rn((float)s, a), b), o);
}

// Round half to even via the 1.5 * 2^23 trick; exact for |y| < 2^22 (every max_symbol).
CG_HD int quantize(float x, float inv_step, float o, int max_symbol) {
  float y = mul_rn(add_rn(x, -o), inv_step);
  float m = (float)max_symbol;
  y = y < -m ? -m : (y > m ? m : y);
  return (int)add_rn(add_rn(y, 12582912.0f), -12582912.0f);
}

// Parameter fitting from statistics, shared by the CPU and GPU encoders so their blobs agree
// byte for byte. Stored steps are fp16; a step that would overflow is clamped.
CG_HD uint16_t step_to_f16(float step) { return f32_to_f16(65504.0f < step ? 65504.0f : step); }

// The step of every quantizer with a rate knob is param * rms, but never so small that the
// largest |deviation| (`range`) needs more than `range_symbols` steps (kMaxSymbol, or
// kMaxOverflowSymbol where symbols may overflow).
struct StepBounds {
  float by_rms, by_range;
  CG_HD float step() const { return by_rms < by_range ? by_range : by_rms; }
};

CG_HD StepBounds step_bounds(float param, double mean_square, double range,
                             int range_symbols = kMaxSymbol) {
  return {mul_rn(param, (float)sqrt(mean_square)), div_rn((float)range, (float)range_symbols)};
}

CG_HD uint16_t spread_step(float param, double mean_square, double range) {
  return step_to_f16(step_bounds(param, mean_square, range).step());
}

// Token steps of the TokenStep quantizer lie on a grid of 1/8 octave: code k stands for
// 2^(k/8) rounded to fp16, so a blob stores a small integer per token (Rice coded, ~3.6 bits)
// instead of 16 bits. Rounding a step by up to 2^(1/16) costs ~0.25% in squared error, far less
// than the ~0.06 bits per element the codes save.
constexpr int kStepCodesPerOctave = 8;
constexpr int kMinStepCode = -24 * kStepCodesPerOctave;  // 2^-24, fp16's smallest subnormal
constexpr int kMaxStepCode = 127;                        // 2^15.875 < 65504, fp16's largest
constexpr int kZeroStepCode = 0;  // an all-zero row: any step codes it exactly

CG_HD float pow2i(int e) { return bits_f32((uint32_t)(e + 127) << 23); }  // e in [-126, 127]

// 2^(j/8) for j in [0, 8) as a product of fixed factors: exact, unfused, the same bits on CPU
// and GPU, and no table in device code.
CG_HD float octave_fraction(int j) {
  float f = 1.0f;
  if (j & 1) f = mul_rn(f, 0x1.172b84p+0f);  // 2^(1/8)
  if (j & 2) f = mul_rn(f, 0x1.306fe0p+0f);  // 2^(1/4)
  if (j & 4) f = mul_rn(f, 0x1.6a09e6p+0f);  // 2^(1/2)
  return f;
}

CG_HD uint16_t step_code_value(int k) {
  const int j = ((k % kStepCodesPerOctave) + kStepCodesPerOctave) % kStepCodesPerOctave;
  return f32_to_f16(mul_rn(octave_fraction(j), pow2i((k - j) / kStepCodesPerOctave)));
}

// The code whose step is nearest to s > 0 in the log domain, clamped to the grid.
CG_HD int nearest_step_code(float s) {
  const int e = (int)((f32_bits(s) >> 23) & 0xffu) - 127;
  if (e < -24) return kMinStepCode;  // fp32 subnormals included
  if (e >= 16) return kMaxStepCode;
  const float m = mul_rn(s, pow2i(-e));  // in [1, 2), exact
  int j = 0;
  for (int i = 0; i < kStepCodesPerOctave; ++i)
    j += m >= mul_rn(octave_fraction(i), 0x1.0b5586p+0f);  // 2^((i + 1/2) / 8)
  const int k = e * kStepCodesPerOctave + j;
  return k > kMaxStepCode ? kMaxStepCode : k;
}

// A TokenStep token's step: the grid point nearest to the bounds' step, one code coarser where
// rounding fell below by_range (a step that small would clip the row's largest value).
CG_HD uint16_t grid_step(StepBounds b) {
  const float s = b.step();
  if (!(s > 0.0f)) return step_code_value(kZeroStepCode);
  int k = nearest_step_code(s);
  if (k < kMaxStepCode && f16_to_f32(step_code_value(k)) < b.by_range) ++k;
  return step_code_value(k);
}

// Step weights as the token and channel fits apply them (CPU and GPU alike).
CG_HD float weighted_param(float param, const float* token_weight, uint32_t token) {
  return token_weight ? mul_rn(param, token_weight[token]) : param;
}
CG_HD float inverse_scale(uint16_t b) { return div_rn(1.0f, f16_to_f32(b)); }

// Step of one token (TokenAbsmax, TokenStep) from its row's sum of squares and max |x|.
CG_HD uint16_t token_step(Quantizer kind, float param, int max_symbol, double sum_sq, float absmax,
                          uint32_t channels, int range_symbols = kMaxSymbol) {
  if (kind == Quantizer::TokenAbsmax) return step_to_f16(absmax / max_symbol);
  return grid_step(step_bounds(param, sum_sq / channels, absmax, range_symbols));
}

// One channel from its sums over tokens: offset (fp16 mean) and step (ChannelStep), plus the
// variance and range about the offset, which LayerStep pools over channels.
struct ChannelFit {
  uint16_t offset, step;
  double var, range;
};

CG_HD ChannelFit channel_fit(double sum, double sum_sq, float lo, float hi, uint32_t tokens,
                             float param) {
  const double mean = sum / tokens;
  // Clamped like steps: a mean beyond fp16's range would store an infinite offset.
  const uint16_t offset = f32_to_f16((float)(mean < -65504.0  ? -65504.0
                                             : mean > 65504.0 ? 65504.0
                                                              : mean));
  const double o = f16_to_f32(offset);
  const double v = sum_sq / tokens - 2 * o * mean + o * o;
  const double var = v > 0.0 ? v : 0.0;
  const double up = hi - o, down = o - lo;
  const double range = up < down ? down : up;
  return {offset, spread_step(param, var, range), var, range};
}

// Fitted parameters of one (layer, K/V) group, in the fp16 form they are stored in.
struct GroupQuant {
  uint8_t flags = 0;
  uint8_t max_symbol = kMaxSymbol;
  std::vector<uint16_t> token_scale;    // tokens entries if kTokenScale (grid steps if kTokenCodes)
  std::vector<uint16_t> channel_scale;  // channels entries if kChannelScale
  std::vector<uint16_t> channel_offset;  // channels entries if kChannelOffset
  uint32_t raw_rows = 0;                 // kRawRows: this many first tokens are stored verbatim,
  std::vector<float> raw;                // [raw_rows, channels], values of the blob's dtype
  std::vector<Overflow> overflow;        // kOverflow: ascending by (token, channel)
};

// Expanded fp32 parameters: a per token, b and o per channel, with 1/1/0 where absent, and the
// verbatim rows that replace the first raw_rows tokens' reconstructions.
struct DequantParams {
  std::vector<float> a, b, o;
  uint32_t raw_rows = 0;
  std::vector<float> raw;
  std::vector<Overflow> overflow;
};

DequantParams expand_params(const GroupQuant& q, uint32_t tokens, uint32_t channels);

// Optional step weights of the TokenStep quantizer (empty = all 1). A token's step is scaled by
// its token weight (finer where the model is more sensitive, e.g. recent tokens); channel
// weights are stored as the per-channel scale b, so each channel's step is scaled by its own.
// `center`: each channel's mean over the group (fp16) is stored as its offset o and taken off
// before the token fit, so a channel with a large constant part (an outlier channel) no longer
// sets every row's range, which bounds how fine a token's step can be. `overflow`: that bound
// is lifted instead (kOverflow): a token keeps its step, and its few symbols beyond
// +-kMaxSymbol go to the overflow list (a transform's coefficients, where one strong
// coefficient would otherwise coarsen a whole important token).
constexpr float kMinWeight = 1.0f / 16384, kMaxWeight = 16384.0f;  // fp16 normals, exact
// `shape`: key rounding shaped away from the queries' shared directions (shaping.hpp).
struct StepWeights {
  std::vector<float> token;    // tokens entries or empty
  std::vector<float> channel;  // channels entries or empty
  bool center = false;
  bool overflow = false;
  Shaping shape;
  bool empty() const {
    return token.empty() && channel.empty() && !center && !overflow && shape.empty();
  }
};

// A quantizer's flags, max symbol, raw row count and (from channel weights) channel scales,
// before fitting; throws InputError on a bad parameter, on weights that are out of range,
// miscounted or given to a quantizer other than TokenStep, and on raw rows that are more than
// the tokens or given to a quantizer without per-token steps.
GroupQuant quantizer_layout(Quantizer kind, float param, const StepWeights& w, uint32_t tokens,
                            uint32_t channels, uint32_t raw_rows = 0);

// Fit the quantizer to a tensor (one pass over it); throws InputError on nan/inf. The first
// `raw_rows` tokens are kept verbatim (per-token quantizers only). `path` picks the loops (every
// path fits the same parameters).
GroupQuant fit_quantizer(Quantizer kind, float param, const TensorView& v,
                         const StepWeights& w = {}, uint32_t raw_rows = 0,
                         CpuPath path = CpuPath::Scalar);

// Quantize into symbols ([tokens, channels] int8; zero for raw rows) and count them per channel
// into hist[channel * 256 + symbol + 128], which must start zeroed; `path` picks the loops
// (every path gives the same symbols and counts). With kOverflow, the symbols beyond
// +-max_symbol are appended to `overflow` (clamped in `symbols`). A non-empty `shape` shapes
// each token's rounding (shaping.hpp) before it is clamped.
void quantize_group(const GroupQuant& q, const DequantParams& p, const TensorView& v, CpuPath path,
                    const Shaping& shape, int8_t* symbols, uint32_t* hist,
                    std::vector<Overflow>& overflow);

// Rewrites the elements of `v`'s tokens [begin, end) that have overflow entries with their
// values (the reconstruction their symbols give), after the rows were decoded clamped.
void apply_overflow(const DequantParams& p, const TensorView& v, uint32_t begin, uint32_t end);

// The encoder's vector kernels (src/simd/): n symbols quantize(x[c], inv_a * inv_b[c], o[c],
// max_symbol), bit for bit, and the counts of `rows` rows of symbols ([rows, channels], rows
// <= kCountRows) added to count[(symbol + 128) * channels + channel].
constexpr uint32_t kCountRows = 255;  // the vector counters are 8 bits wide
void count_symbols(CpuPath path, const int8_t* symbols, uint32_t rows, uint32_t channels,
                   uint32_t* count);
void quantize_row_avx512(const float* x, float inv_a, const float* inv_b, const float* o,
                         int max_symbol, uint32_t n, int8_t* out);
void count_symbols_scalar(const int8_t* symbols, uint32_t rows, uint32_t channels, uint32_t* count);
void count_symbols_avx2(const int8_t* symbols, uint32_t rows, uint32_t channels, uint32_t* count);
void count_symbols_avx512(const int8_t* symbols, uint32_t rows, uint32_t channels, uint32_t* count);

// Lossless symbols of a tensor in its own dtype of P bytes: token t's row of C * P symbols is
// P planes of C, plane p holding byte p (little-endian) of each channel's value, so each plane
// column gets its own table (the high byte's sign and exponent compress, the low byte hardly).
// Counts them into hist as quantize_group does; throws InputError on nan/inf.
void split_planes(const TensorView& v, int8_t* symbols, uint32_t* hist);

// One token's values (C elements of P bytes, the dtype's bits) from its C * P plane symbols.
void join_planes(const int8_t* symbols, uint32_t channels, uint32_t planes, uint8_t* bits);

// Reconstruct one token's row: row[c] = dequantize(symbols[c], a[token], b[c], o[c]), or the
// stored row for a raw row.
void dequantize_row(const int8_t* symbols, const DequantParams& p, uint32_t token,
                    uint32_t channels, float* row);

// n reconstructions dequantize(symbols[c], a, b[c], o[c]) converted to `dtype` and stored at
// dst (n adjacent elements): the bits dequantize_row and the view's conversion give. The vector
// versions (src/simd/) fuse the two in registers; they need a CPU with AVX2 / AVX-512.
void dequantize_store_row(const int8_t* symbols, float a, const float* b, const float* o,
                          uint32_t n, DType dtype, void* dst);
// A row stored as `count` runs of `length` adjacent elements, run r at dst + r * stride bytes
// (one run for a dense row; one per head where heads are strided, as in paged caches). With
// `stream`, the vector paths write runs that are whole 64-byte lines with non-temporal stores
// (past the caches, no read of the line first); stream_fence() must follow them.
struct RowRuns {
  uint32_t count = 1;
  uint32_t length = 0;
  int64_t stride = 0;
  bool stream = false;
};
// Calls store(first channel, dst of the run) for each run of a row laid out as `runs`.
template <typename Store>
void for_each_run(RowRuns runs, void* dst, Store&& store) {
  for (uint32_t r = 0; r < runs.count; ++r)
    store(r * runs.length, static_cast<uint8_t*>(dst) + r * runs.stride);
}
// n rows of C symbols (row k's scale a[k]) reconstructed and converted into dst[k], each laid
// out as `runs`: a tile in one call (the vector versions choose its dtype and store kind once).
void dequantize_rows_scalar(const int8_t* symbols, const float* a, const float* b, const float* o,
                            uint32_t C, uint32_t n, RowRuns runs, DType dtype, uint8_t* const* dst);
void dequantize_rows_avx2(const int8_t* symbols, const float* a, const float* b, const float* o,
                          uint32_t C, uint32_t n, RowRuns runs, DType dtype, uint8_t* const* dst);
void dequantize_rows_avx512(const int8_t* symbols, const float* a, const float* b, const float* o,
                            uint32_t C, uint32_t n, RowRuns runs, DType dtype, uint8_t* const* dst);
// Orders this thread's earlier non-temporal stores before its later stores (an sfence).
void stream_fence();
// Whether a run of n elements of `dtype` at dst is whole aligned cache lines.
inline bool whole_lines(const void* dst, uint32_t n, DType dtype) {
  return (uintptr_t)dst % 64 == 0 && n * dtype_size(dtype) % 64 == 0;
}
// The row kernels' dispatch: f(std::integral_constant<DType, dtype>, std::bool_constant<stream>)
// where stream says the n rows at dst, laid out as `runs`, all go past the caches (whole lines).
template <typename F>
void with_row_kind(DType dtype, RowRuns runs, uint8_t* const* dst, uint32_t n, F&& f) {
  bool stream = runs.stream && (runs.count == 1 || runs.stride % 64 == 0);
  for (uint32_t k = 0; stream && k < n; ++k) stream = whole_lines(dst[k], runs.length, dtype);
  const auto go = [&](auto d) { return stream ? f(d, std::true_type{}) : f(d, std::false_type{}); };
  switch (dtype) {
    case DType::F16:
      return go(std::integral_constant<DType, DType::F16>{});
    case DType::BF16:
      return go(std::integral_constant<DType, DType::BF16>{});
    case DType::F32:
      return go(std::integral_constant<DType, DType::F32>{});
  }
}

}  // namespace cachegen
