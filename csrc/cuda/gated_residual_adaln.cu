// gated_residual_adaln on CUDA: out = residual + gate*y, h = AdaLN(out), one pass (the shared AdaLN kernel).
#include "cuda/common.cuh"
#include "cuda/adaln.cuh"

namespace wmpo {
namespace {

std::tuple<Tensor, Tensor> gated_residual_adaln_cuda(const Tensor& res_, const Tensor& y_, const Tensor& gate_,
                                                     const Tensor& shift_, const Tensor& scale_, int64_t tpf,
                                                     double eps) {
  check_gated(res_, y_, gate_, shift_, scale_, tpf);  // csrc/checks.h, shared with the CPU kernel
  check_rows_cuda(res_, shift_, scale_, tpf, /*mixed=*/true);
  const c10::cuda::CUDAGuard guard(res_.device());
  Tensor res = res_.contiguous(), yv = y_.contiguous(), gate = gate_.contiguous();
  Tensor shift = shift_.contiguous(), scale = scale_.contiguous();
  Tensor out = at::empty_like(res), h = at::empty_like(res);
  dispatch_adaln(res.scalar_type(), shift.scalar_type(), "gated_residual_adaln_cuda", [&]<typename TX, typename TM>() {
    launch_adaln_fwd<TX, TM, true>(res.data_ptr<TX>(), yv.data_ptr<TM>(), gate.data_ptr<TM>(), shift.data_ptr<TM>(),
                                   scale.data_ptr<TM>(), out.data_ptr<TX>(), h.data_ptr<TX>(), res.size(0), res.size(1),
                                   tpf, static_cast<float>(eps));
  });
  return {out, h};
}

}  // namespace
}  // namespace wmpo

TORCH_LIBRARY_IMPL(wmpo_C, CUDA, m) {
  m.impl("gated_residual_adaln", &wmpo::gated_residual_adaln_cuda);
}
