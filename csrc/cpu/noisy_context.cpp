// noisy_context on the CPU: rectified-flow noising with the context frames at t_context, and the per-frame times.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>


namespace wmpo {
namespace {

using at::Tensor;

std::tuple<Tensor, Tensor> noisy_context_cpu(const Tensor& x0_, const Tensor& noise_, const Tensor& t_,
                                             int64_t num_context, double t_context) {
  TORCH_CHECK(x0_.dim() >= 2 && noise_.sizes() == x0_.sizes(), "wmpo_C: x0/noise must be [B, T, ...] and match");
  TORCH_CHECK(noise_.scalar_type() == x0_.scalar_type(), "wmpo_C: x0/noise must share one dtype");
  const int64_t B = x0_.size(0), T = x0_.size(1);
  TORCH_CHECK(t_.numel() == B, "wmpo_C: t must have B elements");
  Tensor x0 = x0_.contiguous(), noise = noise_.contiguous();
  Tensor t = t_.to(at::kFloat).contiguous();
  Tensor xt = at::empty_like(x0);
  Tensor tf = at::empty({B, T}, x0.options().dtype(at::kFloat));
  const int64_t S = T > 0 && B > 0 ? x0.numel() / (B * T) : 0;
  const float* tp = t.data_ptr<float>();
  float* tfp = tf.data_ptr<float>();
  for (int64_t i = 0; i < B * T; ++i) tfp[i] = (i % T) < num_context ? static_cast<float>(t_context) : tp[i / T];
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x0.scalar_type(), "noisy_context_cpu", [&] {
    const scalar_t* a = x0.data_ptr<scalar_t>();
    const scalar_t* n = noise.data_ptr<scalar_t>();
    scalar_t* o = xt.data_ptr<scalar_t>();
    at::parallel_for(0, B * T, std::max<int64_t>(1, 32768 / std::max<int64_t>(S, 1)), [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const float w = tfp[i];
        const int64_t off = i * S;
        for (int64_t s = 0; s < S; ++s)
          o[off + s] = static_cast<scalar_t>((1.0f - w) * static_cast<float>(a[off + s]) + w * static_cast<float>(n[off + s]));
      }
    });
  });
  return {xt, tf};
}

}  // namespace
}  // namespace wmpo

TORCH_LIBRARY_IMPL(wmpo_C, CPU, m) {
  m.impl("noisy_context", &wmpo::noisy_context_cpu);
}
