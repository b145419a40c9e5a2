// Structure-aware front end of the blob fuzz targets: a mutated blob gets its length field and
// CRC32C trailer fixed up before parsing, so mutations reach the field checks behind the checksum
// instead of dying at it. Inputs that already fail the magic or are too short pass through.
#pragma once
#include <cstdint>
#include <cstring>
#include <vector>

#include "crc32c.hpp"
#include "format.hpp"

namespace cachegen::fuzz {

inline std::vector<uint8_t> resealed(const uint8_t* data, size_t size) {
  std::vector<uint8_t> b(data, data + size);
  if (size < kHeaderBytes + 4 || std::memcmp(data, kMagic, 4) != 0) return b;
  put<field::TotalBytes>(b.data(), size);
  const uint32_t crc = crc32c(b.data(), size - 4);
  std::memcpy(b.data() + size - 4, &crc, 4);
  return b;
}

}  // namespace cachegen::fuzz
