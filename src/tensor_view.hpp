// A strided view of one K or V tensor of one layer: element (token, head, dim) lives at
// data + token*s_token + head*s_head + dim*s_dim (strides in elements). Channel = head*dim + d.
// Rows (one token's channels) move in and out as fp32, converting with F16C where the CPU has it.
#pragma once
#include <cstdint>

#include "common.hpp"

namespace cachegen {

struct TensorView {
  void* data = nullptr;
  DType dtype = DType::F16;
  uint32_t tokens = 0, heads = 0, head_dim = 0;
  int64_t s_token = 0, s_head = 0, s_dim = 0;

  uint32_t channels() const { return heads * head_dim; }
  // Channels of a token are adjacent in memory.
  bool dense_rows() const { return s_dim == 1 && (heads == 1 || s_head == (int64_t)head_dim); }
};

void load_row(const TensorView& v, uint32_t token, float* row);
void store_row(const TensorView& v, uint32_t token, const float* row);

// "f16c" or "scalar": how fp16 rows are converted on this CPU.
const char* convert_backend();

}  // namespace cachegen
