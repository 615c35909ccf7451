// CPU implementation of fused AdamW + global-norm clipping + unscaling.
//
// Memory traffic is the whole cost, so the step is organised to move the fewest bytes:
//   pass 1 (norm)   reads g once                               (sizeof(g) B/elt)
//   pass 2 (update) reads p, g, m, v and writes p, m, v once   (2*sizeof(p) + sizeof(g) + 16 B/elt)
// versus clip_grad_norm_ + torch AdamW, which additionally reads and writes g to apply the clip
// coefficient. Both passes walk the same fixed list of chunks, and every thread gets the same chunk
// range in both passes (at::parallel_for splits [0, n) statically per thread); pass 2 walks its range
// backwards, so the grads that pass 1 read last -- still in this core's L2 and the shared L3 -- are
// consumed first, before the update's own streaming evicts them. (That saves at most an L3's worth of
// the norm read: on the shared 2-core dev VM, BERT-base, forward vs backward measured the same.)
// Within a chunk, several interleaved read streams keep more cache lines in flight than one sequential
// stream: that, not arithmetic, is what bounds one core here.
//
// Numerics: per-chunk sums of squares are accumulated in fp32 vector lanes (the chunk partials are then
// added in double, in chunk order, so the norm does not depend on the thread count); the update math is
// done in fp32 and mirrors torch's fused AdamW (decoupled decay, lerp for exp_avg, sqrt(v)/sqrt(bc2)+eps).
// All indexing is int64_t.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <cmath>
#include <vector>

#include "adamw.h"

namespace fastft {
namespace {

using fVec = at::vec::Vectorized<float>;

// 64Ki elements: 256 KiB of fp32 per array, so the 4-array working set of one update chunk sits in L2,
// while the per-chunk bookkeeping stays small (~1.7k chunks for BERT-base).
constexpr int64_t kChunk = int64_t{1} << 16;

// Calls f(scalar_t{}) for the three supported dtypes (checked before we get here).
template <typename F>
void dispatch_float_types(at::ScalarType t, F&& f) {
  switch (t) {
    case at::kFloat:
      return f(float{});
    case at::kHalf:
      return f(at::Half{});
    case at::kBFloat16:
      return f(at::BFloat16{});
    default:
      TORCH_CHECK(false, "fastft: unsupported dtype ", t);
  }
}

struct Chunk {
  int64_t tensor;
  int64_t begin;
  int64_t end;
};

std::vector<Chunk> make_chunks(at::TensorList ts) {
  std::vector<Chunk> chunks;
  int64_t total = 0;
  for (const auto& t : ts) total += (t.numel() + kChunk - 1) / kChunk;
  chunks.reserve(total);
  for (int64_t i = 0; i < static_cast<int64_t>(ts.size()); ++i) {
    const int64_t n = ts[i].numel();
    for (int64_t b = 0; b < n; b += kChunk) chunks.push_back({i, b, std::min(n, b + kChunk)});
  }
  return chunks;
}

// ---------------------------------------------------------------------------------------------
// pass 1: sum of squares of one chunk, fp32 accumulation in 4 independent vector accumulators.

float sumsq_chunk(const float* g, int64_t n) {
  // Four interleaved streams (quarters of the chunk) rather than one: a lone sequential read stream is
  // limited by how many lines the prefetcher keeps in flight; four reach ~1.4x the single-core bandwidth.
  constexpr int64_t W = fVec::size();
  const int64_t q = (n / (4 * W)) * W;  // elements per stream, a multiple of W
  const float *s0 = g, *s1 = g + q, *s2 = g + 2 * q, *s3 = g + 3 * q;
  fVec a0(0.f), a1(0.f), a2(0.f), a3(0.f);
  for (int64_t i = 0; i < q; i += W) {
    fVec x0 = fVec::loadu(s0 + i), x1 = fVec::loadu(s1 + i);
    fVec x2 = fVec::loadu(s2 + i), x3 = fVec::loadu(s3 + i);
    a0 = at::vec::fmadd(x0, x0, a0);
    a1 = at::vec::fmadd(x1, x1, a1);
    a2 = at::vec::fmadd(x2, x2, a2);
    a3 = at::vec::fmadd(x3, x3, a3);
  }
  int64_t i = 4 * q;
  for (; i + W <= n; i += W) {
    fVec x = fVec::loadu(g + i);
    a0 = at::vec::fmadd(x, x, a0);
  }
  if (i < n) {  // partial load zero-fills the missing lanes
    fVec x = fVec::loadu(g + i, n - i);
    a1 = at::vec::fmadd(x, x, a1);
  }
  return at::vec::vec_reduce_all<float>([](fVec& x, fVec& y) { return x + y; }, (a0 + a1) + (a2 + a3));
}

template <typename T>  // at::Half / at::BFloat16: one reduced vector holds two fp32 vectors
float sumsq_chunk(const T* g, int64_t n) {
  using rVec = at::vec::Vectorized<T>;
  constexpr int64_t W = rVec::size();
  const int64_t q = (n / (4 * W)) * W;  // four interleaved streams, as for fp32
  fVec a0(0.f), a1(0.f), a2(0.f), a3(0.f);
  for (int64_t i = 0; i < q; i += W) {
#pragma GCC unroll 4
    for (int64_t s = 0; s < 4; ++s) {
      auto [x0, x1] = at::vec::convert_to_float<T>(rVec::loadu(g + s * q + i));
      a0 = at::vec::fmadd(x0, x0, a0);
      a1 = at::vec::fmadd(x1, x1, a1);
    }
  }
  for (int64_t i = 4 * q; i < n; i += W) {
    auto [x0, x1] = at::vec::convert_to_float<T>(rVec::loadu(g + i, std::min<int64_t>(W, n - i)));
    a2 = at::vec::fmadd(x0, x0, a2);
    a3 = at::vec::fmadd(x1, x1, a3);
  }
  return at::vec::vec_reduce_all<float>([](fVec& x, fVec& y) { return x + y; }, (a0 + a1) + (a2 + a3));
}

// Exact non-finite scan, only run on a chunk whose sum of squares is not finite (inf/NaN or overflow).
template <typename T>
bool chunk_has_nonfinite(const T* g, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(static_cast<float>(g[i]))) return true;
  return false;
}

struct Partial {
  float sumsq;
  bool nonfinite;
};

Partial sumsq_dispatch(const at::Tensor& g, int64_t b, int64_t e) {
  Partial r{0.f, false};
  dispatch_float_types(g.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    const scalar_t* ptr = g.const_data_ptr<scalar_t>() + b;
    r.sumsq = sumsq_chunk(ptr, e - b);
    if (!std::isfinite(r.sumsq)) r.nonfinite = chunk_has_nonfinite(ptr, e - b);
  });
  return r;
}

// Runs pass 1 over `chunks`; returns {sum of squares in double, any non-finite}.
std::pair<double, bool> sumsq_pass(at::TensorList grads, const std::vector<Chunk>& chunks) {
  const int64_t nc = static_cast<int64_t>(chunks.size());
  std::vector<Partial> parts(nc);
  at::parallel_for(0, nc, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) parts[c] = sumsq_dispatch(grads[chunks[c].tensor], chunks[c].begin, chunks[c].end);
  });
  double total = 0.0;
  bool bad = false;
  for (const auto& p : parts) {
    total += static_cast<double>(p.sumsq);
    bad |= p.nonfinite;
  }
  return {total, bad};
}

// ---------------------------------------------------------------------------------------------
// pass 2: AdamW update of one chunk.

struct Coefs {  // per tensor, fp32 like torch's fused kernel's opmath
  float gscale;     // inv_scale * clip_coef
  float decay;      // 1 - lr * weight_decay
  float omb1;       // 1 - beta1 (lerp weight)
  float beta2;
  float omb2;       // 1 - beta2
  float inv_bc2_sqrt;  // 1 / sqrt(1 - beta2^step)
  float eps;
  float step_size;  // lr / (1 - beta1^step)
};

struct VCoefs {
  fVec gscale, decay, omb1, beta2, omb2, inv_bc2_sqrt, eps, step_size;
  explicit VCoefs(const Coefs& c)
      : gscale(c.gscale), decay(c.decay), omb1(c.omb1), beta2(c.beta2), omb2(c.omb2), inv_bc2_sqrt(c.inv_bc2_sqrt),
        eps(c.eps), step_size(c.step_size) {}
};

// One fp32 vector of the update; p, g in fp32 registers, m, v updated in place.
inline fVec adamw_vec(fVec p, fVec g, fVec& m, fVec& v, const VCoefs& c) {
  g = g * c.gscale;
  p = p * c.decay;
  m = at::vec::fmadd(c.omb1, g - m, m);
  v = at::vec::fmadd(c.omb2, g * g, v * c.beta2);
  // torch divides by sqrt(bc2); multiplying by its reciprocal (<= 1 ulp apart) frees the divider, which
  // with sqrt and the final division would otherwise bound the update near the memory speed of one core.
  fVec denom = at::vec::fmadd(v.sqrt(), c.inv_bc2_sqrt, c.eps);
  return p - c.step_size * m / denom;
}

void update_chunk(float* p, const float* g, float* m, float* v, int64_t n, const Coefs& cs) {
  // The two halves of the chunk advance together: 8 read + 6 write streams keep more lines in flight
  // than 4 + 3 (see sumsq_chunk), and the two halves are independent dependency chains.
  constexpr int64_t W = fVec::size();
  const VCoefs c(cs);
  const int64_t h = (n / (2 * W)) * W;
  for (int64_t i = 0; i < h; i += W) {
    const int64_t j = i + h;
    fVec m0 = fVec::loadu(m + i), m1 = fVec::loadu(m + j);
    fVec v0 = fVec::loadu(v + i), v1 = fVec::loadu(v + j);
    fVec p0 = adamw_vec(fVec::loadu(p + i), fVec::loadu(g + i), m0, v0, c);
    fVec p1 = adamw_vec(fVec::loadu(p + j), fVec::loadu(g + j), m1, v1, c);
    p0.store(p + i);
    p1.store(p + j);
    m0.store(m + i);
    m1.store(m + j);
    v0.store(v + i);
    v1.store(v + j);
  }
  for (int64_t i = 2 * h; i < n; i += W) {
    const int64_t k = std::min<int64_t>(W, n - i);
    fVec m0 = fVec::loadu(m + i, k), v0 = fVec::loadu(v + i, k);
    fVec p0 = adamw_vec(fVec::loadu(p + i, k), fVec::loadu(g + i, k), m0, v0, c);
    p0.store(p + i, k);
    m0.store(m + i, k);
    v0.store(v + i, k);
  }
}

template <typename T>  // reduced-precision params/grads, fp32 states
void update_chunk(T* p, const T* g, float* m, float* v, int64_t n, const Coefs& cs) {
  using rVec = at::vec::Vectorized<T>;
  constexpr int64_t W = rVec::size();  // = 2 fp32 vectors
  constexpr int64_t H = fVec::size();
  const VCoefs c(cs);
  for (int64_t i = 0; i < n; i += W) {
    const int64_t k = std::min<int64_t>(W, n - i);
    const int64_t k0 = std::min<int64_t>(H, k), k1 = k - k0;
    auto [p0, p1] = at::vec::convert_to_float<T>(rVec::loadu(p + i, k));
    auto [g0, g1] = at::vec::convert_to_float<T>(rVec::loadu(g + i, k));
    fVec m0 = fVec::loadu(m + i, k0), v0 = fVec::loadu(v + i, k0);
    fVec m1 = k1 > 0 ? fVec::loadu(m + i + H, k1) : fVec(0.f);
    fVec v1 = k1 > 0 ? fVec::loadu(v + i + H, k1) : fVec(0.f);
    p0 = adamw_vec(p0, g0, m0, v0, c);
    p1 = adamw_vec(p1, g1, m1, v1, c);
    at::vec::convert_from_float<T>(p0, p1).store(p + i, k);
    m0.store(m + i, k0);
    v0.store(v + i, k0);
    if (k1 > 0) {
      m1.store(m + i + H, k1);
      v1.store(v + i + H, k1);
    }
  }
}

void update_dispatch(const at::Tensor& p, const at::Tensor& g, const at::Tensor& m, const at::Tensor& v,
                     int64_t b, int64_t e, const Coefs& c) {
  dispatch_float_types(p.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    update_chunk(p.data_ptr<scalar_t>() + b, g.const_data_ptr<scalar_t>() + b, m.data_ptr<float>() + b,
                 v.data_ptr<float>() + b, e - b, c);
  });
}

float read_scalar(const OptTensor& t, float dflt) {
  return t.has_value() ? t->item<float>() : dflt;  // CPU tensors: a plain load, no sync
}

// Pass 2 plus the bookkeeping around it; `sumsq`/`nonfinite` are the (global) pass-1 results.
std::tuple<at::Tensor, at::Tensor> update_pass(at::TensorList params, at::TensorList grads,
                                               at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                                               at::TensorList state_steps, const HyperLists& h,
                                               const std::vector<Chunk>& chunks, double sumsq, bool nonfinite,
                                               std::optional<double> max_norm, const OptTensor& grad_scale,
                                               const OptTensor& found_inf) {
  const double scale = read_scalar(grad_scale, 1.f);
  const double inv_scale = 1.0 / scale;
  const double norm = std::sqrt(sumsq) * inv_scale;  // norm of the unscaled grads
  const bool skip = nonfinite || read_scalar(found_inf, 0.f) > 0.f;
  auto opts = at::TensorOptions().dtype(at::kFloat);
  at::Tensor norm_t = at::scalar_tensor(static_cast<float>(norm), opts);
  at::Tensor found_t = at::scalar_tensor(skip ? 1.f : 0.f, opts);
  if (skip) return {norm_t, found_t};  // GradScaler semantics: change nothing (steps included)

  double clip = 1.0;
  if (max_norm.has_value() && std::isfinite(*max_norm)) clip = std::min(1.0, *max_norm / (norm + 1e-6));
  const float gscale = static_cast<float>(inv_scale * clip);

  const int64_t n = static_cast<int64_t>(params.size());
  std::vector<Coefs> coefs(n);
  for (int64_t i = 0; i < n; ++i) {
    float* step = state_steps[i].data_ptr<float>();
    *step += 1.f;
    const double s = *step, b1 = h.beta1[i], b2 = h.beta2[i], lr = h.lr[i];
    const double bc1 = 1.0 - std::pow(b1, s), bc2 = 1.0 - std::pow(b2, s);
    coefs[i] = Coefs{gscale,
                     static_cast<float>(1.0 - lr * h.weight_decay[i]),
                     static_cast<float>(1.0 - b1),
                     static_cast<float>(b2),
                     static_cast<float>(1.0 - b2),
                     static_cast<float>(1.0 / std::sqrt(bc2)),
                     static_cast<float>(h.eps[i]),
                     static_cast<float>(lr / bc1)};
  }
  const int64_t nc = static_cast<int64_t>(chunks.size());
  at::parallel_for(0, nc, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = ce - 1; c >= cb; --c) {  // backwards: reuse the grads pass 1 left in cache
      const Chunk& ch = chunks[c];
      update_dispatch(params[ch.tensor], grads[ch.tensor], exp_avgs[ch.tensor], exp_avg_sqs[ch.tensor], ch.begin,
                      ch.end, coefs[ch.tensor]);
    }
  });
  return {norm_t, found_t};
}

void check_cpu(const char* op, at::TensorList ts) {
  if (!ts.empty())
    TORCH_CHECK(ts[0].device().is_cpu(), op, ": CPU kernel called with tensors on ", ts[0].device());
}

}  // namespace

at::Tensor grad_sumsq_cpu(at::TensorList grads) {
  check_grads("fastft::grad_sumsq", grads);
  check_cpu("fastft::grad_sumsq", grads);
  auto [sumsq, bad] = sumsq_pass(grads, make_chunks(grads));
  // Stats are returned in fp32 (what gets all-reduced); the sum itself was formed in double.
  at::Tensor out = at::empty({2}, at::TensorOptions().dtype(at::kFloat));
  out[0] = static_cast<float>(sumsq);
  out[1] = bad ? 1.f : 0.f;
  return out;
}

std::tuple<at::Tensor, at::Tensor> adamw_update_cpu(at::TensorList params, at::TensorList grads,
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
  check_cpu(op, params);
  TORCH_CHECK(stats.numel() == 2 && stats.scalar_type() == at::kFloat && stats.device().is_cpu(), op,
              ": stats must be the 2-element float32 CPU tensor returned by fastft::grad_sumsq");
  const float* s = stats.const_data_ptr<float>();
  return update_pass(params, grads, exp_avgs, exp_avg_sqs, state_steps, h, make_chunks(params), s[0],
                     !(s[1] == 0.f), max_norm, grad_scale, found_inf);
}

std::tuple<at::Tensor, at::Tensor> fused_adamw_cpu(at::TensorList params, at::TensorList grads,
                                                   at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                                                   at::TensorList state_steps, c10::ArrayRef<double> lrs,
                                                   c10::ArrayRef<double> beta1s, c10::ArrayRef<double> beta2s,
                                                   c10::ArrayRef<double> epss, c10::ArrayRef<double> weight_decays,
                                                   std::optional<double> max_norm, const OptTensor& grad_scale,
                                                   const OptTensor& found_inf) {
  const char* op = "fastft::fused_adamw_";
  HyperLists h{lrs, beta1s, beta2s, epss, weight_decays};
  check_adamw_args(op, params, grads, exp_avgs, exp_avg_sqs, state_steps, h, grad_scale, found_inf);
  check_cpu(op, params);
  const std::vector<Chunk> chunks = make_chunks(params);  // same chunking in both passes
  auto [sumsq, bad] = sumsq_pass(grads, chunks);
  return update_pass(params, grads, exp_avgs, exp_avg_sqs, state_steps, h, chunks, sumsq, bad, max_norm,
                     grad_scale, found_inf);
}

}  // namespace fastft
