"""Extractive question answering (``--task question_answering``, SQuAD-style): the answer is a span of
the context.

Columns: a question (``--text-column``; detected: ``question``), its context (``--text-pair-column``;
detected: ``context``) and ``answers`` (``--label-column``): per row Hugging Face's ``{"text": [...],
"answer_start": [...]}`` (character offsets into the context), in CSV a JSON string of it (or of
SQuAD's list of ``{"text", "answer_start"}``); ``answer_text`` + ``answer_start`` columns are read as
one answer. SQuAD's nested JSON (``data[].paragraphs[].qas[]``) is flattened to one row per question
(:meth:`QuestionAnswering.read_table`). ``--task auto`` picks this task when every answer is such a dict.

Tokenization (fast tokenizers): question + context, truncated on the context side only; a context
longer than ``--max-length`` is split into windows (features) that overlap by ``--doc-stride`` tokens
(at most half the room the batch's longest question leaves). A feature keeps its window number
``qa_part`` (0 opens an example, so an example's features are consecutive), the character offsets of
its context tokens, its example's context and ``labels`` = [start token, end token, gold character
spans...]: the first answer's tokens, both 0 (CLS) when the answer is not inside the window.

Loss: (CE(start logits) + CE(end logits)) / 2 per feature, Hugging Face's QA heads, through
``fastft.functional.cross_entropy`` (the fused kernel) unless ``--no-fused``. Post-processing per
example over its features: the 20 best starts and ends inside the context, pairs with start <= end and
at most ``--max-answer-length`` tokens, the best sum of start and end logits wins (score: its softmax
probability among the example's 20 best candidates). Metrics: ``exact_match`` and ``f1`` of the
official SQuAD v1.1 script (lowercase, punctuation and articles removed, whitespace collapsed; F1 over
token bags; the max over the gold answers), as fractions; best by ``f1``. Predict (JSONL): the input
columns, then ``answer``, its character ``start``/``end`` (end exclusive) in the context and ``score``;
eval and predict window and decode with the training run's ``--doc-stride`` and ``--max-answer-length``.
"""

from __future__ import annotations

import copy
import json
import re
import string
from collections import Counter
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fastft.train.errors import ConfigError, DataError
from fastft.train.tasks.base import EvalBatch, LabelSpace, Task, model_inputs
from fastft.train.tasks.classification import ce_sum

__all__ = ["QuestionAnswering", "normalize_answer", "exact_match", "f1_score", "squad_scores", "best_answer"]

N_BEST = 20
_PUNCT = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


# ---- the SQuAD v1.1 metric ----------------------------------------------------------------------
def normalize_answer(s: str) -> str:
    """The official normalisation: lowercase, no punctuation, no articles (a/an/the), single spaces."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact_match(pred: str, gold: str) -> float:
    return float(normalize_answer(pred) == normalize_answer(gold))


def f1_score(pred: str, gold: str) -> float:
    """Token-bag F1 of the normalised answers; an empty side scores 1 only if both are empty."""
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    if not p or not g:
        return float(p == g)
    same = sum((Counter(p) & Counter(g)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def squad_scores(preds: list[str], golds: list[list[str]]) -> dict[str, float]:
    """Mean exact match and F1 (fractions) over examples, each the max over its gold answers (no gold
    answer: the gold is the empty string)."""
    em = f1 = 0.0
    for p, gs in zip(preds, golds):
        gs = gs or [""]
        em += max(exact_match(p, g) for g in gs)
        f1 += max(f1_score(p, g) for g in gs)
    n = max(len(preds), 1)
    return {"exact_match": em / n, "f1": f1 / n}


# ---- post-processing ----------------------------------------------------------------------------
def _candidates(start: np.ndarray, end: np.ndarray, offsets: np.ndarray, max_len: int) -> list[tuple]:
    """(score, char start, char end) of one feature's n-best pairs; ``offsets`` (L, 2): a token is in
    the context iff its end > its start (special, question and padding tokens are not)."""
    valid = (offsets[:, 1] > offsets[:, 0]) & (offsets[:, 0] >= 0)
    if not valid.any():
        return []
    idx = np.flatnonzero(valid)
    starts = idx[np.argsort(-start[idx], kind="stable")[:N_BEST]]
    ends = idx[np.argsort(-end[idx], kind="stable")[:N_BEST]]
    return [
        (float(start[s] + end[e]), int(offsets[s, 0]), int(offsets[e, 1]))
        for s in starts
        for e in ends
        if s <= e < s + max_len
    ]


def best_answer(features: list[tuple], context: str, max_len: int) -> dict[str, Any]:
    """The answer of one example from its features' ``(start_logits, end_logits, offsets)``:
    ``{"answer", "start", "end", "score"}`` (empty answer, score 0 when no span fits)."""
    cands = [c for f in features for c in _candidates(*f, max_len)]
    if not cands:
        return {"answer": "", "start": 0, "end": 0, "score": 0.0}
    cands.sort(key=lambda c: -c[0])
    top = np.array([c[0] for c in cands[:N_BEST]])
    prob = np.exp(top - top.max())
    _, s, e = cands[0]
    return {"answer": context[s:e], "start": s, "end": e, "score": round(float(prob[0] / prob.sum()), 6)}


def _example_groups(parts) -> list[list[int]]:
    """Feature indices per example: a feature with window number 0 opens the next example."""
    groups: list[list[int]] = []
    for i, p in enumerate(parts):
        if int(p) == 0 or not groups:
            groups.append([])
        groups[-1].append(i)
    return groups


# ---- answers -------------------------------------------------------------------------------------
def _as_answers(v) -> dict[str, list] | None:
    """One row's answers as ``{"text": [...], "answer_start": [...]}``; None if it is not answers."""
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except ValueError:
            return None
    if isinstance(v, (list, tuple)) and all(isinstance(a, dict) for a in v):  # SQuAD's own list
        v = {"text": [a.get("text") for a in v], "answer_start": [a.get("answer_start") for a in v]}
    if not isinstance(v, dict) or "text" not in v or "answer_start" not in v:
        return None
    texts, starts = v["text"], v["answer_start"]
    texts = [texts] if isinstance(texts, str) else list(texts)
    starts = [starts] if isinstance(starts, (int, float, np.integer)) else list(starts)
    if len(texts) != len(starts) or not all(isinstance(t, str) for t in texts):
        return None
    try:
        return {"text": texts, "answer_start": [int(s) for s in starts]}
    except (TypeError, ValueError):
        return None


def _flatten_squad(ds) -> dict[str, list]:
    """SQuAD's nested JSON (one row with ``data``) -> one row per question."""
    out: dict[str, list] = {"id": [], "title": [], "context": [], "question": [], "answers": []}
    for articles in ds["data"]:
        for art in articles or []:
            for par in art.get("paragraphs") or []:
                for qa in par.get("qas") or []:
                    answers = [] if qa.get("is_impossible") else qa.get("answers") or []
                    out["id"].append(str(qa.get("id", len(out["id"]))))
                    out["title"].append(art.get("title") or "")
                    out["context"].append(par.get("context") or "")
                    out["question"].append(qa.get("question") or "")
                    out["answers"].append(
                        {
                            "text": [a["text"] for a in answers],
                            "answer_start": [a["answer_start"] for a in answers],
                        }
                    )
    return out


#: the files ``fastft train`` reads (predict's ``--file`` needs no answers)
_TRAIN_FLAGS = ("--train-file", "--validation-file", "--test-file")


def _check_has_answers(ds, where: str) -> None:
    """A training file must have a column of answers (any name, for ``--label-column``): none among
    the first rows' values is a DataError that names the columns question answering reads."""
    if not where.startswith(_TRAIN_FLAGS) or "answers" in ds.column_names or len(ds) == 0:
        return
    head = ds[: min(len(ds), 20)]
    if any(v is not None and _as_answers(v) is not None for vals in head.values() for v in vals):
        return
    raise DataError(
        f"{where} has no answers (columns: {', '.join(ds.column_names)}); question answering reads "
        "question, context and answers ({'text': [...], 'answer_start': [...]} per row), or answer_text "
        "+ answer_start columns (or name yours with --label-column)"
    )


class QuestionAnswering(Task):
    name = "question_answering"
    aliases = ("qa", "extractive_qa", "question-answering")
    problem_type = "question_answering"
    auto_class = "AutoModelForQuestionAnswering"
    fused_loss = "cross-entropy loss"
    text_columns = ("question", "query")
    pair_for = {"question": "context", "query": "context"}
    label_columns = ("answers",)
    batch_columns = ("offset_mapping", "qa_part", "qa_context")
    best_metric = "f1"
    predict_format = "jsonl"
    doc_stride: int = 128
    max_answer_length: int = 30

    def configure(self, cfg) -> Task:
        stride = int(getattr(cfg, "doc_stride", self.doc_stride))
        longest = int(getattr(cfg, "max_answer_length", self.max_answer_length))
        if stride < 0 or longest < 1:
            raise ConfigError(
                f"--doc-stride must be >= 0 (got {stride}), --max-answer-length >= 1 (got {longest})"
            )
        if (stride, longest) == (self.doc_stride, self.max_answer_length):
            return self
        other = copy.copy(self)
        other.doc_stride, other.max_answer_length = stride, longest
        return other

    def for_inference(self, saved: dict, *, images_only: bool = False) -> Task:
        """The training run's ``--doc-stride`` and ``--max-answer-length`` (``saved``: its
        ``train_config.json``), so eval/predict window and decode as the run did."""
        keys = ("doc_stride", "max_answer_length")
        return self.configure(SimpleNamespace(**{k: saved[k] for k in keys if saved.get(k) is not None}))

    # ---- data ------------------------------------------------------------------------------------
    def read_table(self, ds, where):
        import datasets

        cols = ds.column_names
        if "data" in cols and "question" not in cols:
            return datasets.Dataset.from_dict(_flatten_squad(ds))
        have = [c for c in ("answer_text", "answer_start") if c in cols]
        if "answers" in cols or not have:
            _check_has_answers(ds, where)
            return ds
        if len(have) == 1:
            raise DataError(
                f"{where} has {have[0]} but not {'answer_start' if have[0] == 'answer_text' else 'answer_text'}; "
                "give both columns (or an answers column)"
            )
        answers = [
            {"text": [], "answer_start": []}
            if t is None or s is None or (isinstance(s, float) and s != s)
            else {"text": [str(t)], "answer_start": [int(s)]}
            for t, s in zip(ds["answer_text"], ds["answer_start"])
        ]
        return ds.remove_columns(have).add_column("answers", answers)

    def detects(self, labels, texts):
        return bool(labels) and all(isinstance(v, dict) and "answer_start" in v for v in labels)

    def encode_labels(self, values, num_labels, label2id):
        out = []
        for v in values:
            a = _as_answers(v)
            if a is None:
                raise DataError(
                    f"answers {str(v)[:80]!r} are not {{'text': [...], 'answer_start': [...]}}; give that per "
                    "row (a JSON string in CSV) or answer_text + answer_start columns"
                )
            out.append(a)
        return out, LabelSpace(2)

    def tokenize(self, batch, tokenizer, text_col, pair_col, max_length):
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError(
                "question answering needs a fast tokenizer (offsets); pass one with --tokenizer"
            )
        if pair_col is None:
            raise ConfigError("question answering needs a context column: set --text-pair-column")
        questions = [str(q).lstrip() for q in batch[text_col]]  # leading spaces only waste room
        contexts = [str(c) for c in batch[pair_col]]
        q_len = max(len(x) for x in tokenizer(questions, add_special_tokens=False)["input_ids"])
        room = max_length - q_len - tokenizer.num_special_tokens_to_add(pair=True)
        if room < 2:
            raise DataError(
                f"a question of {q_len} tokens leaves no room for its context within --max-length "
                f"{max_length}; raise --max-length or shorten the question"
            )
        enc = tokenizer(
            questions,
            contexts,
            truncation="only_second",
            max_length=max_length,
            stride=min(self.doc_stride, room // 2),
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
        sample = list(enc["overflow_to_sample_mapping"])
        answers = [_as_answers(a) for a in batch["labels"]] if "labels" in batch else None
        out: dict[str, list] = {
            k: [list(x) for x in enc[k]]
            for k in ("input_ids", "attention_mask", "token_type_ids")
            if k in enc
        }
        out.update(offset_mapping=[], qa_part=[], qa_context=[])
        if answers is not None:
            out["labels"] = []
        for f, i in enumerate(sample):
            seq = enc.sequence_ids(f)
            offs = [list(o) if s == 1 else [-1, -1] for o, s in zip(enc["offset_mapping"][f], seq)]
            out["offset_mapping"].append(offs)
            out["qa_part"].append(0 if f == 0 or sample[f - 1] != i else out["qa_part"][-1] + 1)
            out["qa_context"].append(contexts[i])
            if answers is not None:
                out["labels"].append(_feature_labels(offs, answers[i], contexts[i], questions[i]))
        for k, v in batch.items():  # the other columns, once per feature (predict keeps them)
            out.setdefault(k, [v[i] for i in sample])
        out["length"] = [len(x) for x in out["input_ids"]]
        return out

    def tokenize_key(self):
        return ["question_answering", self.doc_stride]

    def collate_labels(self, feats, padded, left):
        width = padded["input_ids"].shape[1]
        offsets = np.full((len(feats["offset_mapping"]), width, 2), -1, dtype=np.int64)
        shift = []
        for i, o in enumerate(feats["offset_mapping"]):
            o = np.asarray(o, dtype=np.int64).reshape(-1, 2)[:width]
            shift.append(width - len(o) if left else 0)
            offsets[i, shift[-1] : shift[-1] + len(o)] = o
        raw = [c.encode("utf-8") for c in feats["qa_context"]]
        context = np.zeros((len(raw), max(len(r) for r in raw) or 1), dtype=np.uint8)
        for i, r in enumerate(raw):
            context[i, : len(r)] = np.frombuffer(r, dtype=np.uint8)
        out = {
            "qa_offsets": torch.from_numpy(offsets),
            "qa_part": torch.tensor(feats["qa_part"], dtype=torch.long),
            "qa_context": torch.from_numpy(context),
        }
        if "labels" in feats:
            labels = feats["labels"]
            out["labels"] = torch.tensor([[lab[0] + s, lab[1] + s] for lab, s in zip(labels, shift)])
            gold = np.zeros(
                (len(labels), max(1, max((len(lab) - 2) // 2 for lab in labels)), 2), dtype=np.int64
            )
            for i, lab in enumerate(labels):
                spans = np.asarray(lab[2:], dtype=np.int64).reshape(-1, 2)
                gold[i, : len(spans)] = spans
            out["qa_gold"] = torch.from_numpy(gold)  # (B, K, 2) char spans; (0, 0) = none
        return out

    # ---- training --------------------------------------------------------------------------------
    def item_losses(self, logits, labels):
        """``logits`` (B, L, 2) start/end, ``labels`` (B, 2) token positions -> (B,) mean of both CEs."""
        return (
            F.cross_entropy(logits[..., 0], labels[:, 0], reduction="none")
            + F.cross_entropy(logits[..., 1], labels[:, 1], reduction="none")
        ) / 2

    def loss(self, model, batch, n_items, *, teacher=None, cfg=None):
        out = model(**model_inputs(batch))
        fused, labels = cfg is None or cfg.fused, batch["labels"]
        total = ce_sum(out.start_logits.float(), labels[:, 0], fused) + ce_sum(
            out.end_logits.float(), labels[:, 1], fused
        )
        return total / (2 * n_items)

    def model_kwargs(self, space):
        return {}  # the QA head's 2 outputs (start, end) are transformers' default

    def claims_model(self, config):
        return any(
            str(a).endswith("ForQuestionAnswering") for a in getattr(config, "architectures", None) or []
        )

    # ---- evaluation ------------------------------------------------------------------------------
    def eval_batch(self, model, batch):
        out = model(**model_inputs(batch))
        start, end = out.start_logits.float(), out.end_logits.float()
        keys = ("qa_offsets", "qa_part", "qa_context", "labels", "qa_gold")
        rows = {"start_logits": start, "end_logits": end, **{k: batch[k] for k in keys if k in batch}}
        zero = torch.zeros((), dtype=torch.float64, device=start.device)
        if "labels" not in batch:
            return EvalBatch(zero, zero.clone(), rows)
        keep = ~batch["repeat"] if "repeat" in batch else torch.ones(len(start), dtype=torch.bool)
        keep = keep.to(start.device)
        losses = self.item_losses(torch.stack([start, end], -1), batch["labels"].to(start.device))
        return EvalBatch((losses * keep).sum().double(), keep.sum().double(), rows)

    def metrics(self, rows, mean_loss, count):
        r = {k: v.cpu().numpy() for k, v in rows.items()}
        preds, golds = [], []
        for group in _example_groups(r["qa_part"]):
            context = bytes(r["qa_context"][group[0]]).rstrip(b"\0").decode("utf-8", "replace")
            feats = [(r["start_logits"][f], r["end_logits"][f], r["qa_offsets"][f]) for f in group]
            preds.append(best_answer(feats, context, self.max_answer_length)["answer"])
            golds.append([context[s:e] for s, e in r["qa_gold"][group[0]] if e > s])
        return {
            "loss": mean_loss,
            **squad_scores(preds, golds),
            "examples": len(preds),
            "features": int(count),
        }

    def headline(self, test):
        if "f1" not in test:
            return None
        return f"TEST F1: {test['f1']:.4f}  exact match: {test['exact_match']:.4f}  ({test['examples']} questions)"

    def describe(self, space):
        return (
            f"{self.problem_type}, extractive spans (doc stride {self.doc_stride}, "
            f"max answer {self.max_answer_length} tokens)"
        )

    # ---- prediction ------------------------------------------------------------------------------
    def predict(self, model, tokenizer, ds, batches, *, device, text_columns, options):
        """One row per question (file order): ``id`` (when the file has one), the question and context
        columns, then ``answer``, its character ``start``/``end`` in the context and ``score``."""
        starts, ends = [], []
        with torch.no_grad():
            for batch in batches:
                out = model(**{k: v.to(device) for k, v in model_inputs(batch).items()})
                starts += list(out.start_logits.float().cpu().numpy())
                ends += list(out.end_logits.float().cpu().numpy())
        left = getattr(tokenizer, "padding_side", "right") == "left"
        offsets, contexts = ds["offset_mapping"], ds["qa_context"]
        keep = [c for c in ("id", *text_columns) if c in ds.column_names]
        shown = {c: ds[c] for c in keep}
        records = []
        for group in _example_groups(ds["qa_part"]):
            feats = []
            for f in group:
                o = np.asarray(offsets[f], dtype=np.int64).reshape(-1, 2)
                s, e = (x[len(x) - len(o) :] if left else x[: len(o)] for x in (starts[f], ends[f]))
                feats.append((s, e, o))
            rec = {c: shown[c][group[0]] for c in keep}
            rec.update(best_answer(feats, contexts[group[0]], self.max_answer_length))
            records.append(rec)
        return records


def _feature_labels(offs: list, answers: dict | None, context: str, question: str) -> list[int]:
    """[start token, end token, gold char spans...] of one feature (tokens 0, 0 = not in this window);
    an ``answer_start`` that does not point at its text is a DataError naming the fix."""
    spans = []
    for t, s in zip((answers or {}).get("text", []), (answers or {}).get("answer_start", [])):
        if not t:
            continue
        if context[s : s + len(t)] != t:
            raise DataError(
                f"question {question[:60]!r}: answer {t[:40]!r} is not at answer_start {s} of its context "
                f"(found {context[s : s + len(t)][:40]!r}); fix answer_start (a character offset into the context)"
            )
        spans += [s, s + len(t)]
    ctx = [i for i, (a, b) in enumerate(offs) if b > a]
    if not spans or not ctx or not (offs[ctx[0]][0] <= spans[0] and spans[1] <= offs[ctx[-1]][1]):
        return [0, 0, *spans]
    first = max(i for i in ctx if offs[i][0] <= spans[0])
    last = min(i for i in ctx if offs[i][1] >= spans[1])
    return [first, last, *spans]
