// Small vectorizable helpers of the CPU kernels.
#pragma once

#include <algorithm>
#include <cstdint>

namespace wmpo {
namespace cpu {

// Sum of n floats with 8 independent accumulators (lets the compiler vectorize).
inline float sum8(const float* a, int64_t n) {
  float s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i];
  return s;
}

inline float sumsq_centered8(const float* a, int64_t n, float mean) {
  float s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) {
    const float c = a[i] - mean;
    s += c * c;
  }
  return s;
}

inline int64_t row_grain(int64_t D) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(D, 1)); }

}  // namespace cpu
}  // namespace wmpo
