// Device discovery and selection; host <-> device transfers through pooled pinned staging; CRC32C
// on the device; stage timers.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#ifdef __linux__
#include <sys/mman.h>
#endif

#include "common.cuh"
#include "crc32c.hpp"
#include "parallel.hpp"

namespace cachegen::cuda {

bool available() noexcept {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

std::string device_name(int device) {
  cudaDeviceProp p;
  CG_CUDA(cudaGetDeviceProperties(&p, device));
  return p.name;
}

void use_device(int device) {
  CG_CUDA(cudaSetDevice(device));
  // Keep freed stream-ordered memory in the pool: per-call buffers are then cheap to get back.
  cudaMemPool_t pool;
  CG_CUDA(cudaDeviceGetDefaultMemPool(&pool, device));
  uint64_t keep = UINT64_MAX;
  CG_CUDA(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
}

// ---------------------------------------------------------------------------------------------
// Pinned staging pool: idle buffers are kept for the next call (a request takes the smallest
// idle one that fits and is not more than twice too big); idle memory above kPoolKeep is freed.

namespace {
std::mutex g_pool_mutex;
std::multimap<size_t, uint8_t*> g_pool;  // idle buffers by capacity
size_t g_pool_idle = 0;
constexpr size_t kPoolKeep = size_t{4} << 30;
constexpr size_t kPoolGrain = 16u << 20;
constexpr size_t kChunk = 4u << 20;  // transfer pipeline granularity
}  // namespace

Pinned::Pinned(size_t bytes) {
  bytes = std::max<size_t>(bytes, 1);
  {
    std::lock_guard<std::mutex> lock(g_pool_mutex);
    auto it = g_pool.lower_bound(bytes);
    if (it != g_pool.end() && it->first <= std::max(2 * bytes, kPoolGrain)) {
      cap_ = it->first;
      ptr_ = it->second;
      g_pool_idle -= cap_;
      g_pool.erase(it);
      return;
    }
  }
  cap_ = (bytes + kPoolGrain - 1) / kPoolGrain * kPoolGrain;
  void* p = nullptr;
  CG_CUDA(cudaHostAlloc(&p, cap_, cudaHostAllocDefault));
  ptr_ = static_cast<uint8_t*>(p);
}

Pinned::~Pinned() {
  if (!ptr_) return;
  std::lock_guard<std::mutex> lock(g_pool_mutex);
  g_pool.emplace(cap_, ptr_);
  g_pool_idle += cap_;
  while (g_pool_idle > kPoolKeep) {
    auto largest = std::prev(g_pool.end());
    g_pool_idle -= largest->first;
    cudaFreeHost(largest->second);
    g_pool.erase(largest);
  }
}

void download(uint8_t* dst, const uint8_t* src, size_t n, cudaStream_t st, int threads) {
  if (!n) return;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  // dst is usually fresh memory (a new bytes object): fewer, larger page faults.
  const uintptr_t lo = ((uintptr_t)dst + (2u << 20) - 1) & ~uintptr_t{(2u << 20) - 1};
  const uintptr_t hi = ((uintptr_t)dst + n) & ~uintptr_t{(2u << 20) - 1};
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#endif
  Pinned stage(n);
  const size_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<cudaEvent_t> done(chunks);
  for (size_t i = 0; i < chunks; ++i) {
    const size_t off = i * kChunk, len = std::min(kChunk, n - off);
    CG_CUDA(cudaEventCreateWithFlags(&done[i], cudaEventDisableTiming));
    CG_CUDA(cudaMemcpyAsync(stage.get() + off, src + off, len, cudaMemcpyDeviceToHost, st));
    CG_CUDA(cudaEventRecord(done[i], st));
  }
  std::atomic<int> failed{0};
  parallel_for(chunks, threads, [&](size_t i) {
    const size_t off = i * kChunk, len = std::min(kChunk, n - off);
    if (cudaEventSynchronize(done[i]) != cudaSuccess) {
      failed = 1;
      return;
    }
    std::memcpy(dst + off, stage.get() + off, len);
  });
  for (cudaEvent_t e : done) cudaEventDestroy(e);
  if (failed) CG_CUDA(cudaStreamSynchronize(st));  // reports the error
}

Pinned upload(uint8_t* dst, const uint8_t* src, size_t n, cudaStream_t st, int threads) {
  Pinned stage(n);
  const size_t chunks = (n + kChunk - 1) / kChunk;
  std::atomic<int> err{cudaSuccess};
  parallel_for(chunks, threads, [&](size_t i) {
    const size_t off = i * kChunk, len = std::min(kChunk, n - off);
    std::memcpy(stage.get() + off, src + off, len);
    const cudaError_t e =
        cudaMemcpyAsync(dst + off, stage.get() + off, len, cudaMemcpyHostToDevice, st);
    if (e != cudaSuccess) err = e;
  });
  check((cudaError_t)err.load(), "cudaMemcpyAsync (upload)");
  return stage;
}

// ---------------------------------------------------------------------------------------------
// CRC32C on the device: each thread checksums a kCrcChunk-byte chunk (slicing-by-8 tables in
// shared memory), then blocks combine runs of 1024 (crc, length) pairs with crc_combine until
// one is left.

namespace {

constexpr uint32_t kCrcChunk = 2048;
constexpr uint32_t kCrcFan = 1024;

__global__ void __launch_bounds__(256)
    crc_chunks(const uint8_t* data, uint64_t n, uint32_t* crc, uint64_t* len) {
  __shared__ uint32_t t[8][256];
  {
    const uint32_t i = threadIdx.x;
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (kCrc32cPoly & (0u - (c & 1)));
    t[0][i] = c;
    __syncthreads();
    for (int s = 1; s < 8; ++s) {
      t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xff];
      __syncthreads();
    }
  }
  const uint64_t chunk = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
  const uint64_t begin = chunk * kCrcChunk;
  if (begin >= n) return;
  const uint64_t size = min((uint64_t)kCrcChunk, n - begin);
  const uint8_t* p = data + begin;
  uint32_t c = ~0u;
  uint64_t i = 0;
  // Bytes up to a 16-byte boundary one at a time (a payload placed after a blob's head is only
  // 8-byte aligned), then 16 at a time.
  for (; i < size && ((uintptr_t)(p + i) & 15) != 0; ++i) c = (c >> 8) ^ t[0][(c ^ p[i]) & 0xff];
  {
    for (; i + 16 <= size; i += 16) {
      const uint4 v = *reinterpret_cast<const uint4*>(p + i);
      uint32_t lo = v.x ^ c, hi = v.y;
      c = t[7][lo & 0xff] ^ t[6][(lo >> 8) & 0xff] ^ t[5][(lo >> 16) & 0xff] ^ t[4][lo >> 24] ^
          t[3][hi & 0xff] ^ t[2][(hi >> 8) & 0xff] ^ t[1][(hi >> 16) & 0xff] ^ t[0][hi >> 24];
      lo = v.z ^ c, hi = v.w;
      c = t[7][lo & 0xff] ^ t[6][(lo >> 8) & 0xff] ^ t[5][(lo >> 16) & 0xff] ^ t[4][lo >> 24] ^
          t[3][hi & 0xff] ^ t[2][(hi >> 8) & 0xff] ^ t[1][(hi >> 16) & 0xff] ^ t[0][hi >> 24];
    }
  }
  for (; i < size; ++i) c = (c >> 8) ^ t[0][(c ^ p[i]) & 0xff];
  crc[chunk] = ~c;
  len[chunk] = size;
}

// Block b combines entries [b * kCrcFan, ...) in order.
__global__ void __launch_bounds__(kCrcFan)
    crc_tree(const uint32_t* crc, const uint64_t* len, uint64_t n, CrcPowers pw, uint32_t* out_crc,
             uint64_t* out_len) {
  __shared__ uint32_t c[kCrcFan];
  __shared__ uint64_t l[kCrcFan];
  const uint64_t i = (uint64_t)blockIdx.x * kCrcFan + threadIdx.x;
  const bool live = i < n;
  c[threadIdx.x] = live ? crc[i] : 0;
  l[threadIdx.x] = live ? len[i] : 0;
  __syncthreads();
  for (uint32_t s = 1; s < kCrcFan; s *= 2) {
    const uint32_t j = threadIdx.x;
    if (j % (2 * s) == 0 && l[j + s]) {
      c[j] = crc_combine(c[j], c[j + s], l[j + s], pw);
      l[j] += l[j + s];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    out_crc[blockIdx.x] = c[0];
    out_len[blockIdx.x] = l[0];
  }
}

uint64_t ceil_div(uint64_t a, uint64_t b) { return (a + b - 1) / b; }

}  // namespace

size_t crc_scratch_bytes(size_t n) {
  const uint64_t chunks = std::max<uint64_t>(ceil_div(n, kCrcChunk), 1);
  return 2 * (chunks + ceil_div(chunks, kCrcFan) + 2) * 12 + 64;
}

void crc32c_device(const uint8_t* data, size_t n, uint32_t* out, uint8_t* scratch,
                   cudaStream_t st) {
  const CrcPowers& pw = crc_powers();
  if (n == 0) {
    CG_CUDA(cudaMemsetAsync(out, 0, 4, st));
    return;
  }
  uint64_t count = ceil_div(n, kCrcChunk);
  // Two ping-pong (crc, len) arrays.
  auto* len_a = reinterpret_cast<uint64_t*>(scratch);
  auto* len_b = len_a + count;
  auto* crc_a = reinterpret_cast<uint32_t*>(len_b + ceil_div(count, kCrcFan) + 1);
  auto* crc_b = crc_a + count;
  crc_chunks<<<(uint32_t)ceil_div(count, 256), 256, 0, st>>>(data, n, crc_a, len_a);
  bool in_a = true;
  do {
    const uint64_t blocks = ceil_div(count, kCrcFan);
    uint32_t* oc = blocks == 1 ? out : (in_a ? crc_b : crc_a);
    uint64_t* ol = in_a ? len_b : len_a;
    crc_tree<<<(uint32_t)blocks, kCrcFan, 0, st>>>(in_a ? crc_a : crc_b, in_a ? len_a : len_b,
                                                   count, pw, oc, ol);
    count = blocks;
    in_a = !in_a;
  } while (count > 1);
  CG_CUDA(cudaGetLastError());
}

// ---------------------------------------------------------------------------------------------

namespace {
std::mutex g_timing_mutex;
std::map<std::string, std::vector<std::pair<std::string, double>>> g_timings;

double now_ms() {
  return std::chrono::duration<double, std::milli>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
}  // namespace

StageTimer::StageTimer(const char* which) : which_(which), last_(now_ms()) {}

void StageTimer::mark(const char* stage) {
  const double t = now_ms();
  stages_.emplace_back(stage, t - last_);
  last_ = t;
}

StageTimer::~StageTimer() {
  std::lock_guard<std::mutex> lock(g_timing_mutex);
  g_timings[which_] = stages_;
}

std::vector<std::pair<std::string, double>> last_timings(const std::string& which) {
  std::lock_guard<std::mutex> lock(g_timing_mutex);
  auto it = g_timings.find(which);
  return it == g_timings.end() ? std::vector<std::pair<std::string, double>>{} : it->second;
}

}  // namespace cachegen::cuda
