// CUDA implementation of fused AdamW + global-norm clipping + unscaling (multi-tensor apply).
//
// Work is cut into chunks of kChunk elements, one thread block per chunk; a launch covers many tensors
// (pointer/size tables and a block -> (tensor, chunk) map travel in the kernel's parameter block, which
// CUDA >= 12.1 lets grow to 32 KiB, so a BERT-base step is ~2 launches per phase instead of ~200).
//   1. sumsq_kernel:    per-block fp32 sum of squares + non-finite flag -> partials[] (no atomics on floats,
//                       so the result is deterministic)
//   2. finalize_kernel: one block adds the partials in double -> stats = [sumsq, any non-finite]; derives
//                       grad_norm, found_inf and the grad multiplier (1/scale * clip coef) on the device
//   3. update_kernel:   reads that multiplier and the skip flag from device memory -- the host never waits
//   4. steps += 1 - found_inf (a foreach op, also on the device)
// Mixed-dtype lists (e.g. bf16 weights + fp32 norms) are launched per dtype.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "adamw.h"

namespace fastft {
namespace {

constexpr int kThreads = 512;
constexpr int64_t kChunk = 65536;  // elements per block: 128 per thread
constexpr int kVec = 4;            // elements per thread per iteration (16 B of fp32 state)
#if defined(CUDART_VERSION) && CUDART_VERSION >= 12010
constexpr int kMaxTensors = 96;  // large kernel-parameter blocks (<= 32764 B, Volta+, CUDA 12.1+)
constexpr int kMaxBlocks = 2048;
#else
constexpr int kMaxTensors = 24;  // classic 4 KiB parameter limit
constexpr int kMaxBlocks = 320;
#endif

struct SumsqMeta {
  const void* g[kMaxTensors];
  int64_t numel[kMaxTensors];
  uint8_t aligned[kMaxTensors];
  uint8_t tensor[kMaxBlocks];
  int32_t chunk[kMaxBlocks];
};

struct UpdateMeta {
  void* p[kMaxTensors];
  const void* g[kMaxTensors];
  float* m[kMaxTensors];
  float* v[kMaxTensors];
  const float* step[kMaxTensors];
  int64_t numel[kMaxTensors];
  float lr[kMaxTensors], beta1[kMaxTensors], beta2[kMaxTensors], eps[kMaxTensors], wd[kMaxTensors];
  uint8_t aligned[kMaxTensors];
  uint8_t tensor[kMaxBlocks];
  int32_t chunk[kMaxBlocks];
};
static_assert(sizeof(UpdateMeta) + 64 < (kMaxBlocks > 320 ? 32764 : 4096), "kernel parameters too large");

template <typename T>
__device__ __forceinline__ float to_f(T x) {
  return static_cast<float>(x);
}
template <>
__device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
template <>
__device__ __forceinline__ float to_f<__half>(__half x) {
  return __half2float(x);
}
template <typename T>
__device__ __forceinline__ T from_f(float x);
template <>
__device__ __forceinline__ float from_f<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ __half from_f<__half>(float x) {
  return __float2half_rn(x);
}

template <typename T>
struct alignas(sizeof(T) * kVec) Pack {
  T v[kVec];
};

template <typename T>
__device__ __forceinline__ void load_pack(const T* ptr, int64_t i, int64_t n, bool aligned, float out[kVec]) {
  if (aligned && i + kVec <= n) {
    Pack<T> pk = *reinterpret_cast<const Pack<T>*>(ptr + i);
#pragma unroll
    for (int k = 0; k < kVec; ++k) out[k] = to_f(pk.v[k]);
  } else {
#pragma unroll
    for (int k = 0; k < kVec; ++k) out[k] = i + k < n ? to_f(ptr[i + k]) : 0.f;
  }
}

template <typename T>
__device__ __forceinline__ void store_pack(T* ptr, int64_t i, int64_t n, bool aligned, const float in[kVec]) {
  if (aligned && i + kVec <= n) {
    Pack<T> pk;
#pragma unroll
    for (int k = 0; k < kVec; ++k) pk.v[k] = from_f<T>(in[k]);
    *reinterpret_cast<Pack<T>*>(ptr + i) = pk;
  } else {
#pragma unroll
    for (int k = 0; k < kVec; ++k)
      if (i + k < n) ptr[i + k] = from_f<T>(in[k]);
  }
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) sumsq_kernel(const __grid_constant__ SumsqMeta meta, float* partials,
                                                         int* nonfinite) {
  const int t = meta.tensor[blockIdx.x];
  const T* g = static_cast<const T*>(meta.g[t]);
  const int64_t n = meta.numel[t];
  const int64_t begin = static_cast<int64_t>(meta.chunk[blockIdx.x]) * kChunk;
  const int64_t end = begin + kChunk < n ? begin + kChunk : n;
  const bool aligned = meta.aligned[t];
  float acc = 0.f;
  bool bad = false;
  for (int64_t i = begin + static_cast<int64_t>(threadIdx.x) * kVec; i < end; i += kThreads * kVec) {
    float x[kVec];
    load_pack(g, i, end, aligned, x);
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      acc = fmaf(x[k], x[k], acc);
      bad |= !isfinite(x[k]);
    }
  }
  __shared__ float warp_acc[kThreads / 32];
  acc = warp_sum(acc);
  if ((threadIdx.x & 31) == 0) warp_acc[threadIdx.x >> 5] = acc;
  bad = __syncthreads_or(bad);
  if (threadIdx.x < 32) {
    acc = threadIdx.x < kThreads / 32 ? warp_acc[threadIdx.x] : 0.f;
    acc = warp_sum(acc);
    if (threadIdx.x == 0) {
      partials[blockIdx.x] = acc;
      if (bad) *nonfinite = 1;  // benign race: every writer stores 1
    }
  }
}

// One block. stats = [sumsq, nonfinite]; aux = [grad multiplier, skip]; norm_out/found_out may be null.
__global__ void __launch_bounds__(kThreads) finalize_kernel(const float* partials, int64_t nparts,
                                                             const int* nonfinite, float* stats) {
  __shared__ double sh[kThreads];
  double acc = 0.0;
  for (int64_t i = threadIdx.x; i < nparts; i += kThreads) acc += static_cast<double>(partials[i]);
  sh[threadIdx.x] = acc;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {  // fixed tree: deterministic
    if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    stats[0] = static_cast<float>(sh[0]);
    stats[1] = *nonfinite ? 1.f : 0.f;
  }
}

__global__ void prepare_kernel(const float* stats, const float* grad_scale, const float* found_in, float max_norm,
                               float* norm_out, float* found_out, float* aux) {
  const float inv_scale = grad_scale != nullptr ? 1.f / *grad_scale : 1.f;
  const float norm = sqrtf(stats[0]) * inv_scale;
  const bool skip = stats[1] != 0.f || (found_in != nullptr && *found_in > 0.f);
  const float clip = max_norm > 0.f ? fminf(1.f, max_norm / (norm + 1e-6f)) : 1.f;
  *norm_out = norm;
  *found_out = skip ? 1.f : 0.f;
  aux[0] = inv_scale * clip;
  aux[1] = skip ? 1.f : 0.f;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) update_kernel(const __grid_constant__ UpdateMeta meta, const float* aux) {
  if (aux[1] != 0.f) return;  // non-finite grads somewhere: change nothing
  const float gscale = aux[0];
  const int t = meta.tensor[blockIdx.x];
  T* p = static_cast<T*>(meta.p[t]);
  const T* g = static_cast<const T*>(meta.g[t]);
  float* m = meta.m[t];
  float* v = meta.v[t];
  const int64_t n = meta.numel[t];
  const int64_t begin = static_cast<int64_t>(meta.chunk[blockIdx.x]) * kChunk;
  const int64_t end = begin + kChunk < n ? begin + kChunk : n;
  const bool aligned = meta.aligned[t];
  const float step = *meta.step[t] + 1.f;  // the step being taken; the counter is bumped after all launches
  const float lr = meta.lr[t], b1 = meta.beta1[t], b2 = meta.beta2[t], eps = meta.eps[t];
  const float decay = 1.f - lr * meta.wd[t];
  const float step_size = lr / (1.f - powf(b1, step));
  const float inv_bc2_sqrt = 1.f / sqrtf(1.f - powf(b2, step));  // same form as the CPU kernel
  const float omb1 = 1.f - b1, omb2 = 1.f - b2;
  for (int64_t i = begin + static_cast<int64_t>(threadIdx.x) * kVec; i < end; i += kThreads * kVec) {
    float pv[kVec], gv[kVec], mv[kVec], vv[kVec];
    load_pack(p, i, end, aligned, pv);
    load_pack(g, i, end, aligned, gv);
    load_pack(m, i, end, aligned, mv);
    load_pack(v, i, end, aligned, vv);
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const float gk = gv[k] * gscale;
      mv[k] = fmaf(omb1, gk - mv[k], mv[k]);
      vv[k] = fmaf(omb2, gk * gk, vv[k] * b2);
      const float denom = fmaf(sqrtf(vv[k]), inv_bc2_sqrt, eps);
      pv[k] = pv[k] * decay - step_size * mv[k] / denom;
    }
    store_pack(p, i, end, aligned, pv);
    store_pack(m, i, end, aligned, mv);
    store_pack(v, i, end, aligned, vv);
  }
}

bool is_aligned(const void* ptr) {
  return reinterpret_cast<uintptr_t>(ptr) % 16 == 0;
}

int64_t num_chunks(const at::Tensor& t) {
  return (t.numel() + kChunk - 1) / kChunk;
}

// Indices of `ts` grouped by dtype (each group is launched with its own template instance).
std::vector<std::pair<at::ScalarType, std::vector<int64_t>>> by_dtype(at::TensorList ts) {
  std::vector<std::pair<at::ScalarType, std::vector<int64_t>>> out;
  for (int64_t i = 0; i < static_cast<int64_t>(ts.size()); ++i) {
    if (ts[i].numel() == 0) continue;
    auto it = out.begin();
    while (it != out.end() && it->first != ts[i].scalar_type()) ++it;
    if (it == out.end()) {
      out.push_back({ts[i].scalar_type(), {}});
      it = out.end() - 1;
    }
    it->second.push_back(i);
  }
  return out;
}

template <typename F>
void dispatch_cuda_float(at::ScalarType t, F&& f) {
  switch (t) {
    case at::kFloat:
      return f(float{});
    case at::kHalf:
      return f(__half{});
    case at::kBFloat16:
      return f(__nv_bfloat16{});
    default:
      TORCH_CHECK(false, "fastft: unsupported dtype ", t);
  }
}

// Launches the tensors `idx` in as few launches as the metadata tables allow. `fill(meta, slot, i)` writes
// tensor i's per-tensor fields into slot `slot`; `launch(meta, nblocks)` launches one grid.
template <typename Meta, typename Fill, typename Launch>
void multi_tensor_apply(at::TensorList ts, const std::vector<int64_t>& idx, Fill&& fill, Launch&& launch) {
  Meta meta{};
  int slot = 0, blocks = 0;
  for (int64_t i : idx) {
    const int64_t nc = num_chunks(ts[i]);
    TORCH_CHECK(nc <= INT32_MAX, "fastft: tensor too large");
    fill(meta, slot, i);
    for (int64_t c = 0; c < nc; ++c) {
      meta.tensor[blocks] = static_cast<uint8_t>(slot);
      meta.chunk[blocks] = static_cast<int32_t>(c);
      ++blocks;
      const bool last_chunk = c == nc - 1;
      if (blocks == kMaxBlocks || (last_chunk && slot == kMaxTensors - 1)) {
        launch(meta, blocks);
        blocks = 0;
        if (last_chunk) {
          slot = -1;  // next tensor starts at slot 0
        } else {      // the rest of this tensor continues in a fresh table
          fill(meta, 0, i);
          slot = 0;
        }
      }
    }
    ++slot;
  }
  if (blocks > 0) launch(meta, blocks);
}

// Phase 1 into `stats` (2,) fp32 on the device.
void sumsq_into(at::TensorList grads, const at::Tensor& stats) {
  int64_t total_blocks = 0;
  for (const auto& g : grads) total_blocks += num_chunks(g);
  auto opts = stats.options();
  at::Tensor partials = at::zeros({std::max<int64_t>(total_blocks, 1)}, opts);
  at::Tensor flag = at::zeros({1}, opts.dtype(at::kInt));
  auto stream = c10::cuda::getCurrentCUDAStream();
  int64_t base = 0;
  for (const auto& [dtype, idx] : by_dtype(grads)) {
    dispatch_cuda_float(dtype, [&](auto tag) {
      using T = decltype(tag);
      multi_tensor_apply<SumsqMeta>(
          grads, idx,
          [&](SumsqMeta& m, int s, int64_t i) {
            m.g[s] = grads[i].const_data_ptr();
            m.numel[s] = grads[i].numel();
            m.aligned[s] = is_aligned(m.g[s]);
          },
          [&](const SumsqMeta& m, int nblocks) {
            sumsq_kernel<T><<<nblocks, kThreads, 0, stream>>>(m, partials.data_ptr<float>() + base,
                                                              flag.data_ptr<int>());
            C10_CUDA_KERNEL_LAUNCH_CHECK();
            base += nblocks;
          });
    });
  }
  finalize_kernel<<<1, kThreads, 0, stream>>>(partials.data_ptr<float>(), base, flag.data_ptr<int>(),
                                              stats.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> update_impl(at::TensorList params, at::TensorList grads,
                                               at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                                               at::TensorList state_steps, const HyperLists& h,
                                               const at::Tensor& stats, std::optional<double> max_norm,
                                               const OptTensor& grad_scale, const OptTensor& found_inf) {
  auto opts = stats.options();
  at::Tensor norm_out = at::empty({}, opts), found_out = at::empty({}, opts), aux = at::empty({2}, opts);
  auto stream = c10::cuda::getCurrentCUDAStream();
  const float mn = max_norm.has_value() && std::isfinite(*max_norm) ? static_cast<float>(*max_norm) : -1.f;
  prepare_kernel<<<1, 1, 0, stream>>>(stats.const_data_ptr<float>(),
                                      grad_scale.has_value() ? grad_scale->const_data_ptr<float>() : nullptr,
                                      found_inf.has_value() ? found_inf->const_data_ptr<float>() : nullptr, mn,
                                      norm_out.data_ptr<float>(), found_out.data_ptr<float>(),
                                      aux.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  for (const auto& [dtype, idx] : by_dtype(params)) {
    dispatch_cuda_float(dtype, [&](auto tag) {
      using T = decltype(tag);
      multi_tensor_apply<UpdateMeta>(
          params, idx,
          [&](UpdateMeta& m, int s, int64_t i) {
            m.p[s] = params[i].data_ptr();
            m.g[s] = grads[i].const_data_ptr();
            m.m[s] = exp_avgs[i].data_ptr<float>();
            m.v[s] = exp_avg_sqs[i].data_ptr<float>();
            m.step[s] = state_steps[i].const_data_ptr<float>();
            m.numel[s] = params[i].numel();
            m.lr[s] = static_cast<float>(h.lr[i]);
            m.beta1[s] = static_cast<float>(h.beta1[i]);
            m.beta2[s] = static_cast<float>(h.beta2[i]);
            m.eps[s] = static_cast<float>(h.eps[i]);
            m.wd[s] = static_cast<float>(h.weight_decay[i]);
            m.aligned[s] = is_aligned(m.p[s]) && is_aligned(m.g[s]) && is_aligned(m.m[s]) && is_aligned(m.v[s]);
          },
          [&](const UpdateMeta& m, int nblocks) {
            update_kernel<T><<<nblocks, kThreads, 0, stream>>>(m, aux.const_data_ptr<float>());
            C10_CUDA_KERNEL_LAUNCH_CHECK();
          });
    });
  }
  if (!state_steps.empty()) {  // steps += 1 - found (device-side: a skipped step leaves them unchanged)
    at::_foreach_add_(state_steps, 1.0 - found_out);
  }
  return {norm_out, found_out};
}

void check_cuda(const char* op, at::TensorList ts) {
  if (!ts.empty())
    TORCH_CHECK(ts[0].is_cuda(), op, ": CUDA kernel called with tensors on ", ts[0].device());
}

}  // namespace

at::Tensor grad_sumsq_cuda(at::TensorList grads) {
  check_grads("fastft::grad_sumsq", grads);
  check_cuda("fastft::grad_sumsq", grads);
  TORCH_CHECK(!grads.empty(), "fastft::grad_sumsq: grads is empty");
  const c10::cuda::CUDAGuard guard(grads[0].device());
  at::Tensor stats = at::empty({2}, grads[0].options().dtype(at::kFloat));
  sumsq_into(grads, stats);
  return stats;
}

std::tuple<at::Tensor, at::Tensor> adamw_update_cuda(at::TensorList params, at::TensorList grads,
                                                     at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                                                     at::TensorList state_steps, c10::ArrayRef<double> lrs,
                                                     c10::ArrayRef<double> beta1s, c10::ArrayRef<double> beta2s,
                                                     c10::ArrayRef<double> epss,
                                                     c10::ArrayRef<double> weight_decays, const at::Tensor& stats,
                                                     std::optional<double> max_norm, const OptTensor& grad_scale,
                                                     const OptTensor& found_inf) {
  const char* op = "fastft::adamw_update_";
  HyperLists h{lrs, beta1s, beta2s, epss, weight_decays};
  check_adamw_args(op, params, grads, exp_avgs, exp_avg_sqs, state_steps, h, grad_scale, found_inf);
  check_cuda(op, params);
  TORCH_CHECK(!params.empty(), op, ": params is empty");
  TORCH_CHECK(stats.numel() == 2 && stats.scalar_type() == at::kFloat && stats.device() == params[0].device(), op,
              ": stats must be the 2-element float32 tensor from fastft::grad_sumsq, on the params' device");
  const c10::cuda::CUDAGuard guard(params[0].device());
  return update_impl(params, grads, exp_avgs, exp_avg_sqs, state_steps, h, stats.contiguous(), max_norm,
                     grad_scale, found_inf);
}

std::tuple<at::Tensor, at::Tensor> fused_adamw_cuda(at::TensorList params, at::TensorList grads,
                                                    at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                                                    at::TensorList state_steps, c10::ArrayRef<double> lrs,
                                                    c10::ArrayRef<double> beta1s, c10::ArrayRef<double> beta2s,
                                                    c10::ArrayRef<double> epss,
                                                    c10::ArrayRef<double> weight_decays,
                                                    std::optional<double> max_norm, const OptTensor& grad_scale,
                                                    const OptTensor& found_inf) {
  const char* op = "fastft::fused_adamw_";
  HyperLists h{lrs, beta1s, beta2s, epss, weight_decays};
  check_adamw_args(op, params, grads, exp_avgs, exp_avg_sqs, state_steps, h, grad_scale, found_inf);
  check_cuda(op, params);
  TORCH_CHECK(!params.empty(), op, ": params is empty");
  const c10::cuda::CUDAGuard guard(params[0].device());
  at::Tensor stats = at::empty({2}, params[0].options().dtype(at::kFloat));
  sumsq_into(grads, stats);
  return update_impl(params, grads, exp_avgs, exp_avg_sqs, state_steps, h, stats, max_norm, grad_scale,
                     found_inf);
}

}  // namespace fastft
