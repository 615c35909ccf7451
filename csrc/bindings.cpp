// Op schemas and backend registration for fastft._C. Importing the module (an empty Python module)
// loads this .so, whose static initialisers register the ops with the dispatcher as torch.ops.fastft.*.
#include <Python.h>
#include <torch/library.h>

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
