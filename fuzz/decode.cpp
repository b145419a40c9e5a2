// Fuzz target: the whole host decode of a (resealed) blob: parse, then decode into dense fp32
// outputs of the blob's shapes (up to 16 MiB of output), then the entropy statistics. Lossless
// groups decode into their own dtype. Every CPU path this machine has decodes the blob: all must
// fail alike or write the same bytes.
#include <cmath>
#include <cstdlib>

#include "codec.hpp"
#include "cpu_path.hpp"
#include "reseal.hpp"

using namespace cachegen;

namespace {
constexpr uint64_t kMaxOutputBytes = 16u << 20;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::vector<uint8_t> b = fuzz::resealed(data, size);
  ParsedBlob p;
  try {
    p = parse_blob(b.data(), b.size());
  } catch (const FormatError&) {
    return 0;
  }
  uint64_t total = 0;
  for (const Group& g : p.groups) total += (uint64_t)g.desc.tokens * g.desc.channels() * 4;
  if (total > kMaxOutputBytes) return 0;
  std::vector<std::vector<uint8_t>> memory;
  std::vector<TensorView> outs;
  for (const Group& g : p.groups) {
    const GroupDesc& d = g.desc;
    const DType dt = d.quantizer == Quantizer::Lossless ? p.header.dtype : DType::F32;
    memory.emplace_back((size_t)d.tokens * d.channels() * dtype_size(dt));
    TensorView v;
    v.data = memory.back().data();
    v.dtype = dt;
    v.tokens = d.tokens;
    v.heads = d.heads;
    v.head_dim = d.head_dim;
    v.s_token = (int64_t)d.channels();
    v.s_head = d.head_dim;
    v.s_dim = 1;
    outs.push_back(v);
  }
  std::vector<std::vector<uint8_t>> first;
  bool scalar_failed = false;
  for (CpuPath path : available_cpu_paths()) {
    setenv("CACHEGEN_CPU_PATH", cpu_path_name(path), 1);
    bool failed = false;
    try {
      decode_into(p, b.data(), outs, 1);
      entropy_stats(p, b.data(), 1);
    } catch (const FormatError&) {
      failed = true;
    }
    if (path == CpuPath::Scalar) {
      scalar_failed = failed;
      first = memory;
    } else if (failed != scalar_failed || (!failed && memory != first)) {
      std::abort();  // a vector path disagrees with the scalar one
    }
  }
  if (scalar_failed) return 0;
  // Finite scales and raw rows (checked by the parser) bound every reconstruction:
  // |s * a * b + o| <= 127 * 65504^2 + 65504, far inside fp32.
  for (size_t g = 0; g < outs.size(); ++g) {
    if (outs[g].dtype != DType::F32 || p.groups[g].desc.quantizer == Quantizer::Lossless) continue;
    const float* x = static_cast<const float*>(outs[g].data);
    for (size_t i = 0; i < memory[g].size() / 4; ++i)
      if (!std::isfinite(x[i])) std::abort();
  }
  return 0;
}
