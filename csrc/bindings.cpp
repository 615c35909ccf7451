// Op schemas and backend registration for fastft._C. Importing the module (an empty Python module)
// loads this .so, whose static initialisers register the ops with the dispatcher as torch.ops.fastft.*.
#include <Python.h>
#include <torch/library.h>

#include <ATen/core/Tensor.h>

#include "adamw.h"

extern "C" {
// Plain CPython module init: the ops are reached through torch.ops.fastft, so no pybind11 is needed.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "fastft C++/CUDA ops (torch.ops.fastft)",
                                          -1, nullptr};
  return PyModule_Create(&module_def);
}
}

#define FASTFT_ADAMW_ARGS                                                                                   \
  "Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "                \
  "Tensor(d!)[] state_steps, float[] lrs, float[] beta1s, float[] beta2s, float[] epss, float[] weight_decays"
#define FASTFT_ADAMW_KWARGS "float? max_norm=None, Tensor? grad_scale=None, Tensor? found_inf=None"

TORCH_LIBRARY(fastft, m) {
  // -> stats (2,) fp32: [sum of squares of the raw grads, 1 if any grad is inf/NaN else 0]
  m.def("grad_sumsq(Tensor[] grads) -> Tensor");
  // Update given stats (summed over ranks for sharded params). Returns (grad_norm, found_inf), 0-dim fp32.
  m.def("adamw_update_(" FASTFT_ADAMW_ARGS ", Tensor stats, " FASTFT_ADAMW_KWARGS ") -> (Tensor, Tensor)");
  // grad_sumsq + adamw_update_ in one call. Returns (grad_norm, found_inf), 0-dim fp32.
  m.def("fused_adamw_(" FASTFT_ADAMW_ARGS ", " FASTFT_ADAMW_KWARGS ") -> (Tensor, Tensor)");
}

namespace {

// Fallback for every backend without a kernel (Meta, SparseCPU, CUDA in a CPU-only build, mixed lists that
// dispatch to one of those...): validate first, so the user sees which argument is wrong rather than the
// dispatcher's list of backends, then say what is missing.
[[noreturn]] void no_kernel(const char* op, const at::Device& dev) {
  TORCH_CHECK(false, op, ": no kernel for ", dev, " tensors in this build of fastft._C",
              dev.is_cuda() ? " (rebuild on a machine with the CUDA toolkit, or set FASTFT_BUILD_CUDA=1)" : "");
}

at::Tensor grad_sumsq_fallback(at::TensorList grads) {
  fastft::check_grads("fastft::grad_sumsq", grads);
  no_kernel("fastft::grad_sumsq", grads.empty() ? at::Device(at::kCPU) : grads[0].device());
}

std::tuple<at::Tensor, at::Tensor> adamw_update_fallback(
    at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
    at::TensorList state_steps, c10::ArrayRef<double> lrs, c10::ArrayRef<double> beta1s,
    c10::ArrayRef<double> beta2s, c10::ArrayRef<double> epss, c10::ArrayRef<double> weight_decays,
    const at::Tensor& stats, std::optional<double> max_norm, const fastft::OptTensor& grad_scale,
    const fastft::OptTensor& found_inf) {
  fastft::check_adamw_args("fastft::adamw_update_", params, grads, exp_avgs, exp_avg_sqs, state_steps,
                           {lrs, beta1s, beta2s, epss, weight_decays}, grad_scale, found_inf);
  no_kernel("fastft::adamw_update_", params.empty() ? stats.device() : params[0].device());
}

std::tuple<at::Tensor, at::Tensor> fused_adamw_fallback(
    at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
    at::TensorList state_steps, c10::ArrayRef<double> lrs, c10::ArrayRef<double> beta1s,
    c10::ArrayRef<double> beta2s, c10::ArrayRef<double> epss, c10::ArrayRef<double> weight_decays,
    std::optional<double> max_norm, const fastft::OptTensor& grad_scale, const fastft::OptTensor& found_inf) {
  fastft::check_adamw_args("fastft::fused_adamw_", params, grads, exp_avgs, exp_avg_sqs, state_steps,
                           {lrs, beta1s, beta2s, epss, weight_decays}, grad_scale, found_inf);
  no_kernel("fastft::fused_adamw_", params.empty() ? at::Device(at::kCPU) : params[0].device());
}

}  // namespace

TORCH_LIBRARY_IMPL(fastft, CompositeExplicitAutograd, m) {
  m.impl("grad_sumsq", &grad_sumsq_fallback);
  m.impl("adamw_update_", &adamw_update_fallback);
  m.impl("fused_adamw_", &fused_adamw_fallback);
}

TORCH_LIBRARY_IMPL(fastft, CPU, m) {
  m.impl("grad_sumsq", &fastft::grad_sumsq_cpu);
  m.impl("adamw_update_", &fastft::adamw_update_cpu);
  m.impl("fused_adamw_", &fastft::fused_adamw_cpu);
}

#ifdef FASTFT_WITH_CUDA
TORCH_LIBRARY_IMPL(fastft, CUDA, m) {
  m.impl("grad_sumsq", &fastft::grad_sumsq_cuda);
  m.impl("adamw_update_", &fastft::adamw_update_cuda);
  m.impl("fused_adamw_", &fastft::fused_adamw_cuda);
}
#endif
