// Stage 1 of the GPU encoder: per group, its quantizer's statistics and parameters (as
// quant.cpp computes them, sums in the same order), then symbols and per-column histograms.
#include <cuda_fp16.h>

#include "encode_stages.cuh"

namespace cachegen::cuda {
namespace {

__device__ bool finite(float x) { return (f32_bits(x) & 0x7f800000u) != 0x7f800000u; }

// Per channel: sums in fp64 in token order, min and max, as the CPU's ChannelStats; then the
// channel's offset (and step, or LayerStep terms).
template <DType D>
__global__ void channel_stats(const GroupDev* groups, const uint32_t* ids, uint32_t* bad) {
  const GroupDev& g = groups[ids[blockIdx.y]];
  const uint32_t c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= g.channels) return;
  double sum = 0.0, sum_sq = 0.0;
  float lo = INFINITY, hi = -INFINITY;
  bool ok = true;
  constexpr uint32_t kBatch = 16;  // loads issued ahead of the sequential sums
  for (uint32_t t0 = 0; t0 < g.tokens; t0 += kBatch) {
    float x[kBatch];
    const uint32_t n = min(kBatch, g.tokens - t0);
#pragma unroll
    for (uint32_t i = 0; i < kBatch; ++i) x[i] = i < n ? load_elem<D>(g.in, t0 + i, c) : 0.0f;
    for (uint32_t i = 0; i < n; ++i) {
      ok &= finite(x[i]);
      sum += x[i];
      sum_sq += (double)x[i] * x[i];
      lo = x[i] < lo ? x[i] : lo;
      hi = hi < x[i] ? x[i] : hi;
    }
  }
  if (!ok) atomicOr(bad, 1u);
  const ChannelFit f = channel_fit(sum, sum_sq, lo, hi, g.tokens, g.param);
  g.channel_offset[c] = f.offset;
  if (g.kind == Quantizer::ChannelStep) g.channel_scale[c] = f.step;
  if (g.terms) g.terms[c] = {f.var, f.range};
}

// LayerStep: one step from the pooled terms, summed in channel order as the CPU does.
__global__ void __launch_bounds__(1024) layer_step(const GroupDev* groups, const uint32_t* ids) {
  __shared__ ChanTerms tile[1024];
  __shared__ uint16_t step;
  const GroupDev& g = groups[ids[blockIdx.x]];
  double var = 0.0, range = 0.0;
  for (uint32_t c0 = 0; c0 < g.channels; c0 += 1024) {
    const uint32_t n = min(1024u, g.channels - c0);
    if (threadIdx.x < n) tile[threadIdx.x] = g.terms[c0 + threadIdx.x];
    __syncthreads();
    if (threadIdx.x == 0)
      for (uint32_t i = 0; i < n; ++i) {
        var += tile[i].var;
        range = range < tile[i].range ? tile[i].range : range;
      }
    __syncthreads();
  }
  if (threadIdx.x == 0) step = spread_step(g.param, var / g.channels, range);
  __syncthreads();
  for (uint32_t c = threadIdx.x; c < g.channels; c += blockDim.x) g.channel_scale[c] = step;
}

// Per token: max |x| and the sum of squares in the CPU's order (eight strided partial sums in
// fp32, the tail into the first, then added in fp64), of the row less the channel offsets if the
// quantizer centers. Eight threads per token.
template <DType D>
__global__ void token_stats(const GroupDev* groups, const uint32_t* ids, uint32_t* bad) {
  const GroupDev& g = groups[ids[blockIdx.y]];
  const uint32_t t = blockIdx.x * (blockDim.x / 8) + threadIdx.x / 8, k = threadIdx.x % 8;
  const uint32_t C = g.channels, main = C - C % 8;
  const bool live = t < g.tokens;
  const uint16_t* offset = g.channel_offset;
  // Channel scales here come from step weights (TokenStep): statistics are of x / b.
  const uint16_t* scale = g.kind == Quantizer::TokenStep ? g.channel_scale : nullptr;
  float sq = 0.0f, mx = 0.0f;
  bool ok = true;
  auto add = [&](uint32_t c) {
    float x = load_elem<D>(g.in, t, c);
    ok &= finite(x);
    if (offset) x = add_rn(x, -f16_to_f32(offset[c]));
    if (scale) x = mul_rn(x, inverse_scale(scale[c]));
    const float ax = fabsf(x);
    sq = add_rn(sq, mul_rn(x, x));
    mx = mx < ax ? ax : mx;
  };
  if (live) {
    for (uint32_t c = k; c < main; c += 8) add(c);
    if (k == 0)
      for (uint32_t c = main; c < C; ++c) add(c);
  }
  double sum_sq = 0.0;
  float absmax = 0.0f;
  const uint32_t lead = threadIdx.x & ~7u & 31u;
  for (uint32_t j = 0; j < 8; ++j) {
    sum_sq += (double)__shfl_sync(~0u, sq, lead + j);
    const float m = __shfl_sync(~0u, mx, lead + j);
    absmax = absmax < m ? m : absmax;
  }
  if (!live) return;
  if (!ok) atomicOr(bad, 1u);
  if (k == 0) {
    const float q = weighted_param(g.param, g.token_weight, t);
    g.token_scale[t] = token_step(g.kind, q, g.max_symbol, sum_sq, absmax, C);
  }
}

// token_stats for rows that are contiguous, 16-byte aligned fp16/bf16 with C % 8 == 0 and no
// channel offsets (the default "token" quantizer on a contiguous cache): one lane per token. A
// warp stages 32 rows x 8 chunks of 16 bytes (8 channels each) through shared memory with
// coalesced loads; each lane then runs its row's eight partial sums in the CPU's order (chunk j
// adds channel 8j + k to partial k), so the sums are the same floats as token_stats'.
constexpr uint32_t kRowWarps = 8;
__device__ __forceinline__ float half_bits_to_f32(uint32_t h, bool bf16) {
  return bf16 ? __uint_as_float(h << 16) : __half2float(__ushort_as_half((unsigned short)h));
}

template <DType D>
__global__ void __launch_bounds__(kRowWarps * 32)
    token_stats_rows(const GroupDev* groups, const uint32_t* ids, uint32_t* bad) {
  __shared__ uint4 tile[kRowWarps][32][9];  // 9: row stride 144 bytes, no bank conflicts
  const GroupDev& g = groups[ids[blockIdx.y]];
  const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const uint32_t row0 = (blockIdx.x * kRowWarps + warp) * 32;
  if (row0 >= g.tokens) return;  // the whole warp: only __syncwarp below
  const uint32_t T = g.tokens, C = g.channels, chunks = C / 8;
  const uint8_t* base = static_cast<const uint8_t*>(g.in.data);
  float sq[8], mx[8];
#pragma unroll
  for (int k = 0; k < 8; ++k) sq[k] = 0.0f, mx[k] = 0.0f;
  bool ok = true;
  for (uint32_t j0 = 0; j0 < chunks; j0 += 8) {
#pragma unroll
    for (uint32_t i = 0; i < 8; ++i) {
      const uint32_t r = i * 4 + lane / 8, j = j0 + lane % 8;
      uint4 v = make_uint4(0, 0, 0, 0);
      if (row0 + r < T && j < chunks)
        v = __ldg(reinterpret_cast<const uint4*>(base + g.in.token(row0 + r) * 2) + j);
      tile[warp][r][lane % 8] = v;
    }
    __syncwarp();
    const uint32_t n = min(8u, chunks - j0);
    for (uint32_t jj = 0; jj < n; ++jj) {
      const uint4 v = tile[warp][lane][jj];
      const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        const uint32_t h = (w[k / 2] >> (16 * (k % 2))) & 0xffffu;
        const float x = half_bits_to_f32(h, D == DType::BF16);
        ok &= finite(x);
        sq[k] = add_rn(sq[k], mul_rn(x, x));
        const float ax = fabsf(x);
        mx[k] = mx[k] < ax ? ax : mx[k];
      }
    }
    __syncwarp();
  }
  const uint32_t t = row0 + lane;
  if (t >= T) return;
  if (!ok) atomicOr(bad, 1u);
  double sum_sq = 0.0;
  float absmax = 0.0f;
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    sum_sq += (double)sq[k];
    absmax = absmax < mx[k] ? mx[k] : absmax;
  }
  const float q = weighted_param(g.param, g.token_weight, t);
  g.token_scale[t] = token_step(g.kind, q, g.max_symbol, sum_sq, absmax, C);
}

// Whether a group takes token_stats_rows (`per_channel`: it has channel offsets or scales).
bool rows_fast_path(const TensorView& v, DType d, bool per_channel) {
  const uint32_t C = v.heads * v.head_dim;
  const bool contiguous = v.s_dim == 1 && (v.heads == 1 || v.s_head == (int64_t)v.head_dim);
  const bool aligned = reinterpret_cast<uintptr_t>(v.data) % 16 == 0 &&
                       (v.tokens == 1 || (v.s_token * 2) % 16 == 0) && v.s_token >= 0 &&
                       (!v.block_table || (v.s_block * 2) % 16 == 0);
  return d != DType::F32 && !per_channel && C % 8 == 0 && contiguous && aligned;
}

constexpr uint32_t kQuantTokens = 1024;  // tokens per quantize_hist tile (x 32 channels)

// Quantize a tile of 32 channels x kQuantTokens tokens; histogram it in shared memory, then
// globally.
template <DType D>
__global__ void __launch_bounds__(256) quantize_hist(const GroupDev* groups) {
  __shared__ uint32_t hist[32][kAlphabet + 1];  // +1: lanes with equal symbols, other banks
  const GroupDev g = groups[blockIdx.z];        // in registers: the stores below could alias it
  const uint32_t lane = threadIdx.x % 32, c0 = blockIdx.y * 32, t0 = blockIdx.x * kQuantTokens;
  if (c0 >= g.channels || t0 >= g.tokens) return;
  for (uint32_t i = threadIdx.x; i < 32 * (kAlphabet + 1); i += blockDim.x) (&hist[0][0])[i] = 0;
  __syncthreads();
  const uint32_t c = c0 + lane;
  if (c < g.channels) {
    const float inv_b = safe_inverse(g.channel_scale ? f16_to_f32(g.channel_scale[c]) : 1.0f);
    const float o = g.channel_offset ? f16_to_f32(g.channel_offset[c]) : 0.0f;
    const uint32_t t_end = min(t0 + kQuantTokens, g.tokens);
    for (uint32_t t = t0 + threadIdx.x / 32; t < t_end; t += blockDim.x / 32) {
      const float inv_a = safe_inverse(g.token_scale ? f16_to_f32(g.token_scale[t]) : 1.0f);
      const float x = load_elem<D>(g.in, t, c);
      if (t < g.raw_rows) g.raw[(size_t)t * g.channels + c] = x;
      const int s = t < g.raw_rows ? 0 : quantize(x, mul_rn(inv_a, inv_b), o, g.max_symbol);
      g.symbols[(size_t)t * g.channels + c] = (int8_t)s;
      atomicAdd(&hist[lane][s + kSymbolBias], 1u);
    }
  }
  __syncthreads();
  for (uint32_t i = threadIdx.x; i < 32 * kAlphabet; i += blockDim.x) {
    const uint32_t v = hist[i / kAlphabet][i % kAlphabet], cc = c0 + i / kAlphabet;
    if (v && cc < g.channels) atomicAdd(&g.hist[(size_t)cc * kAlphabet + i % kAlphabet], v);
  }
}

}  // namespace

void QuantizeStage::Ids::add(uint32_t group, uint32_t extent) {
  groups.push_back(group);
  max_extent = std::max(max_extent, extent);
}

QuantizeStage::QuantizeStage(const EncodeRequest& req, const EncodePlan& plan, Arena& meta) {
  const DType dtype = req.groups[0].view.dtype;
  for (uint32_t i = 0; i < plan.groups.size(); ++i) {
    const GroupPlan& p = plan.groups[i];
    const GroupSpec& s = req.groups[i];
    const uint8_t fl = p.quant.flags;
    const uint32_t T = p.desc.tokens, C = p.desc.channels();
    if (fl & kTokenScale)
      (rows_fast_path(s.view, dtype, fl & (kChannelOffset | kChannelScale)) ? rows_ : token_)
          .add(i, T);
    if (fl & kChannelOffset) channel_.add(i, C);
    if (s.quantizer == Quantizer::LayerStep) layer_.add(i, C);
    max_tokens_ = std::max(max_tokens_, T);
    max_channels_ = std::max(max_channels_, C);
  }
  ngroups_ = (uint32_t)plan.groups.size();
  for (Ids* ids : {&token_, &rows_, &channel_, &layer_}) ids->at = meta.add(ids->groups);
}

void QuantizeStage::queue(DType dtype, const uint8_t* meta, const GroupDev* devs, uint32_t* bad,
                          cudaStream_t st, const std::function<void()>& between) const {
  auto ids = [&](const Ids& i) { return reinterpret_cast<const uint32_t*>(meta + i.at); };
  auto n = [](const Ids& i) { return (uint32_t)i.groups.size(); };
  with_dtype(dtype, [&]<DType D>() {
    if (n(channel_))
      channel_stats<D><<<dim3(blocks(channel_.max_extent, 128), n(channel_)), 128, 0, st>>>(
          devs, ids(channel_), bad);
    if (n(layer_)) layer_step<<<n(layer_), 1024, 0, st>>>(devs, ids(layer_));
    if (n(token_))
      token_stats<D>
          <<<dim3(blocks(token_.max_extent, 32), n(token_)), 256, 0, st>>>(devs, ids(token_), bad);
    if constexpr (D != DType::F32)
      if (n(rows_))
        token_stats_rows<D>
            <<<dim3(blocks(rows_.max_extent, 32 * kRowWarps), n(rows_)), 32 * kRowWarps, 0, st>>>(
                devs, ids(rows_), bad);
    between();
    quantize_hist<D><<<dim3(blocks(max_tokens_, kQuantTokens), blocks(max_channels_, 32), ngroups_),
                       256, 0, st>>>(devs);
  });
}

}  // namespace cachegen::cuda
