// Launch geometry of the CUDA kernels, as plain C++ (no CUDA headers) so that a CPU test can
// check it: every grid dimension within the hardware limits, every frame / element covered.
#pragma once

#include <algorithm>
#include <cstdint>

namespace wmpo {

constexpr int64_t kMaxGridY = 65535;  // CUDA's limit on gridDim.y and gridDim.z (gridDim.x: 2^31 - 1)
constexpr int64_t kMaxGridX = 2147483647;
constexpr int kParamsThreads = 128;

struct Grid2 {
  int64_t x, y;
};

// adaln_bwd_params_kernel: x over column blocks of `threads` columns, y over frames. With more than
// 65,535 frames the kernel's loop `for (f = blockIdx.y; f < F; f += gridDim.y)` covers the rest.
inline Grid2 params_grid(int64_t D, int64_t F, int64_t threads) {
  return {std::max<int64_t>(1, (D + threads - 1) / threads), std::max<int64_t>(1, std::min<int64_t>(F, kMaxGridY))};
}

// AdaLN forward (csrc/cuda/adaln.cuh): one warp per row, the row held in registers (`packs_per_lane`
// vector packs per lane, a power of two) and reduced with warp shuffles only, kRowsPerBlock rows per
// 256-thread block, when the row fits in kMaxPacksPerLane packs per lane at the full vector width;
// otherwise one 256-thread block per row with the row staged in shared memory.
constexpr int64_t kRowsPerBlock = 8;
constexpr int kMaxPacksPerLane = 16;

struct RowPlan {
  bool warp_per_row;
  int packs_per_lane;  // 0 for block-per-row
  int64_t blocks;      // gridDim.x
};

inline RowPlan adaln_row_plan(int64_t R, int64_t D, int vec, int full_vec) {
  const int64_t packs = D / std::max(vec, 1);
  if (vec == full_vec && packs <= 32 * int64_t{kMaxPacksPerLane}) {
    int p = 1;
    while (32 * int64_t{p} < packs) p *= 2;
    return {true, p, std::max<int64_t>(1, (R + kRowsPerBlock - 1) / kRowsPerBlock)};
  }
  return {false, 0, std::max<int64_t>(1, R)};
}

// Grid-stride elementwise kernels: enough blocks to fill the GPU (32 per SM), never more than needed.
inline int64_t elementwise_grid(int64_t n, int64_t threads, int64_t sms) {
  return std::max<int64_t>(1, std::min<int64_t>((n + threads - 1) / threads, std::max<int64_t>(1, sms) * 32));
}

// 32-bit index math is exact for grid-stride loops over n elements when n plus one grid's worth of
// threads stays below 2^31 (the loop variable passes n by at most one stride).
inline bool fits_int32(int64_t n, int64_t max_threads = int64_t{1} << 26) {
  return n + max_threads < (int64_t{1} << 31);
}

}  // namespace wmpo
