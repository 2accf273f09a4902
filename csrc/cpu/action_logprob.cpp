// action_logprob on the CPU: temperature, log-softmax over the bins, gather, entropy; and its backward.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu/common.h"

namespace wmpo {
namespace {

using at::Tensor;
using namespace cpu;  // csrc/cpu/common.h

// exp(x) in float, ~2e-7 relative error, branch-free so the compiler vectorizes loops over it:
// 2^(x*log2 e) = 2^i * 2^f with i = round, |f| <= 1/2, 2^f by a degree-7 polynomial.
#pragma omp declare simd
inline float exp_f32(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float t = x * 1.4426950408889634f;
  const int32_t i = static_cast<int32_t>(t + (t >= 0.0f ? 0.5f : -0.5f));
  const float f = (t - static_cast<float>(i)) * 0.6931471805599453f;  // in [-ln2/2, ln2/2]
  float p = 1.0f / 5040.0f;
  p = p * f + 1.0f / 720.0f;
  p = p * f + 1.0f / 120.0f;
  p = p * f + 1.0f / 24.0f;
  p = p * f + 1.0f / 6.0f;
  p = p * f + 0.5f;
  p = p * f + 1.0f;
  p = p * f + 1.0f;
  const int32_t bits = (i + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define WMPO_CPU_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define WMPO_CPU_CLONES
#endif

// Softmax statistics of one row of fp32 logits z (already divided by the temperature):
// out = {lse, sum p z}. Compiled twice (AVX2 and baseline), picked at load time.
WMPO_CPU_CLONES void softmax_row_stats(const float* z, int64_t V, float* out) {
  float m = -INFINITY;
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < V; ++j) m = std::max(m, z[j]);
  float se = 0, spz = 0, nans = 0;
#pragma omp simd reduction(+ : se, spz, nans)
  for (int64_t j = 0; j < V; ++j) {
    const bool live = z[j] > -INFINITY;  // masked bins: p = 0, and 0 * -inf must not reach the sum
    const float p = live ? exp_f32(z[j] - m) : 0.0f;
    se += p;
    spz += live ? p * z[j] : 0.0f;
    nans += z[j] != z[j] ? 1.0f : 0.0f;  // max() and the comparison above skip NaN: count it here
  }
  const float lse = m + std::log(se);
  // false for a +inf or NaN logit or an all-masked row
  const bool finite = std::fabs(lse) < INFINITY && nans == 0.0f;
  out[0] = finite ? lse : NAN;
  out[1] = finite ? spz / se : NAN;
}

// g[j] = (1/temp) * (-a p_j - c p_j (log p_j + H)) (the one-hot term is added by the caller).
WMPO_CPU_CLONES void logprob_row_grad(const float* z, int64_t V, float lse, float H, float a, float c, float inv_t,
                                      float* g) {
#pragma omp simd
  for (int64_t j = 0; j < V; ++j) {
    const bool live = z[j] > -INFINITY;  // masked bins: p = 0, gradient 0
    const float lpj = live ? z[j] - lse : 0.0f, p = live ? exp_f32(lpj) : 0.0f;
    g[j] = (-a * p - c * p * (lpj + H)) * inv_t;
  }
}

// Per row of V logits: z = l / temp; lse; sum_pz = sum p z (entropy = lse - sum_pz).
template <typename T>
inline void logprob_row(const T* l, int64_t V, float inv_t, float* z, float& lse, float& sum_pz) {
  for (int64_t j = 0; j < V; ++j) z[j] = static_cast<float>(l[j]) * inv_t;
  float st[2];
  softmax_row_stats(z, V, st);
  lse = st[0];
  sum_pz = st[1];
}

std::tuple<Tensor, Tensor> action_logprob_cpu(const Tensor& logits_, const Tensor& tokens_, double temperature) {
  TORCH_CHECK(logits_.dim() >= 1 && tokens_.numel() * logits_.size(-1) == logits_.numel(), "wmpo_C: shape mismatch");
  Tensor logits = logits_.contiguous();
  Tensor tokens = tokens_.to(at::kLong).contiguous();
  const int64_t V = logits.size(-1), N = tokens.numel();
  auto out_shape = logits.sizes().vec();
  out_shape.pop_back();
  Tensor logp = at::empty(out_shape, logits.options().dtype(at::kFloat));
  Tensor ent = at::empty(out_shape, logits.options().dtype(at::kFloat));
  const float inv_t = static_cast<float>(1.0 / temperature);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "action_logprob_cpu", [&] {
    const scalar_t* lp = logits.data_ptr<scalar_t>();
    const int64_t* tk = tokens.data_ptr<int64_t>();
    float* lo = logp.data_ptr<float>();
    float* en = ent.data_ptr<float>();
    at::parallel_for(0, N, std::max<int64_t>(1, 8192 / V), [&](int64_t b, int64_t e) {
      std::vector<float> z(V);
      for (int64_t i = b; i < e; ++i) {
        float lse, spz;
        logprob_row(lp + i * V, V, inv_t, z.data(), lse, spz);
        lo[i] = (tk[i] >= 0 && tk[i] < V) ? z[tk[i]] - lse : NAN;
        en[i] = lse - spz;
      }
    });
  });
  return {logp, ent};
}

// d logits = (1/temp) * [g_logp * (onehot - p) - g_ent * p * (log p + H)]
Tensor action_logprob_bwd_cpu(const Tensor& g_logp_, const Tensor& g_ent_, const Tensor& logits_, const Tensor& tokens_,
                              double temperature) {
  Tensor logits = logits_.contiguous();
  Tensor tokens = tokens_.to(at::kLong).contiguous();
  Tensor g_logp = g_logp_.to(at::kFloat).contiguous(), g_ent = g_ent_.to(at::kFloat).contiguous();
  const int64_t V = logits.size(-1), N = tokens.numel();
  TORCH_CHECK(g_logp.numel() == N && g_ent.numel() == N, "wmpo_C: grad shape mismatch");
  Tensor dl = at::empty_like(logits);
  const float inv_t = static_cast<float>(1.0 / temperature);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "action_logprob_bwd_cpu", [&] {
    const scalar_t* lp = logits.data_ptr<scalar_t>();
    const int64_t* tk = tokens.data_ptr<int64_t>();
    const float* gl = g_logp.data_ptr<float>();
    const float* ge = g_ent.data_ptr<float>();
    scalar_t* out = dl.data_ptr<scalar_t>();
    at::parallel_for(0, N, std::max<int64_t>(1, 8192 / V), [&](int64_t b, int64_t e) {
      std::vector<float> z(V), g(V);
      for (int64_t i = b; i < e; ++i) {
        float lse, spz;
        logprob_row(lp + i * V, V, inv_t, z.data(), lse, spz);
        const float H = lse - spz, a = gl[i], c = ge[i];
        logprob_row_grad(z.data(), V, lse, H, a, c, inv_t, g.data());
        if (tk[i] >= 0 && tk[i] < V) g[tk[i]] += a * inv_t;
        scalar_t* o = out + i * V;
        for (int64_t j = 0; j < V; ++j) o[j] = static_cast<scalar_t>(g[j]);
      }
    });
  });
  return dl;
}

}  // namespace
}  // namespace wmpo

TORCH_LIBRARY_IMPL(wmpo_C, CPU, m) {
  m.impl("action_logprob", &wmpo::action_logprob_cpu);
  m.impl("action_logprob_bwd", &wmpo::action_logprob_bwd_cpu);
}
