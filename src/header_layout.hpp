// Where each field of a blob's 64-byte header lies (docs/FORMAT.md, "Header"). The one place the
// layout is written down: format.cpp writes and reads the header through these fields, and the
// GPU code that patches a head (the encoder) or peeks at one (the device-blob parse) uses them
// too. Usable from host and device code.
#pragma once
#include <array>
#include <cstdint>
#include <cstring>

#include "common.hpp"

namespace cachegen {

constexpr uint8_t kMagic[4] = {'C', 'G', 'K', 'V'};
constexpr uint32_t kHeaderBytes = 64;
constexpr uint32_t kGroupDescBytes = 40;

// A header field: its type and byte offset. Little-endian like the host (checked in CMake).
template <typename T, uint32_t Offset>
struct HeaderField {
  using type = T;
  static constexpr uint32_t at = Offset;
  static constexpr uint32_t end = Offset + sizeof(T);
};

namespace field {
using Magic = HeaderField<uint32_t, 0>;
using Version = HeaderField<uint16_t, Magic::end>;
using HeaderBytes = HeaderField<uint16_t, Version::end>;
using TotalBytes = HeaderField<uint64_t, HeaderBytes::end>;
using NumLayers = HeaderField<uint32_t, TotalBytes::end>;
using DType = HeaderField<uint8_t, NumLayers::end>;
using Layout = HeaderField<uint8_t, DType::end>;
using Level = HeaderField<uint8_t, Layout::end>;
using Codec = HeaderField<uint8_t, Level::end>;
using NumSegments = HeaderField<uint32_t, Codec::end>;
using Flags = HeaderField<uint32_t, NumSegments::end>;
using SideOffset = HeaderField<uint64_t, Flags::end>;
using IndexOffset = HeaderField<uint64_t, SideOffset::end>;
using PayloadOffset = HeaderField<uint64_t, IndexOffset::end>;
using Reserved = HeaderField<uint64_t, PayloadOffset::end>;
static_assert(Reserved::end == kHeaderBytes, "the header fields fill exactly 64 bytes");
// The transform record (version 5 on, header flag bit 1) right after the fixed header.
using TransformDigest = HeaderField<std::array<uint8_t, 32>, kHeaderBytes>;
using TransformPosition = HeaderField<uint64_t, TransformDigest::end>;
}  // namespace field
constexpr uint32_t kTransformRecordBytes = field::TransformPosition::end - kHeaderBytes;

// Reads field F of the header at `head` (at least F::end bytes readable).
template <typename F>
CG_HD typename F::type get(const uint8_t* head) {
  typename F::type v;
  std::memcpy(&v, head + F::at, sizeof(v));
  return v;
}

template <typename F>
CG_HD void put(uint8_t* head, typename F::type v) {
  std::memcpy(head + F::at, &v, sizeof(v));
}

}  // namespace cachegen
