// GPU encode, everything but the blob's head on the device:
//   1. statistics and quantizer fitting (all quantizers), quantization with per-channel
//      histograms, and the table fit (tables.cpp's Lloyd clustering, one block per group);
//   2. on the host: the fitted tables normalized to 12-bit frequencies (small, exact host code);
//   3. one warp per segment coding backwards (the mirror of decode.cu) into worst-case regions,
//      a prefix sum of the segment sizes, compaction into the payload, CRC32C of the payload;
//   4. on the host: the head (header, descriptors, side data, index) and the payload copied once
//      through pinned staging into the caller's memory; CRC = combine(head CRC, payload CRC).
// Every step reproduces the CPU encoder's arithmetic, so the blob is byte-identical. The table
// fit guards its one inexact step (log2): if a cost could round differently from the host's, or
// a group is outside the GPU fit's limits, that group's tables are fitted on the host instead.
#include <cuda_fp16.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <optional>

#include "common.cuh"
#include "crc32c.hpp"
#include "parallel.hpp"
#include "quant.hpp"
#include "tables.hpp"

namespace cachegen::cuda {
namespace {

using EncTable = std::array<rans::EncSym, kAlphabet>;
constexpr uint32_t kSharedTables = (32u << 10) / sizeof(EncTable);
static_assert(sizeof(EncTable) % 16 == 0, "tables are copied to shared memory as uint4");

// GPU table fit limits; other groups are fitted on the host from copied-back histograms.
constexpr uint32_t kFitMaxChannels = 4096;
constexpr uint32_t kFitMaxK = 16;  // table counts tried: 1, 2, 4, ... <= 16
constexpr uint32_t kFitThreads = 512;

// LayerStep: per-channel terms of the pooled variance and range (quant.cpp fit_layer_step).
struct ChanTerms {
  double var, range;
};

// Table fit result of one group (then `channels` bytes of channel -> cluster).
struct FitOut {
  uint32_t k, unsafe, pad[2];
  uint32_t merged[kFitMaxK][kAlphabet];
};

// One group on the device: its input, fitted parameters (fp16, as stored), symbols, histograms.
struct GroupDev {
  View in;
  uint32_t tokens, channels;
  Quantizer kind;
  float param;
  int max_symbol;
  uint16_t *token_scale, *channel_scale, *channel_offset;  // null where the quantizer has none
  const float* token_weight;                               // null: all 1
  ChanTerms* terms;                                        // LayerStep only
  int8_t* symbols;                                         // [tokens, channels]
  uint32_t* hist;                                          // [channels, 256]
  uint8_t* fit;                                            // FitOut + map; null: host fits
  uint32_t max_tables;
  const EncTable* tables;
  const uint8_t* table_of;
  uint32_t num_tables;
  uint32_t raw_rows;  // first tokens kept verbatim: symbols zero, values copied to `raw`
  float* raw;         // [raw_rows, channels]
};

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
  const GroupDev& g = groups[blockIdx.z];
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

// ---------------------------------------------------------------------------------------------
// Table fit: tables.cpp fit_tables step for step (initial split by spread rank, kLloydRounds
// rounds of merge / -log2 costs / reassignment per table count, the count chosen by estimated
// size). Every sum runs in the host's order, so the doubles agree bit for bit; log2 is the one
// operation not correctly rounded on either side, so each cost is checked to round to the same
// float from anywhere within a few ulps, else the group is marked for the host.

__host__ __device__ inline size_t align16(size_t x) { return (x + 15) & ~size_t{15}; }

size_t fit_shared_bytes(uint32_t channels) {
  return align16(8ull * channels) + align16(2ull * channels) + align16(channels) +
         2 * kFitMaxK * kAlphabet * 4;
}

__device__ float guarded_cost(uint32_t count, double total, uint32_t* unsafe) {
  const double d = -log2((count + 0.5) / total);
  const float f = (float)d;
  if ((float)(d * (1.0 - 0x1p-50)) != f || (float)(d * (1.0 + 0x1p-50)) != f) *unsafe = 1;
  return f;
}

__global__ void __launch_bounds__(kFitThreads)
    fit_tables_kernel(const GroupDev* groups, const uint32_t* ids) {
  extern __shared__ uint4 smem[];
  __shared__ uint32_t all[kAlphabet];
  __shared__ double totals[kFitMaxK], s_bits;
  __shared__ int s_lo, s_hi;
  __shared__ uint32_t s_unsafe, s_stop;
  const GroupDev& g = groups[ids[blockIdx.x]];
  const uint32_t C = g.channels, tid = threadIdx.x, nt = blockDim.x;
  const uint32_t* hist = g.hist;
  FitOut* out = reinterpret_cast<FitOut*>(g.fit);
  uint8_t* best_assign = g.fit + sizeof(FitOut);
  uint8_t* base = reinterpret_cast<uint8_t*>(smem);
  double* dbuf = reinterpret_cast<double*>(base);  // spread, then each channel's best bits
  uint16_t* rank = reinterpret_cast<uint16_t*>(base + align16(8ull * C));
  uint8_t* assign = base + align16(8ull * C) + align16(2ull * C);
  uint32_t* merged = reinterpret_cast<uint32_t*>(assign + align16(C));
  float* cost = reinterpret_cast<float*>(merged + kFitMaxK * kAlphabet);

  // Used range of the group's total histogram.
  for (uint32_t i = tid; i < kAlphabet; i += nt) {
    uint32_t s = 0;
    for (uint32_t c = 0; c < C; ++c) s += hist[(size_t)c * kAlphabet + i];
    all[i] = s;
  }
  if (tid == 0) s_unsafe = 0;
  __syncthreads();
  if (tid == 0) {
    int lo = 0, hi = -1;
    for (int i = 0; i < kAlphabet; ++i)
      if (all[i]) {
        if (hi < 0) lo = i;
        hi = i;
      }
    s_lo = lo;
    s_hi = hi;
  }
  __syncthreads();
  const int lo = s_lo, hi = s_hi;
  const uint32_t span_n = (uint32_t)(hi - lo + 1);
  const double span = hi - lo + 1;

  // Spread (mean |index - 128|) of each channel, then its rank in a stable sort by spread.
  for (uint32_t c = tid; c < C; c += nt) {
    double n = 0.0, s = 0.0;
    for (int i = lo; i <= hi; ++i) {
      const uint32_t h = hist[(size_t)c * kAlphabet + i];
      n += h;
      s += h * (uint32_t)abs(i - 128);
    }
    dbuf[c] = n > 0 ? s / n : 0.0;
  }
  __syncthreads();
  for (uint32_t c = tid; c < C; c += nt) {
    const double d = dbuf[c];
    uint32_t r = 0;
    for (uint32_t c2 = 0; c2 < C; ++c2) {
      const double d2 = dbuf[c2];
      r += d2 < d || (d2 == d && c2 < c);
    }
    rank[c] = (uint16_t)r;
  }
  __syncthreads();

  auto merge = [&](const uint8_t* by, uint32_t k) {
    for (uint32_t i = tid; i < k * kAlphabet; i += nt) merged[i] = 0;
    __syncthreads();
    for (uint32_t c = tid; c < C; c += nt) {
      uint32_t* m = merged + by[c] * kAlphabet;
      for (int i = lo; i <= hi; ++i) {
        const uint32_t h = hist[(size_t)c * kAlphabet + i];
        if (h) atomicAdd(m + i, h);
      }
    }
    __syncthreads();
  };

  const uint32_t limit = min(min(g.max_tables, C), 255u);
  double best_bits = INFINITY;
  uint32_t best_k = 1;
  for (uint32_t c = tid; c < C; c += nt) best_assign[c] = 0;
  for (uint32_t k = 1; k <= limit && k <= kFitMaxK; k *= 2) {
    for (uint32_t c = tid; c < C; c += nt) assign[c] = (uint8_t)((uint64_t)rank[c] * k / C);
    __syncthreads();
    for (int round = 0; round < kLloydRounds; ++round) {
      merge(assign, k);
      if (tid < k) {
        double total = 0.0;
        for (int i = lo; i <= hi; ++i) total += merged[tid * kAlphabet + i] + 0.5;
        totals[tid] = total;
      }
      __syncthreads();
      for (uint32_t x = tid; x < k * span_n; x += nt) {
        const uint32_t j = x / span_n, i = lo + x % span_n;
        cost[j * kAlphabet + i] = guarded_cost(merged[j * kAlphabet + i], totals[j], &s_unsafe);
      }
      __syncthreads();
      for (uint32_t c = tid; c < C; c += nt) {
        double b[kFitMaxK];
#pragma unroll
        for (uint32_t j = 0; j < kFitMaxK; ++j) b[j] = 0.0;
        for (int i = lo; i <= hi; ++i) {
          const double h = hist[(size_t)c * kAlphabet + i];
#pragma unroll
          for (uint32_t j = 0; j < kFitMaxK; ++j)
            if (j < k) b[j] = __dadd_rn(b[j], __dmul_rn(h, (double)cost[j * kAlphabet + i]));
        }
        double best = INFINITY;
        uint32_t pick = 0;
#pragma unroll
        for (uint32_t j = 0; j < kFitMaxK; ++j)
          if (j < k && b[j] < best) best = b[j], pick = j;
        assign[c] = (uint8_t)pick;
        dbuf[c] = best;
      }
      __syncthreads();
    }
    if (tid == 0) {
      double bits = 0.0;
      for (uint32_t c = 0; c < C; ++c) bits += dbuf[c];
      s_bits = bits + k * span * kBitsPerTableEntry + (k > 1 ? 8.0 * C : 0.0);
    }
    __syncthreads();
    const double bits = s_bits;
    if (bits > best_bits * (1.0 - kMinGain)) break;
    best_bits = bits;
    best_k = k;
    for (uint32_t c = tid; c < C; c += nt) best_assign[c] = assign[c];
    __syncthreads();
  }
  merge(best_assign, best_k);
  for (uint32_t i = tid; i < kFitMaxK * kAlphabet; i += nt)
    (&out->merged[0][0])[i] = i < best_k * kAlphabet ? merged[i] : 0;
  if (tid == 0) {
    out->k = best_k;
    out->unsafe = s_unsafe;
  }
}

// ---------------------------------------------------------------------------------------------

struct SegmentDev {
  uint32_t group, token_begin, token_count;
  uint64_t region;  // of the segment's worst-case space: states, then room for one word per symbol
};

// One warp codes one segment backwards: lanes descending within a step, as the CPU does, so the
// k-th flushed word goes k places from the end of the region and the words end up in decode order.
__device__ void encode_segment(const SegmentDev& s, const GroupDev& g, const EncTable* tables,
                               uint8_t* work, uint32_t* sizes, uint32_t index) {
  const uint32_t lane = threadIdx.x % 32, above = 0xfffffffeu << lane;
  const uint32_t C = g.channels, n = s.token_count * C;
  const int8_t* sym = g.symbols + (size_t)s.token_begin * C;
  uint8_t* region = work + s.region;
  uint16_t* words = reinterpret_cast<uint16_t*>(region + rans::kStateBytes);
  uint32_t x = rans::kLowerBound, pushed = 0;
  const uint32_t last = (n - 1) / 32 * 32, back = 32 % C;
  uint32_t c = (last + lane) % C;
  for (int64_t p0 = last; p0 >= 0; p0 -= 32) {
    const uint32_t p = (uint32_t)p0 + lane;
    uint32_t flush = 0;
    uint16_t w = 0;
    if (p < n) {
      const auto* table = reinterpret_cast<const rans::EncSym*>(tables + __ldg(g.table_of + c));
      flush = rans::enc_put(x, table[sym[p] + kSymbolBias], &w);
    }
    const uint32_t mask = __ballot_sync(~0u, flush);
    if (flush) words[n - 1 - (pushed + __popc(mask & above))] = w;
    pushed += __popc(mask);
    c = c >= back ? c - back : c + C - back;
  }
  reinterpret_cast<uint32_t*>(region)[lane] = x;
  if (lane == 0) sizes[index] = rans::kStateBytes + 2 * pushed;
}

template <bool kShared>
__global__ void __launch_bounds__(kWarps * 32)
    encode_kernel(const SegmentDev* segs, const Work* work, const GroupDev* groups, uint8_t* buf,
                  uint32_t* sizes) {
  extern __shared__ uint4 smem[];
  const Work w = work[blockIdx.x];
  const GroupDev& g = groups[segs[w.first_segment].group];
  const EncTable* tables = g.tables;
  if constexpr (kShared) {
    const uint4* src = reinterpret_cast<const uint4*>(g.tables);
    for (uint32_t i = threadIdx.x; i < g.num_tables * sizeof(EncTable) / 16; i += blockDim.x)
      smem[i] = src[i];
    __syncthreads();
    tables = reinterpret_cast<const EncTable*>(smem);
  }
  const uint32_t warp = threadIdx.x / 32;
  if (warp < w.count)
    encode_segment(segs[w.first_segment + warp], g, tables, buf, sizes, w.first_segment + warp);
}

// Exclusive prefix sum of the segment sizes into offsets[0..n], offsets[n] = total. One block.
__global__ void __launch_bounds__(1024)
    scan_sizes(const uint32_t* sizes, uint32_t n, uint64_t* offsets) {
  __shared__ uint64_t part[1024];
  const uint32_t per = (n + 1023) / 1024, b = threadIdx.x * per, e = min(b + per, n);
  uint64_t sum = 0;
  for (uint32_t i = b; i < e; ++i) sum += sizes[i];
  part[threadIdx.x] = sum;
  __syncthreads();
  for (uint32_t s = 1; s < 1024; s *= 2) {
    const uint64_t v = threadIdx.x >= s ? part[threadIdx.x - s] : 0;
    __syncthreads();
    part[threadIdx.x] += v;
    __syncthreads();
  }
  uint64_t at = part[threadIdx.x] - sum;
  for (uint32_t i = b; i < e; ++i) offsets[i] = at, at += sizes[i];
  if (threadIdx.x == 1023) offsets[n] = part[1023];
}

// Moves each segment's states and words from its region to its place in the payload.
__global__ void compact(const SegmentDev* segs, const GroupDev* groups, const uint8_t* buf,
                        const uint32_t* sizes, const uint64_t* dst_offset, uint8_t* payload) {
  const SegmentDev s = segs[blockIdx.x];
  const uint32_t n = s.token_count * groups[s.group].channels;
  const uint32_t nwords = (sizes[blockIdx.x] - rans::kStateBytes) / 2;
  const uint16_t* states = reinterpret_cast<const uint16_t*>(buf + s.region);
  const uint16_t* words = states + rans::kStateBytes / 2 + (n - nwords);
  uint16_t* dst = reinterpret_cast<uint16_t*>(payload + dst_offset[blockIdx.x]);
  for (uint32_t i = threadIdx.x; i < rans::kStateBytes / 2; i += blockDim.x) dst[i] = states[i];
  for (uint32_t i = threadIdx.x; i < nwords; i += blockDim.x)
    dst[rans::kStateBytes / 2 + i] = words[i];
}

// The blob's CRC from the head's (host) and the payload's (device), stored as the trailer.
__global__ void finish_crc(const uint32_t* payload_crc, uint32_t head_crc, uint64_t payload_bytes,
                           CrcPowers pw, uint8_t* trailer) {
  const uint32_t crc = crc_combine(head_crc, *payload_crc, payload_bytes, pw);
  for (int i = 0; i < 4; ++i) trailer[i] = (uint8_t)(crc >> (8 * i));
}

uint32_t blocks(size_t n, uint32_t per) { return (uint32_t)((n + per - 1) / per); }

// Host-side plan of one group: its descriptor, quantizer layout and device buffer offsets.
struct Plan {
  GroupDesc desc;
  GroupQuant quant;
  size_t token_scale = 0, channel_scale = 0, channel_offset = 0;  // element offsets in scales
  size_t symbols = 0, hist = 0, terms = 0, fit = 0, raw = 0;      // raw: byte offset in results
  bool gpu_fit = false;
};

void check_supported(Quantizer kind, uint8_t all_flags) {
  if (kind == Quantizer::Lossless)
    throw InputError("the lossless level has no GPU encoder: encode a host copy of the cache");
  const uint8_t flags = all_flags & ~(kTokenCodes | kChannelCodes);  // how scales travel
  const bool ok = flags == kTokenScale ||
                  (flags == (kChannelScale | kChannelOffset) &&
                   (kind == Quantizer::ChannelStep || kind == Quantizer::LayerStep)) ||
                  flags == (kTokenScale | kChannelOffset) ||
                  (flags == (kTokenScale | kChannelScale) && kind == Quantizer::TokenStep);
  if (!ok) throw InputError("this quantizer has no GPU encoder yet; encode on the CPU");
}

// Table set from the GPU fit: tables.cpp drop_empty over the merged clusters.
TableSet tables_from_fit(const FitOut& f, const uint8_t* assign, uint32_t channels) {
  TableSet ts;
  int remap[kFitMaxK];
  for (uint32_t j = 0; j < f.k; ++j) {
    Histogram h;
    std::copy(f.merged[j], f.merged[j] + kAlphabet, h.begin());
    remap[j] = -1;
    if (std::all_of(h.begin(), h.end(), [](uint32_t v) { return v == 0; })) continue;
    remap[j] = (int)ts.tables.size();
    ts.tables.push_back(normalize(h));
  }
  ts.channel_table.resize(channels);
  for (uint32_t c = 0; c < channels; ++c) ts.channel_table[c] = (uint8_t)remap[assign[c]];
  return ts;
}

}  // namespace

void encode(const EncodeRequest& req, int device, uintptr_t stream, const BlobAllocator& alloc,
            bool device_out) {
  check_request(req);
  use_device(device);
  const cudaStream_t st = as_stream(stream);
  StageTimer timer("encode");
  const DType dtype = req.groups[0].view.dtype;

  // ---- plan
  std::vector<Plan> plans;
  size_t scales = 0, syms = 0, hists = 0, terms = 0, fits = 0, raws = 0;
  uint32_t max_fit_c = 0;
  for (const GroupSpec& s : req.groups) {
    if (s.view.dtype != dtype) throw InputError("all KV tensors must share one dtype");
    Plan p;
    p.desc = plan_group(s, req.segment_symbols);
    p.quant = quantizer_layout(s.quantizer, s.param, s.weights, s.view.tokens, s.view.channels(),
                               s.raw_rows);
    check_supported(s.quantizer, p.quant.flags);
    const uint32_t T = p.desc.tokens, C = p.desc.channels();
    const uint8_t fl = p.quant.flags;
    p.token_scale = scales;
    scales += fl & kTokenScale ? T : 0;
    p.channel_scale = scales;
    scales += fl & kChannelScale ? C : 0;
    p.channel_offset = scales;
    scales += fl & kChannelOffset ? C : 0;
    scales = (scales + 7) & ~size_t{7};
    p.symbols = syms;
    syms += (size_t)T * C;
    p.hist = hists;
    hists += (size_t)C * kAlphabet;
    p.terms = terms;
    terms += s.quantizer == Quantizer::LayerStep ? C : 0;
    const uint32_t limit = std::min({s.max_tables, C, 255u});
    p.gpu_fit = C <= kFitMaxChannels && limit < 2 * kFitMaxK && (uint64_t)T * C < (1ull << 32);
    p.fit = fits;
    if (p.gpu_fit) {
      fits += align16(sizeof(FitOut) + C);
      max_fit_c = std::max(max_fit_c, C);
    }
    p.raw = raws;
    raws += align16(4ull * p.quant.raw_rows * C);
    plans.push_back(p);
  }
  const size_t ngroups = plans.size();
  // Results read back after stage 1: error flag, scales, table fits, raw rows.
  const size_t res_bad = 0, res_scales = 16, res_fit = align16(res_scales + 2 * scales);
  const size_t res_raw = res_fit + fits, res_bytes = res_raw + raws;
  DeviceBuffer res_buf(res_bytes, st), symbols_buf(syms, st), hist_buf(4 * hists, st);
  DeviceBuffer terms_buf(sizeof(ChanTerms) * terms, st);
  uint8_t* res = res_buf.get();
  auto* sc = reinterpret_cast<uint16_t*>(res + res_scales);
  // Step weights: token weights go to the device; channel scales, fixed by the weights, go
  // where the scales are read back from (stream-ordered before the kernels that read them).
  std::vector<float> weights_host;
  std::vector<size_t> weights_at;
  for (const GroupSpec& s : req.groups) {
    weights_at.push_back(weights_host.size());
    weights_host.insert(weights_host.end(), s.weights.token.begin(), s.weights.token.end());
  }
  DeviceBuffer weights_buf(4 * weights_host.size() + 16, st);
  if (!weights_host.empty())
    CG_CUDA(cudaMemcpyAsync(weights_buf.get(), weights_host.data(), 4 * weights_host.size(),
                            cudaMemcpyHostToDevice, st));
  for (const Plan& p : plans)
    if (p.quant.flags & kTokenScale && p.quant.flags & kChannelScale)
      CG_CUDA(cudaMemcpyAsync(sc + p.channel_scale, p.quant.channel_scale.data(),
                              2 * p.quant.channel_scale.size(), cudaMemcpyHostToDevice, st));
  std::vector<const TensorView*> inputs;
  for (const GroupSpec& s : req.groups) inputs.push_back(&s.view);
  const DeviceViews in(inputs, st);
  std::vector<GroupDev> devs;
  std::vector<uint32_t> token_ids, row_ids, channel_ids, layer_ids, fit_ids;
  uint32_t max_t = 0, max_c = 0, max_tt = 0, max_rt = 0, max_cc = 0;
  for (size_t i = 0; i < ngroups; ++i) {
    const Plan& p = plans[i];
    const GroupSpec& s = req.groups[i];
    const uint8_t fl = p.quant.flags;
    const uint32_t T = p.desc.tokens, C = p.desc.channels();
    devs.push_back(
        {in.views()[i],
         T,
         C,
         s.quantizer,
         s.param,
         p.quant.max_symbol,
         fl & kTokenScale ? sc + p.token_scale : nullptr,
         fl & kChannelScale ? sc + p.channel_scale : nullptr,
         fl & kChannelOffset ? sc + p.channel_offset : nullptr,
         s.weights.token.empty() ? nullptr : weights_buf.get<float>() + weights_at[i],
         s.quantizer == Quantizer::LayerStep ? terms_buf.get<ChanTerms>() + p.terms : nullptr,
         symbols_buf.get<int8_t>() + p.symbols,
         hist_buf.get<uint32_t>() + p.hist,
         p.gpu_fit ? res + res_fit + p.fit : nullptr,
         s.max_tables,
         nullptr,
         nullptr,
         0,
         p.quant.raw_rows,
         reinterpret_cast<float*>(res + res_raw + p.raw)});
    if (fl & kTokenScale) {
      if (rows_fast_path(s.view, dtype, fl & (kChannelOffset | kChannelScale)))
        row_ids.push_back((uint32_t)i), max_rt = std::max(max_rt, T);
      else
        token_ids.push_back((uint32_t)i), max_tt = std::max(max_tt, T);
    }
    if (fl & kChannelOffset) channel_ids.push_back((uint32_t)i), max_cc = std::max(max_cc, C);
    if (s.quantizer == Quantizer::LayerStep) layer_ids.push_back((uint32_t)i);
    if (p.gpu_fit) fit_ids.push_back((uint32_t)i);
    max_t = std::max(max_t, T);
    max_c = std::max(max_c, C);
  }

  // ---- stage 1 (device): statistics, parameters, symbols, histograms, table fits
  Arena meta1;
  const size_t devs_at = meta1.add(devs);
  const size_t tok_at = meta1.add(token_ids), row_at = meta1.add(row_ids),
               ch_at = meta1.add(channel_ids);
  const size_t lay_at = meta1.add(layer_ids), fit_at = meta1.add(fit_ids);
  DeviceBuffer meta1_buf(meta1.size() + 16, st);
  meta1.upload(meta1_buf.get(), st);
  const auto* d1 = reinterpret_cast<const GroupDev*>(meta1_buf.get() + devs_at);
  auto ids = [&](size_t at) { return reinterpret_cast<const uint32_t*>(meta1_buf.get() + at); };
  auto* bad = reinterpret_cast<uint32_t*>(res + res_bad);
  cudaEvent_t ev[4];
  for (cudaEvent_t& e : ev) CG_CUDA(cudaEventCreate(&e));
  CG_CUDA(cudaMemsetAsync(res, 0, 16, st));
  CG_CUDA(cudaMemsetAsync(hist_buf.get(), 0, 4 * hists, st));
  CG_CUDA(cudaEventRecord(ev[0], st));
  with_dtype(dtype, [&]<DType D>() {
    if (!channel_ids.empty())
      channel_stats<D>
          <<<dim3(blocks(max_cc, 128), channel_ids.size()), 128, 0, st>>>(d1, ids(ch_at), bad);
    if (!layer_ids.empty()) layer_step<<<layer_ids.size(), 1024, 0, st>>>(d1, ids(lay_at));
    if (!token_ids.empty())
      token_stats<D>
          <<<dim3(blocks(max_tt, 32), token_ids.size()), 256, 0, st>>>(d1, ids(tok_at), bad);
    if constexpr (D != DType::F32)
      if (!row_ids.empty())
        token_stats_rows<D>
            <<<dim3(blocks(max_rt, 32 * kRowWarps), row_ids.size()), 32 * kRowWarps, 0, st>>>(
                d1, ids(row_at), bad);
    CG_CUDA(cudaEventRecord(ev[1], st));
    quantize_hist<D>
        <<<dim3(blocks(max_t, kQuantTokens), blocks(max_c, 32), ngroups), 256, 0, st>>>(d1);
  });
  CG_CUDA(cudaEventRecord(ev[2], st));
  if (!fit_ids.empty()) {
    const size_t shared = fit_shared_bytes(max_fit_c);
    CG_CUDA(cudaFuncSetAttribute(fit_tables_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 (int)shared));
    fit_tables_kernel<<<fit_ids.size(), kFitThreads, shared, st>>>(d1, ids(fit_at));
  }
  CG_CUDA(cudaEventRecord(ev[3], st));
  CG_CUDA(cudaGetLastError());
  Pinned res_host(res_bytes);
  CG_CUDA(cudaMemcpyAsync(res_host.get(), res, res_bytes, cudaMemcpyDeviceToHost, st));
  CG_CUDA(cudaStreamSynchronize(st));
  uint32_t nonfinite;
  std::memcpy(&nonfinite, res_host.get() + res_bad, 4);
  timer.mark("quantize + fit tables (device)");
  const char* kernel_names[3] = {"  of which statistics + parameters (kernels)",
                                 "  of which quantize + histograms (kernel)",
                                 "  of which table fit (kernel)"};
  for (int k = 0; k < 3; ++k) {
    float ms = 0.0f;
    cudaEventElapsedTime(&ms, ev[k], ev[k + 1]);
    timer.note(kernel_names[k], ms);
  }
  for (cudaEvent_t e : ev) cudaEventDestroy(e);
  if (nonfinite) throw InputError("KV tensor contains NaN or Inf");

  // ---- stage 2 (host): parameters and tables of each group
  std::vector<EncodedGroup> groups(ngroups);
  std::vector<std::vector<EncTable>> enc(ngroups);
  std::atomic<uint32_t> host_fits{0};
  parallel_for(ngroups, req.threads, [&](size_t i) {
    const Plan& p = plans[i];
    Group& g = groups[i].group;
    g.desc = p.desc;
    g.quant = p.quant;
    const auto* hs = reinterpret_cast<const uint16_t*>(res_host.get() + res_scales);
    const uint32_t T = p.desc.tokens, C = p.desc.channels();
    if (p.quant.flags & kTokenScale)
      g.quant.token_scale.assign(hs + p.token_scale, hs + p.token_scale + T);
    if (p.quant.flags & kChannelScale)
      g.quant.channel_scale.assign(hs + p.channel_scale, hs + p.channel_scale + C);
    if (p.quant.flags & kChannelOffset)
      g.quant.channel_offset.assign(hs + p.channel_offset, hs + p.channel_offset + C);
    const auto* raw = reinterpret_cast<const float*>(res_host.get() + res_raw + p.raw);
    g.quant.raw.assign(raw, raw + (size_t)p.quant.raw_rows * C);
    const auto* f = reinterpret_cast<const FitOut*>(res_host.get() + res_fit + p.fit);
    if (p.gpu_fit && !f->unsafe) {
      g.tables = tables_from_fit(*f, reinterpret_cast<const uint8_t*>(f + 1), C);
    } else {
      ++host_fits;
      std::vector<Histogram> h(C);
      CG_CUDA(cudaMemcpy(h.data(), hist_buf.get<uint32_t>() + p.hist, (size_t)C * sizeof(Histogram),
                         cudaMemcpyDeviceToHost));
      g.tables = fit_tables(h, req.groups[i].max_tables);
    }
    for (const Table& t : g.tables.tables) enc[i].push_back(encoder_symbols(t));
  });

  Arena meta2;
  std::vector<size_t> at;
  for (size_t i = 0; i < ngroups; ++i) {
    at.push_back(meta2.add(enc[i]));
    at.push_back(meta2.add(groups[i].group.tables.channel_table));
  }
  std::vector<SegmentDev> segs;
  std::vector<Work> work[2];
  uint64_t region = 0;
  for (uint32_t gi = 0; gi < ngroups; ++gi) {
    const GroupDesc& d = plans[gi].desc;
    const bool shared = groups[gi].group.tables.tables.size() <= kSharedTables;
    add_work((uint32_t)segs.size(), d.num_segments, work[shared ? 0 : 1]);
    for (uint32_t t0 = 0; t0 < d.tokens; t0 += d.seg_tokens) {
      const uint32_t tokens = std::min(d.seg_tokens, d.tokens - t0);
      segs.push_back({gi, t0, tokens, region});
      region += (rans::kStateBytes + 2ull * tokens * d.channels() + 15) & ~uint64_t{15};
    }
  }
  const uint32_t nseg = (uint32_t)segs.size();
  const size_t segs_at = meta2.add(segs), work_at[2] = {meta2.add(work[0]), meta2.add(work[1])};
  const size_t devs2_at = meta2.add(devs);
  DeviceBuffer meta2_buf(meta2.size() + 16, st), buf(region, st);
  DeviceBuffer sizes_buf(4 * nseg + 8 * (nseg + 1) + 16, st);
  uint32_t shared_bytes = 0;
  for (size_t i = 0; i < ngroups; ++i) {
    GroupDev& g = devs[i];
    g.tables = reinterpret_cast<const EncTable*>(meta2_buf.get() + at[2 * i]);
    g.table_of = meta2_buf.get() + at[2 * i + 1];
    g.num_tables = (uint32_t)groups[i].group.tables.tables.size();
    if (g.num_tables <= kSharedTables)
      shared_bytes = std::max(shared_bytes, (uint32_t)(g.num_tables * sizeof(EncTable)));
  }
  meta2.overwrite(devs2_at, devs);
  meta2.upload(meta2_buf.get(), st);
  timer.mark(host_fits ? "tables (host, some groups fitted on host)" : "tables (host)");

  // ---- stage 3 (device): rANS, sizes, offsets
  const auto* segs_dev = reinterpret_cast<const SegmentDev*>(meta2_buf.get() + segs_at);
  const auto* d2 = reinterpret_cast<const GroupDev*>(meta2_buf.get() + devs2_at);
  uint32_t* sizes_dev = sizes_buf.get<uint32_t>();
  auto* offsets_dev = reinterpret_cast<uint64_t*>(sizes_buf.get() + ((4 * nseg + 7) & ~size_t{7}));
  for (int k = 0; k < 2; ++k)
    if (!work[k].empty()) {
      const auto* w = reinterpret_cast<const Work*>(meta2_buf.get() + work_at[k]);
      if (k == 0)
        encode_kernel<true><<<work[k].size(), kWarps * 32, shared_bytes, st>>>(
            segs_dev, w, d2, buf.get(), sizes_dev);
      else
        encode_kernel<false>
            <<<work[k].size(), kWarps * 32, 0, st>>>(segs_dev, w, d2, buf.get(), sizes_dev);
    }
  scan_sizes<<<1, 1024, 0, st>>>(sizes_dev, nseg, offsets_dev);
  CG_CUDA(cudaGetLastError());
  Pinned sizes_host(4 * nseg + 8);
  CG_CUDA(cudaMemcpyAsync(sizes_host.get(), sizes_dev, 4 * nseg, cudaMemcpyDeviceToHost, st));
  CG_CUDA(cudaMemcpyAsync(sizes_host.get() + 4 * nseg, offsets_dev + nseg, 8,
                          cudaMemcpyDeviceToHost, st));
  // The head meanwhile, on the host, with placeholder segment sizes: only the total and the
  // segment index depend on them, and they are patched in below.
  for (size_t i = 0; i < ngroups; ++i)
    groups[i].segment_bytes.assign(plans[i].desc.num_segments, 0);
  std::vector<uint8_t> head = blob_head(blob_header(req), groups, 0);
  uint64_t index_off;
  std::memcpy(&index_off, head.data() + 40, 8);  // header: total at 8, index offset at 40
  CG_CUDA(cudaStreamSynchronize(st));
  uint64_t total;
  std::memcpy(&total, sizes_host.get() + 4 * nseg, 8);
  const uint64_t blob_bytes = head.size() + total + 4;
  std::memcpy(head.data() + 8, &blob_bytes, 8);
  std::memcpy(head.data() + index_off, sizes_host.get(), 4 * (size_t)nseg);
  timer.mark("rANS encode (device) + head (host)");

  // ---- stage 4 (device): compaction and the payload's CRC, into the caller's device memory or
  // into a scratch payload that stage 5 copies to the caller's host memory.
  std::optional<DeviceBuffer> scratch;
  uint8_t* out = nullptr;
  if (device_out) {
    out = alloc(blob_bytes);
  } else {
    scratch.emplace(total + 16, st);
  }
  uint8_t* payload = device_out ? out + head.size() : scratch->get();
  DeviceBuffer crc_buf(crc_scratch_bytes(total) + 16, st);
  compact<<<nseg, 256, 0, st>>>(segs_dev, d2, buf.get(), sizes_dev, offsets_dev, payload);
  CG_CUDA(cudaGetLastError());
  auto* crc_dev = reinterpret_cast<uint32_t*>(crc_buf.get());
  crc32c_device(payload, total, crc_dev, crc_buf.get() + 16, st);
  const uint32_t head_crc = crc32c(head.data(), head.size());
  static const CrcPowers pw = crc_powers();
  if (device_out) {
    // Head up through pinned staging, CRC combined on the device into the trailer.
    Pinned head_stage(head.size());
    std::memcpy(head_stage.get(), head.data(), head.size());
    CG_CUDA(cudaMemcpyAsync(out, head_stage.get(), head.size(), cudaMemcpyHostToDevice, st));
    finish_crc<<<1, 1, 0, st>>>(crc_dev, head_crc, total, pw, out + head.size() + total);
    CG_CUDA(cudaGetLastError());
    CG_CUDA(cudaStreamSynchronize(st));  // the staging goes back to the pool
    timer.mark("compact + CRC + head upload (device)");
    return;
  }
  uint32_t* crc_host = reinterpret_cast<uint32_t*>(res_host.get());
  CG_CUDA(cudaMemcpyAsync(crc_host, crc_dev, 4, cudaMemcpyDeviceToHost, st));
  CG_CUDA(cudaStreamSynchronize(st));
  const uint32_t crc = crc_combine(head_crc, *crc_host, total, pw);
  timer.mark("compact + CRC (device)");

  // ---- stage 5: the blob in the caller's host memory
  out = alloc(blob_bytes);
  std::memcpy(out, head.data(), head.size());
  download(out + head.size(), payload, total, st, req.threads);
  std::memcpy(out + head.size() + total, &crc, 4);
  timer.mark("payload to host (D2H + copy)");
}

}  // namespace cachegen::cuda
