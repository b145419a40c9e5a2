// Fuzz target: step codes (Rice-coded scale grids). Bytes 0-1: the count of codes (up to
// 65535); the rest is the stream. Accepted steps must lie on the grid, re-encode, and read back
// the same.
#include "step_codes.hpp"

#include <cstdlib>
#include <vector>

#include "common.hpp"

using namespace cachegen;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const uint32_t count = data[0] | data[1] << 8;
  if (count == 0) return 0;
  size_t pos = 2;
  std::vector<uint16_t> steps;
  try {
    steps = read_step_codes(data, pos, size, count);
  } catch (const FormatError&) {
    return 0;
  }
  if (steps.size() != count || pos > size) std::abort();
  std::vector<uint8_t> again;
  write_step_codes(steps, again);  // throws std::logic_error on a step off the grid
  size_t at = 0;
  if (read_step_codes(again.data(), at, again.size(), count) != steps || at != again.size())
    std::abort();
  return 0;
}
