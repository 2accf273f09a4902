// wmpo fused ops: CUDA kernels for torch.ops.wmpo_C.* (schemas are defined in ops_cpu.cpp).
// Compiled only when CMake finds nvcc and torch has CUDA (target sm_90 by default).
// fp32 accumulation; bf16/fp16/fp32 in and out. AdaLN ops: rows in TX, modulation and y in TM
// (adaln_dispatch.h: one dtype, or fp32 rows with bf16/fp16 modulation); other ops: one dtype.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <optional>

#include "adaln_dispatch.h"
#include "launch_geometry.h"

namespace wmpo {
namespace {

using at::Tensor;

template <typename T>
__device__ __forceinline__ float to_f(T v) {
  return static_cast<float>(v);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the block (NT threads, a multiple of 32); `red` is __shared__ float[32]. All threads get the sum.
template <int NT>
__device__ __forceinline__ float block_sum(float v, float* red) {
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // earlier readers of red[0] are done
  if (lane == 0) red[w] = v;
  __syncthreads();
  if (w == 0) {
    float s = lane < NT / 32 ? red[lane] : 0.f;
    s = warp_sum(s);
    if (lane == 0) red[0] = s;
  }
  __syncthreads();
  return red[0];
}

// VEC consecutive elements, loaded/stored as one 16-byte (or smaller) transaction.
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

constexpr int kLnThreads = 256;

// One block per row. GATED: out = res + gate[f]*y (rounded to T, stored), h = LN(out)*(1+scale[f])+shift[f].
// Otherwise h = LN(x)*(1+scale[f])+shift[f]. The row is staged in shared memory as fp32 (D floats).
// Rows (x, out, h) are T; y, gate, shift, scale are TM (T, or bf16/fp16 with fp32 rows).
template <typename T, typename TM, int VEC, bool GATED>
__global__ void __launch_bounds__(kLnThreads) adaln_fwd_kernel(
    const T* __restrict__ x, const TM* __restrict__ yv, const TM* __restrict__ gate, const TM* __restrict__ shift,
    const TM* __restrict__ scale, T* __restrict__ out, T* __restrict__ h, int64_t D, int64_t tpf, float eps) {
  extern __shared__ float buf[];
  __shared__ float red[32];
  using P = Pack<T, VEC>;
  using PM = Pack<TM, VEC>;
  const int64_t r = blockIdx.x;
  const int64_t ro = r * D, fo = (r / tpf) * D;
  const int64_t nv = D / VEC;
  float s = 0.f;
  for (int64_t i = threadIdx.x; i < nv; i += kLnThreads) {
    const P a = reinterpret_cast<const P*>(x + ro)[i];
    if (GATED) {
      const PM b = reinterpret_cast<const PM*>(yv + ro)[i];
      const PM g = reinterpret_cast<const PM*>(gate + fo)[i];
      P o;
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        o.v[k] = static_cast<T>(to_f(a.v[k]) + to_f(g.v[k]) * to_f(b.v[k]));
        const float f = to_f(o.v[k]);
        buf[i * VEC + k] = f;
        s += f;
      }
      reinterpret_cast<P*>(out + ro)[i] = o;
    } else {
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        const float f = to_f(a.v[k]);
        buf[i * VEC + k] = f;
        s += f;
      }
    }
  }
  const float mean = block_sum<kLnThreads>(s, red) / static_cast<float>(D);
  float q = 0.f;
  for (int64_t i = threadIdx.x; i < nv; i += kLnThreads) {
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const float c = buf[i * VEC + k] - mean;  // written by this same thread above
      q += c * c;
    }
  }
  const float rstd = rsqrtf(block_sum<kLnThreads>(q, red) / static_cast<float>(D) + eps);
  for (int64_t i = threadIdx.x; i < nv; i += kLnThreads) {
    const PM sh = reinterpret_cast<const PM*>(shift + fo)[i];
    const PM sc = reinterpret_cast<const PM*>(scale + fo)[i];
    P o;
#pragma unroll
    for (int k = 0; k < VEC; ++k)
      o.v[k] = static_cast<T>((buf[i * VEC + k] - mean) * rstd * (1.f + to_f(sc.v[k])) + to_f(sh.v[k]));
    reinterpret_cast<P*>(h + ro)[i] = o;
  }
}

// Elements per vector access: 16 bytes of the wider of the two dtypes, halved until D and every
// pointer (each with its own element size) allow it.
template <typename T, typename TM>
int pick_vec(int64_t D, std::initializer_list<const void*> row_ptrs, std::initializer_list<const void*> mod_ptrs) {
  constexpr int full = 16 / (sizeof(T) > sizeof(TM) ? sizeof(T) : sizeof(TM));
  for (int vec : {full, full / 2 > 0 ? full / 2 : 1, 1}) {
    if (vec < 1 || D % vec != 0) continue;
    bool ok = true;
    for (const void* p : row_ptrs) ok = ok && (reinterpret_cast<uintptr_t>(p) % (vec * sizeof(T)) == 0);
    for (const void* p : mod_ptrs) ok = ok && (reinterpret_cast<uintptr_t>(p) % (vec * sizeof(TM)) == 0);
    if (ok) return vec;
  }
  return 1;
}

template <typename T, typename TM, bool GATED>
void launch_adaln_fwd(const T* x, const TM* yv, const TM* gate, const TM* shift, const TM* scale, T* out, T* h,
                      int64_t R, int64_t D, int64_t tpf, float eps) {
  if (R == 0 || D == 0) return;
  const int vec = pick_vec<T, TM>(D, {x, out, h}, {yv, gate, shift, scale});
  const size_t smem = static_cast<size_t>(D) * sizeof(float);
  auto stream = c10::cuda::getCurrentCUDAStream();
  auto go = [&](auto kernel) {
    if (smem > 48 * 1024) C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    kernel<<<static_cast<unsigned>(R), kLnThreads, smem, stream>>>(x, yv, gate, shift, scale, out, h, D, tpf, eps);
  };
  constexpr int full = 16 / (sizeof(T) > sizeof(TM) ? sizeof(T) : sizeof(TM));
  constexpr int half = full / 2 >= 1 ? full / 2 : 1;
  if (vec == full) go(adaln_fwd_kernel<T, TM, full, GATED>);
  else if (vec == half) go(adaln_fwd_kernel<T, TM, half, GATED>);
  else go(adaln_fwd_kernel<T, TM, 1, GATED>);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void check_rows_cuda(const Tensor& x, const Tensor& shift, const Tensor& scale, int64_t tpf, bool mixed = false) {
  TORCH_CHECK(x.dim() == 2 && shift.dim() == 2 && scale.dim() == 2, "wmpo_C: x, shift, scale must be 2-D");
  TORCH_CHECK(tpf > 0 && x.size(0) % tpf == 0, "wmpo_C: rows must be a multiple of tokens_per_frame");
  TORCH_CHECK(shift.size(0) == x.size(0) / tpf && scale.sizes() == shift.sizes() && shift.size(1) == x.size(1),
              "wmpo_C: shift/scale must be [R / tokens_per_frame, D]");
  TORCH_CHECK(scale.scalar_type() == shift.scalar_type(), "wmpo_C: shift and scale must share one dtype");
  TORCH_CHECK(mixed ? adaln_dtypes_supported(x.scalar_type(), shift.scalar_type()) : shift.scalar_type() == x.scalar_type(),
              "wmpo_C: x in ", x.scalar_type(), " with modulation in ", shift.scalar_type(),
              " is not supported (one dtype, or fp32 x with bf16/fp16 modulation)");
  TORCH_CHECK(x.is_cuda() && shift.device() == x.device() && scale.device() == x.device(), "wmpo_C: device mismatch");
}

Tensor adaln_modulate_cuda(const Tensor& x_, const Tensor& shift_, const Tensor& scale_, int64_t tpf, double eps) {
  check_rows_cuda(x_, shift_, scale_, tpf, /*mixed=*/true);
  const c10::cuda::CUDAGuard guard(x_.device());
  Tensor x = x_.contiguous(), shift = shift_.contiguous(), scale = scale_.contiguous();
  Tensor y = at::empty_like(x);
  dispatch_adaln(x.scalar_type(), shift.scalar_type(), "adaln_modulate_cuda", [&]<typename TX, typename TM>() {
    // y/gate are unused (not GATED): shift stands in so that the alignment check sees valid pointers
    launch_adaln_fwd<TX, TM, false>(x.data_ptr<TX>(), shift.data_ptr<TM>(), shift.data_ptr<TM>(), shift.data_ptr<TM>(),
                                    scale.data_ptr<TM>(), y.data_ptr<TX>(), y.data_ptr<TX>(), x.size(0), x.size(1), tpf,
                                    static_cast<float>(eps));
  });
  return y;
}

std::tuple<Tensor, Tensor> gated_residual_adaln_cuda(const Tensor& res_, const Tensor& y_, const Tensor& gate_,
                                                     const Tensor& shift_, const Tensor& scale_, int64_t tpf,
                                                     double eps) {
  check_rows_cuda(res_, shift_, scale_, tpf, /*mixed=*/true);
  TORCH_CHECK(y_.sizes() == res_.sizes() && gate_.sizes() == shift_.sizes(), "wmpo_C: y/gate shape mismatch");
  TORCH_CHECK(y_.scalar_type() == shift_.scalar_type() && gate_.scalar_type() == shift_.scalar_type(),
              "wmpo_C: y, gate, shift and scale must share one dtype");
  const c10::cuda::CUDAGuard guard(res_.device());
  Tensor res = res_.contiguous(), yv = y_.contiguous(), gate = gate_.contiguous();
  Tensor shift = shift_.contiguous(), scale = scale_.contiguous();
  Tensor out = at::empty_like(res), h = at::empty_like(res);
  dispatch_adaln(res.scalar_type(), shift.scalar_type(), "gated_residual_adaln_cuda", [&]<typename TX, typename TM>() {
    launch_adaln_fwd<TX, TM, true>(res.data_ptr<TX>(), yv.data_ptr<TM>(), gate.data_ptr<TM>(), shift.data_ptr<TM>(),
                                   scale.data_ptr<TM>(), out.data_ptr<TX>(), h.data_ptr<TX>(), res.size(0), res.size(1),
                                   tpf, static_cast<float>(eps));
  });
  return {out, h};
}

// ---------------------------------------------------------------- adaln backward

// dx per row (one block per row); also writes the row's mean and rstd for the column-reduction kernel.
template <typename T>
__global__ void __launch_bounds__(kLnThreads) adaln_bwd_dx_kernel(
    const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ scale, T* __restrict__ dx,
    float* __restrict__ mean_out, float* __restrict__ rstd_out, int64_t D, int64_t tpf, float eps) {
  extern __shared__ float buf[];  // 2*D floats: x, then g = dy*(1+scale)
  __shared__ float red[32];
  float* xb = buf;
  float* gb = buf + D;
  const int64_t r = blockIdx.x, ro = r * D, fo = (r / tpf) * D;
  float s = 0.f;
  for (int64_t d = threadIdx.x; d < D; d += kLnThreads) {
    const float v = to_f(x[ro + d]);
    xb[d] = v;
    gb[d] = to_f(dy[ro + d]) * (1.f + to_f(scale[fo + d]));
    s += v;
  }
  const float mean = block_sum<kLnThreads>(s, red) / static_cast<float>(D);
  float q = 0.f;
  for (int64_t d = threadIdx.x; d < D; d += kLnThreads) {
    const float c = xb[d] - mean;
    q += c * c;
  }
  const float rstd = rsqrtf(block_sum<kLnThreads>(q, red) / static_cast<float>(D) + eps);
  float s1 = 0.f, s2 = 0.f;
  for (int64_t d = threadIdx.x; d < D; d += kLnThreads) {
    const float xh = (xb[d] - mean) * rstd;
    xb[d] = xh;
    s1 += gb[d];
    s2 += gb[d] * xh;
  }
  const float mg = block_sum<kLnThreads>(s1, red) / static_cast<float>(D);
  const float mgx = block_sum<kLnThreads>(s2, red) / static_cast<float>(D);
  for (int64_t d = threadIdx.x; d < D; d += kLnThreads) dx[ro + d] = static_cast<T>(rstd * (gb[d] - mg - xb[d] * mgx));
  if (threadIdx.x == 0) {
    mean_out[r] = mean;
    rstd_out[r] = rstd;
  }
}

// dshift[f, d] = sum_r dy[r, d]; dscale[f, d] = sum_r dy[r, d] * xhat[r, d] over the rows of frame f.
// Grid from params_grid (launch_geometry.h): blockIdx.y strides over the F frames (grid.y <= 65535).
template <typename T>
__global__ void adaln_bwd_params_kernel(const T* __restrict__ dy, const T* __restrict__ x,
                                        const float* __restrict__ mean, const float* __restrict__ rstd,
                                        float* __restrict__ dshift, float* __restrict__ dscale, int64_t D,
                                        int64_t tpf, int64_t F) {
  const int64_t d = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (d >= D) return;
  for (int64_t f = blockIdx.y; f < F; f += gridDim.y) {
    float a = 0.f, b = 0.f;
    for (int64_t r = f * tpf; r < (f + 1) * tpf; ++r) {
      const float g = to_f(dy[r * D + d]);
      a += g;
      b += g * (to_f(x[r * D + d]) - mean[r]) * rstd[r];
    }
    dshift[f * D + d] = a;
    dscale[f * D + d] = b;
  }
}

std::tuple<Tensor, Tensor, Tensor> adaln_modulate_bwd_cuda(const Tensor& dy_, const Tensor& x_,
                                                           const Tensor& scale_, int64_t tpf, double eps) {
  check_rows_cuda(x_, scale_, scale_, tpf);
  TORCH_CHECK(dy_.sizes() == x_.sizes(), "wmpo_C: dy must match x");
  const c10::cuda::CUDAGuard guard(x_.device());
  Tensor x = x_.contiguous(), scale = scale_.contiguous(), dy = dy_.to(x.scalar_type()).contiguous();
  const int64_t R = x.size(0), D = x.size(1), F = R / tpf;
  Tensor dx = at::empty_like(x);
  auto fopt = x.options().dtype(at::kFloat);
  Tensor dshift = at::empty({F, D}, fopt), dscale = at::empty({F, D}, fopt);
  Tensor mean = at::empty({R}, fopt), rstd = at::empty({R}, fopt);
  if (R > 0 && D > 0) {
    auto stream = c10::cuda::getCurrentCUDAStream();
    const size_t smem = 2 * static_cast<size_t>(D) * sizeof(float);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "adaln_modulate_bwd_cuda", [&] {
      if (smem > 48 * 1024)
        C10_CUDA_CHECK(cudaFuncSetAttribute(adaln_bwd_dx_kernel<scalar_t>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            static_cast<int>(smem)));
      adaln_bwd_dx_kernel<scalar_t><<<static_cast<unsigned>(R), kLnThreads, smem, stream>>>(
          dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), scale.data_ptr<scalar_t>(), dx.data_ptr<scalar_t>(),
          mean.data_ptr<float>(), rstd.data_ptr<float>(), D, tpf, static_cast<float>(eps));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      const Grid2 g2 = params_grid(D, F, kParamsThreads);
      const dim3 grid(static_cast<unsigned>(g2.x), static_cast<unsigned>(g2.y));
      adaln_bwd_params_kernel<scalar_t><<<grid, kParamsThreads, 0, stream>>>(
          dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), mean.data_ptr<float>(), rstd.data_ptr<float>(),
          dshift.data_ptr<float>(), dscale.data_ptr<float>(), D, tpf, F);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {dx, dshift.to(scale.scalar_type()), dscale.to(scale.scalar_type())};
}

// ---------------------------------------------------------------- noisy_context / flow_step (elementwise)

template <typename T>
__global__ void noisy_context_kernel(const T* __restrict__ x0, const T* __restrict__ noise, const float* __restrict__ t,
                                     T* __restrict__ xt, float* __restrict__ tf, int64_t N, int64_t S, int64_t T_,
                                     int64_t num_context, float t_context) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < N; i += stride) {
    const int64_t row = i / S;
    const float w = (row % T_) < num_context ? t_context : t[row / T_];
    xt[i] = static_cast<T>((1.f - w) * to_f(x0[i]) + w * to_f(noise[i]));
    if (i % S == 0) tf[row] = w;  // the first element of each (b, frame) writes the frame's time
  }
}

// SM count of the current device, queried once per device (not at every launch).
inline int sm_count() {
  static int cached[64] = {0};
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return 132;
  if (cached[dev] == 0) {
    int sms = 132;
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    cached[dev] = sms;
  }
  return cached[dev];
}

inline unsigned elementwise_blocks(int64_t n) {
  return static_cast<unsigned>(elementwise_grid(n, 256, sm_count()));
}

std::tuple<Tensor, Tensor> noisy_context_cuda(const Tensor& x0_, const Tensor& noise_, const Tensor& t_,
                                              int64_t num_context, double t_context) {
  TORCH_CHECK(x0_.dim() >= 2 && noise_.sizes() == x0_.sizes(), "wmpo_C: x0/noise must be [B, T, ...] and match");
  TORCH_CHECK(noise_.scalar_type() == x0_.scalar_type(), "wmpo_C: x0/noise must share one dtype");
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
    noisy_context_kernel<scalar_t><<<elementwise_blocks(N), 256, 0, c10::cuda::getCurrentCUDAStream()>>>(
        x0.data_ptr<scalar_t>(), noise.data_ptr<scalar_t>(), t.data_ptr<float>(), xt.data_ptr<scalar_t>(),
        tf.data_ptr<float>(), N, S, T_, num_context, static_cast<float>(t_context));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {xt, tf};
}

template <typename T>
__global__ void flow_step_kernel(T* __restrict__ x, const T* __restrict__ v, const float* __restrict__ tnow,
                                 const float* __restrict__ tnext, int64_t tnow_stride, int64_t tnext_stride,
                                 float tnow_val, float tnext_val, int64_t n_pred, int64_t per_b, int64_t TS,
                                 int64_t ctx_off) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n_pred; i += stride) {
    const int64_t b = i / per_b;
    const int64_t a = b * TS + ctx_off + i % per_b;
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
    flow_step_kernel<scalar_t><<<elementwise_blocks(n_pred), 256, 0, c10::cuda::getCurrentCUDAStream()>>>(
        x.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), t_now ? tn.data_ptr<float>() : nullptr,
        t_next ? tx.data_ptr<float>() : nullptr, t_now && tn.numel() > 1 ? 1 : 0, t_next && tx.numel() > 1 ? 1 : 0,
        static_cast<float>(t_now_value), static_cast<float>(t_next_value), n_pred, per_b, T_ * S, num_context * S);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// ---------------------------------------------------------------- action_logprob (one warp per row)

constexpr int kRowsPerBlock = 8;

// Online (max, sum exp, sum exp*z) over the lane's elements, then merged across the warp.
struct SoftStats {
  float m, s, t;
};

__device__ __forceinline__ SoftStats merge(SoftStats a, SoftStats b) {
  if (a.m == -INFINITY) return b;
  if (b.m == -INFINITY) return a;
  const float m = fmaxf(a.m, b.m);
  const float ea = __expf(a.m - m), eb = __expf(b.m - m);
  return {m, a.s * ea + b.s * eb, a.t * ea + b.t * eb};
}

template <typename T>
__device__ __forceinline__ SoftStats row_stats(const T* __restrict__ l, int64_t V, float inv_t, int lane) {
  SoftStats st{-INFINITY, 0.f, 0.f};
  for (int64_t j = lane; j < V; j += 32) {
    const float z = to_f(l[j]) * inv_t;
    if (z == -INFINITY) continue;  // a masked bin: p = 0, contributes nothing (0 * -inf would be NaN)
    st = merge(st, SoftStats{z, 1.f, z});
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    SoftStats other{__shfl_xor_sync(0xffffffffu, st.m, o), __shfl_xor_sync(0xffffffffu, st.s, o),
                    __shfl_xor_sync(0xffffffffu, st.t, o)};
    st = merge(st, other);
  }
  return st;
}

template <typename T>
__global__ void __launch_bounds__(32 * kRowsPerBlock) action_logprob_kernel(
    const T* __restrict__ logits, const int64_t* __restrict__ tokens, float* __restrict__ logp,
    float* __restrict__ ent, int64_t N, int64_t V, float inv_t) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + (threadIdx.x >> 5);
  if (row >= N) return;  // whole warps leave together
  const T* l = logits + row * V;
  const SoftStats st = row_stats(l, V, inv_t, lane);
  float lse = st.m + logf(st.s);
  if (!(fabsf(lse) < INFINITY)) lse = NAN;  // +inf / NaN logits or an all-masked row: NaN, as every backend
  const int64_t tok = tokens[row];
  if (lane == 0) {
    logp[row] = (tok >= 0 && tok < V) ? to_f(l[tok]) * inv_t - lse : NAN;
    ent[row] = lse - st.t / st.s;
  }
}

template <typename T>
__global__ void __launch_bounds__(32 * kRowsPerBlock) action_logprob_bwd_kernel(
    const float* __restrict__ g_logp, const float* __restrict__ g_ent, const T* __restrict__ logits,
    const int64_t* __restrict__ tokens, T* __restrict__ dl, int64_t N, int64_t V, float inv_t) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + (threadIdx.x >> 5);
  if (row >= N) return;
  const T* l = logits + row * V;
  const SoftStats st = row_stats(l, V, inv_t, lane);
  float lse = st.m + logf(st.s);
  if (!(fabsf(lse) < INFINITY)) lse = NAN;
  const float H = lse - st.t / st.s, a = g_logp[row], c = g_ent[row];
  const int64_t tok = tokens[row];
  for (int64_t j = lane; j < V; j += 32) {
    const float zj = to_f(l[j]) * inv_t;
    const bool live = zj > -INFINITY;  // masked bins: p = 0, gradient 0 (unless the row is NaN)
    const float lp = live ? zj - lse : 0.f, p = live ? expf(lp) : 0.f;
    float g = -a * p - c * p * (lp + H);
    if (j == tok) g += a;
    dl[row * V + j] = static_cast<T>(g * inv_t);
  }
}

std::tuple<Tensor, Tensor> action_logprob_cuda(const Tensor& logits_, const Tensor& tokens_, double temperature) {
  TORCH_CHECK(logits_.dim() >= 1 && tokens_.numel() * logits_.size(-1) == logits_.numel(), "wmpo_C: shape mismatch");
  TORCH_CHECK(logits_.is_cuda() && tokens_.device() == logits_.device(), "wmpo_C: device mismatch");
  const c10::cuda::CUDAGuard guard(logits_.device());
  Tensor logits = logits_.contiguous(), tokens = tokens_.to(at::kLong).contiguous();
  const int64_t V = logits.size(-1), N = tokens.numel();
  auto shp = logits.sizes().vec();
  shp.pop_back();
  Tensor logp = at::empty(shp, logits.options().dtype(at::kFloat)), ent = at::empty(shp, logits.options().dtype(at::kFloat));
  if (N == 0) return {logp, ent};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "action_logprob_cuda", [&] {
    action_logprob_kernel<scalar_t><<<static_cast<unsigned>((N + kRowsPerBlock - 1) / kRowsPerBlock),
                                      32 * kRowsPerBlock, 0, c10::cuda::getCurrentCUDAStream()>>>(
        logits.data_ptr<scalar_t>(), tokens.data_ptr<int64_t>(), logp.data_ptr<float>(), ent.data_ptr<float>(), N, V,
        static_cast<float>(1.0 / temperature));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {logp, ent};
}

Tensor action_logprob_bwd_cuda(const Tensor& g_logp_, const Tensor& g_ent_, const Tensor& logits_,
                               const Tensor& tokens_, double temperature) {
  TORCH_CHECK(logits_.is_cuda() && tokens_.device() == logits_.device(), "wmpo_C: device mismatch");
  const c10::cuda::CUDAGuard guard(logits_.device());
  Tensor logits = logits_.contiguous(), tokens = tokens_.to(at::kLong).contiguous();
  Tensor g_logp = g_logp_.to(at::kFloat).contiguous(), g_ent = g_ent_.to(at::kFloat).contiguous();
  const int64_t V = logits.size(-1), N = tokens.numel();
  TORCH_CHECK(g_logp.numel() == N && g_ent.numel() == N, "wmpo_C: grad shape mismatch");
  Tensor dl = at::empty_like(logits);
  if (N == 0) return dl;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "action_logprob_bwd_cuda", [&] {
    action_logprob_bwd_kernel<scalar_t><<<static_cast<unsigned>((N + kRowsPerBlock - 1) / kRowsPerBlock),
                                          32 * kRowsPerBlock, 0, c10::cuda::getCurrentCUDAStream()>>>(
        g_logp.data_ptr<float>(), g_ent.data_ptr<float>(), logits.data_ptr<scalar_t>(), tokens.data_ptr<int64_t>(),
        dl.data_ptr<scalar_t>(), N, V, static_cast<float>(1.0 / temperature));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dl;
}

}  // namespace
}  // namespace wmpo

TORCH_LIBRARY_IMPL(wmpo_C, CUDA, m) {
  m.impl("adaln_modulate", &wmpo::adaln_modulate_cuda);
  m.impl("adaln_modulate_bwd", &wmpo::adaln_modulate_bwd_cuda);
  m.impl("gated_residual_adaln", &wmpo::gated_residual_adaln_cuda);
  m.impl("noisy_context", &wmpo::noisy_context_cuda);
  m.impl("flow_step_", &wmpo::flow_step_cuda);
  m.impl("action_logprob", &wmpo::action_logprob_cuda);
  m.impl("action_logprob_bwd", &wmpo::action_logprob_bwd_cuda);
}
