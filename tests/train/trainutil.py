"""Shared builders for the trainer tests: tiny tokenizers + random-init models saved to a folder, tiny
data files. The tokenizers are real ``transformers`` fast tokenizers built from a ~60-word vocabulary,
so the tiny models (vocab 128) cover them and everything runs in seconds on one CPU core."""

from __future__ import annotations

import json
import os
import random

from tests.models import build, tiny_bert_config, tiny_gpt2_config

POS = ["good", "great", "fine", "nice", "superb", "lovely", "brilliant", "moving"]
NEG = ["bad", "awful", "poor", "dull", "boring", "weak", "clumsy", "tedious"]
FILL = [
    "the",
    "movie",
    "was",
    "plot",
    "acting",
    "really",
    "very",
    "film",
    "story",
    "and",
    "a",
    "so",
    "quite",
    "cast",
    "script",
    "ending",
    "music",
    "scenes",
    "is",
    "its",
]
WORDS = POS + NEG + FILL


def _save_bert_tokenizer(path: str):
    from transformers import BertTokenizerFast

    os.makedirs(path, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    # transformers 5 takes the vocabulary as ``vocab`` (a ``vocab_file=`` keyword is ignored, and every
    # word then becomes [UNK]): checked below, so the tiny models really see the words.
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(words)}, do_lower_case=True)
    assert tok.convert_tokens_to_ids(WORDS[0]) == 5, "tiny tokenizer lost its vocabulary"
    tok.save_pretrained(path)
    return tok


def _save_gpt2_tokenizer(path: str):
    """A GPT-2-style tokenizer: word-level, EOS only, NO pad token (the trainer must set pad = eos)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<|endoftext|>", "<unk>", *WORDS])}
    t = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=t, eos_token="<|endoftext|>", bos_token="<|endoftext|>", unk_token="<unk>"
    )
    tok.save_pretrained(path)
    return tok


def save_tiny(
    path: str,
    kind: str = "bert",
    *,
    num_labels: int = 2,
    dropout: float = 0.0,
    seed: int = 0,
    head: str = "cls",
) -> str:
    """A random-init tiny model + tokenizer in ``path``; kind: bert | gpt2; head: cls | lm | base."""
    os.makedirs(path, exist_ok=True)
    if kind == "bert":
        cfg = tiny_bert_config(
            num_labels=num_labels, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout
        )
        _save_bert_tokenizer(path)
    else:
        cfg = tiny_gpt2_config(
            num_labels=num_labels,
            resid_pdrop=dropout,
            embd_pdrop=dropout,
            attn_pdrop=dropout,
            pad_token_id=None,
            bos_token_id=0,
            eos_token_id=0,
        )
        _save_gpt2_tokenizer(path)
    auto = {"cls": "AutoModelForSequenceClassification", "lm": "AutoModelForCausalLM", "base": "AutoModel"}[
        head
    ]
    model = build(auto, cfg, seed=seed)
    model.save_pretrained(path)
    return path


def sentences(n: int, seed: int = 0) -> list[tuple[str, int, int]]:
    """``n`` distinct short reviews: (text, #positive words, #negative words)."""
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < n:
        k = rng.randint(2, 6)
        words = [rng.choice(FILL) for _ in range(k)]
        npos = rng.randint(0, 2)
        nneg = rng.randint(0, 2) if npos == 0 else rng.randint(0, 1)
        if npos == nneg == 0:
            npos = 1
        words += [rng.choice(POS) for _ in range(npos)] + [rng.choice(NEG) for _ in range(nneg)]
        rng.shuffle(words)
        text = " ".join(words)
        if text in seen:
            continue
        seen.add(text)
        out.append((text, npos, nneg))
    return out


def write_csv(path: str, header: list[str], rows: list[list]) -> str:
    import csv

    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def write_jsonl(path: str, rows: list[dict]) -> str:
    with open(path, "w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    return path


def classification_files(d: str, n_train: int = 64, n_val: int = 16, n_test: int = 16, seed: int = 0) -> dict:
    """train/validation/test CSVs with text,label (label "pos"/"neg" by majority of sentiment words)."""
    rows = sentences(n_train + n_val + n_test, seed)
    lab = lambda p, q: "pos" if p > q else "neg"
    data = [[t, lab(p, q)] for t, p, q in rows]
    files = {}
    for name, part in (
        ("train", data[:n_train]),
        ("validation", data[n_train : n_train + n_val]),
        ("test", data[n_train + n_val :]),
    ):
        files[name] = write_csv(os.path.join(d, f"{name}.csv"), ["text", "label"], part)
    return files


def workspace(d, n_train: int = 64, n_val: int = 16, n_test: int = 16, **models: dict) -> dict:
    """A module-fixture workspace in folder ``d``: ``{"d": d, "files": classification_files(...),
    "cache": d/cache, <name>: save_tiny(d/<name>, **kwargs) for each name=kwargs in models}``."""
    ws = {"d": d, "files": classification_files(str(d), n_train, n_val, n_test), "cache": str(d / "cache")}
    for name, kw in models.items():
        ws[name] = save_tiny(str(d / name), **kw)
    return ws


def file_flags(files: dict) -> list[str]:
    return [
        "--train-file",
        files["train"],
        "--validation-file",
        files["validation"],
        "--test-file",
        files["test"],
    ]


def read_jsonl(path: str) -> list[dict]:
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def train_losses(output_dir: str) -> dict[int, float]:
    return {
        r["step"]: r["loss"]
        for r in read_jsonl(os.path.join(output_dir, "metrics.jsonl"))
        if r.get("type") == "train"
    }


def train_config(env: dict, out, **kw):
    """A TrainConfig on a ``workspace()``'s tiny BERT and files; ``kw`` overrides."""
    from fastft.train import TrainConfig

    f = env["files"]
    base = dict(
        model=env["bert"],
        train_file=f["train"],
        validation_file=f["validation"],
        test_file=f["test"],
        output_dir=str(out),
        cache_dir=env["cache"],
        batch_size=8,
        logging_steps=1,
    )
    base.update(kw)
    return TrainConfig(**base)
