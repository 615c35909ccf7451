"""Shared by the fused losses (:mod:`~fastft.ops.cross_entropy`, :mod:`~fastft.ops.kd_loss`,
:mod:`~fastft.ops.linear_cross_entropy`, :mod:`~fastft.ops.linear_kd_loss`): argument checks,
reductions, the autograd wiring of the loss ops, and the chunked linear + loss driver.

Design (shared by all): the gradient with respect to the logits is computed in the
*forward* pass, in the same pass over the row that computes the loss (the softmax is needed for
both), already multiplied by the reduction's scale (1/n_valid for ``mean``). Backward is then only
a multiplication by the upstream gradient. No fp32 copy of the probabilities is kept: the saved
gradient has the logits' dtype. Statistics are accumulated in fp32 whatever the input dtype.

Every op is a ``torch.library.custom_op`` (``fastft::cross_entropy``, ``fastft::kd_loss``,
``fastft::linear_cross_entropy``, ``fastft::linear_kd_loss`` and their backwards) with ``register_autograd`` and
``register_fake``, so ``torch.compile`` (fullgraph) treats it as one opaque node. Inside, each
call picks the Triton kernel or the plain-torch reference through
:func:`fastft._backend.use_triton`; both compute the same math in fp32.

Conventions (all match ``torch.nn.functional.cross_entropy``):

* ``reduction="mean"`` divides by the number of non-ignored rows. If every row is ignored the
  loss is ``nan`` (0/0) and the gradient is zero, exactly like torch.
* ``label_smoothing=eps``: loss = (1-eps) * nll + eps * mean_j(-log p_j); ignored rows excluded.
* Class weights: ``cross_entropy(..., weight=w)`` / ``nn.CrossEntropyLoss(w)`` /
  ``linear_cross_entropy(..., class_weight=w)`` take a ``(V,)`` tensor with torch's ``weight=``
  semantics: row loss w[y] * nll, smoothed (1-eps) w[y] nll + eps/V sum_j w[j] (-log p_j), and
  ``mean`` = sum of row losses / sum_i w[y_i] over non-ignored rows (``sum``/``none``: unnormalised).
  The weights are constants (no gradient). KD has no class weights.
* The loss has the logits' (hidden's) dtype, like torch (fp32 under autocast, or with
  ``fp32_loss=True``); it is always computed in fp32.
* Low precision: the gradient is rounded to the logits' dtype once, in the forward; an upstream
  gradient that is not a power of two rounds it a second time in backward (<= 1 ulp instead of
"""

import torch

_REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}
_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_EMPTY = lambda ref: ref.new_empty(0)  # stands in for "no gradient computed" in op outputs


def _reduction_code(reduction: str) -> int:
    try:
        return _REDUCTIONS[reduction]
    except KeyError:
        raise ValueError(f"reduction={reduction!r} is not supported: use 'mean', 'sum' or 'none'") from None


def _check_rows(logits: torch.Tensor, target: torch.Tensor | None, name: str = "logits") -> None:
    if logits.dim() != 2:
        raise ValueError(f"{name} must be (N, V) after flattening; got shape {tuple(logits.shape)}")
    if logits.dtype not in _FLOATS:
        raise TypeError(f"{name} must be a floating tensor (fp32/fp16/bf16/fp64); got {logits.dtype}")
    if target is not None:
        if target.dim() != 1 or target.shape[0] != logits.shape[0]:
            raise ValueError(
                f"target must have shape ({logits.shape[0]},) to match {name} {tuple(logits.shape)}; "
                f"got {tuple(target.shape)} (class-probability targets are not supported)"
            )
        if target.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"target must hold class indices (int64/int32); got {target.dtype}")


def _acc(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: fp32, or fp64 for fp64 inputs (so a float64 check is exact)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _weight_sum(target: torch.Tensor, ignore_index: int, weight: torch.Tensor, dtype) -> torch.Tensor:
    """sum_i w[y_i] over non-ignored rows: the denominator of torch's weighted mean."""
    valid = target != ignore_index
    w_rows = weight.to(dtype)[torch.where(valid, target, torch.zeros_like(target)).long()]
    return torch.where(valid, w_rows, torch.zeros_like(w_rows)).sum()


def _scale_tensor(
    target: torch.Tensor | None, n_rows: int, ignore_index: int, code: int, ref, weight=None
) -> torch.Tensor:
    """Gradient scale of the reduction as a 0-dim fp32 tensor (no host sync).

    mean: 1/max(n_valid, 1) -- the clamp gives zero gradients when every row is ignored (torch's
    behaviour), while the loss itself is still divided by the true count (nan for 0/0). With class
    weights the count is sum_i w[y_i] (non-ignored), and a zero sum gives zero gradients.
    """
    dtype, device = _acc(ref.dtype), ref.device
    if code != 1:
        return torch.ones((), dtype=dtype, device=device)
    if target is None:
        return torch.full((), 1.0 / max(n_rows, 1), dtype=dtype, device=device)
    if weight is not None:
        den = _weight_sum(target, ignore_index, weight, dtype)
        return torch.where(den == 0, torch.zeros_like(den), 1.0 / den)
    n_valid = (target != ignore_index).sum().to(dtype)
    return 1.0 / n_valid.clamp(min=1.0)


def _reduce(
    loss_rows: torch.Tensor, target: torch.Tensor | None, ignore_index: int, code: int, weight=None
) -> torch.Tensor:
    """fp32 reduction of per-row losses (ignored rows hold 0); mean divides by sum_i w[y_i] with
    class weights, by the number of non-ignored rows without."""
    if code == 0:
        return loss_rows
    total = loss_rows.sum()
    if code == 2:
        return total
    if target is None:
        return total / loss_rows.shape[0]
    if weight is not None:
        return total / _weight_sum(target, ignore_index, weight, total.dtype)
    return total / (target != ignore_index).sum().to(total.dtype)


def _kernel_unsupported(*tensors: torch.Tensor) -> str | None:
    for t in tensors:
        if t is not None and t.dtype not in _KERNEL_DTYPES:
            return f"dtype {t.dtype} (kernel handles fp32/fp16/bf16)"
    return None


def _flatten(logits: torch.Tensor, target: torch.Tensor | None):
    V = logits.shape[-1]
    x = logits.reshape(-1, V)
    if not x.is_contiguous() and x.stride(-1) != 1:
        x = x.contiguous()
    t = None if target is None else target.reshape(-1)
    return x, t


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _finish(loss: torch.Tensor, lead_shape, code: int, dtype: torch.dtype, keep_fp32: bool) -> torch.Tensor:
    """Shape the loss; return it in ``dtype`` like torch, or fp32 when asked or under autocast
    (torch autocasts cross_entropy to fp32)."""
    if code == 0:
        loss = loss.reshape(lead_shape)
    if keep_fp32 or torch.is_autocast_enabled(loss.device.type):
        return loss
    return loss.to(dtype)


def _class_weight(weight: torch.Tensor | None, x: torch.Tensor, name: str = "weight") -> torch.Tensor | None:
    """Validated (V,) class weights, detached, in the accumulation dtype on the logits' device."""
    if weight is None:
        return None
    if not isinstance(weight, torch.Tensor) or weight.dim() != 1 or weight.shape[0] != x.shape[1]:
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"{name} must be a 1-D tensor of {x.shape[1]} class weights; got {shape}")
    if not weight.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor; got {weight.dtype}")
    if weight.device != x.device:
        raise ValueError(f"{name} is on {weight.device} but the logits are on {x.device}; move it first")
    return weight.detach().to(_acc(x.dtype)).contiguous()


# ----------------------------------------------------------------------------- row-loss ops
def rows_fake(x: torch.Tensor, reduction: int, compute_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Fake outputs of a row-loss op (CE, KD): (loss, grad of ``x`` or an empty placeholder)."""
    loss = x.new_empty((x.shape[0],) if reduction == 0 else (), dtype=_acc(x.dtype))
    return loss, torch.empty_like(x) if compute_grad else x.new_empty(0)


def _scaled_grad(ctx, grad_loss):
    """The one backward of every loss op: the saved, pre-scaled gradient times the upstream one."""
    (grad,) = ctx.saved_tensors
    if grad.numel() == 0:
        raise RuntimeError(
            "fastft loss: backward called but the forward ran without grad (compute_grad=False)"
        )
    if ctx.reduction == 0:
        return grad * grad_loss[:, None]
    return grad * grad_loss


def register_rows_autograd(op, reduction_at: int, n_inputs: int) -> None:
    """Autograd of a row-loss op ``(x, ..., reduction at reduction_at, ...) -> (loss, grad)``: the
    pre-scaled grad of ``x`` (its first input) is saved and multiplied by the upstream gradient."""

    def setup(ctx, inputs, output):
        ctx.reduction = inputs[reduction_at]
        ctx.save_for_backward(output[1])

    def backward(ctx, grad_loss, _grad_grad):
        return (_scaled_grad(ctx, grad_loss), *([None] * (n_inputs - 1)))

    op.register_autograd(backward, setup_context=setup)


# ----------------------------------------------------------------------------- linear + loss
#: Bytes the chunk of logits may occupy (at least); the chunk grows with the hidden states.
_MIN_CHUNK_BYTES = 64 << 20


def choose_chunk_rows(n_rows: int, hidden: int, vocab: int, elem_size: int) -> int:
    """Rows of logits computed at once: the chunk of logits is about 2x the hidden states and at
    least 64 MiB (big enough for an efficient GEMM), rounded to a multiple of 64 rows."""
    budget = max(2 * n_rows * hidden * elem_size, _MIN_CHUNK_BYTES)
    rows = budget // max(vocab * elem_size, 1)
    if rows >= 64:
        rows = rows // 64 * 64
    return int(max(1, min(n_rows, rows)))


#: (device type, input dtype) -> does ``aten::addmm.dtype_out`` really accumulate in fp32 there?
_DTYPE_OUT_OK: dict[tuple[str, torch.dtype], bool] = {}
#: The weight-gradient accumulation path the last mixed-dtype call took (see linear_ce_wgrad_path).
_WGRAD_PATH: str | None = None


def linear_ce_wgrad_path() -> str | None:
    """How the fused linear losses accumulated the head's weight gradient last (None: not yet):

    * ``"same-dtype"``: fp32 (or fp64) inputs, ``addmm_`` into the fp32 buffer;
    * ``"addmm-dtype-out"``: 16-bit inputs, cuBLAS writes the fp32 sum directly
      (``aten::addmm.dtype_out``, verified once per device/dtype to keep the fp32 bits);
    * ``"fp32-upcast"``: 16-bit inputs, the chunk's operands are cast to fp32 and ``addmm_``-ed
      (CPU, or a torch whose ``dtype_out`` is missing or rounds to 16 bits). Never a 16-bit product.
    """
    return _WGRAD_PATH


def _dtype_out_ok(device: torch.device, dtype: torch.dtype) -> bool:
    """Probe once (one host sync per process and dtype) that ``addmm.dtype_out`` keeps fp32 bits:
    1 + 2^-12 is exact in fp32 but rounds to 1 in bf16 and fp16."""
    key = (device.type, dtype)
    if key not in _DTYPE_OUT_OK:
        a = torch.ones(1, 2, dtype=dtype, device=device)
        b = torch.tensor([[1.0], [2.0**-12]], dtype=dtype, device=device)
        acc = torch.zeros(1, 1, dtype=torch.float32, device=device)
        try:
            torch.ops.aten.addmm.dtype_out(acc, a, b, torch.float32, out=acc)
            _DTYPE_OUT_OK[key] = acc.item() == 1.0 + 2.0**-12
        except (RuntimeError, AttributeError, NotImplementedError, TypeError):
            _DTYPE_OUT_OK[key] = False
    return _DTYPE_OUT_OK[key]


def _accumulate_mm(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``acc += a @ b`` with ``acc`` fp32 and a, b possibly 16-bit, always accumulated in fp32.

    ``acc += a @ b`` in 16 bits would round every chunk's product to 8 (bf16) mantissa bits
    before the fp32 sum. On CUDA cuBLAS can write the fp32 result directly
    (``aten::addmm.dtype_out``, torch >= 2.8); otherwise the operands are upcast (costs an fp32
    copy of the chunk's dlogits, 2x the 16-bit chunk).
    """
    global _WGRAD_PATH
    if acc.dtype == a.dtype:
        acc.addmm_(a, b)
        _WGRAD_PATH = "same-dtype"
        return
    if acc.is_cuda and _dtype_out_ok(acc.device, a.dtype):
        torch.ops.aten.addmm.dtype_out(acc, a, b, acc.dtype, out=acc)
        _WGRAD_PATH = "addmm-dtype-out"
        return
    acc.addmm_(a.to(acc.dtype), b.to(acc.dtype))
    _WGRAD_PATH = "fp32-upcast"


def _linear_loop(hidden, weight, bias, rows_fn, scale, need_h, need_w, need_b, chunk):
    """Chunked linear + loss. Returns (loss_rows, grad_hidden, grad_weight, grad_bias).

    For each chunk of rows: logits = h_c @ W^T + b (one GEMM, in the input dtype); ``rows_fn``
    (the CE or KD kernel) turns them into per-row losses and, in place, into dlogits scaled by
    ``scale``; then grad_h_c = dlogits @ W, grad_W += dlogits^T @ h_c, grad_b += sum(dlogits).
    grad_W/grad_b accumulate in fp32 and are returned unrounded (the caller rounds once, after
    applying the upstream gradient).
    """
    with torch.autocast(hidden.device.type, enabled=False):  # dtypes were settled by the caller
        N = hidden.shape[0]
        compute = need_h or need_w or need_b
        acc = _acc(hidden.dtype)
        loss = hidden.new_empty(N, dtype=acc)
        gh = torch.empty_like(hidden) if need_h else None
        gw = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        gb = torch.zeros(weight.shape[0], dtype=acc, device=weight.device) if need_b else None
        for start in range(0, N, chunk):
            end = min(start + chunk, N)
            h = hidden[start:end]
            logits = torch.addmm(bias, h, weight.t()) if bias is not None else h @ weight.t()
            sc = scale if scale is None or scale.dim() == 0 else scale[start:end]
            # the chunk of logits is our own buffer: the kernel writes dlogits over it
            loss[start:end], g = rows_fn(start, end, logits, sc, compute)
            if not compute:
                continue
            if need_h:
                torch.mm(g, weight, out=gh[start:end])
            if need_w:
                _accumulate_mm(gw, g.t(), h)
            if need_b:
                gb += g.sum(dim=0, dtype=acc)
            del logits, g
    return loss, gh, gw, gb


def _grads_or_empty(ref, gh, gw, gb):
    return (
        gh if gh is not None else _EMPTY(ref),
        gw if gw is not None else _EMPTY(ref),
        gb if gb is not None else _EMPTY(ref),
    )


def linear_forward(hidden, weight, bias, rows_fn, scale, reduction, needs, chunk):
    """The forward of a linear-loss op: (loss rows, grad_hidden, grad_weight (fp32), grad_bias
    (fp32)); grads are computed here unless ``reduction`` is none (then backward recomputes)."""
    eager = reduction != 0
    need_h, need_w, need_b = (n and eager for n in needs)
    return _linear_loop(hidden, weight, bias, rows_fn, scale, need_h, need_w, need_b, chunk)


def linear_backward(hidden, weight, bias, rows_fn, grad_rows, needs, chunk):
    """Backward of ``reduction="none"``: recompute each chunk with dlogits scaled per row;
    the grads are rounded once to the parameters' dtype."""
    _, gh, gw, gb = _linear_loop(hidden, weight, bias, rows_fn, grad_rows, *needs, chunk)
    gw = gw.to(weight.dtype) if gw is not None else None
    gb = gb.to(bias.dtype) if gb is not None else None
    return _grads_or_empty(hidden, gh, gw, gb)


def _linear_fake(hidden, weight, bias, reduction, need_h, need_w, need_b):
    """Fake outputs shared by the linear CE and linear KD ops: (loss, grad_h, grad_w, grad_b);
    the grads are empty placeholders unless computed eagerly (reduction != "none")."""
    loss = hidden.new_empty((hidden.shape[0],) if reduction == 0 else (), dtype=_acc(hidden.dtype))
    eager = reduction != 0
    return (
        loss,
        torch.empty_like(hidden) if need_h and eager else hidden.new_empty(0),
        torch.empty_like(weight, dtype=_acc(weight.dtype)) if need_w and eager else hidden.new_empty(0),
        bias.new_empty(bias.shape, dtype=_acc(bias.dtype))
        if bias is not None and need_b and eager
        else hidden.new_empty(0),
    )


def linear_bwd_fake(hidden, weight, bias, need_h, need_w, need_b):
    """Fake outputs of a linear-loss backward op: (grad_hidden, grad_weight, grad_bias)."""
    return (
        torch.empty_like(hidden) if need_h else hidden.new_empty(0),
        torch.empty_like(weight) if need_w else hidden.new_empty(0),
        bias.new_empty(bias.shape) if bias is not None and need_b else hidden.new_empty(0),
    )


def register_linear_autograd(op, bwd_op, *, reduction_at: int, bias_at: int, need_at: tuple[int, int, int]):
    """Autograd of a linear-loss op whose inputs start with (hidden, weight) and whose backward op
    takes ``(grad_rows, *inputs without the reduction)``.

    ``mean``/``sum``: the grads were computed in the forward; they are scaled by the upstream
    gradient (the fp32 weight/bias grads before their single rounding to the parameter dtype).
    ``none``: the inputs are saved and ``bwd_op`` recomputes the logits chunk by chunk.
    """

    def setup(ctx, inputs, output):
        ctx.reduction = inputs[reduction_at]
        ctx.needs = tuple(inputs[i] for i in need_at)
        ctx.has_bias = inputs[bias_at] is not None
        ctx.w_dtype = inputs[1].dtype
        ctx.n_inputs = len(inputs)
        if ctx.reduction == 0:
            rest = [x for i, x in enumerate(inputs) if i != reduction_at]
            # tensors (and absent optional tensors) are saved; the other arguments kept as they are
            ctx.slots = [None if x is None or isinstance(x, torch.Tensor) else x for x in rest]
            ctx.save_for_backward(*(x for x in rest if x is None or isinstance(x, torch.Tensor)))
        else:
            ctx.save_for_backward(*output[1:])

    def backward(ctx, grad_loss, _g1, _g2, _g3):
        need_h, need_w, need_b = ctx.needs
        need_b = need_b and ctx.has_bias
        if ctx.reduction == 0:
            saved = iter(ctx.saved_tensors)
            args = [next(saved) if s is None else s for s in ctx.slots]
            gh, gw, gb = bwd_op(grad_loss, *args)
        else:
            gh, gw, gb = ctx.saved_tensors
            gh = gh * grad_loss
            gw = (gw * grad_loss).to(ctx.w_dtype) if need_w else gw
            gb = (gb * grad_loss).to(ctx.w_dtype) if need_b else gb
        grads = [None] * ctx.n_inputs
        grads[0] = gh if need_h else None
        grads[1] = gw if need_w else None
        grads[bias_at] = gb if need_b else None
        return tuple(grads)

    op.register_autograd(backward, setup_context=setup)


def autocast_head(hidden, weight, bias):
    """Like ``F.linear`` under autocast: the GEMMs run in the autocast dtype (the casts are autograd
    ops, so fp32 master weights still get their gradient); the loss math stays fp32."""
    dev = hidden.device.type
    if torch.is_autocast_enabled(dev):
        cast = torch.get_autocast_dtype(dev)
        hidden, weight = hidden.to(cast), weight.to(cast)
        bias = bias.to(cast) if bias is not None else None
    return hidden, weight, bias


def need_flags(hidden, weight, bias) -> tuple[bool, bool, bool]:
    """(need_h, need_w, need_b): which gradients the linear-loss op must produce."""
    grad_on = torch.is_grad_enabled()
    return (
        grad_on and hidden.requires_grad,
        grad_on and weight.requires_grad,
        grad_on and bias is not None and bias.requires_grad,
    )
