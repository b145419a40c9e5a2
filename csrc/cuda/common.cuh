// CUDA helpers shared by the kernels: error checks, stream-ordered buffers, warp work lists,
// strided element access.
#pragma once
#include <cuda_runtime.h>

#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "cuda_codec.hpp"
#include "half.hpp"

namespace cachegen::cuda {

inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw CudaError(std::string(what) + ": " + cudaGetErrorString(e));
}
#define CG_CUDA(call) ::cachegen::cuda::check((call), #call)

// Makes `device` current and keeps freed stream-ordered memory pooled between calls.
void use_device(int device);

inline cudaStream_t as_stream(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

// Device memory allocated and freed in stream order.
class DeviceBuffer {
 public:
  DeviceBuffer(size_t bytes, cudaStream_t stream) : stream_(stream) {
    if (bytes) CG_CUDA(cudaMallocAsync(&ptr_, bytes, stream));
  }
  ~DeviceBuffer() {
    if (ptr_) cudaFreeAsync(ptr_, stream_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  template <typename T = uint8_t>
  T* get() const {
    return static_cast<T*>(ptr_);
  }

 private:
  void* ptr_ = nullptr;
  cudaStream_t stream_;
};

// Host bytes with 16-byte-aligned sections, uploaded in one copy.
class Arena {
 public:
  template <typename T>
  size_t add(const T* data, size_t count) {
    const size_t at = (bytes_.size() + 15) & ~size_t{15};
    bytes_.resize(at + count * sizeof(T));
    if (count) std::memcpy(bytes_.data() + at, data, count * sizeof(T));
    return at;
  }
  // Room for count T's (uninitialized), returned for the caller to fill; `at` gets the offset.
  template <typename T>
  T* alloc(size_t count, size_t& at) {
    at = (bytes_.size() + 15) & ~size_t{15};
    bytes_.resize(at + count * sizeof(T));
    return reinterpret_cast<T*>(bytes_.data() + at);
  }
  void reserve(size_t n) { bytes_.reserve(n); }
  template <typename T>
  size_t add(const std::vector<T>& v) {
    return add(v.data(), v.size());
  }
  template <typename T>
  void overwrite(size_t at, const std::vector<T>& v) {
    std::memcpy(bytes_.data() + at, v.data(), v.size() * sizeof(T));
  }
  size_t size() const { return bytes_.size(); }
  const uint8_t* data() const { return bytes_.data(); }
  void upload(void* dst, cudaStream_t stream) const {
    CG_CUDA(cudaMemcpyAsync(dst, bytes_.data(), bytes_.size(), cudaMemcpyHostToDevice, stream));
  }

 private:
  std::vector<uint8_t> bytes_;
};

constexpr int kWarps = 8;  // warps per block: each codes one segment of the block's group

// A block's share of the segments: up to kWarps consecutive segments of one group.
struct Work {
  uint32_t first_segment, count;
};

// One group's segments cut into blocks, appended to `out`.
inline void add_work(uint32_t first, uint32_t count, std::vector<Work>& out) {
  for (uint32_t s = 0; s < count; s += kWarps)
    out.push_back({first + s, std::min<uint32_t>(kWarps, count - s)});
}

// A strided (token, head, dim) tensor in device memory, channel = head * head_dim + dim; paged
// (a serving engine's KV blocks) if it has a block table, addressed as TensorView's are.
struct View {
  void* data;
  int64_t s_token, s_head, s_dim;
  uint32_t head_dim, head_shift;  // head_shift = log2(head_dim) if a power of two, else 32
  const int32_t* block_table;     // device memory; null: a plain view
  uint32_t block_size;
  int64_t s_block;
  bool dense;  // a token's channels are adjacent (TensorView::dense_rows): channel c at token + c
  bool vec8;   // dense, and every run of 8 channels from a multiple of 8 is 16-byte aligned

  __device__ int64_t token(uint32_t t) const {
    return token_offset(block_table, block_size, s_block, s_token, t);
  }
  __device__ int64_t in_token(uint32_t c) const {  // channel c's offset from its token's
    if (dense) return c;
    const uint32_t h = head_shift < 32 ? c >> head_shift : c / head_dim;
    return (int64_t)h * s_head + (int64_t)(c - h * head_dim) * s_dim;
  }
  __device__ int64_t offset(uint32_t t, uint32_t c) const { return token(t) + in_token(c); }
};

// `table`: v's block table in device memory (null for a plain view).
inline View to_view(const TensorView& v, const int32_t* table) {
  uint32_t shift = 32;
  for (uint32_t k = 0; k < 31; ++k)
    if ((1u << k) == v.head_dim) shift = k;
  const size_t e = dtype_size(v.dtype);
  const bool vec8 = v.dense_rows() && v.channels() % 8 == 0 &&
                    reinterpret_cast<uintptr_t>(v.data) % 16 == 0 && (v.s_token * e) % 16 == 0 &&
                    (!v.block_table || (v.s_block * e) % 16 == 0);
  return {v.data, v.s_token,    v.s_head,  v.s_dim,        v.head_dim, shift,
          table,  v.block_size, v.s_block, v.dense_rows(), vec8};
}

// Device views of host TensorViews: the paged ones' block tables (validated by check_paging)
// go up in one copy, freed in stream order after the kernels queued before destruction.
class DeviceViews {
 public:
  DeviceViews(const std::vector<const TensorView*>& views, cudaStream_t stream) {
    Arena arena;
    std::vector<size_t> at;
    for (const TensorView* v : views) {
      check_paging(*v, "view");
      at.push_back(arena.add(v->block_table, v->table_entries()));
    }
    tables_.emplace(arena.size() + 16, stream);
    arena.upload(tables_->get(), stream);
    for (size_t i = 0; i < views.size(); ++i) {
      const int32_t* table = tables_->get<int32_t>() + at[i] / sizeof(int32_t);
      views_.push_back(to_view(*views[i], views[i]->block_table ? table : nullptr));
    }
  }
  const std::vector<View>& views() const { return views_; }

 private:
  std::optional<DeviceBuffer> tables_;
  std::vector<View> views_;
};

template <DType D>
__device__ float load_elem(const View& v, uint32_t t, uint32_t c) {
  const int64_t i = v.offset(t, c);
  if constexpr (D == DType::F32) return static_cast<const float*>(v.data)[i];
  const uint16_t h = static_cast<const uint16_t*>(v.data)[i];
  return D == DType::F16 ? f16_to_f32(h) : bf16_to_f32(h);
}

// Stores x at element i of v (an offset from View::offset) in v's dtype.
template <DType D>
__device__ void store_at(const View& v, int64_t i, float x) {
  if constexpr (D == DType::F32) {
    static_cast<float*>(v.data)[i] = x;
  } else {
    static_cast<uint16_t*>(v.data)[i] = D == DType::F16 ? f32_to_f16(x) : f32_to_bf16(x);
  }
}

// Stores v[0..8) at elements i..i+8 of out (16-byte aligned: View::vec8) in out's dtype.
template <DType D>
__device__ void store8(const View& out, int64_t i, const float (&v)[8]) {
  if constexpr (D == DType::F32) {
    auto* dst = reinterpret_cast<float4*>(static_cast<float*>(out.data) + i);
    dst[0] = make_float4(v[0], v[1], v[2], v[3]);
    dst[1] = make_float4(v[4], v[5], v[6], v[7]);
  } else {
    uint32_t w[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const uint16_t lo = D == DType::F16 ? f32_to_f16(v[2 * k]) : f32_to_bf16(v[2 * k]);
      const uint16_t hi = D == DType::F16 ? f32_to_f16(v[2 * k + 1]) : f32_to_bf16(v[2 * k + 1]);
      w[k] = lo | (uint32_t)hi << 16;
    }
    *reinterpret_cast<uint4*>(static_cast<uint16_t*>(out.data) + i) =
        make_uint4(w[0], w[1], w[2], w[3]);
  }
}

// Page-locked host memory, pooled between calls (allocating it costs far more than a copy).
class Pinned {
 public:
  explicit Pinned(size_t bytes);
  ~Pinned();
  Pinned(Pinned&& o) noexcept : ptr_(o.ptr_), cap_(o.cap_) { o.ptr_ = nullptr; }
  Pinned(const Pinned&) = delete;
  Pinned& operator=(const Pinned&) = delete;
  uint8_t* get() const { return ptr_; }

 private:
  uint8_t* ptr_ = nullptr;
  size_t cap_ = 0;
};

// Device -> pageable host through pinned staging: chunked copies on `stream`, each chunk moved
// on by one of `threads` host workers as soon as it lands. Returns when dst is complete.
void download(uint8_t* dst, const uint8_t* src, size_t n, cudaStream_t stream, int threads);

// Pageable host -> device through pinned staging, host workers filling chunks that are copied
// as soon as they are filled. Queued on `stream`; the returned staging must stay alive until
// the stream has passed the copies.
Pinned upload(uint8_t* dst, const uint8_t* src, size_t n, cudaStream_t stream, int threads);

// CRC32C of device bytes [data, data + n), computed on `stream` into *out (device memory);
// `scratch` needs crc_scratch_bytes(n).
size_t crc_scratch_bytes(size_t n);
void crc32c_device(const uint8_t* data, size_t n, uint32_t* out, uint8_t* scratch,
                   cudaStream_t stream);

// Host wall-clock stage timings of the last GPU encode / decode (milliseconds), for benchmarks.
class StageTimer {
 public:
  explicit StageTimer(const char* which);
  void mark(const char* stage);  // time since the previous mark (or construction)
  void note(const char* stage, double ms) { stages_.emplace_back(stage, ms); }  // no clock
  ~StageTimer();

 private:
  const char* which_;
  std::vector<std::pair<std::string, double>> stages_;
  double last_;
};

// Device times between marks recorded on a stream, reported once the stream has passed them.
class EventClock {
 public:
  void mark(cudaStream_t st) {
    cudaEvent_t e;
    CG_CUDA(cudaEventCreate(&e));
    events_.push_back(e);
    CG_CUDA(cudaEventRecord(e, st));
  }
  // The time between mark i and mark i + 1 as stage names[i].
  void report(StageTimer& timer, const std::vector<const char*>& names) const {
    for (size_t i = 0; i + 1 < events_.size() && i < names.size(); ++i) {
      float ms = 0.0f;
      cudaEventElapsedTime(&ms, events_[i], events_[i + 1]);
      timer.note(names[i], ms);
    }
  }
  EventClock() = default;
  EventClock(const EventClock&) = delete;
  EventClock& operator=(const EventClock&) = delete;
  ~EventClock() {
    for (cudaEvent_t e : events_) cudaEventDestroy(e);
  }

 private:
  std::vector<cudaEvent_t> events_;
};

// Calls f.template operator()<D>() with the dtype as a compile-time constant.
template <typename F>
void with_dtype(DType d, F&& f) {
  switch (d) {
    case DType::F16:
      return f.template operator()<DType::F16>();
    case DType::BF16:
      return f.template operator()<DType::BF16>();
    case DType::F32:
      return f.template operator()<DType::F32>();
  }
}

}  // namespace cachegen::cuda
