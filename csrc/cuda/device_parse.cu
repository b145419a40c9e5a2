// The parse of a blob in device memory: its head and trailer copied to a host image, parsed there
// without the checksum (DeviceBlob checks it on the device).
#include <algorithm>
#include <memory>
#ifdef __linux__
#include <sys/mman.h>
#include <unistd.h>
#endif

#include "common.cuh"

namespace cachegen::cuda {

namespace {
// A host image of a device blob for the parse: only its head and its trailer are ever written
// (the rest of the reservation is never touched). Kept per thread between calls, so the pages of
// the head are faulted in once; a new trailer page is given back after each parse.
struct Shadow {
  std::unique_ptr<uint8_t[]> bytes;
  size_t capacity = 0;
  size_t head_guess = 0;  // the last blob's head size: copied up front with the header
};
thread_local Shadow t_shadow;
constexpr size_t kMaxHeadGuess = size_t{64} << 20;
}  // namespace

ParsedBlob parse_device_blob(const uint8_t* data, size_t size, int device, uintptr_t stream) {
  StageTimer timer("parse_device");
  use_device(device);
  const cudaStream_t st = as_stream(stream);
  // Only the head (header, descriptors, side data, index) and the CRC trailer are read by a
  // parse that leaves the checksum to the device. One round trip when the head is no longer than
  // the previous blob's (the header and that much are copied at once, with the trailer), two
  // otherwise; all through pinned staging (a pageable D2H of a few MB is several times slower).
  Shadow& sh = t_shadow;
  if (sh.capacity < std::max<size_t>(size, 1)) {
    sh.bytes.reset();
    sh.bytes.reset(new uint8_t[std::max<size_t>(size, 1)]);
    sh.capacity = std::max<size_t>(size, 1);
  }
  uint8_t* shadow = sh.bytes.get();
  const bool trailer = size >= kHeaderBytes + 4;
  size_t first = std::min(size, std::max<size_t>(kHeaderBytes, sh.head_guess));
  if (trailer) first = std::min(first, size - 4);
  {
    Pinned stage(first + 4);
    if (first) CG_CUDA(cudaMemcpyAsync(stage.get(), data, first, cudaMemcpyDeviceToHost, st));
    if (trailer)
      CG_CUDA(cudaMemcpyAsync(stage.get() + first, data + size - 4, 4, cudaMemcpyDeviceToHost, st));
    CG_CUDA(cudaStreamSynchronize(st));
    std::memcpy(shadow, stage.get(), first);
    if (trailer) std::memcpy(shadow + size - 4, stage.get() + first, 4);
  }
  if (trailer) {
    const uint64_t payload_off = get<field::PayloadOffset>(shadow);
    const size_t rest = (size_t)std::min<uint64_t>(payload_off, size - 4);
    if (rest > first) {
      Pinned stage(rest - first);
      CG_CUDA(cudaMemcpyAsync(stage.get(), data + first, rest - first, cudaMemcpyDeviceToHost, st));
      CG_CUDA(cudaStreamSynchronize(st));
      std::memcpy(shadow + first, stage.get(), rest - first);
    }
    sh.head_guess = std::min(rest, kMaxHeadGuess);
  }
  timer.mark("head + trailer to host (D2H, pinned)");
  struct ReleaseTrailer {  // the trailer's page, unless the head shares it
    uint8_t* p;
    size_t size, head;
    ~ReleaseTrailer() {
#ifdef __linux__
      const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
      const uintptr_t lo = ((uintptr_t)p + head + page - 1) & ~(page - 1);
      const uintptr_t at = ((uintptr_t)p + size - 4) & ~(page - 1);
      if (size >= 4 && at >= lo && at + page <= (uintptr_t)p + size)
        madvise(reinterpret_cast<void*>(at), page, MADV_DONTNEED);
#endif
    }
  } release{shadow, size, std::max(first, sh.head_guess)};
  try {
    ParsedBlob parsed = parse_blob(shadow, size, false);
    timer.mark("parse + validate (host, no CRC)");
    return parsed;
  } catch (const FormatError&) {
    throw FormatError("malformed blob (checksum not checked: blob in device memory)");
  }
}

}  // namespace cachegen::cuda
