// fastft fused AdamW + global-norm clipping + loss-scale unscaling: shared declarations.
//
// Three ops (schemas in bindings.cpp), implemented for CPU (adamw_cpu.cpp) and CUDA (adamw_cuda.cu):
//   grad_sumsq(grads) -> stats(2,)      phase 1: [sum of squares of the raw grads (fp32 accumulation),
//                                        number of non-finite grads seen (0/1 per call)]
//   adamw_update_(..., stats, ...)      phase 2: given (possibly all-reduced) stats, unscale, clip, update
//   fused_adamw_(...)                   both phases in one call (what single-process training uses)
// Phases exist so that FSDP2 can all-reduce `stats` over the mesh between them.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <optional>
#include <tuple>

namespace fastft {

using OptTensor = std::optional<at::Tensor>;

// Per-tensor hyper-parameters (one entry per param; the optimizer expands its groups).
struct HyperLists {
  c10::ArrayRef<double> lr, beta1, beta2, eps, weight_decay;
};

// Validation shared by all backends; `op` names the op in messages.
void check_grads(const char* op, at::TensorList grads);
void check_adamw_args(const char* op, at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                      at::TensorList exp_avg_sqs, at::TensorList state_steps, const HyperLists& h,
                      const OptTensor& grad_scale, const OptTensor& found_inf);

// CPU
at::Tensor grad_sumsq_cpu(at::TensorList grads);
std::tuple<at::Tensor, at::Tensor> adamw_update_cpu(at::TensorList params, at::TensorList grads,
                                                    at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                                                    at::TensorList state_steps, c10::ArrayRef<double> lrs,
                                                    c10::ArrayRef<double> beta1s, c10::ArrayRef<double> beta2s,
                                                    c10::ArrayRef<double> epss,
                                                    c10::ArrayRef<double> weight_decays, const at::Tensor& stats,
                                                    std::optional<double> max_norm, const OptTensor& grad_scale,
                                                    const OptTensor& found_inf);
std::tuple<at::Tensor, at::Tensor> fused_adamw_cpu(at::TensorList params, at::TensorList grads,
                                                   at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                                                   at::TensorList state_steps, c10::ArrayRef<double> lrs,
                                                   c10::ArrayRef<double> beta1s, c10::ArrayRef<double> beta2s,
                                                   c10::ArrayRef<double> epss, c10::ArrayRef<double> weight_decays,
                                                   std::optional<double> max_norm, const OptTensor& grad_scale,
                                                   const OptTensor& found_inf);

#ifdef FASTFT_WITH_CUDA
at::Tensor grad_sumsq_cuda(at::TensorList grads);
std::tuple<at::Tensor, at::Tensor> adamw_update_cuda(at::TensorList params, at::TensorList grads,
                                                     at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                                                     at::TensorList state_steps, c10::ArrayRef<double> lrs,
                                                     c10::ArrayRef<double> beta1s, c10::ArrayRef<double> beta2s,
                                                     c10::ArrayRef<double> epss,
                                                     c10::ArrayRef<double> weight_decays, const at::Tensor& stats,
                                                     std::optional<double> max_norm, const OptTensor& grad_scale,
                                                     const OptTensor& found_inf);
std::tuple<at::Tensor, at::Tensor> fused_adamw_cuda(at::TensorList params, at::TensorList grads,
                                                    at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                                                    at::TensorList state_steps, c10::ArrayRef<double> lrs,
                                                    c10::ArrayRef<double> beta1s, c10::ArrayRef<double> beta2s,
                                                    c10::ArrayRef<double> epss,
                                                    c10::ArrayRef<double> weight_decays,
                                                    std::optional<double> max_norm, const OptTensor& grad_scale,
                                                    const OptTensor& found_inf);
#endif

}  // namespace fastft
