#include "tensor_view.hpp"

#include <algorithm>
#include <cstring>
#include <vector>

#include "half.hpp"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#include <immintrin.h>
#define CG_X86 1
#endif

namespace cachegen {
namespace {

#ifdef CG_X86
bool has_f16c() {
  // F16C from CPUID (leaf 1, ECX): clang's __builtin_cpu_supports does not know "f16c".
  static const bool yes = [] {
    unsigned a, b, c, d;
    return __builtin_cpu_supports("avx") && __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
  }();
  return yes;
}

// The F16C instructions round to nearest even, like f32_to_f16, so both paths agree bit for bit.
__attribute__((target("avx,f16c"))) void f16_to_f32_f16c(const uint16_t* src, float* dst,
                                                         uint32_t n) {
  uint32_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(src + i))));
  for (; i < n; ++i) dst[i] = f16_to_f32(src[i]);
}

__attribute__((target("avx,f16c"))) void f32_to_f16_f16c(const float* src, uint16_t* dst,
                                                         uint32_t n) {
  uint32_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128((__m128i*)(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
  for (; i < n; ++i) dst[i] = f32_to_f16(src[i]);
}

// dst[j * dst_stride + k] = src[k * src_stride + j] for an 8x8 block of 16-bit elements.
void transpose8x8(const uint16_t* src, uint32_t src_stride, uint16_t* dst, int64_t dst_stride) {
  __m128i r[8], t[8], u[8];
  for (int i = 0; i < 8; ++i)
    r[i] = _mm_loadu_si128((const __m128i*)(src + (size_t)i * src_stride));
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm_unpacklo_epi16(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm_unpackhi_epi16(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j) {
      u[4 * i + 2 * j] = _mm_unpacklo_epi32(t[4 * i + j], t[4 * i + j + 2]);
      u[4 * i + 2 * j + 1] = _mm_unpackhi_epi32(t[4 * i + j], t[4 * i + j + 2]);
    }
  for (int i = 0; i < 4; ++i) {
    _mm_storeu_si128((__m128i*)(dst + (2 * i) * dst_stride), _mm_unpacklo_epi64(u[i], u[i + 4]));
    _mm_storeu_si128((__m128i*)(dst + (2 * i + 1) * dst_stride),
                     _mm_unpackhi_epi64(u[i], u[i + 4]));
  }
}
#endif

constexpr uintptr_t kLine = 64;  // cache line bytes

// Into L2 (prefetcht1), not L1: L1 holds the decoding tile's symbols and tables.
void prefetch(const uint8_t* p) { __builtin_prefetch(p, 0, 2); }

// Every line of [p, p + n).
void prefetch_lines(const uint8_t* p, size_t n) {
  const uintptr_t end = (uintptr_t)p + n;
  for (uintptr_t a = (uintptr_t)p & ~(kLine - 1); a < end; a += kLine)
    prefetch(reinterpret_cast<const uint8_t*>(a));
}

void f16_to_f32_n(const uint16_t* src, float* dst, uint32_t n) {
#ifdef CG_X86
  if (has_f16c()) return f16_to_f32_f16c(src, dst, n);
#endif
  for (uint32_t i = 0; i < n; ++i) dst[i] = f16_to_f32(src[i]);
}

void f32_to_f16_n(const float* src, uint16_t* dst, uint32_t n) {
#ifdef CG_X86
  if (has_f16c()) return f32_to_f16_f16c(src, dst, n);
#endif
  for (uint32_t i = 0; i < n; ++i) dst[i] = f32_to_f16(src[i]);
}

void bf16_to_f32_n(const uint16_t* src, float* dst, uint32_t n) {
  for (uint32_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(src[i]);
}

void f32_to_bf16_n(const float* src, uint16_t* dst, uint32_t n) {
  for (uint32_t i = 0; i < n; ++i) dst[i] = f32_to_bf16(src[i]);
}

void copy_in(const float* src, float* dst, uint32_t n) { std::memcpy(dst, src, n * 4); }

// Apply `fn(tensor_run, row_run, n)` to each contiguous run of a row: one run if dense, else
// per head (contiguous dims) or per element. Row is `float` for loads, `const float` for stores.
template <typename T, typename Row, typename Fn>
void for_runs(const TensorView& v, uint32_t token, Row* row, Fn fn) {
  T* base = static_cast<T*>(v.data) + v.token_offset(token);
  if (v.dense_rows()) return fn(base, row, v.channels());
  for (uint32_t h = 0; h < v.heads; ++h) {
    T* head = base + h * v.s_head;
    Row* r = row + h * v.head_dim;
    if (v.s_dim == 1) {
      fn(head, r, v.head_dim);
    } else {
      for (uint32_t d = 0; d < v.head_dim; ++d) fn(head + d * v.s_dim, r + d, 1);
    }
  }
}

}  // namespace

void check_paging(const TensorView& v, const std::string& what) {
  if (!v.block_table) return;
  if (v.block_size < 1) throw InputError(what + ": block size must be >= 1");
  for (uint32_t i = 0; i < v.table_entries(); ++i)
    if (v.block_table[i] < 0 || (uint32_t)v.block_table[i] >= v.num_blocks)
      throw InputError(what + ": block id " + std::to_string(v.block_table[i]) +
                       " out of range [0, " + std::to_string(v.num_blocks) + ")");
}

void load_row(const TensorView& v, uint32_t token, float* row) {
  switch (v.dtype) {
    case DType::F16:
      return for_runs<uint16_t>(v, token, row, f16_to_f32_n);
    case DType::BF16:
      return for_runs<uint16_t>(v, token, row, bf16_to_f32_n);
    case DType::F32:
      return for_runs<float>(v, token, row, copy_in);
  }
}

// Calls f(T{}, store) with the dtype's element type T and its store(T* dst, const float* src,
// n) converter.
template <typename F>
void with_store(DType dtype, F&& f) {
  switch (dtype) {
    case DType::F16:
      return f(uint16_t{}, [](uint16_t* d, const float* s, uint32_t n) { f32_to_f16_n(s, d, n); });
    case DType::BF16:
      return f(uint16_t{}, [](uint16_t* d, const float* s, uint32_t n) { f32_to_bf16_n(s, d, n); });
    case DType::F32:
      return f(float{}, [](float* d, const float* s, uint32_t n) { copy_in(s, d, n); });
  }
}

void store_row(const TensorView& v, uint32_t token, const float* row) {
  with_store(v.dtype, [&](auto t, auto store) { for_runs<decltype(t)>(v, token, row, store); });
}

namespace {

// Scatters a converted tile's rows ([m, C], row stride C) into a token-adjacent view (s_token ==
// 1, e.g. the vLLM CPU backend's transposed key pages), whose m tokens from `base` are adjacent:
// channel c's tokens go to base + h*s_head + d*s_dim. Whole groups of eight channels of 16-bit
// elements move their first tokens 32 at a time through the AVX-512 transpose (`avx512`), one
// call for the tile, then eight at a time through an SSE2 one; the rest one element at a time.
template <typename T>
void transpose_rows(const T* tile, uint32_t C, uint32_t m, const TensorView& v, T* base,
                    bool avx512) {
  uint32_t k0 = 0;
#ifdef CG_X86
  if constexpr (sizeof(T) == 2) {
    k0 = avx512 ? m / 32 * 32 : 0;
    if (k0) transpose_tile_avx512(tile, C, k0, v, base);
  }
#endif
  for (uint32_t h = 0; h < v.heads; ++h)
    for (uint32_t d = 0; d < v.head_dim;) {
      const uint32_t c = h * v.head_dim + d;
      T* dst = base + h * v.s_head + d * v.s_dim;
#ifdef CG_X86
      if constexpr (sizeof(T) == 2) {
        if (d + 8 <= v.head_dim) {
          uint32_t k = k0;
          for (; k + 8 <= m; k += 8) transpose8x8(tile + (size_t)k * C + c, C, dst + k, v.s_dim);
          for (uint32_t j = 0; j < 8; ++j)
            for (uint32_t t = k; t < m; ++t) dst[j * v.s_dim + t] = tile[(size_t)t * C + c + j];
          d += 8;
          continue;
        }
      }
#endif
      for (uint32_t k = 0; k < m; ++k) dst[k] = tile[(size_t)k * C + c];
      ++d;
    }
}

// Places n rows already in the view's element type ([n, C], dense) into a view whose rows are
// not dense: token-adjacent views (s_token == 1) a block's token run at a time through the
// transpose, others run by run (per head, or per element).
template <typename T>
void place_rows(const TensorView& v, uint32_t token, uint32_t n, const T* dense, bool avx512) {
  const uint32_t C = v.channels(), end = token + n;
  if (v.s_token == 1) {
    for (uint32_t a = token; a < end;) {
      const uint32_t b = v.block_table ? std::min(end, (a / v.block_size + 1) * v.block_size) : end;
      T* base = static_cast<T*>(v.data) + v.token_offset(a);
      transpose_rows(dense + (size_t)(a - token) * C, C, b - a, v, base, avx512);
      a = b;
    }
    return;
  }
  for (uint32_t k = 0; k < n; ++k)
    for_runs<T>(v, token + k, dense + (size_t)k * C,
                [](T* t, const T* r, uint32_t m) { std::memcpy(t, r, m * sizeof(T)); });
}

}  // namespace

void store_rows(const TensorView& v, uint32_t token, uint32_t n, const float* rows) {
  if (v.dense_rows()) {
    for (uint32_t k = 0; k < n; ++k) store_row(v, token + k, rows + (size_t)k * v.channels());
    return;
  }
  // The tile is converted in one pass, then placed.
  with_store(v.dtype, [&](auto t, auto store) {
    using T = decltype(t);
    thread_local std::vector<T> dense;
    dense.resize((size_t)n * v.channels());
    store(dense.data(), rows, n * v.channels());
    place_rows(v, token, n, dense.data(), false);
  });
}

void store_native_rows(const TensorView& v, uint32_t token, uint32_t n, const void* rows,
                       bool avx512) {
  if (dtype_size(v.dtype) == 2)
    return place_rows(v, token, n, static_cast<const uint16_t*>(rows), avx512);
  place_rows(v, token, n, static_cast<const float*>(rows), avx512);
}

void prefetch_row(const TensorView& v, const uint8_t* base) {
  const size_t elem = dtype_size(v.dtype);
  if (v.dense_rows()) return prefetch_lines(base, v.channels() * elem);
  if (v.s_token == 1) {
    if ((uintptr_t)base % kLine >= elem) return;  // its lines were fetched with an earlier token
    for (uint32_t h = 0; h < v.heads; ++h)
      for (uint32_t d = 0; d < v.head_dim; ++d)
        prefetch(base + (h * v.s_head + d * v.s_dim) * elem);
    return;
  }
  if (v.s_dim == 1)
    for (uint32_t h = 0; h < v.heads; ++h)
      prefetch_lines(base + h * v.s_head * elem, v.head_dim * elem);
}

// A row's raw bits, element type T (the dtype's width), through for_runs.
template <typename T>
void load_bits_as(const TensorView& v, uint32_t token, uint8_t* bits) {
  for_runs<T>(v, token, reinterpret_cast<T*>(bits),
              [](T* t, T* r, uint32_t n) { std::memcpy(r, t, n * sizeof(T)); });
}

template <typename T>
void store_bits_as(const TensorView& v, uint32_t token, const uint8_t* bits) {
  for_runs<T>(v, token, reinterpret_cast<const T*>(bits),
              [](T* t, const T* r, uint32_t n) { std::memcpy(t, r, n * sizeof(T)); });
}

void load_bits(const TensorView& v, uint32_t token, uint8_t* bits) {
  if (v.dtype == DType::F32) return load_bits_as<uint32_t>(v, token, bits);
  load_bits_as<uint16_t>(v, token, bits);
}

void store_bits(const TensorView& v, uint32_t token, const uint8_t* bits) {
  if (v.dtype == DType::F32) return store_bits_as<uint32_t>(v, token, bits);
  store_bits_as<uint16_t>(v, token, bits);
}

const char* convert_backend() {
#ifdef CG_X86
  if (has_f16c()) return "f16c";
#endif
  return "scalar";
}

}  // namespace cachegen
