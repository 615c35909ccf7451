// Argument validation shared by the CPU and CUDA implementations. Every message names the bad
// argument (list and index) and says what is expected, so a user sees one clear line.
#include <ATen/ATen.h>

#include "adamw.h"

namespace fastft {

namespace {

bool supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

void check_list_len(const char* op, const char* name, size_t got, size_t want) {
  TORCH_CHECK(got == want, op, ": ", name, " has ", got, " entries but params has ", want,
              "; pass exactly one per param");
}

}  // namespace

void check_grads(const char* op, at::TensorList grads) {
  for (size_t i = 0; i < grads.size(); ++i) {
    const at::Tensor& g = grads[i];
    TORCH_CHECK(g.defined(), op, ": grads[", i, "] is undefined (None); drop params without a grad");
    TORCH_CHECK(!g.is_sparse(), op, ": grads[", i,
                "] is sparse; fused AdamW needs dense gradients (use torch.optim.SparseAdam for sparse ones)");
    TORCH_CHECK(g.layout() == at::kStrided, op, ": grads[", i, "] has layout ", g.layout(),
                "; only dense (strided) tensors are supported");
    TORCH_CHECK(supported_dtype(g.scalar_type()), op, ": grads[", i, "] has dtype ", g.scalar_type(),
                "; only float32, float16 and bfloat16 are supported");
    TORCH_CHECK(g.device() == grads[0].device(), op, ": grads[", i, "] is on ", g.device(), " but grads[0] is on ",
                grads[0].device(), "; all tensors must be on one device");
    TORCH_CHECK(g.is_contiguous(), op, ": grads[", i, "] is not contiguous; call .contiguous() on it");
  }
}

void check_adamw_args(const char* op, at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                      at::TensorList exp_avg_sqs, at::TensorList state_steps, const HyperLists& h,
                      const OptTensor& grad_scale, const OptTensor& found_inf) {
  const size_t n = params.size();
  check_list_len(op, "grads", grads.size(), n);
  check_list_len(op, "exp_avgs", exp_avgs.size(), n);
  check_list_len(op, "exp_avg_sqs", exp_avg_sqs.size(), n);
  check_list_len(op, "state_steps", state_steps.size(), n);
  check_list_len(op, "lrs", h.lr.size(), n);
  check_list_len(op, "beta1s", h.beta1.size(), n);
  check_list_len(op, "beta2s", h.beta2.size(), n);
  check_list_len(op, "epss", h.eps.size(), n);
  check_list_len(op, "weight_decays", h.weight_decay.size(), n);
  if (n == 0) return;
  const at::Device dev = params[0].device();
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    TORCH_CHECK(p.defined(), op, ": params[", i, "] is undefined");
    TORCH_CHECK(!p.is_sparse() && p.layout() == at::kStrided, op, ": params[", i,
                "] is not a dense (strided) tensor");
    TORCH_CHECK(supported_dtype(p.scalar_type()), op, ": params[", i, "] has dtype ", p.scalar_type(),
                "; only float32, float16 and bfloat16 params can be optimized (integer params have no gradient)");
    TORCH_CHECK(p.device() == dev, op, ": params[", i, "] is on ", p.device(), " but params[0] is on ", dev,
                "; all params, grads and states of one call must be on one device");
    TORCH_CHECK(p.is_contiguous(), op, ": params[", i, "] is not contiguous");
  }
  check_grads(op, grads);
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& g = grads[i];
    TORCH_CHECK(g.device() == dev, op, ": grads[", i, "] is on ", g.device(), " but params[", i, "] is on ", dev,
                "; all params, grads and states of one call must be on one device");
    TORCH_CHECK(g.scalar_type() == params[i].scalar_type(), op, ": grads[", i, "] has dtype ", g.scalar_type(),
                " but params[", i, "] has dtype ", params[i].scalar_type(), "; they must match");
    TORCH_CHECK(g.numel() == params[i].numel(), op, ": grads[", i, "] has ", g.numel(), " elements but params[",
                i, "] has ", params[i].numel());
    const std::pair<const char*, const at::Tensor*> states[2] = {{"exp_avgs", &exp_avgs[i]},
                                                                 {"exp_avg_sqs", &exp_avg_sqs[i]}};
    for (const auto& [name, s] : states) {
      TORCH_CHECK(s->defined() && s->layout() == at::kStrided, op, ": ", name, "[", i,
                  "] is not a dense tensor");
      TORCH_CHECK(s->scalar_type() == at::kFloat, op, ": ", name, "[", i, "] has dtype ", s->scalar_type(),
                  "; optimizer states must be float32");
      TORCH_CHECK(s->device() == dev, op, ": ", name, "[", i, "] is on ", s->device(), " but params[", i,
                  "] is on ", dev, "; all params, grads and states of one call must be on one device");
      TORCH_CHECK(s->numel() == params[i].numel(), op, ": ", name, "[", i, "] has ", s->numel(),
                  " elements but params[", i, "] has ", params[i].numel());
      TORCH_CHECK(s->is_contiguous(), op, ": ", name, "[", i, "] is not contiguous");
    }
    const at::Tensor& st = state_steps[i];
    TORCH_CHECK(st.defined() && st.numel() == 1 && st.scalar_type() == at::kFloat, op, ": state_steps[", i,
                "] must be a one-element float32 tensor");
    TORCH_CHECK(st.device() == dev, op, ": state_steps[", i, "] is on ", st.device(), " but params[", i,
                "] is on ", dev, "; keep step tensors on the param device");
    TORCH_CHECK(h.lr[i] >= 0.0, op, ": lrs[", i, "] = ", h.lr[i], " is negative");
    TORCH_CHECK(h.beta1[i] >= 0.0 && h.beta1[i] < 1.0, op, ": beta1s[", i, "] = ", h.beta1[i],
                " is outside [0, 1)");
    TORCH_CHECK(h.beta2[i] >= 0.0 && h.beta2[i] < 1.0, op, ": beta2s[", i, "] = ", h.beta2[i],
                " is outside [0, 1)");
    TORCH_CHECK(h.eps[i] >= 0.0, op, ": epss[", i, "] = ", h.eps[i], " is negative");
  }
  const std::pair<const char*, const OptTensor*> scalars[2] = {{"grad_scale", &grad_scale},
                                                               {"found_inf", &found_inf}};
  for (const auto& [name, t] : scalars) {
    if (!t->has_value()) continue;
    const at::Tensor& s = t->value();
    TORCH_CHECK(s.numel() == 1 && s.scalar_type() == at::kFloat, op, ": ", name,
                " must be a one-element float32 tensor");
    TORCH_CHECK(s.device() == dev, op, ": ", name, " is on ", s.device(), " but params are on ", dev);
  }
}

}  // namespace fastft
