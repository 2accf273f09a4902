// Argument checks the CPU and the CUDA kernels share (the Python layer, wmpo/ops, checks first and
// with friendlier messages; these guard direct torch.ops.wmpo_C calls).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include "adaln_dispatch.h"

namespace wmpo {

// x [R, D] rows in frames of tpf rows; shift / scale [R / tpf, D] in one dtype; with `mixed`, fp32 rows
// may take bf16 / fp16 modulation (adaln_dtypes_supported), else one dtype for all.
inline void check_rows(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale, int64_t tpf, bool mixed = false) {
  TORCH_CHECK(x.dim() == 2 && shift.dim() == 2 && scale.dim() == 2, "wmpo_C: x, shift, scale must be 2-D");
  TORCH_CHECK(tpf > 0 && x.size(0) % tpf == 0, "wmpo_C: rows must be a multiple of tokens_per_frame");
  TORCH_CHECK(shift.size(0) == x.size(0) / tpf && scale.sizes() == shift.sizes() && shift.size(1) == x.size(1),
              "wmpo_C: shift/scale must be [R / tokens_per_frame, D]");
  TORCH_CHECK(scale.scalar_type() == shift.scalar_type(), "wmpo_C: shift and scale must share one dtype");
  TORCH_CHECK(mixed ? adaln_dtypes_supported(x.scalar_type(), shift.scalar_type()) : shift.scalar_type() == x.scalar_type(),
              "wmpo_C: x in ", x.scalar_type(), " with modulation in ", shift.scalar_type(),
              " is not supported (one dtype, or fp32 x with bf16/fp16 modulation)");
}

// gated_residual_adaln: y like the residual, gate like shift, y / gate / shift / scale in one dtype.
inline void check_gated(const at::Tensor& res, const at::Tensor& y, const at::Tensor& gate, const at::Tensor& shift,
                        const at::Tensor& scale, int64_t tpf) {
  check_rows(res, shift, scale, tpf, /*mixed=*/true);
  TORCH_CHECK(y.sizes() == res.sizes() && gate.sizes() == shift.sizes(), "wmpo_C: y/gate shape mismatch");
  TORCH_CHECK(y.scalar_type() == shift.scalar_type() && gate.scalar_type() == shift.scalar_type(),
              "wmpo_C: y, gate, shift and scale must share one dtype");
}

}  // namespace wmpo
