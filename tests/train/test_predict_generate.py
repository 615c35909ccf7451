"""`fastft predict` on a causal LM generates: one continuation per prompt row, as JSONL, through
transformers' ``generate`` with the CLI's generation flags (tiny random GPT-2 and Llama)."""

from __future__ import annotations

import json

import pytest
import torch

from fastft.cli import main
from tests.models import build, tiny_gpt2_config, tiny_llama_config
from tests.train.trainutil import _save_gpt2_tokenizer, sentences, write_csv


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def lm(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    tok = _save_gpt2_tokenizer(str(d))
    conf = (
        tiny_gpt2_config() if request.param == "gpt2" else tiny_llama_config(eos_token_id=0, bos_token_id=0)
    )
    model = build("AutoModelForCausalLM", conf, seed=1)
    model.save_pretrained(str(d))
    rows = [[t] for t, _, _ in sentences(5, seed=3)]
    return {
        "dir": str(d),
        "tok": tok,
        "prompts": [r[0] for r in rows],
        "file": write_csv(str(d / "p.csv"), ["text"], rows),
    }


def _predict(lm, out, *flags):
    assert (
        main(
            [
                "predict",
                "--model",
                lm["dir"],
                "--file",
                lm["file"],
                "--output",
                str(out),
                "--batch-size",
                "2",
                *flags,
            ]
        )
        == 0
    )
    return [json.loads(line) for line in open(out, encoding="utf-8")]


def test_greedy_continuations_match_generate(lm, tmp_path):
    recs = _predict(lm, tmp_path / "p.jsonl", "--max-new-tokens", "5")
    assert [r["text"] for r in recs] == lm["prompts"]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(lm["dir"]).eval()
    tok = lm["tok"]
    for r in recs:
        enc = tok(r["text"], return_tensors="pt")
        with torch.no_grad():
            ref = model.generate(**enc, max_new_tokens=5, do_sample=False, pad_token_id=tok.eos_token_id)
        want = tok.decode(ref[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        assert r["continuation"] == want
    assert any(r["continuation"] for r in recs)


def test_flags_reach_generate(lm, tmp_path):
    a = _predict(lm, tmp_path / "a.jsonl", "--max-new-tokens", "1")
    b = _predict(lm, tmp_path / "b.jsonl", "--max-new-tokens", "6", "--num-beams", "2")
    assert all(len(x["continuation"].split()) <= 1 for x in a)
    assert any(len(y["continuation"].split()) > 1 for y in b)
    c = _predict(lm, tmp_path / "c.jsonl", "--max-new-tokens", "6", "--temperature", "1.5", "--top-p", "0.9")
    assert len(c) == len(lm["prompts"])


def test_bad_generation_flag_is_one_line(lm, tmp_path, capsys):
    rc = main(
        [
            "predict",
            "--model",
            lm["dir"],
            "--file",
            lm["file"],
            "--output",
            str(tmp_path / "x"),
            "--top-p",
            "0",
        ]
    )
    assert rc == 2
    assert "--top-p" in capsys.readouterr().err
