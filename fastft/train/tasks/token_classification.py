"""Token classification (``--task token_classification``, e.g. NER or POS): one tag per word.

Columns: a list of words per row (``--tokens-column``; detected: ``tokens``, ``words``, ...) and a list of
tags of the same length (``--label-column``; detected: ``tags``, ``ner_tags``, ...). CoNLL files
(``.conll``/``.txt``, and ``.tsv`` holding blank-line-separated sentences) are read into those two
columns by :mod:`fastft.train.data.sources`. Auto-detected when every row's text and label are lists.

Labels: tag strings (HF ``Sequence(ClassLabel)`` ids are mapped to their names when read). The scheme
(IOB1, IOB2 or IOBES) is detected over all splits and validated; IOB1 data is stored as IOB2 (the same
entities, ``B-`` opening each), so a trained label set decodes with IOB2 or IOBES
(:func:`~fastft.train.tagging.scheme_of_labels`). Tags without a prefix throughout (POS: ``NN``, ``VBZ``)
are ``plain``: no entities, scored per token. Label ids follow :func:`~fastft.train.tagging.label_list`
(``O`` = 0; plain tags sorted).

Tokenization: the words go through the (fast) tokenizer with ``is_split_into_words``; each word's tag
sits on its first sub-token, the rest get -100 (``--label-all-tokens``: every sub-token gets the word's
tag). Words cut by ``--max-length`` are counted per row (``truncated_words``, reported in the data
report); they get no label, are not scored, and are predicted ``O``.

Loss: per-token cross-entropy over the non-ignored positions through ``fastft.functional.cross_entropy``
(the fused kernel) unless ``--no-fused``; with a teacher, the fused KD loss per non-ignored token.
Metrics: entity precision/recall/F1 (micro and per type, seqeval strict) and token (word) accuracy,
scored on each word's first sub-token; best by ``entity_f1``. Plain tags: token accuracy and per-tag
precision/recall/F1 (macro ``tag_macro_f1``); best by ``token_accuracy``. Predict (JSONL): the words,
their tags and (not for plain tags) the entity spans ``{type, start, end, text}`` (word indices, end
inclusive).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fastft.train import tagging as T
from fastft.train.errors import ConfigError, DataError
from fastft.train.tasks.base import IGNORE_INDEX, EvalBatch, LabelSpace, Task, model_inputs
from fastft.train.tasks.classification import ce_sum, kd_loss_sum


def _is_seq(v) -> bool:
    return isinstance(v, (list, tuple, np.ndarray))


def _names(model) -> list[str]:
    cfg = getattr(model, "module", model).config
    id2label = {int(k): str(v) for k, v in (getattr(cfg, "id2label", None) or {}).items()}
    return [id2label.get(i, f"LABEL_{i}") for i in range(int(cfg.num_labels))]


class TokenClassification(Task):
    name = "token_classification"
    fused_loss = "cross-entropy loss"
    distils = True
    aliases = ("ner", "token-classification")
    problem_type = "token_classification"
    collapse_kind = "token_classification"
    auto_class = "AutoModelForTokenClassification"
    named_labels = True
    #: CoNLL files: sources read ``.conll``/``.txt`` (and sentence-shaped ``.tsv``) as words + tags.
    reads_conll = True
    batch_columns = ("word_ids",)
    text_columns = ("tokens", "words", *Task.text_columns)
    label_columns = ("tags", "ner_tags", "pos_tags", "chunk_tags", *Task.label_columns)
    best_metric = "entity_f1"
    predict_format = "jsonl"
    label_all_tokens: bool = False

    def configure(self, cfg) -> Task:
        if bool(getattr(cfg, "label_all_tokens", False)) == self.label_all_tokens:
            return self
        other = copy.copy(self)  # keeps refine's best metric
        other.label_all_tokens = True
        return other

    def refine(self, labels):
        """Plain tags (POS: no entities to score): the best checkpoint by token accuracy."""
        if not T.is_plain([[str(t) for t in v] for v in labels if _is_seq(v)]):
            return self
        other = copy.copy(self)
        other.best_metric = "token_accuracy"
        return other

    # ---- data ------------------------------------------------------------------------------------
    def detects(self, labels, texts):
        return bool(labels) and all(_is_seq(t) for t in texts) and all(_is_seq(v) for v in labels)

    def encode_labels(self, values, num_labels, label2id):
        tags = [[str(t) for t in v] for v in values]
        if any(not _is_seq(v) for v in values):
            raise DataError("token classification needs a list of tags per row (one tag per word)")
        scheme = T.detect_scheme(tags, [f"sentence {i + 1}" for i in range(len(tags))])
        tags = [T.to_iob2(s, scheme) for s in tags]
        if label2id is None:
            names = T.label_list(tags)
            if num_labels is not None and num_labels != len(names):
                from fastft.train.tasks.labels import mismatch

                raise mismatch(num_labels, names)
            label2id = {n: i for i, n in enumerate(names)}
        unknown = sorted({t for s in tags for t in s if t not in label2id})
        if unknown:
            raise DataError(
                f"tags {unknown[:5]} are not among the model's tags ({', '.join(list(label2id)[:10])}); "
                "fix the tag column or train on data that has them"
            )
        space = LabelSpace(len(label2id), dict(label2id), {i: n for n, i in label2id.items()})
        return [[label2id[t] for t in s] for s in tags], space

    def split_warnings(self, raws, space):
        train = raws["train"].labels or []
        out = []
        for split in ("validation", "test"):
            if split not in raws or (split == "test" and raws["test"] is raws.get("validation")):
                continue
            unseen = T.unseen_tags(train, raws[split].labels or [])
            if unseen:
                names = sorted(space.id2label[i] for i in unseen)
                out.append(
                    f"the {split} split has tags never seen in train ({', '.join(names[:10])}); the model "
                    "cannot predict them: add training sentences with these tags"
                )
        return out

    def tokenize(self, batch, tokenizer, text_col, pair_col, max_length):
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError(
                "token classification needs a fast tokenizer (word ids); pass one with --tokenizer"
            )
        words = [[str(w) for w in ws] for ws in batch[text_col]]
        enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
        out: dict[str, list] = {
            k: [list(x) for x in enc[k]]
            for k in ("input_ids", "attention_mask", "token_type_ids")
            if k in enc
        }
        labels = batch.get("labels")
        continuation = None
        out["word_ids"], out["truncated_words"] = [], []
        if labels is not None:
            out["labels"] = []
        for i, ws in enumerate(words):
            wid = enc.word_ids(i)
            out["word_ids"].append([-1 if w is None else int(w) for w in wid])
            word_labels = labels[i] if labels is not None else [0] * len(ws)
            aligned, cut = T.align_labels(wid, word_labels, self.label_all_tokens, continuation)
            out["truncated_words"].append(cut)
            if labels is not None:
                out["labels"].append(aligned)
        out["length"] = [len(x) for x in out["input_ids"]]
        return out

    def tokenize_key(self):
        return ["token_classification", self.label_all_tokens]

    def collate_labels(self, feats, padded, left):
        width = padded["input_ids"].shape[1]
        wid = np.full((len(feats["word_ids"]), width), -1, dtype=np.int64)
        lab = np.full(wid.shape, IGNORE_INDEX, dtype=np.int64)
        for i, w in enumerate(feats["word_ids"]):
            w = w[:width]
            sl = slice(width - len(w), width) if left else slice(0, len(w))
            wid[i, sl] = w
            if "labels" in feats:
                lab[i, sl] = feats["labels"][i][: len(w)]
        prev = np.concatenate([np.full((len(wid), 1), -1), wid[:, :-1]], axis=1)
        out = {"word_start": torch.from_numpy((wid >= 0) & (wid != prev))}
        if "labels" in feats:
            out["labels"] = torch.from_numpy(lab)
        return out

    # ---- training --------------------------------------------------------------------------------
    def count_items(self, batch):
        return int((batch["labels"] != IGNORE_INDEX).sum())

    def item_losses(self, logits, labels):
        """Per-token losses of the labelled tokens (the items of this task)."""
        flat, target = logits.flatten(0, 1), labels.flatten()
        keep = target != IGNORE_INDEX
        return F.cross_entropy(flat[keep], target[keep], reduction="none")

    def loss(self, model, batch, n_items, *, teacher=None, cfg=None):
        inputs, labels = model_inputs(batch), batch["labels"]
        logits = model(**inputs).logits.float()
        keep = labels != IGNORE_INDEX  # KD and CE over the labelled tokens only
        if teacher is not None:
            with torch.no_grad():
                t_logits = teacher(**inputs).logits.float()
            return kd_loss_sum(logits[keep], t_logits[keep], labels[keep], cfg) / n_items
        return ce_sum(logits.flatten(0, 1), labels.flatten(), cfg is None or cfg.fused) / n_items

    def model_kwargs(self, space):
        kw: dict[str, Any] = {"num_labels": space.num_labels}
        if space.label2id:
            kw.update(label2id=dict(space.label2id), id2label={int(k): v for k, v in space.id2label.items()})
        return kw

    def claims_model(self, config):
        archs = getattr(config, "architectures", None) or []
        return any(str(a).endswith("ForTokenClassification") for a in archs)

    # ---- evaluation ------------------------------------------------------------------------------
    def eval_batch(self, model, batch):
        logits = model(**model_inputs(batch)).logits.float()
        rows: dict[str, torch.Tensor] = {"preds": logits.argmax(-1)}
        zero = torch.zeros((), dtype=torch.float64, device=logits.device)
        if "labels" not in batch:
            return EvalBatch(zero, zero.clone(), rows)
        labels = batch["labels"].to(logits.device)
        if "repeat" in batch:  # shard padding under torchrun: no token counts twice
            labels = labels.masked_fill(batch["repeat"][:, None].to(labels.device), IGNORE_INDEX)
        keep = labels != IGNORE_INDEX
        loss_sum = F.cross_entropy(logits[keep], labels[keep], reduction="sum").double()
        # metrics read each word at its first sub-token (also with --label-all-tokens)
        rows["labels"] = batch["labels"].masked_fill(~batch["word_start"], IGNORE_INDEX)
        return EvalBatch(loss_sum, keep.sum().double(), rows)

    def metrics(self, rows, mean_loss, count):
        raise NotImplementedError(
            "token classification metrics need the model's tag names: use model_metrics"
        )

    def model_metrics(self, model, rows, mean_loss, count):
        names = _names(model)
        labels, preds = rows["labels"].cpu().numpy(), rows["preds"].cpu().numpy()
        y_true, y_pred = [], []
        for lab, pred in zip(labels, preds):
            at = lab != IGNORE_INDEX
            y_true.append([names[i] for i in lab[at]])
            y_pred.append([names[i] if 0 <= i < len(names) else "O" for i in pred[: len(lab)][at]])
        m = T.tagging_metrics(y_true, y_pred, T.scheme_of_labels(names))
        return {"loss": mean_loss, **m, "tokens": int(count)}

    def headline(self, test):
        if "tag_macro_f1" in test:
            return (
                f"TEST TOKEN ACCURACY: {test['token_accuracy']:.4f}  tag macro F1: {test['tag_macro_f1']:.4f}"
            )
        if "entity_f1" not in test:
            return None
        return (
            f"TEST ENTITY F1: {test['entity_f1']:.4f}  precision: {test['entity_precision']:.4f}  "
            f"recall: {test['entity_recall']:.4f}  token accuracy: {test['token_accuracy']:.4f}"
        )

    def metrics_table(self, metrics):
        return T.per_type_table(metrics) if "per_type" in metrics or "per_tag" in metrics else None

    def describe(self, space):
        names = [space.id2label[i] for i in range(space.num_labels)] if space.id2label else []
        kind = "label-all-tokens" if self.label_all_tokens else "first sub-token"
        scheme = T.scheme_of_labels(names)
        scheme = "no BIO scheme, scored per token" if scheme == T.PLAIN else scheme
        return f"{self.problem_type}, {space.num_labels} tags ({scheme}, {kind})"

    # ---- prediction ------------------------------------------------------------------------------
    def predict(self, model, tokenizer, ds, batches, *, device, text_columns, options):
        """Per row: the words, one tag per word and the entity spans (JSONL; none for plain tags)."""
        names = _names(model)
        scheme = T.scheme_of_labels(names)
        col = next(
            (c for c in [*text_columns, *self.text_columns] if c in ds.column_names and _is_seq(ds[0][c])),
            None,
        )
        if col is None:
            raise DataError("no column of word lists to predict for; set --tokens-column")
        words_all, wids = ds[col], ds["word_ids"]
        records, row = [], 0
        with torch.no_grad():
            for batch in batches:
                inputs = {k: v.to(device) for k, v in model_inputs(batch).items()}
                pred = model(**inputs).logits.argmax(-1).cpu().numpy()
                left = getattr(tokenizer, "padding_side", "right") == "left"
                for p in pred:
                    words, wid = [str(w) for w in words_all[row]], wids[row]
                    p = p[len(p) - len(wid) :] if left else p[: len(wid)]
                    ids = T.word_predictions([None if w < 0 else w for w in wid], p, len(words))
                    tags = [names[i] for i in ids]
                    rec = {"tokens": words, "tags": tags}
                    if scheme != T.PLAIN:
                        rec["entities"] = T.entity_rows(words, tags, scheme)
                    records.append(rec)
                    row += 1
        return records
