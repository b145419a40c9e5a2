// GPU encode/decode of the wire format, version 4 (docs/FORMAT.md): the encoder's stages in
// encode_stages.cuh (run by encode.cu), the decoder in decode.cu, the device-blob parse in
// device_parse.cu. A plain C++ interface: device tensors as TensorViews, streams as integers, so
// callers need no CUDA headers.
#pragma once
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "codec.hpp"
#include "format.hpp"

namespace cachegen::cuda {

// A CUDA runtime failure: no device, out of memory, a failed launch.
struct CudaError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Whether a CUDA device can be used; never throws, also on machines without a driver.
bool available() noexcept;

std::string device_name(int device);

// Stage timings (name, milliseconds) of the last GPU "encode" or "decode" call in this process.
std::vector<std::pair<std::string, double>> last_timings(const std::string& which);

// A validated blob uploaded to a device with its decode plan, decodable any number of times.
class DeviceBlob {
 public:
  DeviceBlob(const ParsedBlob& blob, const uint8_t* data, size_t size, int device,
             uintptr_t stream);
  // A blob already in device memory (`data` on `device`, written in order on `stream`): decoded
  // in place, without a copy; the caller keeps it alive while this object is used. Nothing is
  // waited for here: the plan upload and the checksum are queued, and the first decode_into
  // checks the checksum (a mismatch makes every decode_into throw FormatError).
  DeviceBlob(const ParsedBlob& blob, const uint8_t* device_data, size_t size, int device,
             uintptr_t stream, bool resident);
  ~DeviceBlob();
  DeviceBlob(const DeviceBlob&) = delete;
  DeviceBlob& operator=(const DeviceBlob&) = delete;

  // Decode every group into its device view (2 per layer, one dtype) on `stream` and wait for
  // it; throws FormatError if any segment is corrupt, or (resident blob) if its checksum,
  // computed on a side stream alongside the kernels, does not match. The views have been
  // written either way: on FormatError their contents are unspecified.
  void decode_into(const std::vector<TensorView>& outs, uintptr_t stream) const;

  struct State;

 private:
  std::unique_ptr<State> s_;
};

// parse_blob() of a blob in device memory without its checksum (DeviceBlob checks it on the
// device): only its head and trailer are copied to the host, into a per-thread host image of
// the blob's size (virtual memory; only the head's pages stay resident between calls).
ParsedBlob parse_device_blob(const uint8_t* data, size_t size, int device, uintptr_t stream);

// encode() of views that live in device memory, computed on `stream`; the blob, byte-identical
// to what the CPU encoder writes, goes to host memory from `alloc`, or with device_out to device
// memory from `alloc` (memory on `device`, usable on `stream`); returns when it is complete.
void encode(const EncodeRequest& req, int device, uintptr_t stream, const BlobAllocator& alloc,
            bool device_out = false);

// importance.hpp key_pair_square_sums of keys in device memory, computed on `stream`: the same
// float64 sums as the host's.
std::vector<double> key_pair_square_sums(const TensorView& keys, uint32_t skip, int device,
                                         uintptr_t stream);

}  // namespace cachegen::cuda
