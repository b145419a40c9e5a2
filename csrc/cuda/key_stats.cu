// The key spread's statistic on the device: importance.hpp key_pair_square_sums, the same
// float64 sums (each block of kPairSumTokens tokens in token order, then the blocks in order),
// so a device cache is planned exactly as its host copy would be, without copying it.
#include <cstring>

#include "common.cuh"
#include "cuda_codec.hpp"
#include "importance.hpp"

namespace cachegen::cuda {
namespace {

// One thread per (pair, token block): the block's sum of squared magnitudes.
template <DType D>
__global__ void pair_block_sums(View keys, uint32_t heads, uint32_t half, uint32_t first,
                                uint32_t tokens, double* partial, uint32_t* bad) {
  const uint32_t width = heads * half, i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= width) return;
  const uint32_t h = i / half, c = h * 2 * half + (i - h * half);
  const uint32_t begin = first + blockIdx.y * kPairSumTokens;
  const uint32_t end = min(tokens, begin + kPairSumTokens);
  double sum = 0.0;
  bool ok = true;
  for (uint32_t t = begin; t < end; ++t) {
    const float m = pair_magnitude(load_elem<D>(keys, t, c), load_elem<D>(keys, t, c + half));
    ok &= isfinite(m);
    sum += (double)m * (double)m;
  }
  partial[(size_t)blockIdx.y * width + i] = sum;
  if (!ok) atomicOr(bad, 1u);
}

__global__ void sum_blocks(const double* partial, uint32_t width, uint32_t blocks, double* out) {
  const uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= width) return;
  double sum = 0.0;
  for (uint32_t b = 0; b < blocks; ++b) sum += partial[(size_t)b * width + i];
  out[i] = sum;
}

}  // namespace

std::vector<double> key_pair_square_sums(const TensorView& keys, uint32_t skip, int device,
                                         uintptr_t stream) {
  check_keys(keys);
  use_device(device);
  const cudaStream_t st = as_stream(stream);
  const uint32_t half = keys.head_dim / 2, width = keys.heads * half;
  const uint32_t first = pair_sum_first(keys.tokens, skip);
  const uint32_t blocks = (keys.tokens - first + kPairSumTokens - 1) / kPairSumTokens;
  std::vector<double> sums(width, 0.0);
  if (!blocks || !width) return sums;
  const DeviceViews views({&keys}, st);
  const size_t partial_bytes = (size_t)blocks * width * sizeof(double);
  DeviceBuffer dev(partial_bytes + width * sizeof(double) + 8, st);
  auto* partial = dev.get<double>();
  double* out = partial + (size_t)blocks * width;
  auto* bad = reinterpret_cast<uint32_t*>(out + width);
  CG_CUDA(cudaMemsetAsync(bad, 0, 4, st));
  const dim3 grid((width + 127) / 128, blocks);
  with_dtype(keys.dtype, [&]<DType D>() {
    pair_block_sums<D><<<grid, 128, 0, st>>>(views.views()[0], keys.heads, half, first, keys.tokens,
                                             partial, bad);
  });
  sum_blocks<<<(width + 127) / 128, 128, 0, st>>>(partial, width, blocks, out);
  CG_CUDA(cudaGetLastError());
  const Pinned host(width * sizeof(double) + 8);
  CG_CUDA(cudaMemcpyAsync(host.get(), out, width * sizeof(double) + 4, cudaMemcpyDeviceToHost, st));
  CG_CUDA(cudaStreamSynchronize(st));
  uint32_t flag;
  std::memcpy(&flag, host.get() + width * sizeof(double), 4);
  if (flag) throw InputError("keys contain nan or inf");
  std::memcpy(sums.data(), host.get(), width * sizeof(double));
  return sums;
}

}  // namespace cachegen::cuda
