// wmpo fused ops: schemas (namespace wmpo_C) and the CPU kernels.
// Every kernel reads bf16/fp16/fp32, accumulates in fp32, writes the input dtype.
// AdaLN ops: rows (x / residual and both outputs) in TX, modulation and y in TM, where TM == TX or
// TX = fp32 with TM = bf16/fp16 (autocast: fp32 residual stream, bf16 linear outputs); see
// dispatch_adaln in adaln_dispatch.h. Other ops: all floating inputs of one call share one dtype.
#include <Python.h>

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

namespace wmpo {
namespace {

using at::Tensor;

// Sum of n floats with 8 independent accumulators (lets the compiler vectorize).
inline float sum8(const float* a, int64_t n) {
  float s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i];
  return s;
}

inline float sumsq_centered8(const float* a, int64_t n, float mean) {
  float s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) {
    const float c = a[i] - mean;
    s += c * c;
  }
  return s;
}

inline int64_t row_grain(int64_t D) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(D, 1)); }

// ---------------------------------------------------------------- adaln_modulate (+ gated residual)

template <typename T, typename TM>
void adaln_rows(const T* x, const T* res, const TM* yv, const TM* gate, const TM* shift, const TM* scale,
                T* out, T* h, int64_t R, int64_t D, int64_t tpf, float eps) {
  // gated mode when res != nullptr: out = res + gate[f]*y (rounded to T), then h = LN(out)*(1+scale)+shift.
  at::parallel_for(0, R, row_grain(D), [&](int64_t b, int64_t e) {
    std::vector<float> buf(D);
    for (int64_t r = b; r < e; ++r) {
      const int64_t f = r / tpf;
      if (res) {
        const T* rr = res + r * D;
        const TM* yr = yv + r * D;
        const TM* g = gate + f * D;
        T* o = out + r * D;
        for (int64_t d = 0; d < D; ++d) {
          T v = static_cast<T>(static_cast<float>(rr[d]) + static_cast<float>(g[d]) * static_cast<float>(yr[d]));
          o[d] = v;
          buf[d] = static_cast<float>(v);
        }
      } else {
        const T* xr = x + r * D;
        for (int64_t d = 0; d < D; ++d) buf[d] = static_cast<float>(xr[d]);
      }
      const float mean = sum8(buf.data(), D) / static_cast<float>(D);
      const float var = sumsq_centered8(buf.data(), D, mean) / static_cast<float>(D);
      const float rstd = 1.0f / std::sqrt(var + eps);
      const TM* sh = shift + f * D;
      const TM* sc = scale + f * D;
      T* hr = h + r * D;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d)
        hr[d] = static_cast<T>((buf[d] - mean) * rstd * (1.0f + static_cast<float>(sc[d])) + static_cast<float>(sh[d]));
    }
  });
}

void check_rows(const Tensor& x, const Tensor& shift, const Tensor& scale, int64_t tpf, bool mixed = false) {
  TORCH_CHECK(x.dim() == 2 && shift.dim() == 2 && scale.dim() == 2, "wmpo_C: x, shift, scale must be 2-D");
  TORCH_CHECK(tpf > 0 && x.size(0) % tpf == 0, "wmpo_C: rows must be a multiple of tokens_per_frame");
  TORCH_CHECK(shift.size(0) == x.size(0) / tpf && scale.sizes() == shift.sizes() && shift.size(1) == x.size(1),
              "wmpo_C: shift/scale must be [R / tokens_per_frame, D]");
  TORCH_CHECK(scale.scalar_type() == shift.scalar_type(), "wmpo_C: shift and scale must share one dtype");
  TORCH_CHECK(mixed ? adaln_dtypes_supported(x.scalar_type(), shift.scalar_type()) : shift.scalar_type() == x.scalar_type(),
              "wmpo_C: x in ", x.scalar_type(), " with modulation in ", shift.scalar_type(),
              " is not supported (one dtype, or fp32 x with bf16/fp16 modulation)");
}

Tensor adaln_modulate_cpu(const Tensor& x_, const Tensor& shift_, const Tensor& scale_, int64_t tpf, double eps) {
  check_rows(x_, shift_, scale_, tpf, /*mixed=*/true);
  Tensor x = x_.contiguous(), shift = shift_.contiguous(), scale = scale_.contiguous();
  Tensor y = at::empty_like(x);
  dispatch_adaln(x.scalar_type(), shift.scalar_type(), "adaln_modulate_cpu", [&]<typename TX, typename TM>() {
    adaln_rows<TX, TM>(x.data_ptr<TX>(), nullptr, nullptr, nullptr, shift.data_ptr<TM>(), scale.data_ptr<TM>(),
                       nullptr, y.data_ptr<TX>(), x.size(0), x.size(1), tpf, static_cast<float>(eps));
  });
  return y;
}

std::tuple<Tensor, Tensor> gated_residual_adaln_cpu(const Tensor& res_, const Tensor& y_, const Tensor& gate_,
                                                    const Tensor& shift_, const Tensor& scale_, int64_t tpf,
                                                    double eps) {
  check_rows(res_, shift_, scale_, tpf, /*mixed=*/true);
  TORCH_CHECK(y_.sizes() == res_.sizes() && gate_.sizes() == shift_.sizes(), "wmpo_C: y/gate shape mismatch");
  TORCH_CHECK(y_.scalar_type() == shift_.scalar_type() && gate_.scalar_type() == shift_.scalar_type(),
              "wmpo_C: y, gate, shift and scale must share one dtype");
  Tensor res = res_.contiguous(), yv = y_.contiguous(), gate = gate_.contiguous();
  Tensor shift = shift_.contiguous(), scale = scale_.contiguous();
  Tensor out = at::empty_like(res), h = at::empty_like(res);
  dispatch_adaln(res.scalar_type(), shift.scalar_type(), "gated_residual_adaln_cpu", [&]<typename TX, typename TM>() {
    adaln_rows<TX, TM>(nullptr, res.data_ptr<TX>(), yv.data_ptr<TM>(), gate.data_ptr<TM>(), shift.data_ptr<TM>(),
                       scale.data_ptr<TM>(), out.data_ptr<TX>(), h.data_ptr<TX>(), res.size(0), res.size(1), tpf,
                       static_cast<float>(eps));
  });
  return {out, h};
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

// ---------------------------------------------------------------- noisy_context

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

// ---------------------------------------------------------------- flow_step (in place)

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

// ---------------------------------------------------------------- action_logprob

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

TORCH_LIBRARY(wmpo_C, m) {
  m.def("adaln_modulate(Tensor x, Tensor shift, Tensor scale, int tokens_per_frame, float eps) -> Tensor");
  m.def("adaln_modulate_bwd(Tensor dy, Tensor x, Tensor scale, int tokens_per_frame, float eps) -> (Tensor, Tensor, Tensor)");
  m.def("gated_residual_adaln(Tensor residual, Tensor y, Tensor gate, Tensor shift, Tensor scale, int tokens_per_frame, float eps) -> (Tensor, Tensor)");
  m.def("noisy_context(Tensor x0, Tensor noise, Tensor t, int num_context, float t_context) -> (Tensor, Tensor)");
  m.def("flow_step_(Tensor(a!) x, Tensor v, Tensor? t_now, Tensor? t_next, float t_now_value, float t_next_value, int num_context) -> ()");
  m.def("action_logprob(Tensor logits, Tensor tokens, float temperature) -> (Tensor, Tensor)");
  m.def("action_logprob_bwd(Tensor g_logp, Tensor g_ent, Tensor logits, Tensor tokens, float temperature) -> Tensor");
}

TORCH_LIBRARY_IMPL(wmpo_C, CPU, m) {
  m.impl("adaln_modulate", &wmpo::adaln_modulate_cpu);
  m.impl("adaln_modulate_bwd", &wmpo::adaln_modulate_bwd_cpu);
  m.impl("gated_residual_adaln", &wmpo::gated_residual_adaln_cpu);
  m.impl("noisy_context", &wmpo::noisy_context_cpu);
  m.impl("flow_step_", &wmpo::flow_step_cpu);
  m.impl("action_logprob", &wmpo::action_logprob_cpu);
  m.impl("action_logprob_bwd", &wmpo::action_logprob_bwd_cpu);
}

// `import wmpo._C` loads this library (and so runs the registrations above).
static struct PyModuleDef wmpo_c_module = {PyModuleDef_HEAD_INIT, "_C", "wmpo fused ops (torch.ops.wmpo_C)", -1,
                                           nullptr};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&wmpo_c_module); }
