// Scale codes on the wire (format v2, kTokenCodes / kChannelCodes): a group's token steps or
// channel scales, which lie on the 1/8-octave grid of quant.hpp, as zigzag(code - center) Rice
// coded with one parameter per group: ~3.6 bits per token step on real KV instead of 16.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace cachegen {

// Appends the codes of `steps` (fp16 grid values; anything else is a logic error).
void write_step_codes(const std::vector<uint16_t>& steps, std::vector<uint8_t>& out);

// Reads `count` codes at data[pos..end), advancing pos to the next byte; returns their fp16
// values. Throws FormatError on a truncated stream or a code off the grid.
std::vector<uint16_t> read_step_codes(const uint8_t* data, size_t& pos, size_t end, uint32_t count);

}  // namespace cachegen
