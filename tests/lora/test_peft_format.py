"""Adapters round-trip with the real ``peft`` library in both directions (same outputs)."""

import json
import os

import pytest
import torch

import fastft
from fastft.lora import lora_layers
from tests.compare import assert_close
from tests.models import build, tiny_bert_config, tiny_gpt2_config

peft = pytest.importorskip("peft")

CASES = {
    "bert-seqcls": ("AutoModelForSequenceClassification", lambda: tiny_bert_config(num_labels=3), "SEQ_CLS"),
    "gpt2-seqcls": ("AutoModelForSequenceClassification", lambda: tiny_gpt2_config(num_labels=2), "SEQ_CLS"),
    "gpt2-lm": ("AutoModelForCausalLM", tiny_gpt2_config, "CAUSAL_LM"),
}


def _model(case):
    cls, cfg, _ = CASES[case]
    return build(cls, cfg(), seed=0).eval()


def _ids():
    return torch.randint(3, 128, (2, 10), generator=torch.Generator().manual_seed(5))


def _logits(m, ids):
    with torch.no_grad():
        return m(input_ids=ids).logits


def _head(m):
    return getattr(m, "classifier", None) or getattr(m, "score", None)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("rslora", [False, True])
def test_fastft_adapter_loads_in_peft(case, rslora, tmp_path):
    m = _model(case)
    fastft.add_lora(m, r=4, alpha=8, dropout=0.1, use_rslora=rslora)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for layer in lora_layers(m).values():
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * 0.3)
        if "seqcls" in case:
            _head(m).weight.add_(torch.randn(_head(m).weight.shape, generator=g))
    m.eval()
    ids = _logits_ids = _ids()
    ours = _logits(m, ids)
    fastft.save_adapter(m, tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["use_rslora"] == rslora
    assert cfg["task_type"] == CASES[case][2]
    pm = peft.PeftModel.from_pretrained(_model(case), str(tmp_path)).eval()
    # every adapter tensor was consumed by PEFT (no silently re-initialised layer)
    n_peft = sum(1 for n, _ in pm.named_parameters() if "lora_" in n)
    assert n_peft == 2 * len(lora_layers(m))
    assert_close(_logits(pm, _logits_ids), ours, torch.float32, name="peft vs fastft")


@pytest.mark.parametrize("case", list(CASES))
def test_peft_adapter_loads_in_fastft(case, tmp_path):
    _, _, task = CASES[case]
    base = _model(case)
    targets = ["query", "value", "dense"] if case.startswith("bert") else ["c_attn", "c_fc"]
    pm = peft.get_peft_model(
        base,
        peft.LoraConfig(
            task_type=task,
            r=6,
            lora_alpha=12,
            target_modules=targets,
            init_lora_weights=False,  # random B: a non-trivial adapter
            rank_pattern={"c_fc": 3} if "gpt2" in case else {},
        ),
    )
    if "seqcls" in case:
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if "modules_to_save" in n:
                    p.add_(1.0)
    pm.eval()
    ids = _ids()
    ref = _logits(pm, ids)
    pm.save_pretrained(str(tmp_path))

    m = _model(case)
    fastft.load_adapter(m, tmp_path)
    assert_close(_logits(m, ids), ref, torch.float32, name="fastft vs peft")
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert all("lora_" in n or n.split(".")[0] in ("classifier", "score") for n in trainable)
    # and back out again: fastft's save of the loaded adapter is equivalent for peft
    out = tmp_path / "again"
    fastft.save_adapter(m, out)
    pm2 = peft.PeftModel.from_pretrained(_model(case), str(out)).eval()
    assert_close(_logits(pm2, ids), ref, torch.float32, name="peft -> fastft -> peft")


def test_load_into_existing_lora_and_errors(tmp_path):
    src = _model("bert-seqcls")
    fastft.add_lora(src, r=4, alpha=8)
    with torch.no_grad():
        for layer in lora_layers(src).values():
            layer.lora_B.weight.normal_()
    fastft.save_adapter(src, tmp_path)
    dst = _model("bert-seqcls")
    fastft.add_lora(dst, r=4, alpha=8)
    fastft.load_adapter(dst, tmp_path)
    ids = _ids()
    assert_close(_logits(dst, ids), _logits(src.eval(), ids), torch.float32)

    other = _model("bert-seqcls")
    fastft.add_lora(other, r=4, target_modules=["query"])
    with pytest.raises(ValueError, match="remove_lora"):
        fastft.load_adapter(other, tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    cfg["use_dora"] = True
    (tmp_path / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="use_dora"):
        fastft.load_adapter(_model("bert-seqcls"), tmp_path)
    os.remove(tmp_path / "adapter_model.safetensors")
    with pytest.raises(FileNotFoundError, match="safetensors"):
        fastft.load_adapter(_model("bert-seqcls"), tmp_path)


def test_save_while_merged_and_state_dict_keys(tmp_path):
    m = _model("gpt2-seqcls")
    fastft.add_lora(m, r=4, alpha=8)
    with torch.no_grad():
        for layer in lora_layers(m).values():
            layer.lora_B.weight.normal_(0, 0.2)
    ids = _ids()
    ref = _logits(m.eval(), ids)
    before = fastft.lora.adapter_state_dict(m)
    fastft.merge_lora(m)
    fastft.save_adapter(m, tmp_path)  # the parked adapter is still saved, with PEFT's keys
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert sorted(saved) == sorted(before)
    assert all(k.startswith("base_model.model.") for k in saved)
    assert all(torch.equal(saved[k], before[k]) for k in saved)
    pm = peft.PeftModel.from_pretrained(_model("gpt2-seqcls"), str(tmp_path)).eval()
    assert_close(_logits(pm, ids), ref, torch.float32)
    with pytest.raises(ValueError, match="unmerge_lora"):
        fastft.load_adapter(m, tmp_path)


def _peft_load_messages(model, path, caplog) -> list[str]:
    """Every warning (``warnings`` and logging) ``PeftModel.from_pretrained`` emits, and the loaded model."""
    import logging
    import warnings

    with warnings.catch_warnings(record=True) as w, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        pm = peft.PeftModel.from_pretrained(model, str(path))
    msgs = [str(x.message) for x in w] + [
        r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
    ]
    return msgs, pm.eval()


@pytest.mark.parametrize("case", ["bert-seqcls", "gpt2-lm"])
def test_peft_loads_fastft_adapter_without_warnings(case, tmp_path, caplog):
    """fastft's metadata lives in a sidecar: PEFT's file holds only LoraConfig fields, so no
    "Unexpected keyword arguments ['fastft']" warning (the old ``"fastft": true`` key caused one)."""
    import dataclasses

    m = _model(case)
    fastft.add_lora(m, r=4, alpha=8)
    fastft.save_adapter(m, tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    fields = {f.name for f in dataclasses.fields(peft.LoraConfig)}
    assert set(cfg) <= fields, sorted(set(cfg) - fields)
    side = json.loads((tmp_path / fastft.lora.peft_format.SIDECAR_NAME).read_text())
    assert side["saved_by"] == "fastft" and sorted(side["lora_modules"]) == sorted(lora_layers(m))
    msgs, _ = _peft_load_messages(_model(case), tmp_path, caplog)
    assert not [s for s in msgs if "Unexpected keyword" in s or "fastft" in s], msgs


def test_adapter_from_older_fastft_with_marker_key_still_loads(tmp_path, caplog):
    src = _model("bert-seqcls")
    fastft.add_lora(src, r=4, alpha=8)
    with torch.no_grad():
        for layer in lora_layers(src).values():
            layer.lora_B.weight.normal_()
    fastft.save_adapter(src, tmp_path)
    # what older fastft wrote: the marker inside adapter_config.json, no sidecar
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps({**cfg, "fastft": True}))
    os.remove(tmp_path / fastft.lora.peft_format.SIDECAR_NAME)
    ids = _ids()
    dst = fastft.load_adapter(_model("bert-seqcls"), tmp_path)
    assert_close(_logits(dst.eval(), ids), _logits(src.eval(), ids), torch.float32)
    # the warning the sidecar avoids is real: PEFT still complains about such an old file
    msgs, pm = _peft_load_messages(_model("bert-seqcls"), tmp_path, caplog)
    assert any("Unexpected keyword arguments ['fastft']" in s for s in msgs), msgs
    assert_close(_logits(pm, ids), _logits(src, ids), torch.float32)
