// flow_step_patchify on the CPU: x [B, T, C, H, W] += (t_next - t_now) * unpatchify(v [B*T*N, C*p*p]) in
// place, and the updated x returned as patches [B*T*N, C*p*p] (the next step's input), in one pass.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>
#include <vector>

namespace wmpo {
namespace {

using at::Tensor;

Tensor flow_step_patchify_cpu(Tensor& x, const Tensor& v_, const std::optional<Tensor>& t_now,
                              const std::optional<Tensor>& t_next, double t_now_value, double t_next_value, int64_t patch) {
  TORCH_CHECK(x.dim() == 5 && x.is_contiguous(), "wmpo_C: flow_step_patchify needs a contiguous x [B, T, C, H, W]");
  const int64_t B = x.size(0), T = x.size(1), C = x.size(2), H = x.size(3), W = x.size(4), p = patch;
  TORCH_CHECK(p > 0 && H % p == 0 && W % p == 0, "wmpo_C: patch must divide H and W");
  const int64_t gh = H / p, gw = W / p, P = C * p * p, R = B * T * gh * gw;
  TORCH_CHECK(v_.dim() == 2 && v_.size(0) == R && v_.size(1) == P, "wmpo_C: v must be [B*T*N, C*p*p]");
  TORCH_CHECK(v_.scalar_type() == x.scalar_type(), "wmpo_C: x/v must share one dtype");
  Tensor v = v_.contiguous();
  Tensor out = at::empty({R, P}, x.options());
  if (R == 0 || P == 0) return out;
  std::vector<float> dt(B);
  Tensor tn, tx;
  if (t_now) tn = t_now->to(at::kFloat).contiguous();
  if (t_next) tx = t_next->to(at::kFloat).contiguous();
  for (int64_t b = 0; b < B; ++b) {
    const float a = t_now ? tn.data_ptr<float>()[tn.numel() == 1 ? 0 : b] : static_cast<float>(t_now_value);
    const float c = t_next ? tx.data_ptr<float>()[tx.numel() == 1 ? 0 : b] : static_cast<float>(t_next_value);
    dt[b] = c - a;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "flow_step_patchify_cpu", [&] {
    scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* vp = v.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    // one task per patch row: each x element belongs to exactly one (row, feature), so tasks never overlap
    at::parallel_for(0, R, 64, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t gj = r % gw, gi = (r / gw) % gh, bt = r / (gh * gw);
        const float d = dt[bt / T];
        for (int64_t c = 0; c < C; ++c) {
          for (int64_t pi = 0; pi < p; ++pi) {
            const int64_t row = ((bt * C + c) * H + gi * p + pi) * W + gj * p;
            const int64_t f0 = (c * p + pi) * p;
            for (int64_t pj = 0; pj < p; ++pj) {
              const float nx = static_cast<float>(xp[row + pj]) + d * static_cast<float>(vp[r * P + f0 + pj]);
              const scalar_t s = static_cast<scalar_t>(nx);
              xp[row + pj] = s;
              op[r * P + f0 + pj] = s;
            }
          }
        }
      }
    });
  });
  return out;
}

}  // namespace
}  // namespace wmpo

TORCH_LIBRARY_IMPL(wmpo_C, CPU, m) {
  m.impl("flow_step_patchify_", &wmpo::flow_step_patchify_cpu);
}
