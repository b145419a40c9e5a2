// Stage 3 of the GPU encoder: one warp per segment codes it backwards with rans.hpp's encoder
// step (the mirror of decode.cu), into a worst-case region per segment; then the segments'
// offsets in the payload, a prefix sum of their sizes.
#include "encode_stages.cuh"

namespace cachegen::cuda {
namespace {

constexpr uint32_t kSharedTables = (32u << 10) / sizeof(EncTable);
static_assert(sizeof(EncTable) % 16 == 0, "tables are copied to shared memory as uint4");

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

// One launch runs every block: first those whose group's tables stay in global memory, then
// those that copy them to shared memory (two inlined copies of encode_segment, so that the
// latter's table reads are shared-memory loads).
__global__ void __launch_bounds__(kWarps * 32)
    encode_kernel(const SegmentDev* segs, const Work* global_work, uint32_t global_blocks,
                  const Work* shared_work, const GroupDev* groups, uint8_t* buf, uint32_t* sizes) {
  extern __shared__ uint4 smem[];
  const bool shared = blockIdx.x >= global_blocks;
  const Work w = shared ? shared_work[blockIdx.x - global_blocks] : global_work[blockIdx.x];
  // A copy in registers: the stores below could alias it for all the compiler knows.
  const GroupDev g = groups[segs[w.first_segment].group];
  if (shared) {  // uniform over the block
    const uint4* src = reinterpret_cast<const uint4*>(g.tables);
    for (uint32_t i = threadIdx.x; i < g.num_tables * sizeof(EncTable) / 16; i += blockDim.x)
      smem[i] = src[i];
    __syncthreads();
  }
  const uint32_t warp = threadIdx.x / 32;
  if (warp >= w.count) return;
  const uint32_t index = w.first_segment + warp;
  const SegmentDev s = segs[index];
  if (shared)
    encode_segment(s, g, reinterpret_cast<const EncTable*>(smem), buf, sizes, index);
  else
    encode_segment(s, g, g.tables, buf, sizes, index);
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

}  // namespace

SegmentPlan plan_segments(const EncodePlan& plan, const std::vector<GroupDev>& devs) {
  SegmentPlan sp;
  for (uint32_t gi = 0; gi < plan.groups.size(); ++gi) {
    const GroupDesc& d = plan.groups[gi].desc;
    const uint32_t nt = devs[gi].num_tables;
    const bool shared = nt <= kSharedTables;
    if (shared) sp.shared_bytes = std::max(sp.shared_bytes, (uint32_t)(nt * sizeof(EncTable)));
    add_work((uint32_t)sp.segs.size(), d.num_segments, sp.work[shared ? 0 : 1]);
    for (uint32_t t0 = 0; t0 < d.tokens; t0 += d.seg_tokens) {
      const uint32_t tokens = std::min(d.seg_tokens, d.tokens - t0);
      sp.segs.push_back(
          {.group = gi, .token_begin = t0, .token_count = tokens, .region = sp.region_bytes});
      sp.region_bytes += align16(rans::kStateBytes + 2ull * tokens * d.channels());
    }
  }
  return sp;
}

void queue_rans(const SegmentPlan& sp, const SegmentDev* segs, const Work* const work[2],
                const GroupDev* devs, uint8_t* buf, uint32_t* sizes, uint64_t* offsets,
                cudaStream_t st) {
  const uint32_t nseg = (uint32_t)sp.segs.size();
  const uint32_t global_blocks = (uint32_t)sp.work[1].size();
  if (const uint32_t blocks = (uint32_t)sp.work[0].size() + global_blocks)
    encode_kernel<<<blocks, kWarps * 32, sp.shared_bytes, st>>>(segs, work[1], global_blocks,
                                                                work[0], devs, buf, sizes);
  scan_sizes<<<1, 1024, 0, st>>>(sizes, nseg, offsets);
  CG_CUDA(cudaGetLastError());
}

}  // namespace cachegen::cuda
