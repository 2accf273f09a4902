// The AdaLN forward kernel shared by adaln_modulate and gated_residual_adaln, its launcher and
// input checks. Rows (x, out, h) in T; y, gate, shift, scale in TM (adaln_dispatch.h).
#pragma once

#include "adaln_dispatch.h"
#include "checks.h"
#include "cuda/common.cuh"

namespace wmpo {
namespace {

// Pack i of row r (offsets ro of the row, fo of its frame) as the VEC fp32 values AdaLN normalises: x, or
// with GATED the residual update res + gate*y, rounded to T and stored to `out` (LN sees the stored value).
template <typename T, typename TM, int VEC, bool GATED>
__device__ __forceinline__ void adaln_load_pack(const T* __restrict__ x, const TM* __restrict__ yv,
                                                const TM* __restrict__ gate, T* __restrict__ out, int64_t ro,
                                                int64_t fo, int64_t i, float* f) {
  using P = Pack<T, VEC>;
  using PM = Pack<TM, VEC>;
  const P a = reinterpret_cast<const P*>(x + ro)[i];
  if (GATED) {
    const PM b = reinterpret_cast<const PM*>(yv + ro)[i];
    const PM g = reinterpret_cast<const PM*>(gate + fo)[i];
    P o;
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      o.v[k] = static_cast<T>(to_f(a.v[k]) + to_f(g.v[k]) * to_f(b.v[k]));
      f[k] = to_f(o.v[k]);
    }
    reinterpret_cast<P*>(out + ro)[i] = o;
  } else {
#pragma unroll
    for (int k = 0; k < VEC; ++k) f[k] = to_f(a.v[k]);
  }
}

// One 256-thread block per row (rows too long for adaln_fwd_warp_kernel). GATED: out = res + gate[f]*y (rounded to T, stored), h = LN(out)*(1+scale[f])+shift[f].
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
    adaln_load_pack<T, TM, VEC, GATED>(x, yv, gate, out, ro, fo, i, buf + i * VEC);
#pragma unroll
    for (int k = 0; k < VEC; ++k) s += buf[i * VEC + k];
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

static_assert(kLnThreads == 32 * kRowsPerBlock, "adaln_fwd_warp_kernel: one warp per row, kRowsPerBlock warps per block");

// One warp per row, kRowsPerBlock rows per block (launch_geometry.h): the same arithmetic as
// adaln_fwd_kernel with the row held in registers (NPACK packs of VEC per lane) and warp-shuffle sums,
// no shared memory and no __syncthreads, so a short row is not one latency-bound block.
template <typename T, typename TM, int VEC, int NPACK, bool GATED>
__global__ void __launch_bounds__(kLnThreads) adaln_fwd_warp_kernel(
    const T* __restrict__ x, const TM* __restrict__ yv, const TM* __restrict__ gate, const TM* __restrict__ shift,
    const TM* __restrict__ scale, T* __restrict__ out, T* __restrict__ h, int64_t R, int64_t D, int64_t tpf,
    float eps) {
  using P = Pack<T, VEC>;
  using PM = Pack<TM, VEC>;
  const int lane = threadIdx.x & 31;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + (threadIdx.x >> 5);
  if (r >= R) return;  // the whole warp leaves together: no block-wide barrier follows
  const int64_t ro = r * D, fo = (r / tpf) * D;
  const int64_t nv = D / VEC;
  float v[NPACK][VEC];
  float s = 0.f;
#pragma unroll
  for (int j = 0; j < NPACK; ++j) {
    const int64_t i = lane + 32 * j;
    if (i < nv) {
      adaln_load_pack<T, TM, VEC, GATED>(x, yv, gate, out, ro, fo, i, v[j]);
#pragma unroll
      for (int k = 0; k < VEC; ++k) s += v[j][k];
    } else {
#pragma unroll
      for (int k = 0; k < VEC; ++k) v[j][k] = 0.f;
    }
  }
  const float mean = warp_sum(s) / static_cast<float>(D);
  float q = 0.f;
#pragma unroll
  for (int j = 0; j < NPACK; ++j) {
    if (lane + 32 * j < nv) {
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        const float c = v[j][k] - mean;
        q += c * c;
      }
    }
  }
  const float rstd = rsqrtf(warp_sum(q) / static_cast<float>(D) + eps);
#pragma unroll
  for (int j = 0; j < NPACK; ++j) {
    const int64_t i = lane + 32 * j;
    if (i < nv) {
      const PM sh = reinterpret_cast<const PM*>(shift + fo)[i];
      const PM sc = reinterpret_cast<const PM*>(scale + fo)[i];
      P o;
#pragma unroll
      for (int k = 0; k < VEC; ++k)
        o.v[k] = static_cast<T>((v[j][k] - mean) * rstd * (1.f + to_f(sc.v[k])) + to_f(sh.v[k]));
      reinterpret_cast<P*>(h + ro)[i] = o;
    }
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
  auto stream = c10::cuda::getCurrentCUDAStream();
  constexpr int full = 16 / (sizeof(T) > sizeof(TM) ? sizeof(T) : sizeof(TM));
  constexpr int half = full / 2 >= 1 ? full / 2 : 1;
  const RowPlan plan = adaln_row_plan(R, D, vec, full);
  if (plan.warp_per_row) {
    auto go = [&](auto kernel) {
      kernel<<<static_cast<unsigned>(plan.blocks), kLnThreads, 0, stream>>>(x, yv, gate, shift, scale, out, h, R, D,
                                                                              tpf, eps);
    };
    switch (plan.packs_per_lane) {
      case 1: go(adaln_fwd_warp_kernel<T, TM, full, 1, GATED>); break;
      case 2: go(adaln_fwd_warp_kernel<T, TM, full, 2, GATED>); break;
      case 4: go(adaln_fwd_warp_kernel<T, TM, full, 4, GATED>); break;
      case 8: go(adaln_fwd_warp_kernel<T, TM, full, 8, GATED>); break;
      default: go(adaln_fwd_warp_kernel<T, TM, full, kMaxPacksPerLane, GATED>); break;
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  const size_t smem = static_cast<size_t>(D) * sizeof(float);
  auto go = [&](auto kernel) {
    if (smem > 48 * 1024) C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    kernel<<<static_cast<unsigned>(plan.blocks), kLnThreads, smem, stream>>>(x, yv, gate, shift, scale, out, h, D, tpf, eps);
  };
  if (vec == full) go(adaln_fwd_kernel<T, TM, full, GATED>);
  else if (vec == half) go(adaln_fwd_kernel<T, TM, half, GATED>);
  else go(adaln_fwd_kernel<T, TM, 1, GATED>);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void check_rows_cuda(const Tensor& x, const Tensor& shift, const Tensor& scale, int64_t tpf, bool mixed = false) {
  check_rows(x, shift, scale, tpf, mixed);  // csrc/checks.h, shared with the CPU kernels
  TORCH_CHECK(x.is_cuda() && shift.device() == x.device() && scale.device() == x.device(), "wmpo_C: device mismatch");
}

}  // namespace
}  // namespace wmpo
