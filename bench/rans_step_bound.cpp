// What bounds the AVX-512 rANS decode step on this CPU: the shipped step (src/simd/avx512.cpp,
// step16: table gather, multiply-add, renormalization by expand) on synthetic states and words,
// against the same step with the gather replaced by arithmetic, with the gather reading a table
// that fits in L1, and with two segments interleaved (twice the independent chains).
//
//   g++ -O2 -std=c++17 bench/rans_step_bound.cpp -o /tmp/rans_step_bound && /tmp/rans_step_bound
//
// Prints ns per step of 32 symbols (best of 5 runs of 2M steps). Results and reading:
// bench/results/rans_step_bound.md.
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

// GCC 12 warns inside its own AVX-512 headers (their _mm512_undefined_* values), not here.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#define CG_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,popcnt")))

namespace {

enum class Lookup { Gather, GatherL1, Arithmetic };

struct Data {
  std::vector<uint32_t> lut, off;
  std::vector<uint16_t> words;
  std::vector<int8_t> out;
};

template <Lookup L>
CG_AVX512 inline __m512i entries(__m512i idx, const uint32_t* lut) {
  if constexpr (L == Lookup::Gather) return _mm512_i32gather_epi32(idx, lut, 4);
  if constexpr (L == Lookup::GatherL1)  // 4 KB of the table: always an L1 hit
    return _mm512_i32gather_epi32(_mm512_and_si512(idx, _mm512_set1_epi32(1023)), lut, 4);
  return _mm512_xor_si512(idx, _mm512_set1_epi32(0x12345678));
}

// src/simd/avx512.cpp's step16 with the lookup as a parameter.
template <Lookup L>
CG_AVX512 inline __m512i step16(__m512i x, const uint32_t* off, const uint32_t* lut,
                                const uint16_t* words, size_t& wp, int8_t* out) {
  const __m512i m12 = _mm512_set1_epi32(0xfff);
  const __m512i idx = _mm512_add_epi32(_mm512_loadu_si512(off), _mm512_and_si512(x, m12));
  const __m512i e = entries<L>(idx, lut);
  const __m512i freq =
      _mm512_add_epi32(_mm512_and_si512(_mm512_srli_epi32(e, 12), m12), _mm512_set1_epi32(1));
  x = _mm512_add_epi32(_mm512_mullo_epi32(freq, _mm512_srli_epi32(x, 12)),
                       _mm512_and_si512(e, m12));
  const __mmask16 need = _mm512_cmplt_epu32_mask(x, _mm512_set1_epi32(1 << 16));
  const __m512i w = _mm512_maskz_expand_epi32(
      need, _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)(words + wp))));
  x = _mm512_mask_or_epi32(x, need, _mm512_slli_epi32(x, 16), w);
  wp += (size_t)_mm_popcnt_u32(need);
  _mm_storeu_si128((__m128i*)out, _mm512_cvtepi32_epi8(_mm512_srli_epi32(e, 24)));
  return x;
}

double elapsed_ns(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count();
}

// One segment: two 16-lane halves sharing one word stream, as the decoder runs them.
template <Lookup L>
CG_AVX512 double one_segment(Data& d, size_t steps) {
  __m512i x0 = _mm512_set1_epi32(1 << 20), x1 = _mm512_set1_epi32(3 << 20);
  size_t wp = 0;
  uint32_t c = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (size_t k = 0; k < steps; ++k) {
    if (wp + 64 > d.words.size()) wp = 0;
    int8_t* out = d.out.data() + (k % 1024) * 32;
    x0 = step16<L>(x0, d.off.data() + c, d.lut.data(), d.words.data(), wp, out);
    x1 = step16<L>(x1, d.off.data() + c + 16, d.lut.data(), d.words.data(), wp, out + 16);
    c = c + 32 >= 192 ? c + 32 - 192 : c + 32;
  }
  const double ns = elapsed_ns(t0) / steps;
  volatile int sink = _mm512_reduce_add_epi32(_mm512_add_epi32(x0, x1));
  (void)sink;
  return ns;
}

// Two segments interleaved: four halves, two word streams (per step of 32 symbols).
template <Lookup L>
CG_AVX512 double two_segments(Data& d, size_t steps) {
  __m512i x[4] = {_mm512_set1_epi32(1 << 20), _mm512_set1_epi32(3 << 20),
                  _mm512_set1_epi32(5 << 20), _mm512_set1_epi32(7 << 20)};
  const size_t half = d.words.size() / 2;
  size_t wp[2] = {0, half};
  uint32_t c = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (size_t k = 0; k < steps; k += 2) {
    int8_t* out = d.out.data() + (k % 1024) * 32;
    for (int s = 0; s < 2; ++s)
      if (wp[s] + 64 > half * (s + 1)) wp[s] = half * s;
    for (int h = 0; h < 2; ++h)
      for (int s = 0; s < 2; ++s)
        x[2 * s + h] =
            step16<L>(x[2 * s + h], d.off.data() + c + 16 * h, d.lut.data() + s * 16 * 4096,
                      d.words.data(), wp[s], out + 32 * s + 16 * h);
    c = c + 32 >= 192 ? c + 32 - 192 : c + 32;
  }
  const double ns = elapsed_ns(t0) / steps;
  volatile int sink = _mm512_reduce_add_epi32(_mm512_add_epi32(x[0], x[3]));
  (void)sink;
  return ns;
}

template <typename F>
double best(F&& f) {
  double b = 1e30;
  for (int r = 0; r < 5; ++r) b = std::min(b, f());
  return b;
}

}  // namespace

int main() {
  if (!__builtin_cpu_supports("avx512bw")) {
    std::puts("needs AVX-512");
    return 0;
  }
  Data d;
  std::mt19937 g(1);
  d.lut.resize(32 * 4096);  // 32 tables of 4096 slots: two segments' 16 tables each
  for (uint32_t& e : d.lut) {
    const uint32_t f = 1 + g() % 2048;
    e = ((g() & 0xff) << 24) | ((f - 1) << 12) | (g() % f);
  }
  d.off.resize(192 + 32);  // 192 channels over 16 tables, as a SmolLM2 group
  for (size_t i = 0; i < d.off.size(); ++i) d.off[i] = (uint32_t)((i % 192) % 16) * 4096;
  d.words.resize(1 << 22);
  for (uint16_t& w : d.words) w = (uint16_t)g();
  d.out.resize(1 << 16);
  const size_t n = 2000000;
  std::printf("ns per step of 32 symbols (best of 5 x %zu steps)\n", n);
  std::printf("  shipped step (gather, 16 tables of 16 KB): %.2f\n",
              best([&] { return one_segment<Lookup::Gather>(d, n); }));
  std::printf("  gather from 4 KB (L1 hits):                 %.2f\n",
              best([&] { return one_segment<Lookup::GatherL1>(d, n); }));
  std::printf("  no gather (arithmetic instead):             %.2f\n",
              best([&] { return one_segment<Lookup::Arithmetic>(d, n); }));
  std::printf("  two segments interleaved, gather:           %.2f\n",
              best([&] { return two_segments<Lookup::Gather>(d, n); }));
  std::printf("  two segments interleaved, no gather:        %.2f\n",
              best([&] { return two_segments<Lookup::Arithmetic>(d, n); }));
}
