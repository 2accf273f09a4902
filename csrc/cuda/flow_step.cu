// flow_step_ on CUDA: in-place Euler update of the predicted frames, grid-stride.
#include "cuda/common.cuh"

namespace wmpo {
namespace {

// I: the index type, int32 below 2^31 elements (no 64-bit division per element), else int64.
template <typename T, typename I>
__global__ void flow_step_kernel(T* __restrict__ x, const T* __restrict__ v, const float* __restrict__ tnow,
                                 const float* __restrict__ tnext, I tnow_stride, I tnext_stride,
                                 float tnow_val, float tnext_val, I n_pred, I per_b, I TS, I ctx_off) {
  const I stride = static_cast<I>(gridDim.x) * blockDim.x;
  for (I i = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; i < n_pred; i += stride) {
    const I b = i / per_b;
    const I a = b * TS + ctx_off + i % per_b;
    const float t0 = tnow ? tnow[b * tnow_stride] : tnow_val;
    const float t1 = tnext ? tnext[b * tnext_stride] : tnext_val;
    x[a] = static_cast<T>(to_f(x[a]) + (t1 - t0) * to_f(v[a]));
  }
}

void flow_step_cuda(Tensor& x, const Tensor& v_, const std::optional<Tensor>& t_now,
                    const std::optional<Tensor>& t_next, double t_now_value, double t_next_value,
                    int64_t num_context) {
  TORCH_CHECK(x.dim() >= 2 && v_.sizes() == x.sizes(), "wmpo_C: x/v must be [B, T, ...] and match");
  TORCH_CHECK(x.is_contiguous(), "wmpo_C: flow_step needs a contiguous x");
  TORCH_CHECK(v_.scalar_type() == x.scalar_type(), "wmpo_C: x/v must share one dtype");
  TORCH_CHECK(x.is_cuda() && v_.device() == x.device(), "wmpo_C: device mismatch");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t B = x.size(0), T_ = x.size(1);
  if (B == 0 || T_ <= num_context || x.numel() == 0) return;
  const int64_t S = x.numel() / (B * T_), per_b = (T_ - num_context) * S, n_pred = B * per_b;
  Tensor v = v_.contiguous();
  Tensor tn, tx;
  if (t_now) {
    TORCH_CHECK(t_now->device() == x.device(), "wmpo_C: t_now must be on x's device");
    TORCH_CHECK(t_now->numel() == 1 || t_now->numel() == B, "wmpo_C: t_now must have 1 or B elements");
    tn = t_now->to(at::kFloat).reshape({-1}).contiguous();
  }
  if (t_next) {
    TORCH_CHECK(t_next->device() == x.device(), "wmpo_C: t_next must be on x's device");
    TORCH_CHECK(t_next->numel() == 1 || t_next->numel() == B, "wmpo_C: t_next must have 1 or B elements");
    tx = t_next->to(at::kFloat).reshape({-1}).contiguous();
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "flow_step_cuda", [&] {
    auto launch = [&](auto idx) {
      using I = decltype(idx);
      flow_step_kernel<scalar_t, I><<<elementwise_blocks(n_pred), 256, 0, c10::cuda::getCurrentCUDAStream()>>>(
          x.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), t_now ? tn.data_ptr<float>() : nullptr,
          t_next ? tx.data_ptr<float>() : nullptr, static_cast<I>(t_now && tn.numel() > 1 ? 1 : 0),
          static_cast<I>(t_next && tx.numel() > 1 ? 1 : 0), static_cast<float>(t_now_value),
          static_cast<float>(t_next_value), static_cast<I>(n_pred), static_cast<I>(per_b), static_cast<I>(T_ * S),
          static_cast<I>(num_context * S));
    };
    if (fits_int32(x.numel())) launch(int32_t{0});
    else launch(int64_t{0});
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace
}  // namespace wmpo

TORCH_LIBRARY_IMPL(wmpo_C, CUDA, m) {
  m.impl("flow_step_", &wmpo::flow_step_cuda);
}
