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

// x0 (and x_t) in TX, noise in TN: one dtype, or mixed fp32 / bf16 / fp16 (e.g. fp32 latents with bf16
// noise under autocast); every element is computed in fp32 from both inputs as they are, rounded once.
template <typename TX, typename TN>
void noisy_context_rows(const TX* a, const TN* n, TX* o, const float* tfp, int64_t rows, int64_t S) {
  at::parallel_for(0, rows, std::max<int64_t>(1, 32768 / std::max<int64_t>(S, 1)), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const float w = tfp[i];
      const int64_t off = i * S;
      for (int64_t s = 0; s < S; ++s)
        o[off + s] = static_cast<TX>((1.0f - w) * static_cast<float>(a[off + s]) + w * static_cast<float>(n[off + s]));
    }
  });
}

bool reduced_or_float(at::ScalarType t) { return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf; }

// Calls f.template operator()<TN>() with TN the C++ type of `t` (fp32, bf16 or fp16).
template <typename F>
void dispatch_noise(at::ScalarType t, F&& f) {
  switch (t) {
    case at::kFloat: return f.template operator()<float>();
    case at::kBFloat16: return f.template operator()<at::BFloat16>();
    default: return f.template operator()<at::Half>();
  }
}

std::tuple<Tensor, Tensor> noisy_context_cpu(const Tensor& x0_, const Tensor& noise_, const Tensor& t_,
                                             int64_t num_context, double t_context) {
  TORCH_CHECK(x0_.dim() >= 2 && noise_.sizes() == x0_.sizes(), "wmpo_C: x0/noise must be [B, T, ...] and match");
  const auto xt_dtype = x0_.scalar_type(), n_dtype = noise_.scalar_type();
  TORCH_CHECK(n_dtype == xt_dtype || (reduced_or_float(xt_dtype) && reduced_or_float(n_dtype)),
              "wmpo_C: x0/noise must share one dtype, or be fp32/bf16/fp16 (got ", xt_dtype, " and ", n_dtype, ")");
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
    using TX = scalar_t;
    if (n_dtype == xt_dtype) {
      noisy_context_rows<TX, TX>(x0.data_ptr<TX>(), noise.data_ptr<TX>(), xt.data_ptr<TX>(), tfp, B * T, S);
    } else {
      dispatch_noise(n_dtype, [&]<typename TN>() {
        noisy_context_rows<TX, TN>(x0.data_ptr<TX>(), noise.data_ptr<TN>(), xt.data_ptr<TX>(), tfp, B * T, S);
      });
    }
  });
  return {xt, tf};
}

}  // namespace
}  // namespace wmpo

TORCH_LIBRARY_IMPL(wmpo_C, CPU, m) {
  m.impl("noisy_context", &wmpo::noisy_context_cpu);
}
