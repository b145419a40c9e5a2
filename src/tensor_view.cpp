#include "tensor_view.hpp"

#include "half.hpp"

namespace cachegen {
namespace {

template <typename T, typename Convert>
void load_rows(const TensorView& v, float* out, Convert convert) {
  const T* base = static_cast<const T*>(v.data);
  for (uint32_t t = 0; t < v.tokens; ++t) {
    for (uint32_t h = 0; h < v.heads; ++h) {
      const T* row = base + t * v.s_token + h * v.s_head;
      float* dst = out + ((size_t)t * v.heads + h) * v.head_dim;
      if (v.s_dim == 1) {
        for (uint32_t d = 0; d < v.head_dim; ++d) dst[d] = convert(row[d]);
      } else {
        for (uint32_t d = 0; d < v.head_dim; ++d) dst[d] = convert(row[d * v.s_dim]);
      }
    }
  }
}

}  // namespace

void load_f32(const TensorView& v, float* out) {
  switch (v.dtype) {
    case DType::F16:
      return load_rows<uint16_t>(v, out, f16_to_f32);
    case DType::BF16:
      return load_rows<uint16_t>(v, out, bf16_to_f32);
    case DType::F32:
      return load_rows<float>(v, out, [](float x) { return x; });
  }
}

}  // namespace cachegen
