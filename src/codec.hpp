// Codec orchestration: tensors -> quantize -> tables -> segments -> blob, and back.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "format.hpp"
#include "tensor_view.hpp"

namespace cachegen {

// How to code one (layer, K/V) group.
struct GroupSpec {
  TensorView view;
  Quantizer quantizer = Quantizer::ChannelStep;
  float param = 0.5f;
  uint32_t max_tables = 8;
  StepWeights weights;    // TokenStep only
  uint32_t raw_rows = 0;  // first tokens stored verbatim (attention sinks), per-token quantizers
};

struct EncodeRequest {
  std::vector<GroupSpec> groups;  // 2 per layer: K then V
  DType dtype = DType::F16;       // dtype recorded for decode's default
  Layout layout = Layout::Stacked;
  uint8_t level = 0;
  uint32_t flags = 0;
  TransformRecord transform;            // written with kFlagTransform
  uint32_t segment_symbols = 1u << 16;  // target symbols per segment
  int threads = 0;                      // 0 = all cores
};

std::vector<uint8_t> encode(const EncodeRequest& req);

// Steps of encode() that the GPU encoder shares: validation, segmenting, the blob header.
void check_request(const EncodeRequest& req);
GroupDesc plan_group(const GroupSpec& s, uint32_t segment_symbols);
BlobHeader blob_header(const EncodeRequest& req);

// Encode into memory from `alloc`, called once with the blob's size (lets bindings hand out the
// final bytes object and skip a copy).
void encode(const EncodeRequest& req, const BlobAllocator& alloc);

// The quantization stage alone: per group, symbols ([tokens, channels]) and fp32 parameters.
struct Quantized {
  std::vector<int8_t> symbols;
  DequantParams params;
};
std::vector<Quantized> quantize(const EncodeRequest& req);

// Decode every group into its output view (2 per layer, shapes as in the blob).
void decode_into(const ParsedBlob& blob, const uint8_t* data, const std::vector<TensorView>& outs,
                 int threads);

// Payload size against the ideal code length of the decoded symbols under the stored tables.
struct EntropyStats {
  double ideal_bits = 0.0;   // sum of -log2 p(symbol) over all symbols
  uint64_t word_bytes = 0;   // rANS words, excluding the per-segment final states
  uint64_t state_bytes = 0;  // 128 bytes per segment
  uint64_t side_bytes = 0;   // everything before the payload: header, descriptors, side data
                             // (scales, table map, tables) and the segment index
  uint64_t symbols = 0;
};

EntropyStats entropy_stats(const ParsedBlob& blob, const uint8_t* data, int threads);

}  // namespace cachegen
