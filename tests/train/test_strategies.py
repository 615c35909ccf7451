"""Fine-tuning strategies: the exact trainable-parameter set of each, LLRD learning rates, no-decay groups,
and gradual unfreezing inside a real training run."""

from __future__ import annotations

import os

import pytest
import torch

from fastft.train import strategies as strat
from tests.models import build, tiny_bert_config, tiny_gpt2_config

BERT_LAYER = [
    "attention.self.query.weight",
    "attention.self.query.bias",
    "attention.self.key.weight",
    "attention.self.key.bias",
    "attention.self.value.weight",
    "attention.self.value.bias",
    "attention.output.dense.weight",
    "attention.output.dense.bias",
    "attention.output.LayerNorm.weight",
    "attention.output.LayerNorm.bias",
    "intermediate.dense.weight",
    "intermediate.dense.bias",
    "output.dense.weight",
    "output.dense.bias",
    "output.LayerNorm.weight",
    "output.LayerNorm.bias",
]
BERT_EMB = [
    "bert.embeddings.word_embeddings.weight",
    "bert.embeddings.position_embeddings.weight",
    "bert.embeddings.token_type_embeddings.weight",
    "bert.embeddings.LayerNorm.weight",
    "bert.embeddings.LayerNorm.bias",
]
BERT_POOLER = ["bert.pooler.dense.weight", "bert.pooler.dense.bias"]
BERT_HEAD = ["classifier.weight", "classifier.bias"]
GPT2_LAYER = [
    "ln_1.weight",
    "ln_1.bias",
    "attn.c_attn.weight",
    "attn.c_attn.bias",
    "attn.c_proj.weight",
    "attn.c_proj.bias",
    "ln_2.weight",
    "ln_2.bias",
    "mlp.c_fc.weight",
    "mlp.c_fc.bias",
    "mlp.c_proj.weight",
    "mlp.c_proj.bias",
]


def bert_layer(i):
    return [f"bert.encoder.layer.{i}.{n}" for n in BERT_LAYER]


def gpt2_layer(i):
    return [f"transformer.h.{i}.{n}" for n in GPT2_LAYER]


@pytest.fixture
def bert():
    return build("AutoModelForSequenceClassification", tiny_bert_config(num_labels=3, num_hidden_layers=3))


@pytest.fixture
def gpt2():
    return build("AutoModelForSequenceClassification", tiny_gpt2_config(num_labels=2, n_layer=3))


def trainable(model):
    return set(strat.trainable_names(model))


def test_names_are_complete(bert, gpt2):
    """The expected lists above are the models' full parameter lists (so the sets below are exact)."""
    assert {n for n, _ in bert.named_parameters()} == set(
        BERT_EMB + bert_layer(0) + bert_layer(1) + bert_layer(2) + BERT_POOLER + BERT_HEAD
    )
    assert {n for n, _ in gpt2.named_parameters()} == set(
        [
            "transformer.wte.weight",
            "transformer.wpe.weight",
            "transformer.ln_f.weight",
            "transformer.ln_f.bias",
            "score.weight",
        ]
        + gpt2_layer(0)
        + gpt2_layer(1)
        + gpt2_layer(2)
    )


def test_full(bert):
    assert trainable(bert) == {n for n, _ in bert.named_parameters()}


@pytest.mark.parametrize("n", [0, 1, 3])
def test_freeze_embeddings_and_first_n(bert, n):
    strat.apply_freeze(bert, n)
    frozen = set(BERT_EMB) | {p for i in range(n) for p in bert_layer(i)}
    assert trainable(bert) == {name for name, _ in bert.named_parameters()} - frozen


def test_freeze_gpt2(gpt2):
    strat.apply_freeze(gpt2, 2)
    assert trainable(gpt2) == set(gpt2_layer(2)) | {
        "transformer.ln_f.weight",
        "transformer.ln_f.bias",
        "score.weight",
    }


def test_freeze_too_many_layers(bert):
    with pytest.raises(ValueError, match="at most 3"):
        strat.apply_freeze(bert, 4)


def test_head_only(bert, gpt2):
    strat.apply_head_only(bert)
    assert trainable(bert) == set(BERT_HEAD)
    strat.apply_head_only(gpt2)
    assert trainable(gpt2) == {"score.weight"}


def test_gradual_groups_top_down(bert):
    groups = strat.layer_groups(bert)
    assert [set(g) for g in groups] == [
        set(BERT_HEAD),
        set(BERT_POOLER + bert_layer(2)),
        set(bert_layer(1)),
        set(bert_layer(0)),
        set(BERT_EMB),
    ]
    expected = set()
    for k in range(1, len(groups) + 1):
        strat.apply_gradual(bert, k)
        expected |= set(groups[k - 1])
        assert trainable(bert) == expected
    # frozen-by-freeze-N parameters stay frozen whatever the stage
    strat.apply_gradual(bert, len(groups), already_frozen=BERT_EMB)
    assert trainable(bert) == expected - set(BERT_EMB)


def test_gradual_schedule():
    # per epoch: 1 group in epoch 0, 2 in epoch 1, ... capped at the number of groups
    assert [strat.gradual_groups_unfrozen(0, e, 0, 4) for e in range(6)] == [1, 2, 3, 4, 4, 4]
    # every K=3 steps
    assert [strat.gradual_groups_unfrozen(s, 0, 3, 4) for s in range(0, 13, 3)] == [1, 2, 3, 4, 4]
    assert strat.gradual_groups_unfrozen(2, 0, 3, 4) == 1


def test_lora_trainable_set(bert):
    import fastft

    fastft.add_lora(bert, r=4, alpha=8)
    names = trainable(bert)
    lora = {n for n in names if ".lora_A." in n or ".lora_B." in n}
    assert names == lora | set(BERT_HEAD)
    # one A and one B per targeted Linear: query/key/value/dense in every layer (+ the pooler's dense)
    per_layer = [
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    ]
    targets = [f"bert.encoder.layer.{i}.{m}" for i in range(3) for m in per_layer] + ["bert.pooler.dense"]
    assert lora == {f"{t}.lora_{x}.weight" for t in targets for x in "AB"}


def test_llrd_learning_rates(bert):
    groups = strat.param_groups(bert, lr=1.0, weight_decay=0.1, layer_lr_decay=0.5)
    lr_of = {n: g["lr"] for g in groups for n in g["param_names"]}
    for n in BERT_HEAD:
        assert lr_of[n] == 1.0
    for n in BERT_POOLER + bert_layer(2):
        assert lr_of[n] == 0.5
    for n in bert_layer(1):
        assert lr_of[n] == 0.25
    for n in bert_layer(0):
        assert lr_of[n] == 0.125
    for n in BERT_EMB:
        assert lr_of[n] == 0.0625
    # every parameter exactly once
    all_names = [n for g in groups for n in g["param_names"]]
    assert sorted(all_names) == sorted(n for n, _ in bert.named_parameters())


def test_no_weight_decay_on_bias_and_layernorm(bert, gpt2):
    for model in (bert, gpt2):
        groups = strat.param_groups(model, lr=1e-3, weight_decay=0.1)
        wd_of = {n: g["weight_decay"] for g in groups for n in g["param_names"]}
        for n, wd in wd_of.items():
            if n.endswith("bias") or "LayerNorm" in n or ".ln_" in n:
                assert wd == 0.0, n
            else:
                assert wd == 0.1, n
        assert len({g["lr"] for g in groups}) == 1  # no LLRD: one learning rate


def test_trainer_llrd_and_gradual_in_a_run(tmp_path):
    """A real run: optimizer groups carry the LLRD rates; gradual unfreezing changes only the groups that are
    unfrozen in each epoch (compared through the per-epoch checkpoints)."""
    from fastft.train import TrainConfig, Trainer
    from fastft.train.checkpoint import list_checkpoints, load_state_dict_file
    from tests.train.trainutil import classification_files, save_tiny

    model_dir = save_tiny(str(tmp_path / "m"), head="base")
    files = classification_files(str(tmp_path), n_train=24, n_val=8, n_test=8)
    cfg = TrainConfig(
        model=model_dir,
        train_file=files["train"],
        validation_file=files["validation"],
        test_file=files["test"],
        output_dir=str(tmp_path / "out"),
        epochs=3,
        batch_size=8,
        strategy="gradual",
        layer_lr_decay=0.5,
        lr=1e-2,
        warmup_ratio=0.0,
        scheduler="constant",
        save_total_limit=0,
        weight_decay=0.0,
        cache_dir=str(tmp_path / "cache"),
    )
    tr = Trainer(cfg)
    run = tr.setup()
    lrs = {}
    for g in run.optimizer.param_groups:
        for n in g["param_names"]:
            lrs[n] = g["lr"]
    assert lrs["classifier.weight"] == pytest.approx(1e-2)
    assert lrs["bert.encoder.layer.1.output.dense.weight"] == pytest.approx(5e-3)
    assert lrs["bert.encoder.layer.0.output.dense.weight"] == pytest.approx(2.5e-3)
    assert lrs["bert.embeddings.word_embeddings.weight"] == pytest.approx(1.25e-3)
    init = {n: p.detach().clone() for n, p in tr.raw_model.named_parameters()}
    tr.train()  # goes on from the set-up run
    ckpts = [p for _, p in list_checkpoints(cfg.output_dir)]
    assert len(ckpts) == 3  # one per epoch
    changed = []
    for path in ckpts:
        sd = load_state_dict_file(os.path.join(path, "model.safetensors"))
        changed.append({n for n in init if not torch.equal(sd[n], init[n])})
    groups = strat.layer_groups(tr.raw_model)
    assert changed[0] == set(groups[0])
    assert changed[1] == set(groups[0]) | set(groups[1])
    assert changed[2] == set(groups[0]) | set(groups[1]) | set(groups[2])
