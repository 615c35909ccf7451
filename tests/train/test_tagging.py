"""Token-classification building blocks: readers, tag schemes, alignment, decoding, metrics."""

from __future__ import annotations

import random
import sys
import warnings

import pytest

from fastft.train import tagging as T
from fastft.train.errors import DataError
from fastft.train.numerics import IGNORE_INDEX
from fastft.train.tagging import (
    align_labels,
    detect_scheme,
    entity_rows,
    inside_label_map,
    label_list,
    per_type_table,
    read_conll,
    read_records,
    spans,
    tagging_metrics,
    unseen_tags,
    validate_sentences,
    validate_tags,
    word_predictions,
)
from tests.models import minilm_dir


def _write(tmp_path, name, text, mode="w", **kw):
    p = tmp_path / name
    if mode == "wb":
        p.write_bytes(text)
    else:
        p.write_text(text, **kw)
    return str(p)


# ----------------------------------------------------------------------------------------- reading
def test_read_conll_conll2003_layout(tmp_path):
    text = (
        "-DOCSTART- -X- -X- O\n\n"
        "EU NNP B-NP B-ORG\nrejects VBZ B-VP O\nGerman JJ B-NP B-MISC\n\n\n"
        "Peter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER\n\n"
        "-DOCSTART- -X- -X- O\n"
        "Paris NNP B-NP B-LOC"  # last sentence: no trailing blank line, no final newline
    )
    rows = read_conll(_write(tmp_path, "ner.conll", text))
    assert [r["tokens"] for r in rows] == [["EU", "rejects", "German"], ["Peter", "Blackburn"], ["Paris"]]
    assert [r["tags"] for r in rows] == [["B-ORG", "O", "B-MISC"], ["B-PER", "I-PER"], ["B-LOC"]]
    assert [r["line"] for r in rows] == [3, 8, 12]
    assert rows[1]["where"] == "ner.conll:8"


def test_read_conll_crlf_bom_tabs(tmp_path):
    text = "\ufeffNew York\tB-LOC\r\nis\tO\r\n\r\nBob\t\tB-PER\r\n"
    rows = read_conll(_write(tmp_path, "ner.tsv", text.encode("utf-8"), mode="wb"))
    # a tab-separated line keeps a token with a space; the BOM is not part of the first token
    assert rows[0]["tokens"] == ["New York", "is"] and rows[0]["tags"] == ["B-LOC", "O"]
    assert rows[1] == {"tokens": ["Bob"], "tags": ["B-PER"], "line": 4, "where": "ner.tsv:4"}


def test_read_conll_one_column_names_file_line(tmp_path):
    path = _write(tmp_path, "bad.txt", "John B-PER\nruns\n")
    with pytest.raises(DataError) as e:
        read_conll(path)
    msg = str(e.value)
    assert "bad.txt:2" in msg and "one column" in msg and "\n" not in msg


@pytest.mark.parametrize(
    "content, needle",
    [(None, "does not exist"), ("-DOCSTART- O\n\n\n", "no sentences"), (b"caf\xe9 O\n", "not UTF-8")],
)
def test_read_conll_bad_files(tmp_path, content, needle):
    if content is None:
        path = str(tmp_path / "missing.conll")
    elif isinstance(content, bytes):
        path = _write(tmp_path, "x.conll", content, mode="wb")
    else:
        path = _write(tmp_path, "x.conll", content)
    with pytest.raises(DataError, match=needle):
        read_conll(path)


def test_read_records_strings_and_class_label_ids():
    rows = read_records(
        [{"words": ["a", "b"], "ner": ["B-X", "O"]}],
        tokens_column="words",
        tags_column="ner",
        source="t.jsonl",
    )
    assert rows == [{"tokens": ["a", "b"], "tags": ["B-X", "O"], "line": 1, "where": "t.jsonl row 1"}]

    from datasets import ClassLabel, Dataset, Features, Sequence, Value

    names = ["O", "B-PER", "I-PER"]
    feats = Features({"tokens": Sequence(Value("string")), "ner_tags": Sequence(ClassLabel(names=names))})
    ds = Dataset.from_dict({"tokens": [["John", "Smith", "ran"]], "ner_tags": [[1, 2, 0]]}, features=feats)
    rows = read_records(ds, "tokens", "ner_tags", names=ds.features["ner_tags"].feature.names)
    assert rows[0]["tags"] == ["B-PER", "I-PER", "O"]


@pytest.mark.parametrize(
    "row, kw, needle",
    [
        ({"tokens": ["a"]}, {}, "column 'tags' not found; columns are: tokens (set --label-column)"),
        ({"tags": ["O"]}, {}, "(set --tokens-column)"),
        ({"tokens": "a b", "tags": ["O", "O"]}, {}, "must be a list of words"),
        ({"tokens": ["a"], "tags": "O"}, {}, "must be a list of tags"),
        ({"tokens": ["a"], "tags": [1]}, {}, "integer tags but no tag names"),
        ({"tokens": ["a"], "tags": [3]}, {"names": ["O", "B-X"]}, "tag id 3 is outside the 2 tag names"),
        ({"tokens": ["a"], "tags": [None]}, {}, "must be a list of tag strings"),
        ({"tokens": ["a", None], "tags": ["O", "O"]}, {}, "holds an empty or nested item"),
    ],
)
def test_read_records_errors(row, kw, needle):
    with pytest.raises(DataError) as e:
        read_records([{"tokens": ["x"], "tags": ["O"]}, row], source="d.jsonl", **kw)
    assert needle in str(e.value) and "d.jsonl row 2" in str(e.value)


# ----------------------------------------------------------------------------------------- schemes
@pytest.mark.parametrize(
    "seqs, scheme",
    [
        ([["B-PER", "I-PER", "O", "B-LOC"], ["B-PER", "B-PER"]], "IOB2"),
        ([["O", "B-LOC"], ["B-LOC", "B-PER", "I-PER"]], "IOB2"),
        ([["I-PER", "I-PER", "B-PER", "O", "I-LOC"]], "IOB1"),
        ([["I-PER", "O", "I-LOC", "I-LOC"]], "IOB1"),  # IO-only data is read as IOB1
        ([["B-PER", "E-PER", "O", "S-LOC"], ["B-X", "I-X", "E-X"]], "IOBES"),
        ([["S-LOC"]], "IOBES"),
        ([["O", "O"], ["O"]], "IOB2"),  # no entities
    ],
)
def test_detect_scheme(seqs, scheme):
    assert detect_scheme(seqs) == scheme
    validate_tags(seqs, scheme)


def test_detect_scheme_mixed_iob1_iob2_names_both_rows():
    with pytest.raises(DataError) as e:
        detect_scheme([["B-PER", "I-PER"], ["O", "O"], ["O", "I-LOC"]], where=["f:1", "f:4", "f:7"])
    msg = str(e.value)
    assert "inconsistent tag scheme" in msg and "f:7: I-LOC (word 2)" in msg and "f:1: B-PER (word 1)" in msg


def test_detect_scheme_e_tags_mixed_with_iob2():
    with pytest.raises(DataError) as e:
        detect_scheme([["B-PER", "E-PER"], ["B-LOC", "I-LOC", "O"]])
    msg = str(e.value)
    assert "IOBES" in msg and "row 2" in msg and "I-LOC (word 2)" in msg


@pytest.mark.parametrize("bad", ["PER", "B_PER", "B-", "X-PER", "o", "B--PER", "I-PER-"])
def test_unknown_tag_form(bad):
    """A prefix-less tag among prefixed ones is refused; prefix-less tags throughout are plain tags."""
    with pytest.raises(DataError, match=rf"row 2: tag {bad!r} \(word 2\) is not O or PREFIX-TYPE"):
        detect_scheme([["B-LOC"], ["O", bad]])
    with pytest.raises(DataError, match="is not O or PREFIX-TYPE"):
        label_list([["O", "B-LOC", bad]])
    assert detect_scheme([["O"], ["O", bad]]) == T.PLAIN


@pytest.mark.parametrize(
    "tags, scheme, needle",
    [
        (["O", "I-PER"], "IOB2", "I-PER (word 2) starts an entity, but IOB2 starts every entity with B-"),
        (["B-LOC", "I-PER"], "IOB2", "I-PER (word 2) starts an entity"),  # type change inside an entity
        (["O", "B-PER"], "IOB1", "B-PER (word 2) follows O, but IOB1 uses B- only right after"),
        (["I-LOC", "B-PER"], "IOB1", "B-PER (word 2) follows I-LOC"),
        (["B-PER", "O"], "IOBES", "B-PER (word 1) is not followed by I-PER/E-PER"),
        (["B-PER", "I-PER"], "IOBES", "I-PER (word 2) is not followed by I-PER/E-PER"),
        (["O", "E-PER"], "IOBES", "E-PER (word 2) follows O"),
        (["B-PER", "E-LOC"], "IOBES", "B-PER (word 1) is not followed"),
        (["S-PER"], "IOB2", "S-PER (word 1) has a prefix IOB2 does not use"),
        (["E-PER"], "IOB1", "has a prefix IOB1 does not use"),
    ],
)
def test_validate_tags_names_row_and_tag(tags, scheme, needle):
    with pytest.raises(DataError) as e:
        validate_tags([["O"], tags], scheme, where=["s:1", "s:3"])
    assert needle in str(e.value) and str(e.value).startswith("s:3: ") and scheme in str(e.value)


def test_validate_tags_legal_sequences():
    validate_tags([["I-LOC", "I-PER"]], "IOB1")  # in IOB1 an I- of a new type opens an entity
    validate_tags([["B-LOC", "B-PER", "I-PER"]], "IOB2")
    validate_tags([["I-PER", "B-PER", "B-PER", "I-PER"]], "IOB1")
    validate_tags([["S-PER", "B-PER", "E-PER", "S-PER"]], "IOBES")
    with pytest.raises(ValueError, match="must be one of IOB1, IOB2, IOBES"):
        validate_tags([["O"]], "BILOU")


def test_validate_counts_and_empty_sentences():
    with pytest.raises(DataError, match=r"^row 2: 2 tokens but 3 tags; every token needs exactly one tag$"):
        validate_tags([["O"], ["O", "O", "O"]], "IOB2", token_seqs=[["a"], ["a", "b"]])
    with pytest.raises(DataError, match=r"^row 1: empty sentence \(no tokens\); drop it$"):
        validate_tags([[]], "IOB2")
    sents = [
        {"tokens": ["a"], "tags": ["O"], "where": "f:1"},
        {"tokens": ["b", "c"], "tags": ["I-X"], "where": "f:3"},  # a bad count beats the scheme check
    ]
    with pytest.raises(DataError, match="f:3: 2 tokens but 1 tags"):
        validate_sentences(sents)
    with pytest.raises(DataError, match="f:9: empty sentence"):
        validate_sentences([{"tokens": [], "tags": [], "where": "f:9"}])
    good = [{"tokens": ["a", "b"], "tags": ["I-X", "O"], "where": "f:1"}]
    assert validate_sentences(good) == "IOB1"
    with pytest.raises(DataError, match="tag scheme IOB2"):
        validate_sentences(good, scheme="IOB2")


def test_label_list_order_is_stable():
    a = [["B-PER", "I-PER", "O"], ["S-LOC", "E-LOC", "B-LOC", "I-LOC"], ["B-MISC"]]
    expect = ["O", "B-LOC", "I-LOC", "E-LOC", "S-LOC", "B-MISC", "B-PER", "I-PER"]
    assert label_list(a) == expect
    assert label_list([list(reversed(s)) for s in reversed(a)]) == expect
    assert label_list([["B-X"]]) == ["O", "B-X"]  # O is always id 0


def test_unseen_tags():
    assert unseen_tags([["O", "B-PER"]], [["B-PER", "B-LOC"], ["I-MISC"]]) == {"B-LOC", "I-MISC"}
    assert unseen_tags([["O", "B-PER"]], [["O"]]) == set()


# --------------------------------------------------------------------------------------- alignment
def test_align_labels_synthetic():
    word_ids = [None, 0, 1, 1, 1, 2, None]
    assert align_labels(word_ids, [3, 1, 0]) == ([-100, 3, 1, -100, -100, 0, -100], 0)
    assert align_labels(word_ids, [3, 1, 0], label_all_tokens=True) == ([-100, 3, 1, 1, 1, 0, -100], 0)
    # truncated: words 2 and 3 never appear
    assert align_labels([None, 0, 1, None], [1, 2, 0, 1]) == ([-100, 1, 2, -100], 2)
    with pytest.raises(ValueError, match="word id 3 is outside"):
        align_labels([0, 3], [0, 0])


def test_inside_label_map():
    names = ["O", "B-LOC", "I-LOC", "B-PER", "B-MISC", "I-MISC"]
    assert inside_label_map(names) == [0, 2, 2, 3, 5, 5]  # B-PER has no I-PER: kept


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_dir())
    assert tok.is_fast
    return tok


LONG = "Pneumonoultramicroscopicsilicovolcanoconiosis"


def test_align_labels_real_tokenizer(tokenizer):
    names = ["O", "B-PER", "I-PER", "B-MISC", "I-MISC", "B-LOC"]
    words = ["John", "Smith", "had", LONG, "in", "Zürich", "."]
    tags = ["B-PER", "I-PER", "O", "B-MISC", "O", "B-LOC", "O"]
    ids = [names.index(t) for t in tags]
    enc = tokenizer(words, is_split_into_words=True)
    wid = enc.word_ids()
    n_long = wid.count(3)
    assert n_long >= 10  # really a many-piece word

    labels, lost = align_labels(wid, ids)
    assert lost == 0 and len(labels) == len(enc["input_ids"])
    assert [lab for lab in labels if lab != IGNORE_INDEX] == ids  # exactly one label per word
    assert labels[0] == labels[-1] == IGNORE_INDEX  # [CLS], [SEP]
    first = wid.index(3)
    assert labels[first] == names.index("B-MISC") and labels[first + 1 : first + n_long] == [-100] * (
        n_long - 1
    )

    all_labels, _ = align_labels(wid, ids, label_all_tokens=True)
    assert all_labels[first : first + n_long] == [names.index("B-MISC")] * n_long
    hf, _ = align_labels(wid, ids, label_all_tokens=True, continuation=inside_label_map(names))
    assert hf[first] == names.index("B-MISC") and hf[first + 1 : first + n_long] == [
        names.index("I-MISC")
    ] * (n_long - 1)
    assert [lab for w, lab in zip(wid, all_labels) if w is not None] == [ids[w] for w in wid if w is not None]

    # the same word ids give back the word tags when the model predicts the labels it was trained on
    token_pred = [0 if lab == IGNORE_INDEX else lab for lab in hf]
    assert word_predictions(wid, token_pred, len(words)) == ids


def test_align_labels_truncation(tokenizer):
    words = ["John", LONG, "lives", "in", "Paris"]
    ids = [1, 3, 0, 0, 5]
    enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=8)
    wid = enc.word_ids()
    assert len(wid) == 8 and wid[-1] is None  # [SEP] kept, the long word is cut mid-way
    labels, lost = align_labels(wid, ids)
    assert lost == 3  # "lives", "in", "Paris"
    assert [lab for lab in labels if lab != IGNORE_INDEX] == [1, 3]
    assert word_predictions(wid, [4] * 8, len(words)) == [4, 4, 0, 0, 0]  # truncated -> fallback O
    assert word_predictions(wid, [4] * 8, len(words), fallback=2) == [4, 4, 2, 2, 2]


def test_word_predictions_reads_first_sub_token():
    wid = [None, 0, 0, 1, 2, 2, 2, None]
    pred = [9, 1, 7, 2, 3, 8, 8, 9]
    assert word_predictions(wid, pred, 3) == [1, 2, 3]
    with pytest.raises(ValueError, match="token predictions"):
        word_predictions(wid, pred[:4], 3)
    with pytest.raises(ValueError, match="word id 2 is outside"):
        word_predictions(wid, pred, 2)


# ---------------------------------------------------------------------------------------- decoding
@pytest.mark.parametrize(
    "tags, scheme, expect",
    [
        (
            ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC"],
            "IOB2",
            [("PER", 0, 1), ("LOC", 3, 3), ("LOC", 4, 5)],
        ),
        (["O", "I-PER", "B-LOC", "I-LOC"], "IOB2", [("LOC", 2, 3)]),  # stray I- dropped (strict)
        (["I-PER", "I-PER", "B-PER", "I-LOC"], "IOB1", [("PER", 0, 1), ("PER", 2, 2), ("LOC", 3, 3)]),
        (["I-PER", "O", "I-PER", "I-PER"], "IOB1", [("PER", 0, 0), ("PER", 2, 3)]),
        (["S-PER", "B-LOC", "I-LOC", "E-LOC", "B-X", "O", "E-X"], "IOBES", [("PER", 0, 0), ("LOC", 1, 3)]),
        (["O", "O"], "IOB2", []),
    ],
)
def test_spans_examples(tags, scheme, expect):
    assert spans(tags, scheme) == expect


def test_spans_rejects_foreign_prefix():
    with pytest.raises(ValueError, match="'E-PER' is not valid in IOB2"):
        spans(["B-PER", "E-PER"], "IOB2")
    with pytest.raises(ValueError, match="not valid in IOB1"):
        spans(["PER"], "IOB1")


def _encode(entities_or_o: list, scheme: str) -> list[str]:
    """Tags for a sentence given as a list of 'O' and (type, length) entities, encoded in ``scheme``."""
    out, prev_type = [], None
    for item in entities_or_o:
        if item == "O":
            out.append("O")
            prev_type = None
            continue
        t, n = item
        if scheme == "IOB2":
            out += [f"B-{t}"] + [f"I-{t}"] * (n - 1)
        elif scheme == "IOB1":
            out += [f"B-{t}" if prev_type == t else f"I-{t}"] + [f"I-{t}"] * (n - 1)
        else:
            out += [f"S-{t}"] if n == 1 else [f"B-{t}"] + [f"I-{t}"] * (n - 2) + [f"E-{t}"]
        prev_type = t
    return out


def _seqeval_spans(tags, scheme):
    import seqeval.scheme

    ents = seqeval.scheme.Tokens(list(tags), getattr(seqeval.scheme, scheme)).entities
    return sorted((e.tag, e.start, e.end - 1) for e in ents)


def _random_sentence(rng):
    items = [
        rng.choice(["O", ("PER", rng.randint(1, 3)), ("LOC", rng.randint(1, 4))])
        for _ in range(rng.randint(1, 7))
    ]
    expect, pos = [], 0
    for item in items:
        if item != "O":
            expect.append((item[0], pos, pos + item[1] - 1))
        pos += 1 if item == "O" else item[1]
    return items, expect


@pytest.mark.parametrize("scheme", ["IOB1", "IOB2", "IOBES"])
def test_spans_match_seqeval_on_random_valid_sequences(scheme):
    rng = random.Random(hash(scheme) % 1000)
    corpus = []
    for _ in range(1500):
        items, expect = _random_sentence(rng)
        tags = _encode(items, scheme)
        assert spans(tags, scheme) == expect  # the entities the sentence was built from
        assert sorted(spans(tags, scheme)) == _seqeval_spans(tags, scheme), tags
        corpus.append(tags)
    validate_tags(corpus, scheme)
    assert detect_scheme(corpus) == scheme


@pytest.mark.parametrize("scheme", ["IOB1", "IOB2", "IOBES"])
def test_spans_match_seqeval_on_random_ill_formed_sequences(scheme):
    """Model predictions need not be valid: strict mode drops broken pieces and so must spans."""
    rng = random.Random(7)
    vocab = ["O"] + [f"{p}-{t}" for p in ("BIES" if scheme == "IOBES" else "BI") for t in ("X", "Y")]
    for _ in range(3000):
        tags = [rng.choice(vocab) for _ in range(rng.randint(1, 8))]
        assert sorted(spans(tags, scheme)) == _seqeval_spans(tags, scheme), tags


def test_entity_rows():
    tokens = ["Angela", "Merkel", "visited", "New", "York"]
    tags = ["B-PER", "I-PER", "O", "B-LOC", "I-LOC"]
    assert entity_rows(tokens, tags, "IOB2") == [
        {"type": "PER", "start": 0, "end": 1, "text": "Angela Merkel"},
        {"type": "LOC", "start": 3, "end": 4, "text": "New York"},
    ]
    with pytest.raises(ValueError, match="5 tokens but 2 tags"):
        entity_rows(tokens, tags[:2], "IOB2")


# ----------------------------------------------------------------------------------------- metrics
def test_helpers_compose_file_to_entities(tmp_path, tokenizer):
    """The path the token-classification task takes: file -> ids -> sub-token labels -> words -> spans."""
    path = _write(
        tmp_path, "ner.conll", f"Ada B-PER\nLovelace I-PER\nmet O\n{LONG} O\nin O\nLondon B-LOC\n\nOK O\n"
    )
    rows = read_conll(path)
    scheme = validate_sentences(rows)
    names = label_list(r["tags"] for r in rows)
    assert scheme == "IOB2" and names == ["O", "B-LOC", "B-PER", "I-PER"]
    y_pred = []
    for r in rows:
        enc = tokenizer(r["tokens"], is_split_into_words=True, truncation=True, max_length=12)
        labels, lost = align_labels(enc.word_ids(), [names.index(t) for t in r["tags"]])
        assert lost == (2 if r["tokens"][0] == "Ada" else 0)  # "in London" cut by max_length
        pred = word_predictions(enc.word_ids(), [max(lab, 0) for lab in labels], len(r["tokens"]))
        y_pred.append([names[i] for i in pred])
    assert y_pred[0] == ["B-PER", "I-PER", "O", "O", "O", "O"]  # truncated London -> O
    assert entity_rows(rows[0]["tokens"], y_pred[0], scheme) == [
        {"type": "PER", "start": 0, "end": 1, "text": "Ada Lovelace"}
    ]
    m = tagging_metrics([r["tags"] for r in rows], y_pred, scheme)
    assert (
        m["entity_precision"] == 1.0 and m["entity_recall"] == 0.5 and m["per_type"]["LOC"]["recall"] == 0.0
    )


def test_tagging_metrics_hand_computed():
    y_true = [["B-PER", "I-PER", "O", "B-LOC"], ["B-PER", "O", "O"]]
    y_pred = [
        ["B-PER", "I-PER", "O", "B-LOC"],
        ["B-PER", "I-PER", "B-MISC"],
    ]  # PER boundary wrong, MISC extra
    m = tagging_metrics(y_true, y_pred, "IOB2")
    assert m["entity_precision"] == pytest.approx(2 / 4)
    assert m["entity_recall"] == pytest.approx(2 / 3)
    assert m["entity_f1"] == pytest.approx(2 * (1 / 2) * (2 / 3) / (1 / 2 + 2 / 3))
    assert m["token_accuracy"] == pytest.approx(5 / 7)
    assert m["n_entities"] == 3
    assert m["per_type"]["PER"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert m["per_type"]["LOC"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert m["per_type"]["MISC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert all(isinstance(v, float) for k, v in m.items() if k.startswith(("entity", "token")))


def test_tagging_metrics_is_strict():
    # seqeval's default (conlleval) mode would accept I-PER I-PER as B-PER I-PER; strict mode does not
    m = tagging_metrics([["B-PER", "I-PER"]], [["I-PER", "I-PER"]], "IOB2")
    assert m["entity_f1"] == 0.0 and m["token_accuracy"] == 0.5


def test_tagging_metrics_always_o_and_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # zero divisions are defined as 0, not warned about
        m = tagging_metrics([["B-PER", "O"], ["O"]], [["O", "O"], ["O"]], "IOB2")
        none = tagging_metrics([["O", "O"]], [["O", "O"]], "IOB2")  # no entity on either side
    assert none["entity_f1"] == 0.0 and none["per_type"] == {} and none["token_accuracy"] == 1.0
    assert "micro avg" in per_type_table(none)
    assert m["entity_f1"] == 0.0 and m["entity_recall"] == 0.0 and m["token_accuracy"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="sentence 1: 2 true tags but 1 predicted"):
        tagging_metrics([["O", "O"]], [["O"]], "IOB2")
    with pytest.raises(ValueError, match="2 true sentences but 1 predicted"):
        tagging_metrics([["O"], ["O"]], [["O"]], "IOB2")


@pytest.mark.parametrize("scheme", ["IOB1", "IOB2", "IOBES"])
def test_tagging_metrics_match_span_counting(scheme):
    """Micro P/R/F1 recounted from ``spans`` (itself checked against seqeval) on noisy predictions."""
    rng = random.Random(3)
    vocab = sorted({t for _ in range(50) for t in _encode(_random_sentence(rng)[0], scheme)})
    y_true, y_pred = [], []
    for _ in range(200):
        tags = _encode(_random_sentence(rng)[0], scheme)
        y_true.append(tags)
        y_pred.append([rng.choice(vocab) if rng.random() < 0.3 else t for t in tags])
    gold = {(i, *s) for i, t in enumerate(y_true) for s in spans(t, scheme)}
    pred = {(i, *s) for i, t in enumerate(y_pred) for s in spans(t, scheme)}
    tp = len(gold & pred)
    m = tagging_metrics(y_true, y_pred, scheme)
    assert m["entity_precision"] == pytest.approx(tp / len(pred))
    assert m["entity_recall"] == pytest.approx(tp / len(gold))
    assert m["n_entities"] == len(gold)
    for t in ("PER", "LOC"):
        g = {s for s in gold if s[1] == t}
        assert m["per_type"][t]["support"] == len(g)
        assert m["per_type"][t]["recall"] == pytest.approx(len(g & pred) / len(g))


def test_tagging_metrics_without_seqeval_says_how_to_install(monkeypatch):
    for mod in ("seqeval", "seqeval.scheme", "seqeval.metrics"):
        monkeypatch.setitem(sys.modules, mod, None)  # makes the import fail
    with pytest.raises(ImportError, match=r"need seqeval: pip install 'setuptools_scm<9' && pip install"):
        tagging_metrics([["O"]], [["O"]], "IOB2")


def test_per_type_table():
    m = tagging_metrics([["B-PER", "O", "B-LOC"]], [["B-PER", "O", "O"]], "IOB2")
    table = per_type_table(m)
    lines = table.splitlines()
    assert lines[0].split() == ["type", "precision", "recall", "f1", "support"]
    assert lines[1].split() == ["LOC", "0.0000", "0.0000", "0.0000", "1"]
    assert lines[2].split() == ["PER", "1.0000", "1.0000", "1.0000", "1"]
    assert set(lines[3]) == {"-"}
    assert lines[4].split() == ["micro", "avg", "1.0000", "0.5000", "0.6667", "2"]
    assert lines[5].split() == ["token", "accuracy", "0.6667"]


def test_plain_pos_tags_are_a_scheme_with_token_metrics():
    """POS tags (no B-/I- prefix) are accepted: no entities, token accuracy and per-tag F1."""
    seqs = [["DT", "NN", "VBZ"], ["NNP", "VBZ", "."]]
    assert (
        detect_scheme(seqs) == T.PLAIN
        and validate_sentences([{"tokens": ["a", "b", "c"], "tags": s} for s in seqs]) == T.PLAIN
    )
    assert label_list(seqs) == [".", "DT", "NN", "NNP", "VBZ"]  # no O: none occurs
    assert label_list([["O", "NN"]]) == ["O", "NN"]
    assert T.scheme_of_labels(["DT", "NN"]) == T.PLAIN and T.scheme_of_labels(["O", "B-PER"]) == "IOB2"
    assert spans(["NN", "VBZ"], T.PLAIN) == [] and entity_rows(["a"], ["NN"], T.PLAIN) == []
    m = tagging_metrics([["DT", "NN", "VBZ", "NN"]], [["DT", "NN", "NN", "VBZ"]], T.PLAIN)
    assert m["token_accuracy"] == 0.5 and m["n_words"] == 4 and "entity_f1" not in m
    assert m["per_tag"]["DT"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert m["per_tag"]["NN"]["f1"] == pytest.approx(0.5) and m["per_tag"]["VBZ"]["f1"] == 0.0
    assert m["tag_macro_f1"] == pytest.approx(0.5)
    lines = per_type_table(m).splitlines()
    assert lines[0].split()[0] == "tag" and lines[-2].split()[:2] == ["macro", "avg"]
