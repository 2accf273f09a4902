// flow_step on the CPU: the in-place Euler update x[:, c:] += (t_next - t_now) * v[:, c:].
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include <optional>

namespace wmpo {
namespace {

using at::Tensor;

void flow_step_cpu(Tensor& x, const Tensor& v_, const std::optional<Tensor>& t_now, const std::optional<Tensor>& t_next,
                   double t_now_value, double t_next_value, int64_t num_context) {
  TORCH_CHECK(x.dim() >= 2 && v_.sizes() == x.sizes(), "wmpo_C: x/v must be [B, T, ...] and match");
  TORCH_CHECK(x.is_contiguous(), "wmpo_C: flow_step needs a contiguous x");
  TORCH_CHECK(v_.scalar_type() == x.scalar_type(), "wmpo_C: x/v must share one dtype");
  const int64_t B = x.size(0), T = x.size(1);
  if (B == 0 || T <= num_context) return;
  const int64_t S = x.numel() / (B * T);
  Tensor v = v_.contiguous();
  std::vector<float> dt(B);
  Tensor tn, tx;
  if (t_now) tn = t_now->to(at::kFloat).contiguous();
  if (t_next) tx = t_next->to(at::kFloat).contiguous();
  for (int64_t b = 0; b < B; ++b) {
    const float a = t_now ? tn.data_ptr<float>()[tn.numel() == 1 ? 0 : b] : static_cast<float>(t_now_value);
    const float c = t_next ? tx.data_ptr<float>()[tx.numel() == 1 ? 0 : b] : static_cast<float>(t_next_value);
    dt[b] = c - a;
  }
  const int64_t per_b = (T - num_context) * S;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "flow_step_cpu", [&] {
    scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* vp = v.data_ptr<scalar_t>();
    const int64_t chunk = 16384;
    const int64_t nchunk = (per_b + chunk - 1) / chunk;
    at::parallel_for(0, B * nchunk, 1, [&](int64_t b0, int64_t e0) {
      for (int64_t task = b0; task < e0; ++task) {
        const int64_t b = task / nchunk, s0 = (task % nchunk) * chunk, s1 = std::min(per_b, s0 + chunk);
        const float d = dt[b];
        const int64_t base = b * T * S + num_context * S;
        for (int64_t s = s0; s < s1; ++s)
          xp[base + s] = static_cast<scalar_t>(static_cast<float>(xp[base + s]) + d * static_cast<float>(vp[base + s]));
      }
    });
  });
}

}  // namespace
}  // namespace wmpo

TORCH_LIBRARY_IMPL(wmpo_C, CPU, m) {
  m.impl("flow_step_", &wmpo::flow_step_cpu);
}
