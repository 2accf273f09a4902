// action_logprob on CUDA (one warp per row): log-prob of the chosen token and entropy, and the backward.
#include "cuda/common.cuh"

namespace wmpo {
namespace {


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
  m.impl("action_logprob", &wmpo::action_logprob_cuda);
  m.impl("action_logprob_bwd", &wmpo::action_logprob_bwd_cuda);
}
