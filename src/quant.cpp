#include "quant.hpp"

#include <algorithm>
#include <cmath>
#include <string>

#include "half.hpp"

namespace cachegen {
namespace {

constexpr float kMaxF16 = 65504.0f;

// Stored steps are fp16; a step that would overflow is clamped (values past it saturate).
uint16_t step_to_f16(float step) { return f32_to_f16(std::min(step, kMaxF16)); }

float safe_inverse(float step) { return step > 0.0f ? 1.0f / step : 0.0f; }

void check_finite(const float* x, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(x[i])) throw InputError("KV tensor contains NaN or Inf");
  }
}

std::vector<uint16_t> token_absmax_scales(const float* x, uint32_t tokens, uint32_t channels,
                                          float max_symbol) {
  std::vector<uint16_t> scale(tokens);
  for (uint32_t t = 0; t < tokens; ++t) {
    float m = 0.0f;
    for (uint32_t c = 0; c < channels; ++c) m = std::max(m, std::fabs(x[(size_t)t * channels + c]));
    scale[t] = step_to_f16(m / max_symbol);
  }
  return scale;
}

std::vector<uint16_t> token_steps(const float* x, uint32_t tokens, uint32_t channels, float q) {
  std::vector<uint16_t> scale(tokens);
  for (uint32_t t = 0; t < tokens; ++t) {
    const float* row = x + (size_t)t * channels;
    double ss = 0.0;
    float m = 0.0f;
    for (uint32_t c = 0; c < channels; ++c) {
      ss += (double)row[c] * row[c];
      m = std::max(m, std::fabs(row[c]));
    }
    float rms = (float)std::sqrt(ss / channels);
    scale[t] = step_to_f16(std::max(q * rms, m / kMaxSymbol));
  }
  return scale;
}

void channel_steps(const float* x, uint32_t tokens, uint32_t channels, float q, GroupQuant& g) {
  std::vector<double> sum(channels, 0.0), ss(channels, 0.0);
  std::vector<float> lo(channels, INFINITY), hi(channels, -INFINITY);
  for (uint32_t t = 0; t < tokens; ++t) {
    const float* row = x + (size_t)t * channels;
    for (uint32_t c = 0; c < channels; ++c) sum[c] += row[c];
  }
  g.channel_offset.resize(channels);
  std::vector<float> mean(channels);
  for (uint32_t c = 0; c < channels; ++c) {
    g.channel_offset[c] = f32_to_f16((float)(sum[c] / tokens));
    mean[c] = f16_to_f32(g.channel_offset[c]);
  }
  for (uint32_t t = 0; t < tokens; ++t) {
    const float* row = x + (size_t)t * channels;
    for (uint32_t c = 0; c < channels; ++c) {
      float d = row[c] - mean[c];
      ss[c] += (double)d * d;
      lo[c] = std::min(lo[c], d);
      hi[c] = std::max(hi[c], d);
    }
  }
  g.channel_scale.resize(channels);
  for (uint32_t c = 0; c < channels; ++c) {
    float rms = (float)std::sqrt(ss[c] / tokens);
    float range = std::max(-lo[c], hi[c]);
    g.channel_scale[c] = step_to_f16(std::max(q * rms, range / kMaxSymbol));
  }
}

}  // namespace

DequantParams expand_params(const GroupQuant& q, uint32_t tokens, uint32_t channels) {
  DequantParams p{std::vector<float>(tokens, 1.0f), std::vector<float>(channels, 1.0f),
                  std::vector<float>(channels, 0.0f)};
  if (q.flags & kTokenScale)
    for (uint32_t t = 0; t < tokens; ++t) p.a[t] = f16_to_f32(q.token_scale[t]);
  if (q.flags & kChannelScale)
    for (uint32_t c = 0; c < channels; ++c) p.b[c] = f16_to_f32(q.channel_scale[c]);
  if (q.flags & kChannelOffset)
    for (uint32_t c = 0; c < channels; ++c) p.o[c] = f16_to_f32(q.channel_offset[c]);
  return p;
}

GroupQuant fit_quantizer(Quantizer kind, float param, const float* x, uint32_t tokens,
                         uint32_t channels) {
  check_finite(x, (size_t)tokens * channels);
  if (!std::isfinite(param) || param <= 0.0f) throw InputError("quantizer parameter must be > 0");
  GroupQuant g;
  switch (kind) {
    case Quantizer::TokenAbsmax: {
      int bins = (int)param;
      if (bins < 3 || bins > 256 || (float)bins != param)
        throw InputError("CacheGen reference bins must be an integer in [3, 256], got " +
                         std::to_string(param));
      g.max_symbol = (uint8_t)std::min(bins / 2 - 1 + (bins % 2), kMaxSymbol);
      g.flags = kTokenScale;
      g.token_scale = token_absmax_scales(x, tokens, channels, g.max_symbol);
      break;
    }
    case Quantizer::ChannelStep:
      g.flags = kChannelScale | kChannelOffset;
      channel_steps(x, tokens, channels, param, g);
      break;
    case Quantizer::TokenStep:
      g.flags = kTokenScale;
      g.token_scale = token_steps(x, tokens, channels, param);
      break;
    default:
      throw InputError("unknown quantizer id " + std::to_string((int)kind));
  }
  return g;
}

void quantize_group(const GroupQuant& q, const DequantParams& p, const float* x, uint32_t tokens,
                    uint32_t channels, int8_t* symbols) {
  std::vector<float> inv_b(channels);
  for (uint32_t c = 0; c < channels; ++c) inv_b[c] = safe_inverse(p.b[c]);
  const int m = q.max_symbol;
  for (uint32_t t = 0; t < tokens; ++t) {
    const float inv_a = safe_inverse(p.a[t]);
    const float* row = x + (size_t)t * channels;
    int8_t* out = symbols + (size_t)t * channels;
    for (uint32_t c = 0; c < channels; ++c)
      out[c] = (int8_t)quantize(row[c], mul_rn(inv_a, inv_b[c]), p.o[c], m);
  }
}

}  // namespace cachegen
