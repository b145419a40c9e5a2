// fp16 / bf16 <-> fp32 conversions in plain integer arithmetic, identical on CPU and GPU.
#pragma once
#include <cstdint>
#include <cstring>

#include "common.hpp"

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#endif

namespace cachegen {

CG_HD uint32_t f32_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}

CG_HD float bits_f32(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

CG_HD float f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t man = h & 0x3ffu;
  if (exp == 0x1f) return bits_f32(sign | 0x7f800000u | (man << 13));  // inf / nan
  if (exp != 0) return bits_f32(sign | ((exp + 112) << 23) | (man << 13));
  // Subnormal: value is man * 2^-24, exact in fp32.
  float v = (float)man * 5.9604644775390625e-8f;
  return bits_f32(sign | f32_bits(v));
}

// Round to nearest even, overflow to inf, like the IEEE conversion instructions.
CG_HD uint16_t f32_to_f16(float f) {
  uint32_t x = f32_bits(f);
#if defined(__CUDA_ARCH__)
  // The GPU's cvt.rn.f16.f32 is that conversion; only NaN payloads differ, handled below.
  if ((x & 0x7fffffffu) <= 0x7f800000u) return __half_as_ushort(__float2half_rn(f));
#endif
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0));
  if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  // rounds to >= 65520 -> inf
  if (ax < 0x38800000u) {                                    // result is subnormal or zero
    if (ax < 0x33000000u) return (uint16_t)sign;             // < 2^-25 rounds to 0
    uint32_t e = ax >> 23;
    uint32_t m = (ax & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - e;  // 14..24 + ... aligns to 2^-24 units
    uint32_t q = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1);
    uint32_t half = 1u << (shift - 1);
    q += (rem > half) || (rem == half && (q & 1));
    return (uint16_t)(sign | q);
  }
  uint32_t r = ax + 0x0fffu + ((ax >> 13) & 1);  // round mantissa to 10 bits, ties to even
  return (uint16_t)(sign | ((r - 0x38000000u) >> 13));
}

CG_HD float bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

CG_HD uint16_t f32_to_bf16(float f) {
  uint32_t x = f32_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u);  // quiet nan
  x += 0x7fffu + ((x >> 16) & 1);
  return (uint16_t)(x >> 16);
}

}  // namespace cachegen
