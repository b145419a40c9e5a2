// CRC32C (Castagnoli), the blob checksum: SSE4.2 instruction when the CPU has it, else tables.
#pragma once
#include <cstddef>
#include <cstdint>

namespace cachegen {

uint32_t crc32c(const uint8_t* data, size_t n, uint32_t crc = 0);

// "sse4.2" or "table": which implementation crc32c() uses on this CPU.
const char* crc32c_backend();

}  // namespace cachegen
