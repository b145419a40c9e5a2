// GPU decode: one warp per segment. Lane l serves symbols p = l (mod 32) of each step of 32, and
// a ballot + prefix count finds each lane's refill word in the segment's shared word stream, in
// the order rans.hpp defines; symbols are dequantized and stored in the output's dtype at once.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <optional>
#include <string_view>
#include <thread>

#include "common.cuh"
#include "parallel.hpp"
#include "quant.hpp"
#include "tables.hpp"

namespace cachegen::cuda {
namespace {

// Whether aligned outputs take the staged decode (decode_segment_staged): yes, unless
// CACHEGEN_GPU_DECODE=direct forces the per-symbol stores (for tests of that path).
bool staged_stores() {
  static const bool staged = [] {
    const char* v = std::getenv("CACHEGEN_GPU_DECODE");
    return !(v && std::string_view(v) == "direct");
  }();
  return staged;
}

// A decode table on the device: the symbol of each slot, then one entry base per symbol.
constexpr uint32_t kTableBytes = rans::kProbScale + 4 * kAlphabet;
constexpr uint32_t kSharedTables = (48u << 10) / kTableBytes;  // fit the default 48 KB

// One group's decode state on the device (side data expanded to fp32).
struct GroupDev {
  const uint8_t* tables;    // num_tables * kTableBytes
  const uint8_t* table_of;  // per channel
  const float *a, *b, *o;   // per token, per channel, per channel
  uint32_t channels, num_tables;
  uint32_t raw_rows;  // the first tokens are these verbatim rows, [raw_rows, channels]
  const float* raw;
  uint32_t planes;  // Lossless: `channels` symbols per token are planes of channels / planes
};

// A lossless symbol (plane p of channel c) is byte p of that element's bits: stored as is, the
// output having the blob's dtype.
// `row`: the token's offset (View::token).
__device__ void store_plane(const View& out, int64_t row, uint32_t column, uint32_t channels,
                            uint32_t planes, int sym) {
  const uint32_t p = column / channels, c = column - p * channels;
  static_cast<uint8_t*>(out.data)[(row + out.in_token(c)) * planes + p] = (uint8_t)sym;
}

struct SegmentDev {
  uint64_t offset;  // of the segment in the blob
  uint32_t words, group, token_begin, token_count;
};

// One lane's rANS state in a segment; step() decodes the lane's symbol of the next step of 32
// (called by every lane, active or not: the refill is a warp-wide ballot).
struct LaneDecoder {
  const uint16_t* words;
  uint32_t x, nwords, below, wp = 0, overrun = 0;

  __device__ LaneDecoder(const uint8_t* seg, uint32_t words_count, uint32_t lane)
      : words(reinterpret_cast<const uint16_t*>(seg + rans::kStateBytes)),
        nwords(words_count),
        below((1u << lane) - 1) {
    const uint16_t* st = reinterpret_cast<const uint16_t*>(seg) + 2 * lane;  // 2-byte aligned
    x = st[0] | (uint32_t)st[1] << 16;
  }
  // `table`: the symbol's decode table (read only if active).
  __device__ int step(bool active, const uint8_t* table) {
    uint32_t need = 0, e = 0;
    if (active) {
      const uint32_t slot = x & (rans::kProbScale - 1);
      e = reinterpret_cast<const uint32_t*>(table + rans::kProbScale)[table[slot]] + slot;
      x = rans::dec_advance(x, e);
      need = rans::dec_needs_word(x);
    }
    const uint32_t mask = __ballot_sync(~0u, need);
    const size_t i = rans::clamp_word(wp + __popc(mask & below), nwords, need, overrun);
    x = rans::dec_renorm(x, need, need && nwords ? words[i] : 0);
    wp += __popc(mask);
    return (int)rans::dec_symbol_index(e) - kSymbolBias;
  }
  // Whether the whole warp ended its segment exactly.
  __device__ bool clean() const {
    return __all_sync(~0u, !overrun && wp == nwords && x == rans::kLowerBound);
  }
};

// Each symbol dequantized and stored as it is decoded: any output layout, lossless planes.
template <DType D>
__device__ void decode_segment(const uint8_t* blob, const SegmentDev& s, const GroupDev& g,
                               const View& out, const uint8_t* tables, uint32_t* bad) {
  const uint32_t lane = threadIdx.x % 32;
  LaneDecoder dec(blob + s.offset, s.words, lane);
  const uint32_t C = g.channels, n = s.token_count * C;
  const uint32_t t_end = s.token_begin + s.token_count;
  uint32_t c = lane % C, t = s.token_begin + lane / C;
  // Token t's offset, followed as t advances (every C / 32 steps at most): a paged output's
  // block lookup is not paid per symbol.
  int64_t row = t < t_end ? out.token(t) : 0;
  for (uint32_t p0 = 0; p0 < n; p0 += 32) {
    const bool active = p0 + lane < n;
    const int sym = dec.step(active, tables + (active ? __ldg(g.table_of + c) * kTableBytes : 0));
    if (active) {
      if (g.planes > 1)
        store_plane(out, row, c, C / g.planes, g.planes, sym);
      else
        store_at<D>(out, row + out.in_token(c),
                    t < g.raw_rows
                        ? __ldg(g.raw + (size_t)t * C + c)
                        : dequantize(sym, __ldg(g.a + t), __ldg(g.b + c), __ldg(g.o + c)));
    }
    c += 32 % C;
    uint32_t next = t + 32 / C;
    if (c >= C) c -= C, ++next;
    if (next != t) {
      t = next;
      if (t < t_end) row = out.token(t);
    }
  }
  if (!dec.clean() && lane == 0) atomicAdd(bad, 1u);
}

// Steps of 32 symbols a warp stages in shared memory before storing them as whole rows.
constexpr uint32_t kStageSteps = 32;

// Stores `count` staged symbols (a multiple of 8, in segment order from symbol `first`): each
// lane dequantizes runs of 8 channels of one token and stores them with 16-byte stores.
template <DType D>
__device__ void store_staged(const int8_t* stage, uint32_t first, uint32_t count,
                             const SegmentDev& s, const GroupDev& g, const View& out) {
  const uint32_t C = g.channels;
  for (uint32_t j = threadIdx.x % 32; j < count / 8; j += 32) {
    const uint32_t p = first + 8 * j, t = s.token_begin + p / C, c = p % C;
    float v[8];
    if (t < g.raw_rows) {
#pragma unroll
      for (int i = 0; i < 8; ++i) v[i] = __ldg(g.raw + (size_t)t * C + c + i);
    } else {
      const uint2 sy = *reinterpret_cast<const uint2*>(stage + 8 * j);
      const float4 b0 = __ldg(reinterpret_cast<const float4*>(g.b + c));
      const float4 b1 = __ldg(reinterpret_cast<const float4*>(g.b + c + 4));
      const float4 o0 = __ldg(reinterpret_cast<const float4*>(g.o + c));
      const float4 o1 = __ldg(reinterpret_cast<const float4*>(g.o + c + 4));
      const float a = __ldg(g.a + t);
      const float b[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
      const float o[8] = {o0.x, o0.y, o0.z, o0.w, o1.x, o1.y, o1.z, o1.w};
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const uint32_t word = i < 4 ? sy.x : sy.y;
        v[i] = dequantize((int8_t)(word >> (8 * (i % 4))), a, b[i], o[i]);
      }
    }
    store8<D>(out, out.token(t) + c, v);
  }
}

// decode_segment for outputs whose rows take 16-byte stores (View::vec8), lossless aside:
// symbols staged in shared memory, then dequantized and stored 8 channels at a time.
template <DType D>
__device__ void decode_segment_staged(const uint8_t* blob, const SegmentDev& s, const GroupDev& g,
                                      const View& out, const uint8_t* tables, int8_t* stage,
                                      uint32_t* bad) {
  const uint32_t lane = threadIdx.x % 32;
  LaneDecoder dec(blob + s.offset, s.words, lane);
  const uint32_t C = g.channels, n = s.token_count * C;
  uint32_t c = lane % C, k = 0, first = 0;
  for (uint32_t p0 = 0; p0 < n; p0 += 32) {
    const bool active = p0 + lane < n;
    const int sym = dec.step(active, tables + (active ? __ldg(g.table_of + c) * kTableBytes : 0));
    if (active) stage[k * 32 + lane] = (int8_t)sym;
    c += 32 % C;
    if (c >= C) c -= C;
    if (++k == kStageSteps || p0 + 32 >= n) {
      __syncwarp();
      store_staged<D>(stage, first, min(k * 32, n - first), s, g, out);
      __syncwarp();
      first += k * 32;
      k = 0;
    }
  }
  if (!dec.clean() && lane == 0) atomicAdd(bad, 1u);
}

// One block: up to kWarps segments of one group; 6 blocks per SM (40 registers, no spills, by
// ptxas -v). One launch runs every block: first those whose group has more tables than shared
// memory holds (they read them from global memory, and run longest), then those that copy their
// group's tables to shared memory.
template <DType D>
__global__ void __launch_bounds__(kWarps * 32, 6)
    decode_kernel(const uint8_t* blob, const SegmentDev* segs, const Work* global_work,
                  uint32_t global_blocks, const Work* shared_work, const GroupDev* groups,
                  const View* outs, bool staged, uint32_t* bad) {
  extern __shared__ uint4 smem[];
  const bool shared = blockIdx.x >= global_blocks;
  const Work w = shared ? shared_work[blockIdx.x - global_blocks] : global_work[blockIdx.x];
  const uint32_t gi = segs[w.first_segment].group;
  const GroupDev g = groups[gi];
  if (shared) {  // uniform over the block
    const uint4* src = reinterpret_cast<const uint4*>(g.tables);
    for (uint32_t i = threadIdx.x; i < g.num_tables * kTableBytes / 16; i += blockDim.x)
      smem[i] = src[i];
    __syncthreads();
  }
  // Copies in registers: the output stores could alias them for all the compiler knows.
  const View out = outs[gi];
  const uint32_t warp = threadIdx.x / 32;
  if (warp >= w.count) return;
  const SegmentDev s = segs[w.first_segment + warp];
  // Inlined copies per table place, so that the shared ones' table reads are shared loads.
  const auto* shared_tables = reinterpret_cast<const uint8_t*>(smem);
  if (staged && out.vec8 && g.planes == 1) {
    __shared__ __align__(16) int8_t stage[kWarps][kStageSteps * 32];
    if (shared)
      decode_segment_staged<D>(blob, s, g, out, shared_tables, stage[warp], bad);
    else
      decode_segment_staged<D>(blob, s, g, out, g.tables, stage[warp], bad);
  } else if (shared) {
    decode_segment<D>(blob, s, g, out, shared_tables, bad);
  } else {
    decode_segment<D>(blob, s, g, out, g.tables, bad);
  }
}

// Decode tables built on the device from the parsed 12-bit frequencies (512 bytes per table
// uploaded instead of 5 KB): one block of 256 threads per table. Thread i scans to its symbol's
// cumulative frequency, writes its entry base, then every slot finds its symbol by a binary
// search over the cumulative frequencies (the last symbol whose cum <= slot always has freq > 0,
// since parse_table checked that the frequencies sum to kProbScale).
__global__ void __launch_bounds__(256) build_tables_kernel(const uint16_t* freqs, uint8_t* tables) {
  __shared__ uint32_t cum[kAlphabet];
  const uint32_t i = threadIdx.x;
  const uint16_t* f = freqs + (size_t)blockIdx.x * kAlphabet;
  uint8_t* table = tables + (size_t)blockIdx.x * kTableBytes;
  const uint32_t fi = f[i];
  cum[i] = fi;
  __syncthreads();
  for (uint32_t d = 1; d < kAlphabet; d *= 2) {  // inclusive Hillis-Steele scan
    const uint32_t v = i >= d ? cum[i - d] : 0;
    __syncthreads();
    cum[i] += v;
    __syncthreads();
  }
  const uint32_t c = cum[i] - fi;  // exclusive
  __syncthreads();
  cum[i] = c;
  __syncthreads();
  reinterpret_cast<uint32_t*>(table + rans::kProbScale)[i] =
      fi ? rans::dec_entry_base(i, fi, c) : 0;
  for (uint32_t w = i; w < rans::kProbScale / 4; w += blockDim.x) {
    uint32_t word = 0;
    for (uint32_t k = 0; k < 4; ++k) {
      const uint32_t slot = 4 * w + k;
      uint32_t lo = 0, hi = kAlphabet - 1;  // largest j with cum[j] <= slot
      while (lo < hi) {
        const uint32_t mid = (lo + hi + 1) / 2;
        if (cum[mid] <= slot)
          lo = mid;
        else
          hi = mid - 1;
      }
      word |= lo << (8 * k);
    }
    reinterpret_cast<uint32_t*>(table)[w] = word;
  }
}

// One group's side parameters to expand to fp32 on the device (null source: 1, 1, 0).
struct ParamJob {
  const uint16_t *a16, *b16, *o16;
  float *a, *b, *o;
  uint32_t tokens, channels;
};

__global__ void expand_params_kernel(const ParamJob* jobs) {
  const ParamJob j = jobs[blockIdx.y];
  const uint32_t n = max(j.tokens, j.channels);
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    if (i < j.tokens) j.a[i] = j.a16 ? f16_to_f32(j.a16[i]) : 1.0f;
    if (i < j.channels) {
      j.b[i] = j.b16 ? f16_to_f32(j.b16[i]) : 1.0f;
      j.o[i] = j.o16 ? f16_to_f32(j.o16[i]) : 0.0f;
    }
  }
}

// The side data a group's decode needs must match its descriptor (parse_blob guarantees it; a
// plan is never built from anything else). Overflow lists (a transform's coefficients, which
// are inverted on the host anyway) have no device decoder.
void check_side(const Group& g) {
  const GroupDesc& d = g.desc;
  const GroupQuant& q = g.quant;
  if (q.flags & kOverflow)
    throw FormatError("blob has overflow symbols, which decode on the host only: decode it there");
  const uint32_t T = d.tokens, C = d.channels();
  if ((q.flags & kTokenScale) && q.token_scale.size() != T)
    throw FormatError("token scale count mismatch");
  if ((q.flags & kChannelScale) && q.channel_scale.size() != C)
    throw FormatError("channel scale count mismatch");
  if ((q.flags & kChannelOffset) && q.channel_offset.size() != C)
    throw FormatError("channel offset count mismatch");
  if (q.raw.size() != (size_t)q.raw_rows * C || q.raw_rows > T)
    throw FormatError("raw row count mismatch");
}

// Where one group's data lies: uploaded (offsets in the plan arena, SIZE_MAX where absent) or
// expanded on the device (offsets in the device-only region after the arena).
struct GroupAt {
  size_t first_table;  // index among all tables
  size_t map, a16, b16, o16, raw;
  size_t a, b, o;
};

// The decode plan: compact data uploaded in one arena (segments, work lists, 12-bit frequencies,
// fp16 side parameters, channel maps, group records, expansion jobs); the decode tables and the
// fp32 side parameters are expanded on the device into `dev_bytes` after it.
struct DecodePlan {
  Arena arena;
  size_t segs_at = 0, work_at[2] = {0, 0}, devs_at = 0, freqs_at = 0, jobs_at = 0;
  size_t dev_bytes = 0;  // decode tables first (kTableBytes is a multiple of 16), then fp32 data
  uint32_t total_tables = 0;
  uint32_t blocks[2] = {0, 0};
  uint32_t shared_bytes = 0;
  std::vector<GroupAt> at;
  std::vector<GroupDev> devs;
  std::vector<ParamJob> jobs;

  size_t device_floats(size_t n) {
    const size_t at = dev_bytes;
    dev_bytes = (dev_bytes + n * sizeof(float) + 15) & ~size_t{15};
    return at;
  }
};

size_t plan_bytes(const ParsedBlob& blob) {
  const size_t ng = blob.groups.size();
  size_t n =
      blob.segments.size() * sizeof(SegmentDev) + ng * (sizeof(GroupDev) + sizeof(ParamJob) + 128);
  for (const Group& g : blob.groups)
    n += g.tables.tables.size() * kAlphabet * 2 + g.tables.channel_table.size() +
         2 * (g.quant.token_scale.size() + g.quant.channel_scale.size() +
              g.quant.channel_offset.size()) +
         4 * g.quant.raw.size() + 80;
  return n + (blob.segments.size() / kWarps + 2 * ng) * sizeof(Work) + 64;
}

void add_segments(const ParsedBlob& blob, DecodePlan& p) {
  SegmentDev* segs = p.arena.alloc<SegmentDev>(blob.segments.size(), p.segs_at);
  for (size_t i = 0; i < blob.segments.size(); ++i) {
    const Segment& g = blob.segments[i];
    segs[i] = {.offset = g.offset,
               .words = (uint32_t)((g.bytes - rans::kStateBytes) / 2),
               .group = g.group,
               .token_begin = g.token_begin,
               .token_count = g.token_count};
  }
}

void add_frequencies(const ParsedBlob& blob, DecodePlan& p) {
  for (const Group& g : blob.groups) p.total_tables += (uint32_t)g.tables.tables.size();
  uint16_t* freqs = p.arena.alloc<uint16_t>((size_t)p.total_tables * kAlphabet, p.freqs_at);
  for (const Group& g : blob.groups)
    for (const Table& t : g.tables.tables) {
      std::memcpy(freqs, t.freq.data(), kAlphabet * sizeof(uint16_t));
      freqs += kAlphabet;
    }
  p.dev_bytes = (size_t)p.total_tables * kTableBytes;
}

// A group's side data into the plan, its blocks into the work lists.
void add_group(const Group& g, size_t first_table, DecodePlan& p, std::vector<Work> (&work)[2]) {
  check_side(g);
  const GroupDesc& d = g.desc;
  const GroupQuant& q = g.quant;
  auto add_if = [&](uint8_t flag, const std::vector<uint16_t>& v) {
    return (q.flags & flag) ? p.arena.add(v) : SIZE_MAX;
  };
  GroupAt at;
  at.first_table = first_table;
  at.map = p.arena.add(g.tables.channel_table);
  at.a16 = add_if(kTokenScale, q.token_scale);
  at.b16 = add_if(kChannelScale, q.channel_scale);
  at.o16 = add_if(kChannelOffset, q.channel_offset);
  at.raw = p.arena.add(q.raw);
  at.a = p.device_floats(d.tokens);
  at.b = p.device_floats(d.channels());
  at.o = p.device_floats(d.channels());
  p.at.push_back(at);
  const uint32_t nt = (uint32_t)g.tables.tables.size();
  const bool shared = nt <= kSharedTables;
  add_work(d.first_segment, d.num_segments, work[shared ? 0 : 1]);
  if (shared) p.shared_bytes = std::max(p.shared_bytes, nt * kTableBytes);
  GroupDev dev{};
  dev.channels = d.symbols_per_token();
  dev.num_tables = nt;
  dev.raw_rows = q.raw_rows;
  dev.planes = d.planes;
  p.devs.push_back(dev);
}

// Everything but the device addresses, which place_plan fills in.
DecodePlan build_plan(const ParsedBlob& blob) {
  DecodePlan p;
  p.arena.reserve(plan_bytes(blob));
  add_segments(blob, p);
  add_frequencies(blob, p);
  std::vector<Work> work[2];
  size_t first_table = 0;
  for (const Group& g : blob.groups) {
    add_group(g, first_table, p, work);
    first_table += g.tables.tables.size();
  }
  for (int k = 0; k < 2; ++k) {
    p.work_at[k] = p.arena.add(work[k]);
    p.blocks[k] = (uint32_t)work[k].size();
  }
  p.devs_at = p.arena.add(p.devs);  // pointers filled in once the arena has an address
  p.jobs.resize(blob.groups.size());
  p.jobs_at = p.arena.add(p.jobs);
  return p;
}

// The device addresses of the plan at `arena` (its upload, then the device-only region at
// `dev`), written into the group records and expansion jobs before the upload.
void place_plan(const ParsedBlob& blob, uint8_t* arena, uint8_t* dev, DecodePlan& p) {
  auto dev16 = [&](size_t off) {
    return off == SIZE_MAX ? nullptr : reinterpret_cast<const uint16_t*>(arena + off);
  };
  for (size_t i = 0; i < p.devs.size(); ++i) {
    const GroupAt& at = p.at[i];
    GroupDev& g = p.devs[i];
    g.tables = dev + at.first_table * kTableBytes;
    g.table_of = arena + at.map;
    g.raw = reinterpret_cast<const float*>(arena + at.raw);
    g.a = reinterpret_cast<const float*>(dev + at.a);
    g.b = reinterpret_cast<const float*>(dev + at.b);
    g.o = reinterpret_cast<const float*>(dev + at.o);
    ParamJob& j = p.jobs[i];
    j.a16 = dev16(at.a16);
    j.b16 = dev16(at.b16);
    j.o16 = dev16(at.o16);
    j.a = reinterpret_cast<float*>(dev + at.a);
    j.b = reinterpret_cast<float*>(dev + at.b);
    j.o = reinterpret_cast<float*>(dev + at.o);
    j.tokens = blob.groups[i].desc.tokens;
    j.channels = blob.groups[i].desc.channels();
  }
  p.arena.overwrite(p.devs_at, p.devs);
  p.arena.overwrite(p.jobs_at, p.jobs);
}

// Queue the CRC32C of the blob (trailer excluded) on `stream`; its value lands at `dst` (host).
// The scratch is freed in stream order, so it may go out of scope before the stream runs.
void queue_checksum(const uint8_t* blob, size_t size, uint8_t* dst, cudaStream_t stream) {
  DeviceBuffer scratch(crc_scratch_bytes(size - 4) + 16, stream);
  auto* crc_dev = scratch.get<uint32_t>();
  crc32c_device(blob, size - 4, crc_dev, scratch.get() + 16, stream);
  CG_CUDA(cudaMemcpyAsync(dst, crc_dev, 4, cudaMemcpyDeviceToHost, stream));
}

// The plan uploaded to `arena` on `st`, then the decode tables and fp32 side data built from it
// on the device. The returned staging must live until the stream has passed the copy.
Pinned upload_plan(const DecodePlan& p, uint8_t* arena, uint8_t* tables, cudaStream_t st) {
  Pinned staged = upload(arena, p.arena.data(), p.arena.size(), st, 1);
  if (p.total_tables)
    build_tables_kernel<<<p.total_tables, 256, 0, st>>>(
        reinterpret_cast<const uint16_t*>(arena + p.freqs_at), tables);
  if (!p.jobs.empty())
    expand_params_kernel<<<dim3(8, (uint32_t)p.jobs.size()), 256, 0, st>>>(
        reinterpret_cast<const ParamJob*>(arena + p.jobs_at));
  CG_CUDA(cudaGetLastError());
  return staged;
}

}  // namespace

struct DeviceBlob::State {
  int device;
  cudaStream_t stream;  // blob memory is freed in order on it
  std::vector<GroupDesc> groups;
  DType dtype;                    // the blob's: lossless groups decode only into it
  uint8_t* blob = nullptr;        // the blob's bytes
  bool owned = true;              // false: the caller's device memory
  uint8_t* arena = nullptr;       // segments, work lists, group descriptors, side data
  size_t upload_bytes = 0;        // of the arena: the plan's upload, then the device-only region
  uint8_t* tables_dev = nullptr;  // decode tables expanded on the device (in the arena)
  const SegmentDev* segs;
  const GroupDev* group_devs;
  const Work* work[2];  // blocks with tables in shared memory, blocks reading them from global
  uint32_t blocks[2] = {0, 0};
  uint32_t shared_bytes = 0;
  // A resident blob is not synchronized on at construction: its plan upload (staging kept here
  // until `uploaded` has passed) and its checksum, computed on `crc_stream` alongside the decode
  // kernels into `crc_host`, are finished by the first decode_into (or the destructor).
  std::mutex pending_mutex;
  std::optional<Pinned> arena_staged, crc_host;
  cudaEvent_t uploaded = nullptr, crc_done = nullptr;
  cudaStream_t crc_stream = nullptr;
  bool crc_pending = false, crc_bad = false;
  uint32_t checksum = 0;

  // Waits for the deferred work; returns false if the checksum differs (then on every call).
  bool finish_pending() {
    std::lock_guard<std::mutex> lock(pending_mutex);
    if (uploaded) {
      CG_CUDA(cudaEventSynchronize(uploaded));
      cudaEventDestroy(uploaded);
      uploaded = nullptr;
      arena_staged.reset();
    }
    if (crc_done) {
      CG_CUDA(cudaEventSynchronize(crc_done));
      cudaEventDestroy(crc_done);
      crc_done = nullptr;
      uint32_t crc;
      std::memcpy(&crc, crc_host->get(), 4);
      crc_host.reset();
      if (crc_pending && crc != checksum) crc_bad = true;
      crc_pending = false;
    }
    return !crc_bad;
  }

  void allocate(const DecodePlan& p) {
    upload_bytes = (p.arena.size() + 255) & ~size_t{255};
    CG_CUDA(cudaMallocAsync(&arena, upload_bytes + p.dev_bytes, stream));
    tables_dev = arena + upload_bytes;
  }

  // The plan's device addresses for decode_into.
  void bind(const DecodePlan& p) {
    segs = reinterpret_cast<const SegmentDev*>(arena + p.segs_at);
    group_devs = reinterpret_cast<const GroupDev*>(arena + p.devs_at);
    for (int k = 0; k < 2; ++k) {
      work[k] = reinterpret_cast<const Work*>(arena + p.work_at[k]);
      blocks[k] = p.blocks[k];
    }
    shared_bytes = p.shared_bytes;
  }

  // A resident blob: nothing waits here. The checksum runs on a side stream (after the blob's
  // producers on `stream`), concurrently with the plan upload and the decode kernels, and
  // decode_into checks it before it returns.
  void queue_resident_checksum(uint32_t expected, size_t size) {
    checksum = expected;
    crc_pending = true;
    crc_host.emplace(4);
    CG_CUDA(cudaStreamCreateWithFlags(&crc_stream, cudaStreamNonBlocking));
    cudaEvent_t ready;
    CG_CUDA(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
    CG_CUDA(cudaEventRecord(ready, stream));
    CG_CUDA(cudaStreamWaitEvent(crc_stream, ready, 0));
    cudaEventDestroy(ready);
    queue_checksum(blob, size, crc_host->get(), crc_stream);
    CG_CUDA(cudaEventCreateWithFlags(&crc_done, cudaEventDisableTiming));
    CG_CUDA(cudaEventRecord(crc_done, crc_stream));
  }

  void queue_resident_plan(const DecodePlan& p) {
    arena_staged.emplace(upload_plan(p, arena, tables_dev, stream));
    CG_CUDA(cudaEventCreateWithFlags(&uploaded, cudaEventDisableTiming));
    CG_CUDA(cudaEventRecord(uploaded, stream));
  }

  // A host blob: the plan uploaded and the checksum checked before the constructor returns.
  void upload_and_check(const DecodePlan& p, bool check, uint32_t expected, size_t size) {
    const Pinned crc(4);
    if (check) queue_checksum(blob, size, crc.get(), stream);
    const Pinned staged = upload_plan(p, arena, tables_dev, stream);
    CG_CUDA(cudaStreamSynchronize(stream));  // the staging buffers are about to go back to the pool
    if (!check) return;
    uint32_t got;
    std::memcpy(&got, crc.get(), 4);
    if (got != expected) throw FormatError("checksum mismatch: blob is corrupted");
  }

  ~State() {
    try {
      finish_pending();
    } catch (...) {  // a failed device: the staging buffers are leaked rather than reused
      if (crc_host) (void)new Pinned(std::move(*crc_host));
      if (arena_staged) (void)new Pinned(std::move(*arena_staged));
    }
    if (crc_stream) cudaStreamDestroy(crc_stream);
    if (blob && owned) cudaFreeAsync(blob, stream);
    if (arena) cudaFreeAsync(arena, stream);
  }
};

namespace {

// A host blob's upload to the device: pinned staging filled by host workers on their own thread
// while the caller builds the plan; finish() waits for it.
class BlobUpload {
 public:
  BlobUpload(uint8_t* dst, const uint8_t* src, size_t size, int device, cudaStream_t st)
      : thread_([=, this] {
          try {
            CG_CUDA(cudaSetDevice(device));
            staged_.emplace(upload(dst, src, size, st, std::max(1, resolve_threads(0) - 1)));
          } catch (...) {
            error_ = std::current_exception();
          }
        }) {}
  ~BlobUpload() {
    if (thread_.joinable()) thread_.join();
  }
  void finish() {
    thread_.join();
    if (error_) std::rethrow_exception(error_);
  }

 private:
  std::optional<Pinned> staged_;  // until the stream has passed the copies (the State's stream)
  std::exception_ptr error_;
  std::thread thread_;
};

}  // namespace

DeviceBlob::DeviceBlob(const ParsedBlob& blob, const uint8_t* data, size_t size, int device,
                       uintptr_t stream)
    : DeviceBlob(blob, data, size, device, stream, false) {}

DeviceBlob::DeviceBlob(const ParsedBlob& blob, const uint8_t* data, size_t size, int device,
                       uintptr_t stream, bool resident)
    : s_(std::make_unique<State>()) {
  StageTimer timer("decode");
  use_device(device);
  State& s = *s_;
  s.device = device;
  s.dtype = blob.header.dtype;
  s.stream = as_stream(stream);
  for (const Group& g : blob.groups) s.groups.push_back(g.desc);
  // A host blob goes up through pinned staging while this thread builds the decode plan.
  std::optional<BlobUpload> blob_upload;
  if (resident) {
    s.blob = const_cast<uint8_t*>(data);
    s.owned = false;
  } else {
    CG_CUDA(cudaMallocAsync(&s.blob, size, s.stream));
    blob_upload.emplace(s.blob, data, size, device, s.stream);
  }
  std::optional<DecodePlan> plan;
  std::exception_ptr plan_error;
  try {
    plan.emplace(build_plan(blob));
    s.allocate(*plan);
    place_plan(blob, s.arena, s.arena + s.upload_bytes, *plan);
  } catch (...) {
    plan_error = std::current_exception();
  }
  timer.mark("decode plan (host, overlapped with the blob upload)");
  if (blob_upload) blob_upload->finish();
  if (plan_error) std::rethrow_exception(plan_error);
  if (!resident) timer.mark("blob to pinned staging, H2D queued (host, rest)");
  // The checksum, unless the parse verified it, is computed on the device.
  const bool check = !blob.checksum_verified;
  if (resident) {
    if (check) s.queue_resident_checksum(blob.checksum, size);
    s.queue_resident_plan(*plan);
    timer.mark("plan upload + CRC queued (host, no wait)");
  } else {
    s.upload_and_check(*plan, check, blob.checksum, size);
    timer.mark("H2D + CRC (device)");
  }
  s.bind(*plan);
}

DeviceBlob::~DeviceBlob() = default;

void DeviceBlob::decode_into(const std::vector<TensorView>& outs, uintptr_t stream) const {
  StageTimer timer("decode_kernels");
  State& s = *s_;
  use_device(s.device);
  if (outs.size() != s.groups.size()) throw InputError("need one output per (layer, K/V)");
  std::vector<const TensorView*> checked;
  for (size_t g = 0; g < outs.size(); ++g) {
    const GroupDesc& d = s.groups[g];
    const TensorView& v = outs[g];
    if (!v.data || v.tokens != d.tokens || v.heads != d.heads || v.head_dim != d.head_dim)
      throw InputError("output " + std::to_string(g) + " has the wrong shape");
    if (v.dtype != outs[0].dtype) throw InputError("all outputs must share one dtype");
    if (d.quantizer == Quantizer::Lossless && v.dtype != s.dtype)
      throw InputError("a lossless blob decodes only into its own dtype");
    checked.push_back(&v);
  }
  const cudaStream_t st = as_stream(stream);
  const DeviceViews views(checked, st);
  Arena arena;
  arena.add(views.views());
  DeviceBuffer dev(arena.size() + 16, st);
  arena.upload(dev.get(), st);
  uint32_t* bad = reinterpret_cast<uint32_t*>(dev.get() + ((arena.size() + 3) & ~size_t{3}));
  CG_CUDA(cudaMemsetAsync(bad, 0, 4, st));
  const View* v = dev.get<const View>();
  with_dtype(outs[0].dtype, [&]<DType D>() {
    if (s.blocks[0] + s.blocks[1])
      decode_kernel<D><<<s.blocks[0] + s.blocks[1], kWarps * 32, s.shared_bytes, st>>>(
          s.blob, s.segs, s.work[1], s.blocks[1], s.work[0], s.group_devs, v, staged_stores(), bad);
  });
  CG_CUDA(cudaGetLastError());
  const Pinned corrupt_host(4);
  CG_CUDA(cudaMemcpyAsync(corrupt_host.get(), bad, 4, cudaMemcpyDeviceToHost, st));
  CG_CUDA(cudaStreamSynchronize(st));
  timer.mark("decode kernels (device)");
  // A resident blob's checksum (computed alongside the kernels): a mismatch is reported first,
  // as the cause of any segment failure; the outputs have been written by then.
  if (!s.finish_pending()) throw FormatError("checksum mismatch: blob is corrupted");
  timer.mark("CRC wait + check (device, overlapped)");
  uint32_t corrupt;
  std::memcpy(&corrupt, corrupt_host.get(), 4);
  if (corrupt)
    throw FormatError(std::to_string(corrupt) +
                      " segment payload(s) corrupt (rANS stream did not close)");
}

}  // namespace cachegen::cuda
