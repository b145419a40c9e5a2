// CRC32C (Castagnoli), the blob checksum: SSE4.2 instruction when the CPU has it, else tables.
#pragma once
#include <cstddef>
#include <cstdint>

#include "common.hpp"

namespace cachegen {

constexpr uint32_t kCrc32cPoly = 0x82f63b78u;  // reflected Castagnoli polynomial

// a(x) * b(x) modulo the polynomial, in the reflected bit order (zlib's multmodp).
CG_HD uint32_t crc_multmodp(uint32_t a, uint32_t b) {
  uint32_t p = 0;
  for (uint32_t m = 1u << 31; m; m >>= 1) {
    if (a & m) p ^= b;
    b = (b >> 1) ^ (kCrc32cPoly & (0u - (b & 1)));
  }
  return p;
}

// x^(2^k) mod p for k < 64: the powers crc_combine needs, computed once per process.
struct CrcPowers {
  uint32_t x2n[64];
};
const CrcPowers& crc_powers();

// CRC32C of A then B from crc(A), crc(B) and len(B): chunks can be checksummed in parallel.
CG_HD uint32_t crc_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b, const CrcPowers& pw) {
  uint32_t shift = 1u << 31;  // x^0
  for (int k = 3; len_b; len_b >>= 1, ++k)
    if (len_b & 1) shift = crc_multmodp(pw.x2n[k], shift);
  return crc_multmodp(shift, crc_a) ^ crc_b;
}

// Large buffers are checksummed in parallel chunks and combined.
uint32_t crc32c(const uint8_t* data, size_t n, uint32_t crc = 0);

// "sse4.2" or "table": which implementation crc32c() uses on this CPU.
const char* crc32c_backend();

}  // namespace cachegen
