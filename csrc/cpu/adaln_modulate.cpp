// adaln_modulate on the CPU: forward (the shared AdaLN row kernel) and backward.
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
#include "cpu/common.h"

namespace wmpo {
namespace {

using at::Tensor;
using namespace cpu;  // csrc/cpu/common.h

Tensor adaln_modulate_cpu(const Tensor& x_, const Tensor& shift_, const Tensor& scale_, int64_t tpf, double eps) {
  check_rows(x_, shift_, scale_, tpf, /*mixed=*/true);
  Tensor x = x_.contiguous(), shift = shift_.contiguous(), scale = scale_.contiguous();
  Tensor y = at::empty_like(x);
  dispatch_adaln(x.scalar_type(), shift.scalar_type(), "adaln_modulate_cpu", [&]<typename TX, typename TM>() {
    cpu::adaln_rows<TX, TM>(x.data_ptr<TX>(), nullptr, nullptr, nullptr, shift.data_ptr<TM>(), scale.data_ptr<TM>(),
                       nullptr, y.data_ptr<TX>(), x.size(0), x.size(1), tpf, static_cast<float>(eps));
  });
  return y;
}

// Backward of y = LN(x)*(1+scale[f]) + shift[f]: (dx, dshift, dscale). Stats are recomputed.
template <typename T>
void adaln_bwd_impl(const T* dy, const T* x, const T* scale, T* dx, float* dshift, float* dscale, int64_t R,
                    int64_t D, int64_t tpf, float eps) {
  std::vector<float> mean(R), rstd(R);
  at::parallel_for(0, R, row_grain(D), [&](int64_t b, int64_t e) {
    std::vector<float> xb(D), g(D);
    for (int64_t r = b; r < e; ++r) {
      const int64_t f = r / tpf;
      const T* xr = x + r * D;
      const T* dyr = dy + r * D;
      const T* sc = scale + f * D;
      for (int64_t d = 0; d < D; ++d) xb[d] = static_cast<float>(xr[d]);
      const float m = sum8(xb.data(), D) / static_cast<float>(D);
      const float rs = 1.0f / std::sqrt(sumsq_centered8(xb.data(), D, m) / static_cast<float>(D) + eps);
      mean[r] = m;
      rstd[r] = rs;
      float s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s1, s2)
      for (int64_t d = 0; d < D; ++d) {
        const float xh = (xb[d] - m) * rs;
        xb[d] = xh;
        const float gd = static_cast<float>(dyr[d]) * (1.0f + static_cast<float>(sc[d]));
        g[d] = gd;
        s1 += gd;
        s2 += gd * xh;
      }
      const float mg = s1 / static_cast<float>(D), mgx = s2 / static_cast<float>(D);
      T* dxr = dx + r * D;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) dxr[d] = static_cast<T>(rs * (g[d] - mg - xb[d] * mgx));
    }
  });
  const int64_t F = R / tpf;
  constexpr int64_t CB = 64;  // columns per task
  const int64_t nblk = (D + CB - 1) / CB;
  at::parallel_for(0, F * nblk, 1, [&](int64_t b, int64_t e) {
    float ash[CB], asc[CB];
    for (int64_t task = b; task < e; ++task) {
      const int64_t f = task / nblk, d0 = (task % nblk) * CB, d1 = std::min(D, d0 + CB);
      for (int64_t d = 0; d < CB; ++d) { ash[d] = 0; asc[d] = 0; }
      for (int64_t r = f * tpf; r < (f + 1) * tpf; ++r) {
        const T* xr = x + r * D;
        const T* dyr = dy + r * D;
        const float m = mean[r], rs = rstd[r];
        for (int64_t d = d0; d < d1; ++d) {
          const float gy = static_cast<float>(dyr[d]);
          ash[d - d0] += gy;
          asc[d - d0] += gy * (static_cast<float>(xr[d]) - m) * rs;
        }
      }
      for (int64_t d = d0; d < d1; ++d) {
        dshift[f * D + d] = ash[d - d0];
        dscale[f * D + d] = asc[d - d0];
      }
    }
  });
}

std::tuple<Tensor, Tensor, Tensor> adaln_modulate_bwd_cpu(const Tensor& dy_, const Tensor& x_, const Tensor& scale_,
                                                          int64_t tpf, double eps) {
  check_rows(x_, scale_, scale_, tpf);
  TORCH_CHECK(dy_.sizes() == x_.sizes(), "wmpo_C: dy must match x");
  Tensor x = x_.contiguous(), scale = scale_.contiguous(), dy = dy_.to(x.scalar_type()).contiguous();
  Tensor dx = at::empty_like(x);
  Tensor dshift = at::empty(scale.sizes(), x.options().dtype(at::kFloat));
  Tensor dscale = at::empty(scale.sizes(), x.options().dtype(at::kFloat));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "adaln_modulate_bwd_cpu", [&] {
    adaln_bwd_impl<scalar_t>(dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), scale.data_ptr<scalar_t>(),
                             dx.data_ptr<scalar_t>(), dshift.data_ptr<float>(), dscale.data_ptr<float>(), x.size(0),
                             x.size(1), tpf, static_cast<float>(eps));
  });
  return {dx, dshift.to(scale.scalar_type()), dscale.to(scale.scalar_type())};
}

}  // namespace
}  // namespace wmpo

TORCH_LIBRARY_IMPL(wmpo_C, CPU, m) {
  m.impl("adaln_modulate", &wmpo::adaln_modulate_cpu);
  m.impl("adaln_modulate_bwd", &wmpo::adaln_modulate_bwd_cpu);
}
