// The row kernel shared by adaln_modulate and gated_residual_adaln on the CPU: optional gated
// residual (out = res + gate * y), then LayerNorm + per-frame scale / shift, in fp32.
#pragma once

#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "cpu/common.h"

namespace wmpo {
namespace cpu {

template <typename T, typename TM>
void adaln_rows(const T* x, const T* res, const TM* yv, const TM* gate, const TM* shift, const TM* scale,
                T* out, T* h, int64_t R, int64_t D, int64_t tpf, float eps) {
  // gated mode when res != nullptr: out = res + gate[f]*y (rounded to T), then h = LN(out)*(1+scale)+shift.
  at::parallel_for(0, R, row_grain(D), [&](int64_t b, int64_t e) {
    std::vector<float> buf(D);
    for (int64_t r = b; r < e; ++r) {
      const int64_t f = r / tpf;
      if (res) {
        const T* rr = res + r * D;
        const TM* yr = yv + r * D;
        const TM* g = gate + f * D;
        T* o = out + r * D;
        for (int64_t d = 0; d < D; ++d) {
          T v = static_cast<T>(static_cast<float>(rr[d]) + static_cast<float>(g[d]) * static_cast<float>(yr[d]));
          o[d] = v;
          buf[d] = static_cast<float>(v);
        }
      } else {
        const T* xr = x + r * D;
        for (int64_t d = 0; d < D; ++d) buf[d] = static_cast<float>(xr[d]);
      }
      const float mean = sum8(buf.data(), D) / static_cast<float>(D);
      const float var = sumsq_centered8(buf.data(), D, mean) / static_cast<float>(D);
      const float rstd = 1.0f / std::sqrt(var + eps);
      const TM* sh = shift + f * D;
      const TM* sc = scale + f * D;
      T* hr = h + r * D;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d)
        hr[d] = static_cast<T>((buf[d] - mean) * rstd * (1.0f + static_cast<float>(sc[d])) + static_cast<float>(sh[d]));
    }
  });
}

}  // namespace cpu
}  // namespace wmpo
