// Device discovery and selection.
#include <cstdint>

#include "common.cuh"

namespace cachegen::cuda {

bool available() noexcept {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

std::string device_name(int device) {
  cudaDeviceProp p;
  CG_CUDA(cudaGetDeviceProperties(&p, device));
  return p.name;
}

void use_device(int device) {
  CG_CUDA(cudaSetDevice(device));
  // Keep freed stream-ordered memory in the pool: per-call buffers are then cheap to get back.
  cudaMemPool_t pool;
  CG_CUDA(cudaDeviceGetDefaultMemPool(&pool, device));
  uint64_t keep = UINT64_MAX;
  CG_CUDA(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
}

}  // namespace cachegen::cuda
