// noisy_context on CUDA: rectified-flow noising with context frames at t_context, grid-stride.
#include "cuda/common.cuh"

namespace wmpo {
namespace {

// I: the index type, int32 below 2^31 elements (no 64-bit division per element), else int64.
// x0 / x_t in T, noise in TN (one dtype, or mixed fp32 / bf16 / fp16: each read as it is, fp32 math).
template <typename T, typename TN, typename I>
__global__ void noisy_context_kernel(const T* __restrict__ x0, const TN* __restrict__ noise, const float* __restrict__ t,
                                     T* __restrict__ xt, float* __restrict__ tf, I N, I S, I T_, I num_context,
                                     float t_context) {
  const I stride = static_cast<I>(gridDim.x) * blockDim.x;
  for (I i = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; i < N; i += stride) {
    const I row = i / S;
    const float w = (row % T_) < num_context ? t_context : t[row / T_];
    xt[i] = static_cast<T>((1.f - w) * to_f(x0[i]) + w * to_f(noise[i]));
    if (i % S == 0) tf[row] = w;  // the first element of each (b, frame) writes the frame's time
  }
}

std::tuple<Tensor, Tensor> noisy_context_cuda(const Tensor& x0_, const Tensor& noise_, const Tensor& t_,
                                              int64_t num_context, double t_context) {
  TORCH_CHECK(x0_.dim() >= 2 && noise_.sizes() == x0_.sizes(), "wmpo_C: x0/noise must be [B, T, ...] and match");
  const auto xt_dtype = x0_.scalar_type(), n_dtype = noise_.scalar_type();
  auto reduced_or_float = [](at::ScalarType d) { return d == at::kFloat || d == at::kBFloat16 || d == at::kHalf; };
  TORCH_CHECK(n_dtype == xt_dtype || (reduced_or_float(xt_dtype) && reduced_or_float(n_dtype)),
              "wmpo_C: x0/noise must share one dtype, or be fp32/bf16/fp16 (got ", xt_dtype, " and ", n_dtype, ")");
  TORCH_CHECK(x0_.is_cuda() && noise_.device() == x0_.device() && t_.device() == x0_.device(), "wmpo_C: device mismatch");
  const c10::cuda::CUDAGuard guard(x0_.device());
  const int64_t B = x0_.size(0), T_ = x0_.size(1);
  TORCH_CHECK(t_.numel() == B, "wmpo_C: t must have B elements");
  Tensor x0 = x0_.contiguous(), noise = noise_.contiguous(), t = t_.to(at::kFloat).contiguous();
  Tensor xt = at::empty_like(x0);
  Tensor tf = at::empty({B, T_}, x0.options().dtype(at::kFloat));
  const int64_t N = x0.numel();
  if (N == 0) {
    tf.copy_(at::where(at::arange(T_, t.options().dtype(at::kLong)).lt(num_context).unsqueeze(0),
                       at::full({B, T_}, t_context, t.options()), t.view({B, 1}).expand({B, T_})));
    return {xt, tf};
  }
  const int64_t S = N / (B * T_);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x0.scalar_type(), "noisy_context_cuda", [&] {
    using TX = scalar_t;
    auto run = [&](auto noise_tag) {
      using TN = decltype(noise_tag);
      auto launch = [&](auto idx) {
        using I = decltype(idx);
        noisy_context_kernel<TX, TN, I><<<elementwise_blocks(N), 256, 0, c10::cuda::getCurrentCUDAStream()>>>(
            x0.data_ptr<TX>(), noise.data_ptr<TN>(), t.data_ptr<float>(), xt.data_ptr<TX>(),
            tf.data_ptr<float>(), static_cast<I>(N), static_cast<I>(S), static_cast<I>(T_), static_cast<I>(num_context),
            static_cast<float>(t_context));
      };
      if (fits_int32(N)) launch(int32_t{0});
      else launch(int64_t{0});
    };
    if (n_dtype == xt_dtype) run(TX{});
    else if (n_dtype == at::kFloat) run(float{});
    else if (n_dtype == at::kBFloat16) run(at::BFloat16{});
    else run(at::Half{});
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {xt, tf};
}

}  // namespace
}  // namespace wmpo

TORCH_LIBRARY_IMPL(wmpo_C, CUDA, m) {
  m.impl("noisy_context", &wmpo::noisy_context_cuda);
}
