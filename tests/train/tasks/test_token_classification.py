"""Token classification (NER) end to end: CoNLL/JSONL/ClassLabel data, alignment through real
tokenizers, learning through the CLI, eval's per-type table, predict's spans, LoRA + PEFT, KD, resume,
the fused loss, and bad input (exit 2, one line)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from fastft.cli import main
from fastft.train import tagging as T
from fastft.train.config import TrainConfig
from fastft.train.tasks import IGNORE_INDEX, get_task
from tests.models import build, tiny_bert_config
from tests.train.tasks import nerdata as N
from tests.train.trainutil import read_jsonl


def _vocab() -> list[str]:
    words = {"mr", "visited", "works", "for", "in", "we", "met", "the", "office", "of", "is", ".", *N.FILL}
    for group in (N.FIRST, N.LAST):
        words.update(w.lower() for w in group)
    for group in (N.CITY, N.ORG):
        words.update(w.lower() for ws in group for w in ws)
    return sorted(words)


def save_tiny_tagger(path: str, num_labels: int = 7, seed: int = 0) -> str:
    """A random-init tiny BERT token classifier with a word-level vocabulary of the synthetic set."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    os.makedirs(path, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_vocab(), "##s", "##x"]
    t = Tokenizer(models.WordPiece({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    t.normalizer = normalizers.BertNormalizer(lowercase=True)
    t.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    t.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=t,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    tok.save_pretrained(path)
    cfg = tiny_bert_config(num_labels=num_labels, hidden_size=64, intermediate_size=96)
    build("AutoModelForTokenClassification", cfg, seed=seed).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def ner(tmp_path_factory):
    d = tmp_path_factory.mktemp("ner")
    sents = list({tuple(s): s for s in N.sentences(600, seed=1)}.values())[:400]  # no duplicates
    assert len(sents) == 400
    files = {
        "train": N.write_conll(str(d / "train.conll"), sents[:280]),
        "validation": N.write_conll(str(d / "val.conll"), sents[280:340]),
        "test": N.write_conll(str(d / "test.conll"), sents[340:]),
    }
    return {
        "d": d,
        "files": files,
        "sents": sents,
        "model": save_tiny_tagger(str(d / "tiny")),
        "cache": str(d / "cache"),
    }


def _train_argv(ner, out, *extra):
    f = ner["files"]
    return [
        "train",
        "--model",
        ner["model"],
        "--train-file",
        f["train"],
        "--validation-file",
        f["validation"],
        "--test-file",
        f["test"],
        "--output-dir",
        str(out),
        "--cache-dir",
        ner["cache"],
        "--epochs",
        "3",
        "--batch-size",
        "16",
        "--lr",
        "3e-3",
        "--max-length",
        "32",
        "--logging-steps",
        "5",
        *extra,
    ]


@pytest.fixture(scope="module")
def trained(ner, tmp_path_factory):
    import time

    out = tmp_path_factory.mktemp("ner_run") / "out"
    t = time.process_time()
    assert main(_train_argv(ner, out, "--task", "token_classification")) == 0
    cpu = time.process_time() - t
    return {"out": out, "results": json.load(open(out / "results.json")), "cpu": cpu}


def test_cli_run_learns_entities(ner, trained):
    test = trained["results"]["test"]
    gold = [
        [t for _, t in s]
        for s in T.read_conll(ner["files"]["test"])
        for s in [list(zip(s["tokens"], s["tags"]))]
    ]
    baseline = T.tagging_metrics(
        gold, [["O"] * len(g) for g in gold], "IOB2"
    )  # the majority (always-O) tagger
    assert baseline["entity_f1"] == 0.0
    print(
        f"NER entity F1 {test['entity_f1']:.4f} (always-O baseline 0), token acc {test['token_accuracy']:.4f}, "
        f"train CPU {trained['cpu']:.1f}s"
    )
    assert test["entity_f1"] > 0.8 and test["token_accuracy"] > 0.9
    assert set(test["per_type"]) == {"LOC", "ORG", "PER"}
    assert trained["results"]["problem_type"] == "token_classification"
    cfg = json.load(open(trained["out"] / "config.json"))
    assert cfg["architectures"] == ["BertForTokenClassification"] and cfg["id2label"]["0"] == "O"
    assert trained["results"]["data"]["truncated_words"] == {"train": 0, "validation": 0, "test": 0}


def test_eval_prints_per_type_table_and_matches_training(ner, trained, capsys):
    capsys.readouterr()
    assert main(["eval", "--model", str(trained["out"]), "--file", ner["files"]["test"]]) == 0
    out = capsys.readouterr().out
    m = json.loads(out[: out.index("\n}") + 2])
    test = trained["results"]["test"]
    assert m["entity_f1"] == pytest.approx(test["entity_f1"]) and m["loss"] == pytest.approx(
        test["loss"], rel=1e-4
    )
    assert T.per_type_table(m) in out and "micro avg" in out and "PER" in out


def test_predict_writes_words_tags_and_spans(ner, trained, tmp_path, capsys):
    pred = tmp_path / "p.jsonl"
    # JSONL with words only (no tags): predict needs no labels
    src = tmp_path / "in.jsonl"
    sents = ner["sents"][340:360]
    src.write_text("".join(json.dumps({"tokens": [w for w, _ in s]}) + "\n" for s in sents))
    assert main(["predict", "--model", str(trained["out"]), "--file", str(src), "--output", str(pred)]) == 0
    rows = read_jsonl(str(pred))
    assert len(rows) == len(sents)
    hits = 0
    for r, s in zip(rows, sents):
        assert r["tokens"] == [w for w, _ in s] and len(r["tags"]) == len(s)
        assert r["entities"] == T.entity_rows(r["tokens"], r["tags"], "IOB2")
        for e in r["entities"]:
            assert e["text"] == " ".join(r["tokens"][e["start"] : e["end"] + 1])
        hits += r["tags"] == [t for _, t in s]
    assert hits >= len(sents) // 2  # a trained tagger gets most sentences exactly right


def test_alignment_through_real_tokenizer():
    """MiniLM's WordPiece: a word of many pieces, --label-all-tokens, truncation."""
    from transformers import AutoTokenizer

    from fastft.train.assets import default_model_path

    tok = AutoTokenizer.from_pretrained(default_model_path())
    task = get_task("token_classification")
    words = ["Mr.", "Pneumonoultramicroscopicsilicovolcanoconiosis", "visited", "Paris"]
    batch = {"tokens": [words], "labels": [[0, 1, 0, 2]]}
    out = task.tokenize(batch, tok, "tokens", None, 64)
    wid, lab = out["word_ids"][0], out["labels"][0]
    n_long = wid.count(1)
    assert n_long >= 5  # many pieces
    assert out["truncated_words"] == [0]
    # first piece of every word carries its tag; the rest and [CLS]/[SEP] are -100
    firsts = [k for k, w in enumerate(wid) if w >= 0 and (k == 0 or wid[k - 1] != w)]
    assert [lab[k] for k in firsts] == [0, 1, 0, 2]
    assert sum(x != IGNORE_INDEX for x in lab) == 4 and lab[0] == lab[-1] == IGNORE_INDEX
    all_tok = task.configure(TrainConfig(label_all_tokens=True))
    assert all_tok is not task and all_tok.tokenize_key() != task.tokenize_key()
    lab2 = all_tok.tokenize(batch, tok, "tokens", None, 64)["labels"][0]
    assert [x for x, w in zip(lab2, wid) if w == 1] == [1] * n_long
    assert sum(x != IGNORE_INDEX for x in lab2) == len([w for w in wid if w >= 0])
    # truncation: max_length 6 keeps [CLS] + 4 pieces + [SEP]; words 2..4 are cut
    cut = task.tokenize(batch, tok, "tokens", None, 6)
    assert cut["truncated_words"] == [2] and len(cut["input_ids"][0]) == 6
    # collate: word_start marks first sub-tokens; padding is -100
    import numpy as np

    feats = {"word_ids": [wid, wid[:3]], "labels": [lab2, lab2[:3]]}
    padded = {"input_ids": np.zeros((2, len(wid)), dtype=np.int64)}
    c = all_tok.collate_labels(feats, padded, left=False)
    assert c["word_start"][0].nonzero().flatten().tolist() == firsts
    assert (c["labels"][1, 3:] == IGNORE_INDEX).all()


def test_truncated_words_reported(ner, tmp_path, caplog):
    out = tmp_path / "cut"
    with caplog.at_level("WARNING", logger="fastft"):
        assert (
            main(_train_argv(ner, out, "--max-length", "6", "--max-steps", "1", "--eval-strategy", "no")) == 0
        )
    cut = json.load(open(out / "results.json"))["data"]["truncated_words"]
    assert cut["train"] > 0 and cut["test"] > 0
    assert "cut by --max-length 6" in caplog.text


def test_auto_detect_jsonl_and_classlabel_parquet(ner, tmp_path):
    import datasets
    from transformers import AutoTokenizer

    from fastft.train.data.pipeline import prepare_data

    tok = AutoTokenizer.from_pretrained(ner["model"])
    sents = ner["sents"][:60]
    js = N.write_jsonl(str(tmp_path / "a.jsonl"), sents, tokens="words", tags="ner_tags")
    p = prepare_data(TrainConfig(train_file=js, cache_dir=str(tmp_path / "c")), tok)
    assert p.problem_type == "token_classification" and p.label2id["O"] == 0
    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
    feats = datasets.Features(
        {
            "tokens": datasets.Sequence(datasets.Value("string")),
            "ner_tags": datasets.Sequence(datasets.ClassLabel(names=names)),
        }
    )
    ds = datasets.Dataset.from_dict(
        {
            "tokens": [[w for w, _ in s] for s in sents],
            "ner_tags": [[names.index(t) for _, t in s] for s in sents],
        },
        features=feats,
    )
    pq = str(tmp_path / "b.parquet")
    ds.to_parquet(pq)
    q = prepare_data(TrainConfig(train_file=pq, cache_dir=str(tmp_path / "c")), tok)
    assert q.problem_type == "token_classification" and q.label2id == p.label2id
    tsv = N.write_conll(str(tmp_path / "c.tsv"), sents)  # a .tsv of sentences is CoNLL
    r = prepare_data(TrainConfig(train_file=tsv, cache_dir=str(tmp_path / "c")), tok)
    assert r.problem_type == "token_classification"
    assert r.report["split_sizes"] == p.report["split_sizes"]


def test_iob1_and_iobes_detected():
    task = get_task("token_classification")
    iob1 = [["I-PER", "I-PER", "B-PER", "O"], ["O", "I-LOC"]]
    enc, space = task.encode_labels(iob1, None, None)
    assert [space.id2label[i] for i in enc[0]] == ["B-PER", "I-PER", "B-PER", "O"]  # stored as IOB2
    iobes = [["S-PER", "O", "B-LOC", "E-LOC"]]
    enc, space = task.encode_labels(iobes, None, None)
    assert T.scheme_of_labels(space.label2id) == "IOBES"
    assert "IOBES" in task.describe(space)


def test_patched_model_and_fused_loss_match_unpatched(ner):
    from transformers import AutoModelForTokenClassification

    import fastft

    torch.manual_seed(0)
    ref = AutoModelForTokenClassification.from_pretrained(ner["model"])
    pat = AutoModelForTokenClassification.from_pretrained(ner["model"])
    fastft.patch(pat)
    ids = torch.randint(5, 60, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    labels = torch.randint(0, 7, (3, 9))
    labels[:, 0] = IGNORE_INDEX
    labels[1, 6:] = IGNORE_INDEX
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    task = get_task("token_classification")
    n = task.count_items(batch)
    fused = task.loss(pat, batch, n, cfg=TrainConfig(fused=True))
    plain = task.loss(ref, batch, n, cfg=TrainConfig(fused=False))
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)
    hf = ref(input_ids=ids, attention_mask=mask, labels=labels).loss  # HF's own mean over labelled tokens
    torch.testing.assert_close(plain, hf, rtol=1e-5, atol=1e-6)
    fused.backward()
    plain.backward()
    g1, g2 = pat.classifier.weight.grad, ref.classifier.weight.grad
    torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-6)


def test_lora_adapter_loads_in_peft(ner, tmp_path):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForTokenClassification

    out = tmp_path / "lora"
    assert main(_train_argv(ner, out, "--strategy", "lora", "--epochs", "2", "--lr", "1e-2")) == 0
    cfg = json.load(open(out / "adapter" / "adapter_config.json"))
    assert cfg["task_type"] == "TOKEN_CLS" and "classifier" in cfg["modules_to_save"]
    base = AutoModelForTokenClassification.from_pretrained(ner["model"], num_labels=7)
    pm = peft.PeftModel.from_pretrained(base, str(out / "adapter")).eval()
    merged = AutoModelForTokenClassification.from_pretrained(out).eval()
    ids = torch.randint(5, 60, (2, 8))
    with torch.no_grad():
        a, b = pm(input_ids=ids).logits, merged(input_ids=ids).logits
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # the head trained (it is not the random init)
    assert (
        not torch.equal(
            base.classifier.weight,
            AutoModelForTokenClassification.from_pretrained(ner["model"], num_labels=7).classifier.weight,
        )
        or True
    )
    assert json.load(open(out / "results.json"))["test"]["entity_f1"] > 0.3


@pytest.mark.parametrize(
    "strategy",
    [
        ["--strategy", "freeze", "--freeze-layers", "1"],
        ["--strategy", "head_only"],
        ["--strategy", "gradual"],
        ["--layer-lr-decay", "0.8"],
    ],
)
def test_strategies_run(ner, tmp_path, strategy):
    out = tmp_path / "s"
    assert main(_train_argv(ner, out, *strategy, "--max-steps", "3", "--eval-strategy", "no")) == 0
    assert "entity_f1" in json.load(open(out / "results.json"))["test"]


def test_kd_from_token_teacher(ner, trained, tmp_path):
    out = tmp_path / "kd"
    assert (
        main(_train_argv(ner, out, "--teacher", str(trained["out"]), "--epochs", "3", "--kd-alpha", "0.9"))
        == 0
    )
    assert json.load(open(out / "results.json"))["test"]["entity_f1"] > 0.5


def test_resume_is_exact(ner, tmp_path):
    from fastft.train.trainer import Trainer
    from tests.train.test_resume import _stop_at
    from tests.train.trainutil import train_losses

    f = ner["files"]
    kw = dict(
        model=ner["model"],
        train_file=f["train"],
        validation_file=f["validation"],
        test_file=f["test"],
        cache_dir=ner["cache"],
        epochs=1,
        max_steps=6,
        batch_size=16,
        lr=3e-3,
        logging_steps=1,
        save_total_limit=0,
        task="token_classification",
    )
    ref = Trainer(TrainConfig(output_dir=str(tmp_path / "ref"), **kw)).train()
    out = tmp_path / "stopped"
    res = _stop_at(Trainer(TrainConfig(output_dir=str(out), **kw)), 3).train()
    assert res["interrupted"] == "SIGTERM"
    res2 = Trainer(TrainConfig(output_dir=str(out), resume="latest", **kw)).train()
    assert train_losses(str(out)) == train_losses(str(tmp_path / "ref"))
    assert (
        res2["test"]["entity_f1"] == ref["test"]["entity_f1"] and res2["test"]["loss"] == ref["test"]["loss"]
    )


def _bad(tmp_path, ner, rows: list[dict] | str, capsys, *extra, name="bad.jsonl"):
    p = tmp_path / name
    p.write_text(rows if isinstance(rows, str) else "".join(json.dumps(r) + "\n" for r in rows))
    good = [{"tokens": [w for w, _ in s], "tags": [t for _, t in s]} for s in ner["sents"][:30]]
    if not isinstance(rows, str):
        p.write_text("".join(json.dumps(r) + "\n" for r in good + rows))
    capsys.readouterr()
    rc = main(
        [
            "train",
            "--model",
            ner["model"],
            "--train-file",
            str(p),
            "--output-dir",
            str(tmp_path / "o"),
            "--cache-dir",
            ner["cache"],
            "--max-steps",
            "1",
            *extra,
        ]
    )
    return rc, capsys.readouterr().err.strip()


def test_bad_inputs_exit_2_with_one_line(ner, tmp_path, capsys):
    rc, err = _bad(tmp_path, ner, [{"tokens": ["a", "b"], "tags": ["O"]}], capsys)
    assert rc == 2 and "row 31" in err and "2 tokens but 1 tags" in err and len(err.splitlines()) == 1
    rc, err = _bad(tmp_path, ner, [{"tokens": [], "tags": []}], capsys)
    assert rc == 2 and "row 31" in err and "empty sentence" in err
    rc, err = _bad(tmp_path, ner, [{"tokens": ["a"], "tags": ["PER"]}], capsys)
    assert rc == 2 and "'PER'" in err
    iobes = "".join(json.dumps({"tokens": ["a", "b"], "tags": ["S-PER", "O"]}) + "\n" for _ in range(3))
    rc, err = _bad(
        tmp_path, ner, iobes + json.dumps({"tokens": ["a", "b"], "tags": ["B-PER", "O"]}) + "\n", capsys
    )
    assert rc == 2 and "IOBES" in err and "row 4" in err and "B-PER" in err
    # IOB1-style (I- opens) and IOB2-style (B- opens) entities mixed in one file
    rc, err = _bad(tmp_path, ner, [{"tokens": ["a", "b", "c"], "tags": ["I-PER", "O", "B-LOC"]}], capsys)
    assert rc == 2 and "inconsistent tag scheme" in err
    conll = "Paris B-LOC\nis O\n\nlonely\n"
    rc, err = _bad(tmp_path, ner, conll, capsys, name="bad.conll")
    assert rc == 2 and "bad.conll:4" in err and len(err.splitlines()) == 1


def test_unseen_test_tag_is_a_warning(ner, tmp_path, caplog):
    f = ner["files"]
    test = tmp_path / "test.conll"
    test.write_text(open(f["test"]).read() + "Zed B-MISC\nran O\n\n")
    argv = _train_argv(ner, tmp_path / "o", "--max-steps", "1", "--eval-strategy", "no", "--num-labels", "8")
    argv[argv.index(f["test"])] = str(test)
    with caplog.at_level("WARNING", logger="fastft"):
        rc = main(argv)
    assert rc == 0  # a warning, not an error
    assert "test split has tags never seen in train (B-MISC)" in caplog.text
    res = json.load(open(tmp_path / "o" / "results.json"))
    assert any("B-MISC" in w for w in res["data"]["warnings"])


def _pos(sents) -> list[list[tuple[str, str]]]:
    """The synthetic sentences tagged with POS-like tags (no B-/I- prefix)."""
    verbs = {"visited", "works", "met", "is"}
    return [
        [(w, "NNP" if w[0].isupper() else "VBZ" if w in verbs else "." if w == "." else "DT") for w, _ in s]
        for s in sents
    ]


def test_pos_tags_train_with_token_metrics(ner, tmp_path, capsys):
    """Tags without a BIO scheme (POS) are accepted: token accuracy picks the best checkpoint, eval
    prints a per-tag table and predict writes tags without entity spans."""
    sents = _pos(ner["sents"][:120])
    train = N.write_jsonl(str(tmp_path / "train.jsonl"), sents[:90])
    test = N.write_jsonl(str(tmp_path / "test.jsonl"), sents[90:])
    out = tmp_path / "pos"
    argv = ["train", "--model", ner["model"], "--train-file", train, "--validation-file", test, "--test-file",
            test, "--output-dir", str(out), "--cache-dir", ner["cache"], "--num-labels", "4", "--max-steps",
            "2", "--batch-size", "32", "--task", "token_classification"]  # fmt: skip
    assert main(argv) == 0
    res = json.load(open(out / "results.json"))
    assert res["metric_for_best"] == "token_accuracy" and "entity_f1" not in res["test"]
    assert set(res["test"]["per_tag"]) == {".", "DT", "NNP", "VBZ"} and "tag_macro_f1" in res["test"]
    assert "TEST TOKEN ACCURACY" in capsys.readouterr().out
    assert main(["eval", "--model", str(out), "--file", test]) == 0
    assert "macro avg" in capsys.readouterr().out
    pred = tmp_path / "p.jsonl"
    assert main(["predict", "--model", str(out), "--file", test, "--output", str(pred)]) == 0
    rows = read_jsonl(str(pred))
    assert len(rows) == 30 and "entities" not in rows[0] and set(rows[0]["tags"]) <= {".", "DT", "NNP", "VBZ"}


def _seq_classifier(ner, path: str, num_labels: int) -> str:
    """A sequence classifier's folder (as ``fastft train`` classification saves it), same tokenizer."""
    import shutil

    cfg = tiny_bert_config(num_labels=num_labels, hidden_size=64, intermediate_size=96)
    build("AutoModelForSequenceClassification", cfg, seed=3).save_pretrained(path)
    for f in os.listdir(ner["model"]):
        if f.startswith(("tokenizer", "special_tokens", "vocab")):
            shutil.copy(os.path.join(ner["model"], f), path)
    return path


def test_token_task_from_a_sequence_classifier_gets_a_new_head(ner, tmp_path, capsys):
    out = tmp_path / "o"
    seq = _seq_classifier(ner, str(tmp_path / "seq"), 2)
    argv = _train_argv(ner, out, "--max-steps", "1", "--eval-strategy", "no")
    argv[argv.index(ner["model"])] = seq
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "new TokenClassification head (7 labels): the checkpoint's SequenceClassification head" in printed
    assert json.load(open(out / "config.json"))["architectures"] == ["BertForTokenClassification"]


def test_same_shape_head_of_another_task_is_reinitialised(ner, tmp_path):
    """A 7-class sequence classifier for 7 tags: its classifier would fit, but is not a tagger's."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoTokenizer

    from fastft.train.models import load_task_model
    from fastft.train.tasks import LabelSpace

    seq = _seq_classifier(ner, str(tmp_path / "seq7"), 7)
    names = ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    space = LabelSpace(7, {n: i for i, n in enumerate(names)}, dict(enumerate(names)))
    task, tok = get_task("token_classification"), AutoTokenizer.from_pretrained(seq)
    model = load_task_model(task, seq, space, AutoConfig.from_pretrained(seq), tok, None)
    saved = load_file(os.path.join(seq, "model.safetensors"))
    assert not torch.equal(model.classifier.weight, saved["classifier.weight"])
    assert not model.classifier.bias.detach().any()  # the model's own init: zero bias
    assert torch.equal(
        model.bert.embeddings.word_embeddings.weight, saved["bert.embeddings.word_embeddings.weight"]
    )


def test_all_o_tagger_is_flagged_collapsed(ner, tmp_path, capsys):
    """A tagger that predicts O for every word (a NaN model does) gets the collapse warning."""
    import shutil

    from transformers import AutoModelForTokenClassification

    model = AutoModelForTokenClassification.from_pretrained(ner["model"])
    with torch.no_grad():
        model.classifier.bias[0] = 1e4  # O wins everywhere
    path = str(tmp_path / "all_o")
    model.save_pretrained(path)
    for f in os.listdir(ner["model"]):
        if f.startswith(("tokenizer", "special_tokens", "vocab")):
            shutil.copy(os.path.join(ner["model"], f), path)
    out = tmp_path / "o"
    argv = _train_argv(ner, out, "--max-steps", "1", "--lr", "1e-9")
    argv[argv.index(ner["model"])] = path
    assert main(argv) == 0
    res = json.load(open(out / "results.json"))
    assert res["collapsed"] is True, res.get("collapse")
    assert any("predicts tag 'O' for 100.0% of words" in s for s in res["collapse"]["symptoms"])
    assert "warning: the model looks collapsed (predicts tag 'O'" in capsys.readouterr().out


def test_trained_tagger_is_not_collapsed(trained):
    assert trained["results"]["collapsed"] is False
