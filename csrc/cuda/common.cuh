// Shared device helpers of wmpo's CUDA kernels (csrc/cuda/<op>.cu, one op per file):
// fp32 conversion, warp/block sums, vector packs, the SM count (queried once per device) and the
// grid of grid-stride elementwise kernels. Schemas of torch.ops.wmpo_C.* are in csrc/ops_cpu.cpp.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <optional>

#include "launch_geometry.h"

namespace wmpo {
namespace {

using at::Tensor;

template <typename T>
__device__ __forceinline__ float to_f(T v) {
  return static_cast<float>(v);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the block (NT threads, a multiple of 32); `red` is __shared__ float[32]. All threads get the sum.
template <int NT>
__device__ __forceinline__ float block_sum(float v, float* red) {
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // earlier readers of red[0] are done
  if (lane == 0) red[w] = v;
  __syncthreads();
  if (w == 0) {
    float s = lane < NT / 32 ? red[lane] : 0.f;
    s = warp_sum(s);
    if (lane == 0) red[0] = s;
  }
  __syncthreads();
  return red[0];
}

// VEC consecutive elements, loaded/stored as one 16-byte (or smaller) transaction.
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

constexpr int kLnThreads = 256;

// SM count of the current device, queried once per device (not at every launch).
inline int sm_count() {
  static int cached[64] = {0};
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return 132;
  if (cached[dev] == 0) {
    int sms = 132;
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    cached[dev] = sms;
  }
  return cached[dev];
}

inline unsigned elementwise_blocks(int64_t n) {
  return static_cast<unsigned>(elementwise_grid(n, 256, sm_count()));
}

}  // namespace
}  // namespace wmpo
