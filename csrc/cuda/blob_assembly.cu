// Stage 4 of the GPU encoder: the blob put together. The head (header, descriptors, side data,
// segment index) is written on the host by format.cpp's blob_head and patched with the segment
// sizes; the segments move from their regions into the payload and the payload's CRC32C is
// computed on the device; the blob's CRC combines the head's and the payload's.
#include <optional>

#include "crc32c.hpp"
#include "encode_stages.cuh"

namespace cachegen::cuda {
namespace {

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

}  // namespace

void patch_head(std::vector<uint8_t>& head, const uint32_t* sizes, uint32_t nseg,
                uint64_t payload_bytes) {
  put<field::TotalBytes>(head.data(), head.size() + payload_bytes + 4);
  std::memcpy(head.data() + get<field::IndexOffset>(head.data()), sizes, 4 * (size_t)nseg);
}

void assemble_blob(const std::vector<uint8_t>& head, const CodedSegments& coded,
                   const BlobAllocator& alloc, bool device_out, int threads, cudaStream_t st,
                   StageTimer& timer) {
  const CrcPowers& pw = crc_powers();
  const uint64_t total = coded.payload_bytes, blob_bytes = head.size() + total + 4;
  // The payload goes straight into the caller's device memory, or into scratch to download.
  std::optional<DeviceBuffer> scratch;
  uint8_t* out = device_out ? alloc(blob_bytes) : nullptr;
  if (!device_out) scratch.emplace(total + 16, st);
  uint8_t* payload = device_out ? out + head.size() : scratch->get();
  DeviceBuffer crc_buf(crc_scratch_bytes(total) + 16, st);
  auto* crc_dev = crc_buf.get<uint32_t>();
  compact<<<coded.count, 256, 0, st>>>(coded.segs, coded.devs, coded.regions, coded.sizes,
                                       coded.offsets, payload);
  CG_CUDA(cudaGetLastError());
  crc32c_device(payload, total, crc_dev, crc_buf.get() + 16, st);
  const uint32_t head_crc = crc32c(head.data(), head.size());
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
  const Pinned crc_host(4);
  CG_CUDA(cudaMemcpyAsync(crc_host.get(), crc_dev, 4, cudaMemcpyDeviceToHost, st));
  CG_CUDA(cudaStreamSynchronize(st));
  uint32_t payload_crc;
  std::memcpy(&payload_crc, crc_host.get(), 4);
  const uint32_t crc = crc_combine(head_crc, payload_crc, total, pw);
  timer.mark("compact + CRC (device)");
  out = alloc(blob_bytes);
  std::memcpy(out, head.data(), head.size());
  download(out + head.size(), payload, total, st, threads);
  std::memcpy(out + head.size() + total, &crc, 4);
  timer.mark("payload to host (D2H + copy)");
}

}  // namespace cachegen::cuda
