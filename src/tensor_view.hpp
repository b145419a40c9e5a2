// A strided view of one K or V tensor of one layer: element (token, head, dim) lives at
// data + token*s_token + head*s_head + dim*s_dim (strides in elements). Channel = head*dim + d.
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
};

// Copy a view into a dense fp32 [tokens, channels] buffer.
void load_f32(const TensorView& v, float* out);

}  // namespace cachegen
