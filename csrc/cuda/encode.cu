// GPU encode: statistics and quantizer fitting, quantization with per-channel histograms, then
// (after fitting tables on the host from the histograms) one warp per segment coding backwards,
// the mirror of decode.cu, into a worst-case-sized buffer that is compacted into the payload.
// Every step reproduces the CPU encoder's arithmetic, so the blob is byte-identical.
#include <algorithm>

#include "common.cuh"
#include "parallel.hpp"
#include "quant.hpp"
#include "tables.hpp"

namespace cachegen::cuda {
namespace {

using EncTable = std::array<rans::EncSym, kAlphabet>;
constexpr uint32_t kSharedTables = (32u << 10) / sizeof(EncTable);

// One group on the device: its input, fitted parameters (fp16, as stored), symbols, histograms.
struct GroupDev {
  View in;
  uint32_t tokens, channels;
  Quantizer kind;
  float param;
  int max_symbol;
  uint16_t *token_scale, *channel_scale, *channel_offset;  // null where the quantizer has none
  int8_t* symbols;                                         // [tokens, channels]
  uint32_t* hist;                                          // [channels, 256]
  const EncTable* tables;
  const uint8_t* table_of;
  uint32_t num_tables;
};
static_assert(sizeof(EncTable) % 16 == 0, "tables are copied to shared memory as uint4");

__device__ bool finite(float x) { return (f32_bits(x) & 0x7f800000u) != 0x7f800000u; }

// Per token: max |x| and the sum of squares in the CPU's order (eight strided partial sums in
// fp32, the tail into the first, then added in fp64). Eight threads per token.
template <DType D>
__global__ void token_stats(const GroupDev* groups, const uint32_t* ids, uint32_t* bad) {
  const GroupDev& g = groups[ids[blockIdx.y]];
  const uint32_t t = blockIdx.x * (blockDim.x / 8) + threadIdx.x / 8, k = threadIdx.x % 8;
  const uint32_t C = g.channels, main = C - C % 8;
  const bool live = t < g.tokens;
  float sq = 0.0f, mx = 0.0f;
  bool ok = true;
  auto add = [&](uint32_t c) {
    const float x = load_elem<D>(g.in, t, c), ax = fabsf(x);
    ok &= finite(x);
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
  if (k == 0) g.token_scale[t] = token_step(g.kind, g.param, g.max_symbol, sum_sq, absmax, C);
}

// Per channel: sums in fp64 in token order, min and max, as the CPU's ChannelStats.
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
  g.channel_scale[c] = f.step;
}

// Quantize a tile of 32 channels x 256 tokens; histogram it in shared memory, then globally.
template <DType D>
__global__ void __launch_bounds__(256) quantize_hist(const GroupDev* groups) {
  __shared__ uint32_t hist[32][kAlphabet];
  const GroupDev& g = groups[blockIdx.z];
  const uint32_t lane = threadIdx.x % 32, c0 = blockIdx.y * 32, t0 = blockIdx.x * 256;
  if (c0 >= g.channels || t0 >= g.tokens) return;
  for (uint32_t i = threadIdx.x; i < 32 * kAlphabet; i += blockDim.x) (&hist[0][0])[i] = 0;
  __syncthreads();
  const uint32_t c = c0 + lane;
  if (c < g.channels) {
    const float inv_b = safe_inverse(g.channel_scale ? f16_to_f32(g.channel_scale[c]) : 1.0f);
    const float o = g.channel_offset ? f16_to_f32(g.channel_offset[c]) : 0.0f;
    const uint32_t t_end = min(t0 + 256, g.tokens);
    for (uint32_t t = t0 + threadIdx.x / 32; t < t_end; t += blockDim.x / 32) {
      const float inv_a = safe_inverse(g.token_scale ? f16_to_f32(g.token_scale[t]) : 1.0f);
      const int s = quantize(load_elem<D>(g.in, t, c), mul_rn(inv_a, inv_b), o, g.max_symbol);
      g.symbols[(size_t)t * g.channels + c] = (int8_t)s;
      atomicAdd(&hist[lane][s + kSymbolBias], 1u);
    }
  }
  __syncthreads();
  for (uint32_t i = threadIdx.x; i < 32 * kAlphabet; i += blockDim.x) {
    const uint32_t v = (&hist[0][0])[i], cc = c0 + i / kAlphabet;
    if (v && cc < g.channels) atomicAdd(&g.hist[(size_t)cc * kAlphabet + i % kAlphabet], v);
  }
}

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
  for (uint32_t i = threadIdx.x; i < nwords; i += blockDim.x) dst[rans::kStateBytes / 2 + i] = words[i];
}

template <typename T>
T* upload(const std::vector<T>& v, const DeviceBuffer& buf, size_t at, cudaStream_t st) {
  T* dst = reinterpret_cast<T*>(buf.get() + at);
  CG_CUDA(cudaMemcpyAsync(dst, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice, st));
  return dst;
}

uint32_t blocks(size_t n, uint32_t per) { return (uint32_t)((n + per - 1) / per); }

// Host-side plan of one group: its descriptor, quantizer layout and device buffer offsets.
struct Plan {
  GroupDesc desc;
  GroupQuant quant;
  size_t token_scale, channel_scale, channel_offset, symbols, hist;  // element offsets
};

// Stage 1 on the device: statistics, fitted parameters, symbols and histograms of all groups.
class Quantized {
 public:
  Quantized(const EncodeRequest& req, cudaStream_t st) : st_(st) {
    size_t scales = 0, syms = 0, hists = 0;
    for (const GroupSpec& s : req.groups) {
      if (s.view.dtype != req.groups[0].view.dtype) throw InputError("all KV tensors must share one dtype");
      Plan p{plan_group(s, req.segment_symbols), quantizer_layout(s.quantizer, s.param), 0, 0, 0, 0, 0};
      if (!(p.quant.flags & kTokenScale) && s.quantizer != Quantizer::ChannelStep)
        throw InputError("this quantizer has no GPU encoder yet; encode on the CPU");
      const uint32_t T = p.desc.tokens, C = p.desc.channels();
      const bool per_token = p.quant.flags & kTokenScale;
      p.token_scale = scales;
      scales += per_token ? T : 0;
      p.channel_scale = scales;
      scales += per_token ? 0 : C;
      p.channel_offset = scales;
      scales += per_token ? 0 : C;
      p.symbols = syms;
      syms += (size_t)T * C;
      p.hist = hists;
      hists += (size_t)C * kAlphabet;
      plans.push_back(p);
    }
    scales_.resize(scales);
    scale_buf_ = std::make_unique<DeviceBuffer>(2 * scales + 16, st);
    symbols_ = std::make_unique<DeviceBuffer>(syms, st);
    hist_buf_ = std::make_unique<DeviceBuffer>(4 * hists, st);
    uint16_t* sc = scale_buf_->get<uint16_t>();
    for (size_t i = 0; i < plans.size(); ++i) {
      const Plan& p = plans[i];
      const bool per_token = p.quant.flags & kTokenScale;
      const GroupSpec& s = req.groups[i];
      devs.push_back({to_view(s.view), p.desc.tokens, p.desc.channels(), s.quantizer, s.param,
                      p.quant.max_symbol, per_token ? sc + p.token_scale : nullptr,
                      per_token ? nullptr : sc + p.channel_scale,
                      per_token ? nullptr : sc + p.channel_offset, symbols_->get<int8_t>() + p.symbols,
                      hist_buf_->get<uint32_t>() + p.hist, nullptr, nullptr, 0});
      (per_token ? token_ids_ : channel_ids_).push_back((uint32_t)i);
    }
    run(req.groups[0].view.dtype, hists);
  }

  // The fitted groups on the host, histograms and parameters copied back.
  std::vector<Group> fit(const EncodeRequest& req) {
    std::vector<Group> groups(plans.size());
    parallel_for(plans.size(), req.threads, [&](size_t i) {
      const Plan& p = plans[i];
      Group& g = groups[i];
      g.desc = p.desc;
      g.quant = p.quant;
      const uint16_t* sc = scales_.data();
      const uint32_t T = p.desc.tokens, C = p.desc.channels();
      if (g.quant.flags & kTokenScale) {
        g.quant.token_scale.assign(sc + p.token_scale, sc + p.token_scale + T);
      } else {
        g.quant.channel_scale.assign(sc + p.channel_scale, sc + p.channel_scale + C);
        g.quant.channel_offset.assign(sc + p.channel_offset, sc + p.channel_offset + C);
      }
      std::vector<Histogram> hists(C);
      std::memcpy(hists.data(), hists_.data() + p.hist, (size_t)C * sizeof(Histogram));
      g.tables = fit_tables(hists, req.groups[i].max_tables);
    });
    return groups;
  }

  std::vector<Plan> plans;
  std::vector<GroupDev> devs;

 private:
  void run(DType dtype, size_t hists) {
    const size_t ids_at = devs.size() * sizeof(GroupDev);
    DeviceBuffer meta(ids_at + 4 * (devs.size() + 1), st_);
    GroupDev* d = upload(devs, meta, 0, st_);
    std::vector<uint32_t> ids = token_ids_;
    ids.insert(ids.end(), channel_ids_.begin(), channel_ids_.end());
    ids.push_back(0);  // the error flag
    uint32_t* id = upload(ids, meta, ids_at, st_);
    uint32_t* bad = id + devs.size();
    CG_CUDA(cudaMemsetAsync(hist_buf_->get(), 0, 4 * hists, st_));
    uint32_t max_t = 0, max_c = 0, max_ct = 0, max_cc = 0;
    for (uint32_t i : token_ids_) max_t = std::max(max_t, devs[i].tokens);
    for (uint32_t i : channel_ids_) max_cc = std::max(max_cc, devs[i].channels);
    for (const GroupDev& g : devs) max_ct = std::max(max_ct, g.tokens), max_c = std::max(max_c, g.channels);
    with_dtype(dtype, [&]<DType D>() {
      if (!token_ids_.empty())
        token_stats<D><<<dim3(blocks(max_t, 32), token_ids_.size()), 256, 0, st_>>>(d, id, bad);
      if (!channel_ids_.empty())
        channel_stats<D><<<dim3(blocks(max_cc, 128), channel_ids_.size()), 128, 0, st_>>>(
            d, id + token_ids_.size(), bad);
      quantize_hist<D><<<dim3(blocks(max_ct, 256), blocks(max_c, 32), devs.size()), 256, 0, st_>>>(d);
    });
    CG_CUDA(cudaGetLastError());
    uint32_t nonfinite = 0;
    hists_.resize(hists);
    CG_CUDA(cudaMemcpyAsync(&nonfinite, bad, 4, cudaMemcpyDeviceToHost, st_));
    CG_CUDA(cudaMemcpyAsync(scales_.data(), scale_buf_->get(), 2 * scales_.size(), cudaMemcpyDeviceToHost, st_));
    CG_CUDA(cudaMemcpyAsync(hists_.data(), hist_buf_->get(), 4 * hists, cudaMemcpyDeviceToHost, st_));
    CG_CUDA(cudaStreamSynchronize(st_));
    if (nonfinite) throw InputError("KV tensor contains NaN or Inf");
  }

  cudaStream_t st_;
  std::unique_ptr<DeviceBuffer> scale_buf_, symbols_, hist_buf_;
  std::vector<uint16_t> scales_;
  std::vector<uint32_t> hists_;
  std::vector<uint32_t> token_ids_, channel_ids_;
};

// Stage 2 on the device: every segment coded and compacted; returns the groups' payloads.
std::vector<EncodedGroup> code_segments(Quantized& q, std::vector<Group> groups, cudaStream_t st) {
  Arena arena;
  std::vector<size_t> at;
  for (const Group& g : groups) {
    std::vector<EncTable> enc;
    for (const Table& t : g.tables.tables) enc.push_back(encoder_symbols(t));
    at.push_back(arena.add(enc));
    at.push_back(arena.add(g.tables.channel_table));
  }
  std::vector<SegmentDev> segs;
  std::vector<Work> work[2];
  uint64_t region = 0;
  for (uint32_t gi = 0; gi < groups.size(); ++gi) {
    const GroupDesc& d = groups[gi].desc;
    const bool shared = groups[gi].tables.tables.size() <= kSharedTables;
    add_work((uint32_t)segs.size(), d.num_segments, work[shared ? 0 : 1]);
    for (uint32_t t0 = 0; t0 < d.tokens; t0 += d.seg_tokens) {
      const uint32_t tokens = std::min(d.seg_tokens, d.tokens - t0);
      segs.push_back({gi, t0, tokens, region});
      region += (rans::kStateBytes + 2ull * tokens * d.channels() + 15) & ~uint64_t{15};
    }
  }
  const size_t segs_at = arena.add(segs), work_at[2] = {arena.add(work[0]), arena.add(work[1])};
  const size_t devs_at = arena.add(q.devs);
  DeviceBuffer meta(arena.size() + 16, st), buf(region, st), sizes_buf(4 * segs.size(), st);
  uint32_t shared_bytes = 0;
  for (size_t i = 0; i < groups.size(); ++i) {
    GroupDev& g = q.devs[i];
    g.tables = reinterpret_cast<const EncTable*>(meta.get() + at[2 * i]);
    g.table_of = meta.get() + at[2 * i + 1];
    g.num_tables = (uint32_t)groups[i].tables.tables.size();
    if (g.num_tables <= kSharedTables)
      shared_bytes = std::max(shared_bytes, (uint32_t)(g.num_tables * sizeof(EncTable)));
  }
  arena.overwrite(devs_at, q.devs);
  arena.upload(meta.get(), st);
  const auto* segs_dev = reinterpret_cast<const SegmentDev*>(meta.get() + segs_at);
  const auto* devs = reinterpret_cast<const GroupDev*>(meta.get() + devs_at);
  uint32_t* sizes_dev = sizes_buf.get<uint32_t>();
  for (int k = 0; k < 2; ++k)
    if (!work[k].empty()) {
      const auto* w = reinterpret_cast<const Work*>(meta.get() + work_at[k]);
      if (k == 0)
        encode_kernel<true><<<work[k].size(), kWarps * 32, shared_bytes, st>>>(segs_dev, w, devs, buf.get(), sizes_dev);
      else
        encode_kernel<false><<<work[k].size(), kWarps * 32, 0, st>>>(segs_dev, w, devs, buf.get(), sizes_dev);
    }
  CG_CUDA(cudaGetLastError());
  std::vector<uint32_t> sizes(segs.size());
  CG_CUDA(cudaMemcpyAsync(sizes.data(), sizes_dev, 4 * sizes.size(), cudaMemcpyDeviceToHost, st));
  CG_CUDA(cudaStreamSynchronize(st));

  std::vector<uint64_t> offsets(segs.size());
  uint64_t total = 0;
  for (size_t i = 0; i < segs.size(); ++i) offsets[i] = total, total += sizes[i];
  DeviceBuffer offsets_buf(8 * offsets.size(), st), payload(total, st);
  const uint64_t* off_dev = upload(offsets, offsets_buf, 0, st);
  compact<<<segs.size(), 256, 0, st>>>(segs_dev, devs, buf.get(), sizes_dev, off_dev, payload.get());
  CG_CUDA(cudaGetLastError());
  std::vector<EncodedGroup> out(groups.size());
  size_t seg = 0;
  for (size_t i = 0; i < groups.size(); ++i) {
    EncodedGroup& e = out[i];
    const uint32_t n = groups[i].desc.num_segments;
    e.segment_bytes.assign(sizes.begin() + seg, sizes.begin() + seg + n);
    const uint64_t end = seg + n < segs.size() ? offsets[seg + n] : total;
    e.payload.resize(end - offsets[seg]);
    CG_CUDA(cudaMemcpyAsync(e.payload.data(), payload.get() + offsets[seg], e.payload.size(),
                            cudaMemcpyDeviceToHost, st));
    e.group = std::move(groups[i]);
    seg += n;
  }
  CG_CUDA(cudaStreamSynchronize(st));
  return out;
}

}  // namespace

void encode(const EncodeRequest& req, int device, uintptr_t stream, const BlobAllocator& alloc) {
  check_request(req);
  use_device(device);
  const cudaStream_t st = as_stream(stream);
  Quantized q(req, st);
  std::vector<EncodedGroup> groups = code_segments(q, q.fit(req), st);
  write_blob(blob_header(req), groups, alloc);
}

}  // namespace cachegen::cuda
