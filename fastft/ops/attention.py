"""Scaled-dot-product attention: padded (B, H, S, D) with a (B, S) key-padding mask, and varlen.

Two paths, chosen per call by :func:`fastft._backend.use_triton` (op name ``"attention"``):

* **triton**: the FlashAttention-2-style kernels of :mod:`fastft.kernels.attention`, wrapped as the
  custom ops ``fastft::attention_fwd`` / ``fastft::attention_bwd`` (``torch.library.custom_op`` with
  ``register_autograd`` and ``register_fake``) so ``torch.compile`` treats them as opaque nodes.
* **torch** (the reference; default for CPU tensors): torch's own SDPA, given a bool mask built from the
  (B, S) mask and ``is_causal``.

Both paths define the same result for a query row that sees no key at all (every key is padding, or
causal + left padding): **the output row is 0 and no gradient flows through it** (never NaN). Dropout
masks differ between paths (the kernel draws from its own Philox stream, seeded from torch's CPU
generator, so ``torch.manual_seed`` makes it reproducible).

Backward math (the kernel's; torch autograd does the same on the reference path). With
S = scale * Q K^T (masked entries -inf), P = softmax(S) row-wise, Z the dropout keep-mask, r = 1/(1-p):
O = (r Z * P) V; given dO:  dV = (r Z * P)^T dO;  dP = dO V^T;  Delta = rowsum(dO * O);
dS = P * (r Z * dP - Delta);  dQ = scale * dS K;  dK = scale * dS^T Q. The forward saves only O and the
row log-sum-exp; P is recomputed blockwise in backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastft._backend import use_triton

__all__ = [
    "scaled_dot_product_attention",
    "varlen_attention",
    "unpad_input",
    "pad_input",
    "reference_attention",
]

_MAX_HEAD_DIM = 128
_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# ----------------------------------------------------------------------------------------------------------
# custom ops (triton path)
# ----------------------------------------------------------------------------------------------------------
@torch.library.custom_op("fastft::attention_fwd", mutates_args=())
def _attention_fwd_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    seed: torch.Tensor,
    max_seqlen: int,
    is_causal: bool,
    dropout_p: float,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    from fastft.kernels.attention import attention_forward

    return attention_forward(
        q, k, v, key_padding_mask=key_padding_mask, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen,
        is_causal=is_causal, dropout_p=dropout_p, scale=scale, seed=int(seed.item()),
    )  # fmt: skip


@_attention_fwd_op.register_fake
def _(q, k, v, key_padding_mask, cu_seqlens, seed, max_seqlen, is_causal, dropout_p, scale):
    if cu_seqlens is None:
        lse = q.new_empty((q.shape[0], q.shape[1], q.shape[2]), dtype=torch.float32)
    else:
        lse = q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)
    return torch.empty_like(q), lse


@torch.library.custom_op("fastft::attention_bwd", mutates_args=())
def _attention_bwd_op(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    key_padding_mask: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    seed: torch.Tensor,
    max_seqlen: int,
    is_causal: bool,
    dropout_p: float,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from fastft.kernels.attention import attention_backward

    return attention_backward(
        do, q, k, v, o, lse, key_padding_mask=key_padding_mask, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen,
        is_causal=is_causal, dropout_p=dropout_p, scale=scale, seed=int(seed.item()),
    )  # fmt: skip


@_attention_bwd_op.register_fake
def _(do, q, k, v, o, lse, key_padding_mask, cu_seqlens, seed, max_seqlen, is_causal, dropout_p, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, kpm, cu, seed, max_seqlen, is_causal, dropout_p, scale = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse, kpm, cu, seed)
    ctx.args = (max_seqlen, is_causal, dropout_p, scale)


def _backward(ctx, do, dlse):
    q, k, v, o, lse, kpm, cu, seed = ctx.saved_tensors
    dq, dk, dv = _attention_bwd_op(do, q, k, v, o, lse, kpm, cu, seed, *ctx.args)
    return dq, dk, dv, None, None, None, None, None, None, None


_attention_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def _seed(dropout_p: float) -> torch.Tensor:
    # Drawn from torch's CPU generator: reproducible under torch.manual_seed, and no device sync.
    if dropout_p > 0.0:
        return torch.randint(0, 2**30, (1,), dtype=torch.int64)
    return torch.zeros(1, dtype=torch.int64)


# ----------------------------------------------------------------------------------------------------------
# torch reference path
# ----------------------------------------------------------------------------------------------------------
def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    attention_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> torch.Tensor:
    """torch SDPA with the (B, Sk) key mask and fastft's rule for rows without visible keys (output 0).

    q (B, H, Sq, D), k/v (B, H, Sk, D) with equal head counts; returns (B, H, Sq, D).
    """
    sq, sk = q.shape[-2], k.shape[-2]
    if attention_mask is None and (not is_causal or sq == sk):
        # Every row sees at least key 0, so there is no empty row.
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=is_causal, scale=scale)
    keep, empty = _reference_mask(attention_mask, sq, sk, is_causal, q.device)
    if empty is None:  # no empty row: HF sdpa's call exactly (bool mask, no fill)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=dropout_p, scale=scale)
    # Give empty rows a harmless full view (SDPA would return NaN or garbage), then zero them: the
    # masked_fill also stops any gradient from reaching q/k/v through those rows.
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep | empty, dropout_p=dropout_p, scale=scale)
    return out.masked_fill(empty, 0.0)


_REF_MASK_ATTR = "_fastft_reference_mask"


def _reference_mask(
    mask: torch.Tensor | None, sq: int, sk: int, is_causal: bool, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(keep, empty): SDPA's bool mask (B|1, 1, 1|Sq, Sk) and the rows that see no key (None if none).

    Built once per (B, Sk) mask tensor and kept on it: every layer of a forward (and a checkpoint
    recompute) passes the same mask object, so the per-layer cost is one dictionary look-up. "No
    empty row" is a host check, free on CPU; on other devices it would sync, so ``empty`` stays.
    """
    key = (sq, sk, bool(is_causal), device)
    cache = mask is not None and not torch.compiler.is_compiling()
    if cache:
        cached = getattr(mask, _REF_MASK_ATTR, None)
        if cached is not None and cached[0] == mask._version and cached[1] == key:
            return cached[2]
    keep = torch.ones(1, 1, 1, sk, dtype=torch.bool, device=device)
    if mask is not None:
        keep = mask.to(device=device, dtype=torch.bool)[:, None, None, :]
    if is_causal:  # bottom-right aligned: query i sees keys j <= i + sk - sq
        keep = keep & torch.ones(sq, sk, dtype=torch.bool, device=device).tril(sk - sq)
    empty = ~keep.any(-1, keepdim=True)
    if device.type == "cpu" and not torch.compiler.is_compiling() and not bool(empty.any()):
        empty = None
    if cache:
        setattr(mask, _REF_MASK_ATTR, (mask._version, key, (keep, empty)))
    return keep, empty


# ----------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------
def unpad_input(
    x: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Pack the real tokens of a padded batch.

    x (B, S, ...) and mask (B, S) (non-zero = real token) -> (x_unpad (T, ...), indices (T,) into the
    flattened B*S positions, cu_seqlens (B + 1,) int32, max_seqlen). Host-syncs once (max and total length).
    """
    b, s = attention_mask.shape
    indices, cu_seqlens, max_seqlen = unpad_indices(attention_mask)
    return x.reshape(b * s, *x.shape[2:]).index_select(0, indices), indices, cu_seqlens, max_seqlen


def unpad_indices(attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(indices, cu_seqlens int32, max_seqlen) of the real tokens of a (B, S) mask (see :func:`unpad_input`)."""
    m = attention_mask.bool()
    lens = m.sum(1, dtype=torch.int32)
    cu_seqlens = F.pad(lens.cumsum(0, dtype=torch.int32), (1, 0))
    if not lens.numel():
        return m.new_zeros(0, dtype=torch.long), cu_seqlens, 0
    # The one host sync: max_seqlen sizes the launch grid and the total sizes the index tensor.
    max_seqlen, total = torch.stack([lens.max(), cu_seqlens[-1]]).tolist()
    indices = torch.nonzero_static(m.flatten(), size=total).flatten()
    return indices, cu_seqlens, int(max_seqlen)


def pad_input(x: torch.Tensor, indices: torch.Tensor, batch: int, seqlen: int) -> torch.Tensor:
    """Inverse of :func:`unpad_input`: (T, ...) -> (B, S, ...) with zeros at padding positions."""
    out = x.new_zeros((batch * seqlen, *x.shape[1:]))
    return out.index_copy(0, indices, x).reshape(batch, seqlen, *x.shape[1:])


def _expand_kv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, head_dim_axis: int):
    """Grouped-query attention: repeat each kv head for its group of query heads (autograd sums back)."""
    hq, hk = q.shape[head_dim_axis], k.shape[head_dim_axis]
    if hq == hk:
        return k, v
    if hk == 0 or hq % hk:
        raise ValueError(f"attention: {hq} query heads are not a multiple of {hk} key/value heads")
    rep = hq // hk
    return (x.repeat_interleave(rep, dim=head_dim_axis) for x in (k, v))


def _unsupported(q: torch.Tensor, is_causal: bool, sq: int, sk: int, varlen: bool) -> str | None:
    return _unsupported_kernel(q.dtype, q.shape[-1], q.is_cuda)


def _unsupported_kernel(dtype: torch.dtype, head_dim: int, is_cuda: bool) -> str | None:
    """Why the kernel cannot take q of this dtype / head dim / device (None if it can)."""
    if dtype not in _KERNEL_DTYPES:
        return f"dtype {dtype} (kernel supports float16/bfloat16/float32)"
    if head_dim > _MAX_HEAD_DIM:
        return f"head dim {head_dim} > {_MAX_HEAD_DIM}"
    if is_cuda and dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        # Exact (IEEE) fp32 dots run on CUDA cores and spill registers at D = 128: SDPA is faster.
        # With torch.backends.cuda.matmul.allow_tf32 = True the kernel uses TF32 tensor cores.
        return "fp32 without TF32 (set torch.backends.cuda.matmul.allow_tf32 = True for the kernel)"
    return None


# ----------------------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------------------
def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    attention_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention over q (B, H, Sq, D), k/v (B, Hkv, Sk, D) -> (B, H, Sq, D).

    Args:
        attention_mask: (B, Sk), 1/True = real key, 0/False = padding (the HF ``attention_mask``);
            never an S x S tensor. Query rows with no visible key return 0.
        is_causal: query i sees keys j <= i + Sk - Sq (bottom-right aligned, as FlashAttention and a KV
            cache need; the usual j <= i when Sq == Sk). With Sq > Sk the first Sq - Sk rows see no key
            and return 0.
        dropout_p: attention-probability dropout (apply only in training).
        scale: softmax scale, default 1/sqrt(D).
    Hkv may divide H (grouped-query attention).
    """
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"scaled_dot_product_attention: q/k/v must be (B, H, S, D), got {tuple(q.shape)}, {tuple(k.shape)}, "
            f"{tuple(v.shape)}; use varlen_attention for packed (total, H, D) batches"
        )
    b, _, sq, d = q.shape
    sk = k.shape[2]
    if attention_mask is not None and tuple(attention_mask.shape) != (b, sk):
        raise ValueError(
            f"scaled_dot_product_attention: attention_mask must be the (B, Sk) = {(b, sk)} key-padding mask "
            f"(1 = keep), got {tuple(attention_mask.shape)}; pass 4D masks to torch SDPA instead"
        )
    k, v = _expand_kv(q, k, v, 1)
    if not use_triton("attention", q, unsupported=_unsupported(q, is_causal, sq, sk, False)):
        return reference_attention(
            q, k, v, attention_mask=attention_mask, is_causal=is_causal, dropout_p=dropout_p, scale=scale
        )
    scale = d**-0.5 if scale is None else float(scale)
    kpm = None if attention_mask is None else attention_mask.to(device=q.device, dtype=torch.uint8)
    out, _ = _attention_fwd_op(q, k, v, kpm, None, _seed(dropout_p), max(sq, sk), bool(is_causal),
                               float(dropout_p), scale)  # fmt: skip
    return out


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    *,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention over packed, unpadded sequences: q (total, H, D), k/v (total, Hkv, D) -> (total, H, D).

    ``cu_seqlens`` (B + 1,) int: sequence b is rows ``cu_seqlens[b]:cu_seqlens[b + 1]``; ``max_seqlen`` is
    the longest length. Queries attend only inside their own sequence (causally if ``is_causal``).
    """
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(
            f"varlen_attention: q/k/v must be packed (total, H, D), got {tuple(q.shape)}, {tuple(k.shape)}, "
            f"{tuple(v.shape)}; use fastft.functional.unpad_input to pack a padded batch"
        )
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
        raise ValueError("varlen_attention: cu_seqlens must be a 1-D (B + 1,) tensor of cumulative lengths")
    k, v = _expand_kv(q, k, v, 1)
    max_seqlen = int(max_seqlen)
    if not use_triton("attention", q, unsupported=_unsupported(q, is_causal, max_seqlen, max_seqlen, True)):
        return _varlen_reference(q, k, v, cu_seqlens, max_seqlen, is_causal, dropout_p, scale)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    out, _ = _attention_fwd_op(q, k, v, None, cu_seqlens.to(device=q.device, dtype=torch.int32), _seed(dropout_p),
                               max_seqlen, bool(is_causal), float(dropout_p), scale)  # fmt: skip
    return out


_VARLEN_ATTR = "_fastft_varlen_layout"


def _varlen_layout(cu_seqlens: torch.Tensor, max_seqlen: int, device: torch.device):
    """(mask (B, max_seqlen) bool, indices of the real tokens in B * max_seqlen), once per cu_seqlens.

    Every layer of a forward gets the same cu_seqlens tensor, so the layout (and, through the mask
    object, the reference's 4D mask) is built once per forward instead of once per layer.
    """
    key = (cu_seqlens._version, max_seqlen, device)
    cache = not torch.compiler.is_compiling()
    cached = getattr(cu_seqlens, _VARLEN_ATTR, None) if cache else None
    if cached is not None and cached[0] == key:
        return cached[1]
    cu = cu_seqlens.to(device=device, dtype=torch.long)
    lens = cu[1:] - cu[:-1]
    mask = torch.arange(max_seqlen, device=device)[None, :] < lens[:, None]
    res = mask, mask.flatten().nonzero().flatten()
    if cache:
        setattr(cu_seqlens, _VARLEN_ATTR, (key, res))
    return res


def _varlen_reference(q, k, v, cu_seqlens, max_seqlen, is_causal, dropout_p, scale):
    """Pad to (B, H, max_seqlen, D), run the reference, pack again."""
    mask, indices = _varlen_layout(cu_seqlens, max_seqlen, q.device)
    b = mask.shape[0]
    if indices.numel() != q.shape[0]:
        raise ValueError(
            f"varlen_attention: cu_seqlens sums to {indices.numel()} tokens but q has {q.shape[0]}"
        )
    # One zeros + one index_copy for q, k and v together (and one index_select for their grads).
    if q.shape == k.shape == v.shape and q.dtype == k.dtype == v.dtype:
        qkv = pad_input(torch.stack((q, k, v), 1), indices, b, max_seqlen)  # (B, S, 3, H, D)
        qp, kp, vp = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    else:
        qp, kp, vp = (pad_input(x, indices, b, max_seqlen).transpose(1, 2) for x in (q, k, v))
    out = reference_attention(qp, kp, vp, attention_mask=mask, is_causal=is_causal, dropout_p=dropout_p,
                              scale=scale)  # fmt: skip
    return out.transpose(1, 2).reshape(b * max_seqlen, *q.shape[1:]).index_select(0, indices)
