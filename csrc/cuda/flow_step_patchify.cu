// flow_step_patchify_ on CUDA: x [B, T, C, H, W] += (t_next - t_now) * unpatchify(v) in place and the
// updated x written as patches [B*T*N, C*p*p], one grid-stride pass over the patch elements (reads and
// writes of the patch layout are coalesced; x is touched once per element).
#include "cuda/common.cuh"

namespace wmpo {
namespace {

template <typename T, typename I>
__global__ void flow_step_patchify_kernel(T* __restrict__ x, const T* __restrict__ v, T* __restrict__ out,
                                          const float* __restrict__ tnow, const float* __restrict__ tnext,
                                          I tnow_stride, I tnext_stride, float tnow_val, float tnext_val, I n,
                                          I P, I p, I gh, I gw, I C, I H, I W, I T_) {
  const I stride = static_cast<I>(gridDim.x) * blockDim.x;
  for (I i = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const I r = i / P, f = i % P;
    const I gj = r % gw, gi = (r / gw) % gh, bt = r / (gh * gw);
    const I c = f / (p * p), pi = (f / p) % p, pj = f % p;
    const I a = ((bt * C + c) * H + gi * p + pi) * W + gj * p + pj;
    const I b = bt / T_;
    const float t0 = tnow ? tnow[b * tnow_stride] : tnow_val;
    const float t1 = tnext ? tnext[b * tnext_stride] : tnext_val;
    const T s = static_cast<T>(to_f(x[a]) + (t1 - t0) * to_f(v[i]));
    x[a] = s;
    out[i] = s;
  }
}

Tensor flow_step_patchify_cuda(Tensor& x, const Tensor& v_, const std::optional<Tensor>& t_now,
                               const std::optional<Tensor>& t_next, double t_now_value, double t_next_value,
                               int64_t patch) {
  TORCH_CHECK(x.dim() == 5 && x.is_contiguous(), "wmpo_C: flow_step_patchify needs a contiguous x [B, T, C, H, W]");
  TORCH_CHECK(x.is_cuda() && v_.device() == x.device(), "wmpo_C: device mismatch");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t B = x.size(0), T_ = x.size(1), C = x.size(2), H = x.size(3), W = x.size(4), p = patch;
  TORCH_CHECK(p > 0 && H % p == 0 && W % p == 0, "wmpo_C: patch must divide H and W");
  const int64_t gh = H / p, gw = W / p, P = C * p * p, R = B * T_ * gh * gw;
  TORCH_CHECK(v_.dim() == 2 && v_.size(0) == R && v_.size(1) == P, "wmpo_C: v must be [B*T*N, C*p*p]");
  TORCH_CHECK(v_.scalar_type() == x.scalar_type(), "wmpo_C: x/v must share one dtype");
  Tensor v = v_.contiguous();
  Tensor out = at::empty({R, P}, x.options());
  const int64_t n = R * P;
  if (n == 0) return out;
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
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "flow_step_patchify_cuda", [&] {
    auto launch = [&](auto idx) {
      using I = decltype(idx);
      flow_step_patchify_kernel<scalar_t, I><<<elementwise_blocks(n), 256, 0, c10::cuda::getCurrentCUDAStream()>>>(
          x.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
          t_now ? tn.data_ptr<float>() : nullptr, t_next ? tx.data_ptr<float>() : nullptr,
          static_cast<I>(t_now && tn.numel() > 1 ? 1 : 0), static_cast<I>(t_next && tx.numel() > 1 ? 1 : 0),
          static_cast<float>(t_now_value), static_cast<float>(t_next_value), static_cast<I>(n), static_cast<I>(P),
          static_cast<I>(p), static_cast<I>(gh), static_cast<I>(gw), static_cast<I>(C), static_cast<I>(H),
          static_cast<I>(W), static_cast<I>(T_));
    };
    if (fits_int32(n)) launch(int32_t{0});
    else launch(int64_t{0});
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace
}  // namespace wmpo

TORCH_LIBRARY_IMPL(wmpo_C, CUDA, m) {
  m.impl("flow_step_patchify_", &wmpo::flow_step_patchify_cuda);
}
