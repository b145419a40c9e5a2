// The wire format (docs/FORMAT.md; v4, v1-v3 still parse): fixed header, one descriptor per (layer,
// K/V) group, side data (quantizer parameters, channel->table map, tables), segment size index,
// segment payloads, CRC32C trailer. Everything little-endian. parse_blob validates every field
// before anything is allocated or read from it.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

#include "header_layout.hpp"
#include "quant.hpp"
#include "tables.hpp"

namespace cachegen {

// 2: scale codes (kTokenCodes, kChannelCodes); 3: raw rows (kRawRows); 4: lossless groups
// (Quantizer::Lossless, tables over the full byte alphabet); 5: the transform record
// (kFlagTransform); 6: overflow lists (kOverflow). A blob is written in the lowest version that
// holds it (4, 5 with a transform record, 6 with an overflow list), so older readers keep
// reading every blob without what they lack.
constexpr uint16_t kFormatVersion = 6;
constexpr uint16_t kTransformVersion = 5;  // the first version with the transform record
constexpr uint16_t kOverflowVersion = 6;   // the first version with overflow lists
constexpr uint8_t kCodecRans32x32 = 1;

enum class Layout : uint8_t { Stacked = 0, Pairs = 1 };

// The per-model transform a blob's groups are coefficients of (docs/FORMAT.md, "Transform
// record"): its sha256, and the context position of the blob's first token (keys are rotated
// back from there).
struct TransformRecord {
  std::array<uint8_t, 32> digest{};
  uint64_t position = 0;
};

struct BlobHeader {
  uint16_t version = kFormatVersion;  // as read; written: 4, or 5 with a transform record
  uint32_t num_layers = 0;
  DType dtype = DType::F16;
  Layout layout = Layout::Stacked;
  uint8_t level = 0;  // 0 = custom config
  uint8_t codec = kCodecRans32x32;
  uint32_t num_segments = 0;
  uint32_t flags = 0;         // kFlag* bits
  TransformRecord transform;  // with kFlagTransform
};

// The caller encoded torch tensors (decode returns torch by default). Informational only.
constexpr uint32_t kFlagTorchSource = 1;
// The groups hold a per-model transform's coefficients; a transform record follows the header
// (version 5 on). Decoding the cache needs that transform: the core decodes coefficients.
constexpr uint32_t kFlagTransform = 2;
constexpr uint32_t kKnownFlags = kFlagTorchSource | kFlagTransform;

// The header's size as its flags make it: the fixed header, then the transform record if any.
inline uint32_t header_bytes(uint32_t flags) {
  return kHeaderBytes + (flags & kFlagTransform ? kTransformRecordBytes : 0);
}

// The lowest version that holds a blob of these flags (and an overflow list in any group, if
// `overflow`): what the writer writes.
inline uint16_t written_version(uint32_t flags, bool overflow) {
  if (overflow) return kOverflowVersion;
  return flags & kFlagTransform ? kTransformVersion : kTransformVersion - 1;
}

struct GroupDesc {
  uint32_t tokens = 0;
  uint16_t heads = 0, head_dim = 0;
  uint32_t seg_tokens = 0;
  Quantizer quantizer = Quantizer::ChannelStep;
  float param = 0.0f;
  uint32_t first_segment = 0, num_segments = 0;
  uint32_t planes = 1;  // symbols per value: 1, or the dtype's bytes for Lossless (not stored)

  uint32_t channels() const { return (uint32_t)heads * head_dim; }
  uint32_t symbols_per_token() const { return channels() * planes; }
};

// Everything the decoder needs about one group.
struct Group {
  GroupDesc desc;
  GroupQuant quant;
  TableSet tables;
};

struct Segment {
  uint32_t group;
  uint32_t token_begin, token_count;
  size_t offset, bytes;  // absolute byte range of the segment in the blob
};

struct ParsedBlob {
  BlobHeader header;
  std::vector<Group> groups;  // 2 per layer: K then V
  std::vector<Segment> segments;
  size_t payload_bytes = 0;  // segment bytes, states included
  uint32_t checksum = 0;
  bool checksum_verified = true;  // false if parsed with verify_checksum = false
};

// A group ready to be written: its fitted parameters and its coded segments, back to back.
struct EncodedGroup {
  Group group;
  std::vector<uint8_t> payload;
  std::vector<uint32_t> segment_bytes;
};

using BlobAllocator = std::function<uint8_t*(size_t)>;

// Serialize into memory obtained once from `alloc(total_bytes)`. Fills in segment numbering.
// `threads` (0: all cores) write long caches' side data in parallel.
void write_blob(BlobHeader h, std::vector<EncodedGroup>& groups, const BlobAllocator& alloc,
                int threads);

// Everything before the payload (header, descriptors, side data, segment index, padding), for
// writers that place the payload and the CRC themselves (the GPU encoder): groups' payload
// vectors are ignored, `payload_bytes` is the sum of their segment_bytes. The blob is then
// head + payload + CRC32C(head + payload), total_bytes = head.size() + payload_bytes + 4.
std::vector<uint8_t> blob_head(BlobHeader h, std::vector<EncodedGroup>& groups, int threads,
                               uint64_t payload_bytes);

// Parse and validate; throws FormatError. The blob must outlive uses of Segment offsets.
// verify_checksum = false skips the CRC over the whole blob (a caller that checks it elsewhere,
// e.g. on a GPU, sets checksum_verified itself); a structural error still reports a checksum
// mismatch first if the CRC is wrong, as a verifying parse would.
ParsedBlob parse_blob(const uint8_t* data, size_t size, bool verify_checksum = true);

// Throws FormatError("checksum mismatch...") unless the blob's CRC32C trailer matches.
void verify_checksum(const uint8_t* data, size_t size);

// Segment boundaries implied by a group's token count and segment length.
uint32_t segment_count(uint32_t tokens, uint32_t seg_tokens);

}  // namespace cachegen
