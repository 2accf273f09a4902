// gated_residual_adaln on the CPU: out = residual + gate*y, h = AdaLN(out), one pass (the shared row kernel).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "adaln_dispatch.h"
#include "checks.h"
#include "cpu/adaln.h"

namespace wmpo {
namespace {

using at::Tensor;

std::tuple<Tensor, Tensor> gated_residual_adaln_cpu(const Tensor& res_, const Tensor& y_, const Tensor& gate_,
                                                    const Tensor& shift_, const Tensor& scale_, int64_t tpf,
                                                    double eps) {
  check_gated(res_, y_, gate_, shift_, scale_, tpf);
  Tensor res = res_.contiguous(), yv = y_.contiguous(), gate = gate_.contiguous();
  Tensor shift = shift_.contiguous(), scale = scale_.contiguous();
  Tensor out = at::empty_like(res), h = at::empty_like(res);
  dispatch_adaln(res.scalar_type(), shift.scalar_type(), "gated_residual_adaln_cpu", [&]<typename TX, typename TM>() {
    cpu::adaln_rows<TX, TM>(nullptr, res.data_ptr<TX>(), yv.data_ptr<TM>(), gate.data_ptr<TM>(), shift.data_ptr<TM>(),
                       scale.data_ptr<TM>(), out.data_ptr<TX>(), h.data_ptr<TX>(), res.size(0), res.size(1), tpf,
                       static_cast<float>(eps));
  });
  return {out, h};
}

}  // namespace
}  // namespace wmpo

TORCH_LIBRARY_IMPL(wmpo_C, CPU, m) {
  m.impl("gated_residual_adaln", &wmpo::gated_residual_adaln_cpu);
}
