"""Patch component: route a HF model's attention through fastft's kernel (AttentionInterface "fastft").

Two transformers hooks, both public registries that HF's own backends use:

* ``AttentionMaskInterface.register("fastft", fastft_mask)``: for the plain causal / bidirectional
  patterns (no KV-cache offset, no packing or sliding-window overlay) the model's mask builder hands
  the attention layers the **(B, S) key-padding mask** (or None when nothing is padded) instead of a
  4D S x S mask. Anything else gets exactly what HF's sdpa would get (``sdpa_mask``).
* ``AttentionInterface.register("fastft", fastft_attention_forward)``: runs
  :func:`fastft.functional.scaled_dot_product_attention` on the (B, S) mask, taking causality from
  the module like HF's sdpa does. What the kernel cannot express (a 4D/custom mask, cached decoding,
  head masks, attention-weight outputs, position bias, soft-capping, sliding windows, sinks) goes to
  HF's own ``sdpa_attention_forward`` with the reason logged once.

On the Triton path a padded batch is **unpadded**: the real tokens' q/k/v are packed once per layer
(the indices are computed once per forward, cached on the mask tensor), attention runs varlen, and
the result is scattered back. Padded query rows then get output 0 (they attend to nothing); real
tokens' outputs are the same as with HF's sdpa (padding keys are masked there too).

``apply(model, family)`` switches *this instance*: the model gets a private copy of its config
(shared configs would otherwise leak the switch into other instances) with
``_attn_implementation = "fastft"``; undo puts the original config object back. Config edits made while
patched stay on the copy and are dropped by undo.
"""

from __future__ import annotations

import copy
import logging
import os
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fastft._backend import log_once, use_triton
from fastft.ops.attention import (
    _unsupported,
    pad_input,
    scaled_dot_product_attention,
    unpad_indices,
    varlen_attention,
)

__all__ = ["NAME", "register", "apply", "fastft_attention_forward", "fastft_mask"]

log = logging.getLogger("fastft")
NAME = "fastft"
#: Unpad padded batches into varlen attention on the Triton path (``FASTFT_ATTN_UNPAD=0`` disables).
UNPAD = os.environ.get("FASTFT_ATTN_UNPAD", "1") != "0"
_registered = False


def _fallback(reason: str) -> None:
    log_once("attention", f"HF attention falls back to torch SDPA: {reason}")


# ----------------------------------------------------------------------------------------------------------
# mask hook
# ----------------------------------------------------------------------------------------------------------
def fastft_mask(*args: Any, **kwargs: Any) -> torch.Tensor | None:
    """AttentionMaskInterface entry: the (B, S) bool mask (None if nothing is padded) for plain patterns.

    Called by ``create_causal_mask`` / ``create_bidirectional_mask`` with keyword arguments
    (batch_size, q_length, kv_length, q_offset, kv_offset, mask_function, attention_mask, ...). Every other
    case returns what HF's ``sdpa_mask`` returns, which the attention function then hands to torch SDPA.
    """
    from transformers import masking_utils as mu

    reason = _mask_reason(args, kwargs, mu)
    if reason is not None:
        _fallback(reason)
        return mu.sdpa_mask(*args, **kwargs)
    mask = kwargs.get("attention_mask")
    if mask is None:
        return None
    mask = mask[:, -kwargs["kv_length"] :].to(torch.bool)
    # Same host check as HF's flash-attention mask: no padding -> no mask (the kernel's fast path).
    return None if bool(mask.all()) else mask


def _mask_reason(args, kwargs, mu) -> str | None:
    if args:
        return "mask builder called with positional arguments (unknown transformers version)"
    plain = tuple(getattr(mu, n, None) for n in ("causal_mask_function", "bidirectional_mask_function"))
    if kwargs.get("mask_function") not in plain:
        return "mask with a custom/packed/sliding-window pattern"
    cfg = kwargs.get("config")
    if cfg is not None and getattr(cfg, "is_causal", None) is False:
        return "decoder run bidirectionally (config.is_causal=False)"
    kv_len = kwargs.get("kv_length")
    q_len = kwargs.get("q_length")
    if q_len is None and kwargs.get("cache_position") is not None:
        q_len = kwargs["cache_position"].shape[0]
    if q_len is None or kv_len is None or q_len != kv_len:
        return "query and key lengths differ (KV cache)"
    if int(kwargs.get("q_offset", 0) or 0) != 0 or int(kwargs.get("kv_offset", 0) or 0) != 0:
        return "mask with a cache offset"
    m = kwargs.get("attention_mask")
    if m is not None and (not isinstance(m, torch.Tensor) or m.dim() != 2 or m.shape[-1] < kv_len):
        return "attention mask that is not a (B, S) padding mask"
    return None


# ----------------------------------------------------------------------------------------------------------
# attention hook
# ----------------------------------------------------------------------------------------------------------
_unpad_cache: tuple[Any, int, tuple] | None = None


def _cached_unpad(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """unpad_indices(mask), computed once per mask tensor (all layers of one forward share it)."""
    global _unpad_cache
    c = _unpad_cache
    if c is not None and c[0]() is mask and c[1] == mask._version:
        return c[2]
    res = unpad_indices(mask)
    _unpad_cache = (weakref.ref(mask), mask._version, res)
    return res


def _feature_reason(kwargs: dict) -> str | None:
    if kwargs.get("output_attentions"):
        return "output_attentions=True"
    for key in ("head_mask", "position_bias", "softcap", "sliding_window", "s_aux", "sinks"):
        if kwargs.get(key) is not None:
            return f"{key} is not supported by the kernel"
    return None


def _to_sdpa_mask(mask: torch.Tensor, sq: int, is_causal: bool) -> torch.Tensor:
    """The (B, S) mask as the 4D bool mask HF's sdpa expects (only on the fallback path)."""
    keep = mask.bool()[:, None, None, :]
    if is_causal:
        keep = keep & torch.ones(sq, mask.shape[-1], dtype=torch.bool, device=mask.device).tril()
    return keep


def fastft_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """AttentionInterface entry: query (B, H, Sq, D), key/value (B, Hkv, Sk, D) -> ((B, Sq, H, D), None)."""
    is_causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", True))
    sq, sk = query.shape[2], key.shape[2]
    reason = _feature_reason(kwargs)
    if reason is None and attention_mask is not None and attention_mask.dim() != 2:
        reason = "a 4D/custom attention mask"
    if reason is None and is_causal and sq != sk:
        reason = "causal attention with a KV cache (query and key lengths differ)"
    if reason is not None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        _fallback(reason)
        if attention_mask is not None and attention_mask.dim() == 2:
            attention_mask = _to_sdpa_mask(attention_mask, sq, is_causal)
        return sdpa_attention_forward(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            is_causal=is_causal,
            **kwargs,
        )
    if attention_mask is not None and UNPAD and sq == sk:
        unsupported = _unsupported(query, is_causal, sq, sk, True)
        # Probe the dispatcher without logging twice: the varlen call below asks it again.
        if unsupported is None and use_triton("attention", query, unsupported=None):
            return _unpadded_attention(query, key, value, attention_mask, dropout, scaling, is_causal), None
    out = scaled_dot_product_attention(
        query,
        key,
        value,
        attention_mask=attention_mask,
        is_causal=is_causal,
        dropout_p=dropout,
        scale=scaling,
    )
    return out.transpose(1, 2).contiguous(), None


def _unpadded_attention(query, key, value, mask, dropout, scaling, is_causal) -> torch.Tensor:
    b, h, s, d = query.shape
    indices, cu_seqlens, max_seqlen = _cached_unpad(mask)
    pack = lambda x: x.transpose(1, 2).reshape(b * s, x.shape[1], d).index_select(0, indices)
    out = varlen_attention(
        pack(query), pack(key), pack(value), cu_seqlens, max_seqlen, is_causal=is_causal, dropout_p=dropout,
        scale=scaling,
    )  # fmt: skip
    return pad_input(out, indices, b, s)


# ----------------------------------------------------------------------------------------------------------
# registration + component
# ----------------------------------------------------------------------------------------------------------
def register() -> None:
    """Register "fastft" with transformers' AttentionInterface and AttentionMaskInterface (idempotent).

    After this, ``from_pretrained(..., attn_implementation="fastft")`` also works.
    """
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, fastft_attention_forward)
    AttentionMaskInterface.register(NAME, fastft_mask)
    _registered = True


def apply(model: nn.Module, family) -> Callable[[], None] | None:
    """Switch this model instance to attention "fastft"; returns the undo callable (None if not applicable)."""
    if family is not None and not family.attention_interface:
        return None
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(model, "set_attn_implementation"):
        log.info(
            "fastft.patch: %s has no HF attention interface; attention not patched", type(model).__name__
        )
        return None
    register()
    owners = [m for m in model.modules() if hasattr(getattr(m, "config", None), "_attn_implementation")]
    configs = {id(m.config) for m in owners}
    if len(configs) == 1:
        # A private copy: the switch cannot reach other instances built from the same config object.
        private = copy.deepcopy(cfg)
        for m in owners:
            m.config = private
        model.set_attn_implementation(NAME)
        if model.config._attn_implementation != NAME:
            for m in owners:
                m.config = cfg
            log.warning("fastft.patch: %s refused attn_implementation=%r", type(model).__name__, NAME)
            return None

        def undo() -> None:
            for m in owners:
                m.config = cfg

        return undo
    # Composite model (several configs): switch in place and switch back on undo.
    prev = cfg._attn_implementation
    model.set_attn_implementation(NAME)
    if model.config._attn_implementation != NAME:
        return None
    return lambda: model.set_attn_implementation(prev)
