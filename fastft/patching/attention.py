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

Unpadding, at two levels (real tokens' results are the same as HF's sdpa; padding positions are not
part of the contract -- their hidden states become 0 instead of HF's values):

* **model level** (BERT and GPT-2 families; ``FASTFT_UNPAD_MODEL=0`` disables): a pre-hook on the first
  block packs the hidden states of a padded batch to (1, T, D) real tokens once per forward, every block
  (attention, MLP, LayerNorm) then runs on real tokens only, the attention runs varlen on the packed
  q/k/v, and a hook on the last block scatters the result back to (B, S, D) for the pooler/heads.
  Skipped while a KV cache is used for generation (eval mode), and on the torch attention path (CPU) for
  batches padded less than ``TORCH_PACK_MIN_PAD`` (15%): there each layer would pad q/k/v back for SDPA,
  which costs more than the few padded tokens' GEMMs, so such batches run padded with HF sdpa's mask.
  Intermediate ``hidden_states`` captured by ``output_hidden_states=True`` are then packed (1, T, D) too.
* **attention level** (any family, Triton path; ``FASTFT_ATTN_UNPAD=0`` disables): a padded batch's
  q/k/v are packed per layer, attention runs varlen, the output is scattered back.

Host syncs: the unpadding indices (and varlen's ``max_seqlen``, a launch-grid size the host must know)
are computed once per mask tensor and kept on it: **one host sync per forward**, none per layer. On a
GPU the mask builder does not test "is anything padded?" (that would be a second sync); the unpadding
finds out for free and drops a mask without padding. Without unpadding (``FASTFT_ATTN_UNPAD=0``,
``FASTFT_UNPAD_MODEL=0``) the kernel reads the (B, S) mask directly and nothing syncs.

``apply(model, family)`` switches *this instance*: the model gets a private copy of its config
(shared configs would otherwise leak the switch into other instances) with
``_attn_implementation = "fastft"``; undo puts the original config object back. Config edits made while
patched stay on the copy and are dropped by undo.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fastft._backend import log_once, use_triton
from fastft.ops.attention import (
    _unsupported,
    _unsupported_kernel,
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
    if mask.device.type == "cpu":
        # No padding -> no mask (SDPA's unmasked fast path); free on CPU. On a GPU this check would
        # be a host sync per forward: the mask stays, and the unpadding (which syncs once anyway)
        # finds a batch without padding and drops it (see _unpad_state / _known_dense).
        return None if bool(mask.all()) else mask
    return mask


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
_STATE_ATTR = "_fastft_unpad_state"
#: set on the modules of a model whose family ``reads_padding``: no attention-level unpadding.
_READS_PADDING = "_fastft_reads_padding"


def _unpad_state(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """unpad_indices(mask) -> (indices, cu_seqlens, max_seqlen), computed once per mask tensor.

    Every layer of one forward (and a gradient-checkpointing recompute) gets the same mask object, so
    the state lives on the mask itself (invalidated if the mask is modified in place).
    """
    st = getattr(mask, _STATE_ATTR, None)
    if st is not None and st[0] == mask._version:
        return st[1]
    res = unpad_indices(mask)
    setattr(mask, _STATE_ATTR, (mask._version, res))
    return res


def _known_dense(mask: torch.Tensor) -> bool:
    """True when this mask's unpadding state is already computed and it has no padding (no sync)."""
    st = getattr(mask, _STATE_ATTR, None)
    return st is not None and st[0] == mask._version and st[1][0].numel() == mask.numel()


def _is_packed(hidden: torch.Tensor, mask: torch.Tensor) -> bool:
    """True when ``hidden`` (1, T, ...) holds the T real tokens of the (B, S) ``mask`` (model-level unpadding)."""
    if hidden.shape[0] != 1 or mask.dim() != 2 or getattr(mask, _STATE_ATTR, None) is None:
        return False
    total = _unpad_state(mask)[0].numel()
    return hidden.shape[1] == total and tuple(mask.shape) != (1, total)


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
    if (
        attention_mask is not None
        and attention_mask.dim() == 2
        and _is_packed(query.transpose(1, 2), attention_mask)
    ):
        # The whole block stack runs unpadded (model-level unpadding): q/k/v are (1, H, T, D).
        if reason is not None:
            raise RuntimeError(
                f"fastft attention: {reason} needs padded batches; set FASTFT_UNPAD_MODEL=0 before fastft.patch"
            )
        _, cu_seqlens, max_seqlen = _unpad_state(attention_mask)
        out = varlen_attention(
            query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1), cu_seqlens, max_seqlen,
            is_causal=is_causal, dropout_p=dropout, scale=scaling,
        )  # fmt: skip
        return out[None], None
    if attention_mask is not None and attention_mask.dim() == 2 and _known_dense(attention_mask):
        attention_mask = None
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
    if attention_mask is not None and UNPAD and sq == sk and not module.__dict__.get(_READS_PADDING, False):
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
    indices, cu_seqlens, max_seqlen = _unpad_state(mask)
    if indices.numel() == b * s:  # no padding after all: the plain kernel, no pack/scatter
        out = scaled_dot_product_attention(
            query, key, value, is_causal=is_causal, dropout_p=dropout, scale=scaling
        )
        return out.transpose(1, 2).contiguous()
    pack = lambda x: x.transpose(1, 2).reshape(b * s, x.shape[1], d).index_select(0, indices)
    out = varlen_attention(
        pack(query), pack(key), pack(value), cu_seqlens, max_seqlen, is_causal=is_causal, dropout_p=dropout,
        scale=scaling,
    )  # fmt: skip
    return pad_input(out, indices, b, s)


# ----------------------------------------------------------------------------------------------------------
# model-level unpadding (BERT / GPT-2 block stacks)
# ----------------------------------------------------------------------------------------------------------
#: Run the transformer blocks of BERT/GPT-2 on the real tokens only (``FASTFT_UNPAD_MODEL=0`` disables).
UNPAD_MODEL = os.environ.get("FASTFT_UNPAD_MODEL", "1") != "0"
_UNPAD_FAMILIES = (
    "bert",
    "gpt2",
)  # blocks are position-free given the mask; Llama's rotary tables are (B, S)


def _block_inputs(args: tuple, kwargs: dict) -> tuple[torch.Tensor | None, torch.Tensor | None, bool]:
    """(hidden_states, the (B, S)-shaped 2D bool padding mask among the block's inputs, a KV cache is present)."""
    hidden = args[0] if args else kwargs.get("hidden_states")
    mask = None
    cache = False
    for a in (*args[1:], *kwargs.values()):
        if isinstance(a, torch.Tensor):
            if a.dtype == torch.bool and a.dim() == 2 and mask is None:
                mask = a
        elif a is not None and type(a).__name__.endswith("Cache"):
            cache = True
    return hidden, mask, cache


#: On the torch attention path, pack only batches with at least this fraction of padding: each layer
#: then pads q/k/v back for SDPA and packs its output again, which costs more than the padded
#: tokens' GEMMs when a batch is lightly padded (length-grouped batches pad ~2-5%).
TORCH_PACK_MIN_PAD = 0.15


def _attention_uses_kernel(hidden: torch.Tensor, head_dim: int) -> bool:
    """Will this model's attention take the Triton path for these hidden states? (logs like the op would)"""
    dtype = hidden.dtype
    if torch.is_autocast_enabled(hidden.device.type):
        dtype = torch.get_autocast_dtype(hidden.device.type)
    return use_triton("attention", hidden, unsupported=_unsupported_kernel(dtype, head_dim, hidden.is_cuda))


def _pack_pre_hook(module: nn.Module, args: tuple, kwargs: dict, head_dim: int = 0):
    """First block: (B, S, D) hidden states -> (1, T, D) real tokens (the mask stays, for the attention)."""
    hidden, mask, cache = _block_inputs(args, kwargs)
    if hidden is None or mask is None or hidden.dim() != 3 or tuple(mask.shape) != tuple(hidden.shape[:2]):
        return None
    if cache and not module.training:
        return None  # a KV cache for generation must keep the padded layout
    b, s, d = hidden.shape
    indices, _, _ = _unpad_state(mask)
    if indices.numel() == b * s:
        return None  # nothing is padded: run the blocks as they are (the attention drops the mask)
    if indices.numel() > (1.0 - TORCH_PACK_MIN_PAD) * b * s and not _attention_uses_kernel(hidden, head_dim):
        return None  # lightly padded on the torch path: padded blocks + HF's masked SDPA are cheaper
    packed = hidden.reshape(b * s, d).index_select(0, indices)[None]
    if args:
        return (packed, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": packed}


def _unpack_hook(module: nn.Module, args: tuple, kwargs: dict, output):
    """Last block: (1, T, D) -> (B, S, D) with zeros at padding, for whatever follows the blocks."""
    hidden, mask, _ = _block_inputs(args, kwargs)
    out = output[0] if isinstance(output, tuple) else output
    if mask is None or not isinstance(out, torch.Tensor) or out.dim() != 3 or not _is_packed(out, mask):
        return None
    indices, _, _ = _unpad_state(mask)
    padded = pad_input(out[0], indices, mask.shape[0], mask.shape[1])
    return (padded, *output[1:]) if isinstance(output, tuple) else padded


def _install_unpadding(model: nn.Module, family) -> Callable[[], None] | None:
    if not UNPAD_MODEL or family is None or family.name not in _UNPAD_FAMILIES:
        return None
    from fastft.nn.families import blocks

    try:
        layers = blocks(model, family)
    except ValueError:
        return None
    if not layers:
        return None
    cfg = model.config
    heads = getattr(cfg, "num_attention_heads", None)
    head_dim = getattr(cfg, "hidden_size", 0) // heads if heads else 0
    handles = [
        layers[0].register_forward_pre_hook(
            functools.partial(_pack_pre_hook, head_dim=head_dim), with_kwargs=True
        ),
        layers[-1].register_forward_hook(_unpack_hook, with_kwargs=True),
    ]
    return lambda: [h.remove() for h in handles]


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
    """Switch this model instance to attention "fastft" (and, for BERT/GPT-2, run its blocks unpadded).

    Returns the undo callable, or None if nothing was changed.
    """
    if family is not None and not family.attention_interface:
        return None
    undo_switch = _switch(model)
    if undo_switch is None:
        return None
    undo_unpad = _install_unpadding(model, family)
    marked = list(model.modules()) if family is not None and family.reads_padding else []
    for m in marked:  # see Family.reads_padding: the attention keeps every query row
        m.__dict__[_READS_PADDING] = True

    def undo() -> None:
        for m in marked:
            m.__dict__.pop(_READS_PADDING, None)
        if undo_unpad is not None:
            undo_unpad()
        undo_switch()

    return undo


def _switch(model: nn.Module) -> Callable[[], None] | None:
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
