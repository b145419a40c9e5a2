#include "step_codes.hpp"

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "bits.hpp"
#include "quant.hpp"

namespace cachegen {
namespace {

constexpr int kMaxRice = 15;
// The largest zigzag value two grid codes can differ by: a longer unary run is corrupt.
constexpr uint32_t kMaxZigzag = 2 * (kMaxStepCode - kMinStepCode) + 1;

uint32_t zigzag(int d) { return d >= 0 ? 2u * (uint32_t)d : 2u * (uint32_t)(-d) - 1u; }
int unzigzag(uint32_t z) { return z & 1 ? -(int)((z + 1) / 2) : (int)(z / 2); }

// The grid code of an fp16 grid value: the nearest code of the value itself, except in fp16's
// subnormal range, where neighbouring codes can round to one value and a search finds the first.
int code_of(uint16_t step) {
  const int guess = nearest_step_code(f16_to_f32(step));
  if (step_code_value(guess) == step) return guess;
  int lo = kMinStepCode, hi = kMaxStepCode;  // grid values never decrease with the code
  const float s = f16_to_f32(step);
  while (lo < hi) {
    const int mid = lo + (hi - lo) / 2;
    if (f16_to_f32(step_code_value(mid)) < s)
      lo = mid + 1;
    else
      hi = mid;
  }
  if (step_code_value(lo) != step) throw std::logic_error("scale off the step-code grid");
  return lo;
}

// step_code_value for every code, built once: the reader looks each code up.
const std::array<uint16_t, kMaxStepCode - kMinStepCode + 1>& grid_values() {
  static const auto table = [] {
    std::array<uint16_t, kMaxStepCode - kMinStepCode + 1> t{};
    for (int k = kMinStepCode; k <= kMaxStepCode; ++k) t[k - kMinStepCode] = step_code_value(k);
    return t;
  }();
  return table;
}

// code_of for every fp16 value on the grid (kOffGrid elsewhere), built once: a token's code is
// one lookup, not a search of the grid.
constexpr int16_t kOffGrid = INT16_MIN;

int grid_code(uint16_t step) {
  static const std::vector<int16_t> table = [] {
    std::vector<int16_t> t(1 << 16, kOffGrid);
    for (int k = kMinStepCode; k <= kMaxStepCode; ++k)
      if (const uint16_t v = step_code_value(k); t[v] == kOffGrid) t[v] = (int16_t)code_of(v);
    return t;
  }();
  const int code = table[step];
  return code != kOffGrid ? code : code_of(step);  // off the grid: code_of reports it
}

uint64_t rice_bits(const std::vector<uint32_t>& z, int k) {
  uint64_t bits = 0;
  for (uint32_t v : z) bits += (v >> k) + 1 + k;
  return bits;
}

}  // namespace

void write_step_codes(const std::vector<uint16_t>& steps, std::vector<uint8_t>& out) {
  std::vector<int> codes;
  for (uint16_t s : steps) codes.push_back(grid_code(s));
  std::vector<int> sorted = codes;
  std::nth_element(sorted.begin(), sorted.begin() + sorted.size() / 2, sorted.end());
  const int16_t center = (int16_t)sorted[sorted.size() / 2];
  std::vector<uint32_t> z;
  for (int c : codes) z.push_back(zigzag(c - center));
  int k = 0;
  uint64_t best = rice_bits(z, 0);
  for (int j = 1; j <= kMaxRice; ++j)
    if (const uint64_t bits = rice_bits(z, j); bits < best) best = bits, k = j;
  const uint8_t head[3] = {(uint8_t)center, (uint8_t)((uint16_t)center >> 8), (uint8_t)k};
  out.insert(out.end(), head, head + 3);
  BitWriter w(out);
  for (uint32_t v : z) {
    w.ones(v >> k);
    w.bits(0, 1);
    w.bits(v, k);
  }
  w.finish();
}

std::vector<uint16_t> read_step_codes(const uint8_t* data, size_t& pos, size_t end,
                                      uint32_t count) {
  if (end - pos < 3) throw FormatError("truncated scale codes");
  const int center = (int16_t)(data[pos] | data[pos + 1] << 8);
  const int k = data[pos + 2];
  if (k > kMaxRice) throw FormatError("scale codes: bad Rice parameter");
  // Every code takes at least k + 1 bits: refuse before allocating for a count the data lacks.
  if ((uint64_t)(end - pos - 3) * 8 < (uint64_t)count * (k + 1))
    throw FormatError("truncated scale codes");
  BitReader r(data, pos + 3, end, "scale codes");
  const auto& grid = grid_values();
  std::vector<uint16_t> steps(count);
  uint16_t* step = steps.data();
  r.rice_codes(count, k, kMaxZigzag >> k, [&](uint32_t z) {
    const int code = center + unzigzag(z);
    if (code < kMinStepCode || code > kMaxStepCode)
      throw FormatError("scale codes: code out of range");
    *step++ = grid[code - kMinStepCode];
  });
  pos = r.end_pos();
  return steps;
}

}  // namespace cachegen
