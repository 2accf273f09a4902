// Dtype dispatch of the AdaLN kernels (CPU and CUDA): rows (x / residual, outputs) in TX,
// modulation (shift, scale, gate) and y in TM. Fused combinations: TX == TM (fp32, fp64, bf16, fp16),
// or TX = fp32 with TM = bf16 / fp16 (autocast: fp32 residual stream, bf16 linear outputs).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

namespace wmpo {

inline bool adaln_dtypes_supported(at::ScalarType x, at::ScalarType m) {
  const bool known = x == at::kFloat || x == at::kDouble || x == at::kBFloat16 || x == at::kHalf;
  return known && (x == m || (x == at::kFloat && (m == at::kBFloat16 || m == at::kHalf)));
}

// Calls f.template operator()<TX, TM>() for the (x, m) dtype pair; fails loudly for other pairs.
template <typename F>
void dispatch_adaln(at::ScalarType x, at::ScalarType m, const char* name, F&& f) {
  TORCH_CHECK(adaln_dtypes_supported(x, m), name, ": rows in ", x, " with modulation in ", m,
              " are not supported (one dtype, or fp32 rows with bf16/fp16 modulation)");
  if (x == m) {
    switch (x) {
      case at::kFloat: return f.template operator()<float, float>();
      case at::kDouble: return f.template operator()<double, double>();
      case at::kBFloat16: return f.template operator()<at::BFloat16, at::BFloat16>();
      case at::kHalf: return f.template operator()<at::Half, at::Half>();
      default: break;
    }
  } else if (m == at::kBFloat16) {
    return f.template operator()<float, at::BFloat16>();
  } else {
    return f.template operator()<float, at::Half>();
  }
}

}  // namespace wmpo
