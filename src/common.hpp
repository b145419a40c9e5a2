// Shared definitions for the portable core: host/device qualifiers, error types, limits.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

#if defined(__CUDACC__)
#define CG_HD __host__ __device__ __forceinline__
#else
#define CG_HD inline
#endif

namespace cachegen {

// A blob that is malformed, truncated, corrupted or of an unsupported version.
struct FormatError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A caller error: bad tensor shape, dtype or option.
struct InputError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

enum class DType : uint8_t { F16 = 1, BF16 = 2, F32 = 3 };

inline bool valid_dtype(uint8_t d) { return d >= 1 && d <= 3; }
inline std::size_t dtype_size(DType d) { return d == DType::F32 ? 4 : 2; }

constexpr int kSymbolBias = 128;  // symbol s is coded as alphabet index s + 128, s in [-127, 127]
constexpr int kMaxSymbol = 127;

// Hard limits checked on every parsed header, so no allocation is sized by an unchecked field.
constexpr uint32_t kMaxLayers = 4096;
constexpr uint32_t kMaxTokens = 1u << 24;
constexpr uint32_t kMaxHeads = 4096;
constexpr uint32_t kMaxHeadDim = 4096;
constexpr uint32_t kMaxChannels = 1u << 18;
constexpr uint32_t kMaxSegmentSymbols = 1u << 22;

}  // namespace cachegen
