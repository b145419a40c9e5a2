#include "crc32c.hpp"

#include <array>
#include <cstring>
#include <vector>

#include "parallel.hpp"

#if defined(__x86_64__) || defined(_M_X64)
#include <nmmintrin.h>
#define CG_X86 1
#endif

namespace cachegen {
namespace {

constexpr uint32_t kPoly = kCrc32cPoly;
constexpr size_t kParallelChunk = 1u << 20;

struct Tables {
  std::array<std::array<uint32_t, 256>, 8> t{};
  Tables() {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (kPoly & (0u - (c & 1)));
      t[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; ++i)
      for (int s = 1; s < 8; ++s) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xff];
  }
};

uint32_t crc_table(const uint8_t* p, size_t n, uint32_t crc) {
  static const Tables tb;
  const auto& t = tb.t;
  for (; n >= 8; n -= 8, p += 8) {
    uint32_t lo, hi;
    std::memcpy(&lo, p, 4);
    std::memcpy(&hi, p + 4, 4);
    lo ^= crc;
    crc = t[7][lo & 0xff] ^ t[6][(lo >> 8) & 0xff] ^ t[5][(lo >> 16) & 0xff] ^ t[4][lo >> 24] ^
          t[3][hi & 0xff] ^ t[2][(hi >> 8) & 0xff] ^ t[1][(hi >> 16) & 0xff] ^ t[0][hi >> 24];
  }
  while (n--) crc = (crc >> 8) ^ t[0][(crc ^ *p++) & 0xff];
  return crc;
}

#ifdef CG_X86
__attribute__((target("sse4.2"))) uint32_t crc_sse42(const uint8_t* p, size_t n, uint32_t crc) {
  uint64_t c = crc;
  for (; n >= 8; n -= 8, p += 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    c = _mm_crc32_u64(c, v);
  }
  uint32_t c32 = (uint32_t)c;
  while (n--) c32 = _mm_crc32_u8(c32, *p++);
  return c32;
}

// Three streams at once: the crc32 instruction's latency is three times its throughput, so one
// stream leaves the unit two thirds idle. Returns the CRC (not the register) of p[0, n).
__attribute__((target("sse4.2"))) uint32_t crc_sse42_x3(const uint8_t* p, size_t n, uint32_t crc) {
  constexpr size_t kMinBytes = 3 * 1024;  // below this the combines cost more than they save
  if (n < kMinBytes) return ~crc_sse42(p, n, ~crc);
  const size_t third = n / 3 / 8 * 8;
  const uint8_t *b = p + third, *c = b + third;
  uint64_t ra = ~crc, rb = ~0u, rc = ~0u;
  for (size_t i = 0; i < third; i += 8) {
    uint64_t va, vb, vc;
    std::memcpy(&va, p + i, 8);
    std::memcpy(&vb, b + i, 8);
    std::memcpy(&vc, c + i, 8);
    ra = _mm_crc32_u64(ra, va);
    rb = _mm_crc32_u64(rb, vb);
    rc = _mm_crc32_u64(rc, vc);
  }
  const size_t rest = n - 3 * third;
  const uint32_t last = ~crc_sse42(c + third, rest, (uint32_t)rc);
  const CrcPowers& pw = crc_powers();
  const uint32_t ab = crc_combine(~(uint32_t)ra, ~(uint32_t)rb, third, pw);
  return crc_combine(ab, last, third + rest, pw);
}

bool has_sse42() {
  static const bool yes = __builtin_cpu_supports("sse4.2");
  return yes;
}
#endif

uint32_t crc_serial(const uint8_t* data, size_t n, uint32_t crc) {
#ifdef CG_X86
  if (has_sse42()) return crc_sse42_x3(data, n, crc);
#endif
  return ~crc_table(data, n, ~crc);
}

}  // namespace

const CrcPowers& crc_powers() {
  static const CrcPowers powers = [] {
    CrcPowers pw;
    uint32_t p = 1u << 30;  // x^1
    for (auto& v : pw.x2n) {
      v = p;
      p = crc_multmodp(p, p);
    }
    return pw;
  }();
  return powers;
}

uint32_t crc32c(const uint8_t* data, size_t n, uint32_t crc) {
  const size_t chunks = n / kParallelChunk;
  if (chunks < 2) return crc_serial(data, n, crc);
  auto length = [&](size_t i) { return i + 1 == chunks ? n - i * kParallelChunk : kParallelChunk; };
  std::vector<uint32_t> part(chunks);
  parallel_for(chunks, 0, [&](size_t i) {
    part[i] = crc_serial(data + i * kParallelChunk, length(i), i ? 0 : crc);
  });
  const CrcPowers& pw = crc_powers();
  for (size_t i = 1; i < chunks; ++i) part[0] = crc_combine(part[0], part[i], length(i), pw);
  return part[0];
}

const char* crc32c_backend() {
#ifdef CG_X86
  if (has_sse42()) return "sse4.2";
#endif
  return "table";
}

}  // namespace cachegen
