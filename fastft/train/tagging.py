"""Token-classification (NER, POS) building blocks: reading, tag schemes, alignment, decoding, metrics.

Pure python + numpy (seqeval for the metrics); the token-classification task builds on these.

* **Reading.** ``read_conll(path)``: one token per line, its tag in the LAST column (token = first column,
  whitespace- or tab-separated), blank lines between sentences, ``-DOCSTART-`` lines ignored; CRLF and a
  UTF-8 BOM are accepted. ``read_records(rows, tokens_column, tags_column)`` does the same for JSON/JSONL
  rows or an HF dataset (integer tags are mapped through the ``ClassLabel`` names). Each sentence is a
  dict ``{tokens, tags, line, where}``: ``line`` is the 1-based first line (CoNLL) or row (records), and
  ``where`` names it in error messages (``"ner.conll:12"``, ``"ner.jsonl row 3"``).
* **Schemes.** IOB1, IOB2 and IOBES, with seqeval's definitions. IOB2: every entity starts with ``B-X``
  and ``I-X`` only continues an ``X`` entity. IOB1: entities start with ``I-X``; ``B-X`` appears only to
  split two adjacent ``X`` entities. IOBES: ``S-X`` for one word, otherwise ``B-X I-X* E-X``.
  ``detect_scheme`` picks the one scheme the data is valid under. Data with only ``I-``/``O`` tags (IO
  tagging) is valid IOB1 and is read as IOB1: adjacent words of the same type form ONE entity. All-``O``
  data has no entities and is called IOB2. Tags without a prefix throughout (POS: ``NN``, ``VBZ``;
  ``O`` may occur) are the scheme ``plain``: no entities, scored per token (accuracy, per-tag F1).
  A prefix-less tag among prefixed ones (``PER`` beside ``B-LOC``) is rejected.
* **Alignment.** ``align_labels`` puts each word's tag on its first sub-token and -100 on the rest and on
  special tokens; ``label_all_tokens`` copies the word's tag to every sub-token.
  ``word_predictions`` reads a word's prediction from its first sub-token.
* **Decoding and metrics.** ``spans`` extracts entities exactly as seqeval's strict mode does (also on
  ill-formed predicted sequences: it drops the pieces strict mode drops); ``tagging_metrics`` reports
  entity precision/recall/F1 (micro and per type, seqeval ``mode="strict"``) and token accuracy; for
  ``plain`` tags token accuracy, per-tag precision/recall/F1 and their macro average.

Bad data raises ``fastft.train.data.DataError`` (one line naming the sentence and the fix; CLI exit 2).
Programming errors (mismatched internal lengths) raise ``ValueError``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "SCHEMES",
    "PLAIN",
    "IGNORE_INDEX",
    "read_conll",
    "to_iob2",
    "scheme_of_labels",
    "read_records",
    "detect_scheme",
    "validate_tags",
    "validate_sentences",
    "label_list",
    "unseen_tags",
    "align_labels",
    "inside_label_map",
    "word_predictions",
    "spans",
    "entity_rows",
    "tagging_metrics",
    "per_type_table",
    "is_plain",
]

SCHEMES = ("IOB1", "IOB2", "IOBES")
#: tags without a BIO scheme (POS: NN, VBZ): no entities, token-level metrics.
PLAIN = "plain"
IGNORE_INDEX = -100
_PREFIXES = {"IOB1": "BI", "IOB2": "BI", "IOBES": "BIES"}
_PREFIX_ORDER = {"B": 0, "I": 1, "E": 2, "S": 3}
_OUTSIDE = ("O", "")


def _data_error(msg: str) -> Exception:
    from fastft.train.data import DataError  # lazy: data.py imports the task table, which imports us

    return DataError(msg)


def _where(where: Sequence[str] | None, i: int) -> str:
    return where[i] if where is not None else f"row {i + 1}"


# ----------------------------------------------------------------------------------------- reading
def read_conll(path: str) -> list[dict]:
    """Sentences of a CoNLL-style file (``.conll``, ``.txt``, ``.tsv``); see the module docstring."""
    if not os.path.isfile(path):
        raise _data_error(f"{path!r} does not exist: check the path")
    name = os.path.basename(path)
    sentences: list[dict] = []
    tokens: list[str] = []
    tags: list[str] = []
    first = 0

    def flush() -> None:
        if tokens:
            sentences.append(
                {"tokens": list(tokens), "tags": list(tags), "line": first, "where": f"{name}:{first}"}
            )
            tokens.clear()
            tags.clear()

    try:
        # utf-8-sig drops a BOM; universal newlines turn CRLF into LF.
        with open(path, encoding="utf-8-sig") as f:
            for lineno, raw in enumerate(f, 1):
                line = raw.strip()
                fields = [c.strip() for c in line.split("\t")] if "\t" in line else line.split()
                fields = [c for c in fields if c]
                if not fields or fields[0] == "-DOCSTART-":
                    flush()
                    continue
                if len(fields) < 2:
                    raise _data_error(
                        f"{name}:{lineno}: {line!r} has one column; each line needs a token and its tag "
                        "(e.g. 'Paris B-LOC'), with blank lines between sentences"
                    )
                if not tokens:
                    first = lineno
                tokens.append(fields[0])
                tags.append(fields[-1])
    except UnicodeDecodeError as e:
        raise _data_error(
            f"{name}: not UTF-8 text ({e.reason} at byte {e.start}); re-save it as UTF-8"
        ) from None
    flush()
    if not sentences:
        raise _data_error(f"{name}: no sentences found; write one 'token tag' pair per line")
    return sentences


def _record_tags(tags: Any, names: Sequence[str] | None, at: str, column: str) -> list[str]:
    out = []
    for t in tags:
        if isinstance(t, str):
            out.append(t)
        elif isinstance(t, (int, np.integer)) and not isinstance(t, bool):
            if names is None:
                raise _data_error(
                    f"{at}: {column!r} holds integer tags but no tag names are known; "
                    "use string tags (B-PER) or an HF dataset whose tag column is a sequence of ClassLabel"
                )
            if not 0 <= int(t) < len(names):
                raise _data_error(f"{at}: tag id {int(t)} is outside the {len(names)} tag names")
            out.append(names[int(t)])
        else:
            raise _data_error(f"{at}: {column!r} must be a list of tag strings, got an item {t!r}")
    return out


def read_records(
    records: Iterable[dict],
    tokens_column: str = "tokens",
    tags_column: str = "tags",
    names: Sequence[str] | None = None,
    source: str = "data",
) -> list[dict]:
    """Sentences from JSON/JSONL rows or an HF dataset: ``row[tokens_column]`` and ``row[tags_column]``
    are lists. ``names`` maps integer tags to strings (an HF ``Sequence(ClassLabel)`` feature's names).
    Counts and the scheme are checked by ``validate_sentences``."""
    sentences = []
    for i, row in enumerate(records):
        at = f"{source} row {i + 1}"
        for col, flag in ((tokens_column, "--tokens-column"), (tags_column, "--label-column")):
            if col not in row:
                cols = ", ".join(map(str, row))
                raise _data_error(f"{at}: column {col!r} not found; columns are: {cols} (set {flag})")
        toks, tags = row[tokens_column], row[tags_column]
        if isinstance(toks, str) or not isinstance(toks, Sequence | np.ndarray):
            raise _data_error(f"{at}: {tokens_column!r} must be a list of words, got {type(toks).__name__}")
        if isinstance(tags, str) or not isinstance(tags, Sequence | np.ndarray):
            raise _data_error(f"{at}: {tags_column!r} must be a list of tags, got {type(tags).__name__}")
        if any(t is None or isinstance(t, (list, dict)) for t in toks):
            raise _data_error(
                f"{at}: {tokens_column!r} holds an empty or nested item; give one string per word"
            )
        tokens = [str(t) for t in toks]
        sentences.append(
            {"tokens": tokens, "tags": _record_tags(tags, names, at, tags_column), "line": i + 1, "where": at}
        )
    return sentences


# ----------------------------------------------------------------------------------------- schemes
def _parse(tag: str) -> tuple[str, str] | None:
    """``"B-PER"`` -> ``("B", "PER")``, ``"O"`` -> ``("O", "")``; None when the tag has no known form."""
    if tag == "O":
        return _OUTSIDE
    if len(tag) >= 3 and tag[0] in _PREFIX_ORDER and tag[1] == "-" and tag[2:].strip("-") == tag[2:]:
        return tag[0], tag[2:]
    return None


def _parse_seq(tags: Sequence[str], at: str) -> list[tuple[str, str]]:
    out = []
    for k, t in enumerate(tags):
        p = _parse(t) if isinstance(t, str) else None
        if p is None:
            raise _data_error(
                f"{at}: tag {t!r} (word {k + 1}) is not O or PREFIX-TYPE (prefix B, I, E or S) like the other "
                "tags; write e.g. B-PER (for IO tagging, I-PER), or prefix-less tags throughout (POS: NN, VBZ)"
            )
        out.append(p)
    return out


def _violation(seq: list[tuple[str, str]], scheme: str) -> str | None:
    """The first way ``seq`` breaks ``scheme``, as a phrase, or None when it is valid."""
    allowed = _PREFIXES[scheme]
    for k, (p, t) in enumerate(seq):
        prev = seq[k - 1] if k else _OUTSIDE
        nxt = seq[k + 1] if k + 1 < len(seq) else _OUTSIDE
        tag, w = f"{p}-{t}", f"word {k + 1}"
        if p == "O":
            continue
        if p not in allowed:
            return f"{tag} ({w}) has a prefix {scheme} does not use"
        if scheme == "IOB2" and p == "I" and prev not in (("B", t), ("I", t)):
            return f"{tag} ({w}) starts an entity, but IOB2 starts every entity with B-"
        if scheme == "IOB1" and p == "B" and prev not in (("B", t), ("I", t)):
            return (
                f"{tag} ({w}) follows {_fmt(prev)}, but IOB1 uses B- only right after an entity of type {t}"
            )
        if scheme == "IOBES":
            if p in "IE" and prev not in (("B", t), ("I", t)):
                return (
                    f"{tag} ({w}) follows {_fmt(prev)}, but IOBES continues an entity only after B-{t}/I-{t}"
                )
            if p in "BI" and nxt not in (("I", t), ("E", t)):
                return f"{tag} ({w}) is not followed by I-{t}/E-{t}: IOBES closes every entity with E- (S- for one word)"
    return None


def _fmt(pt: tuple[str, str]) -> str:
    return "O" if pt[0] == "O" else f"{pt[0]}-{pt[1]}"


def _check_scheme(scheme: str) -> str:
    if scheme not in (*SCHEMES, PLAIN):
        raise ValueError(f"tag scheme must be one of {', '.join(SCHEMES)} or {PLAIN}, got {scheme!r}")
    return scheme


def is_plain(tag_seqs: Iterable[Sequence[str]]) -> bool:
    """Every tag but ``O`` lacks a B-/I-/E-/S- prefix, and there is one (POS tags: ``NN``, ``VBZ``)."""
    other = [t for seq in tag_seqs for t in seq if t != "O"]
    return bool(other) and all(not isinstance(t, str) or _parse(t) is None for t in other)


def _first_violation(parsed: list[list[tuple[str, str]]], scheme: str, where) -> str | None:
    for i, seq in enumerate(parsed):
        v = _violation(seq, scheme)
        if v is not None:
            return f"{_where(where, i)}: {v}"
    return None


def detect_scheme(tag_seqs: Sequence[Sequence[str]], where: Sequence[str] | None = None) -> str:
    """The tag scheme the data is valid under: ``plain`` when no tag has a prefix (POS), IOBES when any
    E-/S- tag occurs, else IOB2 or IOB1 (whichever holds; all-O data -> IOB2, IO-only data -> IOB1).
    Raises one line naming the offending sentence and tag when none holds (e.g. IOB1- and IOB2-style
    entities mixed, or a prefix-less tag among prefixed ones)."""
    if is_plain(tag_seqs):
        return PLAIN
    parsed = [_parse_seq(s, _where(where, i)) for i, s in enumerate(tag_seqs)]
    prefixes = {p for seq in parsed for p, _ in seq}
    if prefixes & {"E", "S"}:
        v = _first_violation(parsed, "IOBES", where)
        if v is None:
            return "IOBES"
        raise _data_error(f"E-/S- tags make this IOBES, but {v}; fix the tags so one scheme holds")
    v2 = _first_violation(parsed, "IOB2", where)
    if v2 is None:
        return "IOB2"
    v1 = _first_violation(parsed, "IOB1", where)
    if v1 is None:
        return "IOB1"
    raise _data_error(
        f"inconsistent tag scheme, neither IOB2 nor IOB1 holds: {v2}; {v1}; make every sentence follow one"
    )


def _check_shape(tags: Sequence[str], tokens: Sequence[str] | None, at: str) -> None:
    if len(tags) == 0 or (tokens is not None and len(tokens) == 0):
        raise _data_error(f"{at}: empty sentence (no tokens); drop it")
    if tokens is not None and len(tokens) != len(tags):
        raise _data_error(
            f"{at}: {len(tokens)} tokens but {len(tags)} tags; every token needs exactly one tag"
        )


def validate_tags(
    tag_seqs: Sequence[Sequence[str]],
    scheme: str,
    where: Sequence[str] | None = None,
    token_seqs: Sequence[Sequence[str]] | None = None,
) -> None:
    """Raise one line naming the first bad sentence: empty, a token/tag count mismatch (when
    ``token_seqs`` is given), a tag that is not O/PREFIX-TYPE, or a tag sequence invalid under ``scheme``."""
    _check_scheme(scheme)
    for i, tags in enumerate(tag_seqs):
        at = _where(where, i)
        _check_shape(tags, None if token_seqs is None else token_seqs[i], at)
        if scheme == PLAIN:
            continue  # any tag string goes
        v = _violation(_parse_seq(tags, at), scheme)
        if v is not None:
            raise _data_error(f"{at}: {v} (tag scheme {scheme}); fix the tags or the scheme")


def validate_sentences(sentences: Sequence[dict], scheme: str | None = None) -> str:
    """Validate reader output (``{tokens, tags, where}`` dicts) and return the scheme (detected when
    None). Empty and mismatched sentences are reported before the scheme, which they would confuse."""
    tags = [s["tags"] for s in sentences]
    tokens = [s["tokens"] for s in sentences]
    where = [s.get("where", f"row {i + 1}") for i, s in enumerate(sentences)]
    for i in range(len(sentences)):
        _check_shape(tags[i], tokens[i], where[i])
    scheme = detect_scheme(tags, where) if scheme is None else scheme
    validate_tags(tags, scheme, where, tokens)
    return scheme


def to_iob2(tags: Sequence[str], scheme: str) -> list[str]:
    """The same entities in IOB2 (``B-X`` opens every entity): IOB1's entity-opening ``I-X`` becomes
    ``B-X``; IOB2, IOBES and plain tags are returned unchanged (IOBES is kept: it has its own labels)."""
    if _check_scheme(scheme) != "IOB1":
        return list(tags)
    out = list(tags)
    for t, s, _ in spans(tags, "IOB1"):
        out[s] = "B-" + t
    return out


def scheme_of_labels(names: Iterable[str]) -> str:
    """The scheme a trained label set decodes with: ``plain`` when no label has a prefix (POS), IOBES
    when it has E-/S- labels, else IOB2 (fastft stores IOB1 data as IOB2, see ``to_iob2``)."""
    names = [str(n) for n in names]
    if is_plain([names]):
        return PLAIN
    return "IOBES" if any(str(n)[:2] in ("E-", "S-") for n in names) else "IOB2"


def label_list(tag_seqs: Iterable[Sequence[str]]) -> list[str]:
    """Every tag that occurs, in a data-order-independent order: ``O`` first (always present: it is the
    fallback prediction, id 0), then by entity type, then by prefix in scheme order B, I, E, S. Plain
    tags (POS) are sorted, ``O`` first only when it occurs (no fallback tag: id 0 is the first)."""
    seen = {t for seq in tag_seqs for t in seq}
    if is_plain([list(seen)]):
        return (["O"] if "O" in seen else []) + sorted(seen - {"O"})
    seen.discard("O")
    bad = [t for t in seen if _parse(t) is None]
    if bad:
        raise _data_error(f"tag {sorted(bad)[0]!r} is not O or PREFIX-TYPE (e.g. B-PER)")
    return ["O"] + sorted(seen, key=lambda t: (t[2:], _PREFIX_ORDER[t[0]]))


def unseen_tags(train_tags: Iterable[Sequence[str]], other_tags: Iterable[Sequence[str]]) -> set[str]:
    """Tags in ``other_tags`` (e.g. the test split) that never occur in ``train_tags``: the model cannot
    predict them, so the caller warns."""
    train = {t for seq in train_tags for t in seq}
    return {t for seq in other_tags for t in seq} - train


# --------------------------------------------------------------------------------------- alignment
def align_labels(
    word_ids: Sequence[int | None],
    word_labels: Sequence[int],
    label_all_tokens: bool = False,
    continuation: Sequence[int] | None = None,
) -> tuple[list[int], int]:
    """Per-sub-token labels from per-word label ids, and the number of words truncated away.

    ``word_ids`` is a fast tokenizer's ``encoding.word_ids()`` (None for special tokens). The first
    sub-token of each word gets the word's label; later sub-tokens get -100 (ignored by the loss), or, with
    ``label_all_tokens``, the word's label as well. By default that is the word's label VERBATIM (a
    ``B-X`` word gives ``B-X`` on every piece): predictions are read from first sub-tokens only
    (``word_predictions``), so continuation labels are extra training signal and never enter the decoded
    sequence. Pass ``continuation`` (label id -> label id, e.g. ``inside_label_map``) for Hugging Face's
    variant, which turns ``B-X`` into ``I-X`` on continuation pieces.

    A word counts as truncated when its index never appears in ``word_ids`` (cut by ``max_length``, or,
    rarely, a word the tokenizer turns into no piece at all); it gets no label and is predicted as the
    fallback by ``word_predictions``.
    """
    labels = []
    prev = None
    seen = set()
    for w in word_ids:
        if w is None:
            labels.append(IGNORE_INDEX)
        elif not 0 <= w < len(word_labels):
            raise ValueError(f"word id {w} is outside the sentence's {len(word_labels)} words")
        elif w != prev:
            labels.append(int(word_labels[w]))
        elif label_all_tokens:
            lab = int(word_labels[w])
            labels.append(int(continuation[lab]) if continuation is not None else lab)
        else:
            labels.append(IGNORE_INDEX)
        if w is not None:
            seen.add(w)
        prev = w
    return labels, len(word_labels) - len(seen)


def inside_label_map(names: Sequence[str]) -> list[int]:
    """Label id -> the id of its inside form (``B-X`` -> ``I-X`` when ``I-X`` is a label), else itself:
    the ``continuation`` map for Hugging Face's ``label_all_tokens`` behaviour."""
    index = {n: i for i, n in enumerate(names)}
    return [index.get("I-" + n[2:], i) if n.startswith("B-") else i for i, n in enumerate(names)]


def word_predictions(
    word_ids: Sequence[int | None], token_pred: Sequence[int], n_words: int, fallback: int = 0
) -> list[int]:
    """Each word's predicted label id: the prediction at its first sub-token. Words that have no
    sub-token (truncated away) get ``fallback`` (0 = ``O`` with ``label_list``'s order)."""
    if len(token_pred) < len(word_ids):
        raise ValueError(f"{len(token_pred)} token predictions for {len(word_ids)} tokens")
    out = [fallback] * n_words
    done = set()
    for pos, w in enumerate(word_ids):
        if w is not None and w not in done:
            if not 0 <= w < n_words:
                raise ValueError(f"word id {w} is outside the sentence's {n_words} words")
            out[w] = int(token_pred[pos])
            done.add(w)
    return out


# ---------------------------------------------------------------------------------------- decoding
def _spans_parsed(seq: list[tuple[str, str]], scheme: str) -> list[tuple[str, int, int]]:
    """seqeval strict-mode entities. Ill-formed pieces are dropped as strict mode drops them: IOB2 drops
    an I-X that does not continue an X entity; IOBES drops a B-X run not closed by E-X; IOB1 drops a B-X
    not right after an X entity, and a lone B-X directly followed by a B- of another type."""
    out = []
    n, i = len(seq), 0
    while i < n:
        p, t = seq[i]
        prev = seq[i - 1] if i else _OUTSIDE
        if scheme == "IOBES" and p == "S":
            out.append((t, i, i))
            i += 1
            continue
        if scheme == "IOB2" or scheme == "IOBES":
            start = p == "B"
        else:  # IOB1: I-X opens unless it continues an I-X; B-X opens only right after an X entity
            start = (p == "I" and prev != ("I", t)) or (p == "B" and prev in (("I", t), ("B", t)))
        if not start:
            i += 1
            continue
        j = i + 1
        if scheme == "IOBES":
            while j < n and seq[j][1] == t and seq[j][0] in ("I", "E") and seq[j - 1][0] != "E":
                j += 1
            keep = seq[j - 1][0] == "E"
        else:
            while j < n and seq[j] == ("I", t):
                j += 1
            nxt = seq[j] if j < n else _OUTSIDE
            keep = not (scheme == "IOB1" and j == i + 1 and p == "B" and nxt[0] == "B" and nxt[1] != t)
        if keep:
            out.append((t, i, j - 1))
        i = j
    return out


def spans(tags: Sequence[str], scheme: str) -> list[tuple[str, int, int]]:
    """Entities as ``(type, start_word, end_word_inclusive)``, exactly seqeval's strict-mode extraction
    for ``scheme``. A tag whose prefix the scheme does not use raises ValueError (as seqeval does).
    Plain tags have no entities."""
    if _check_scheme(scheme) == PLAIN:
        return []
    seq = []
    for t in tags:
        p = _parse(t)
        if p is None or (p[0] != "O" and p[0] not in _PREFIXES[scheme]):
            raise ValueError(f"tag {t!r} is not valid in {scheme}")
        seq.append(p)
    return _spans_parsed(seq, scheme)


def entity_rows(tokens: Sequence[str], tags: Sequence[str], scheme: str) -> list[dict]:
    """``spans`` as JSON-ready dicts ``{type, start, end, text}`` (word indices, end inclusive; text =
    the words joined by single spaces), for ``fastft predict``."""
    if len(tokens) != len(tags):
        raise ValueError(f"{len(tokens)} tokens but {len(tags)} tags")
    return [
        {"type": t, "start": s, "end": e, "text": " ".join(tokens[s : e + 1])}
        for t, s, e in spans(tags, scheme)
    ]


# ----------------------------------------------------------------------------------------- metrics
def tagging_metrics(y_true: Sequence[Sequence[str]], y_pred: Sequence[Sequence[str]], scheme: str) -> dict:
    """Entity-level micro precision/recall/F1 and per-type scores (seqeval, ``mode="strict"`` with the
    scheme's class: an entity counts only when type and both boundaries match), plus token accuracy.

    Returns python floats: ``entity_precision``, ``entity_recall``, ``entity_f1``, ``token_accuracy``,
    ``n_entities`` (true entities) and ``per_type`` = {type: {precision, recall, f1, support}}. Undefined
    ratios (no true or no predicted entities) are 0, so an always-O predictor scores F1 0. ``plain``
    tags: see :func:`_token_metrics`.
    """
    _check_scheme(scheme)
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true sentences but {len(y_pred)} predicted")
    for i, (a, b) in enumerate(zip(y_true, y_pred)):
        if len(a) != len(b):
            raise ValueError(f"sentence {i + 1}: {len(a)} true tags but {len(b)} predicted")
    yt, yp = [list(s) for s in y_true], [list(s) for s in y_pred]
    if scheme == PLAIN:
        return _token_metrics(yt, yp)
    try:
        import seqeval.scheme
        from seqeval.metrics import classification_report
    except ImportError:
        raise ImportError(
            "token-classification metrics need seqeval: pip install 'setuptools_scm<9' && "
            "pip install --no-build-isolation seqeval (or rerun scripts/setup.sh)"
        ) from None

    with warnings.catch_warnings():  # no entities at all: numpy warns on the (unused) macro average
        warnings.simplefilter("ignore", RuntimeWarning)
        report = classification_report(
            yt, yp, mode="strict", scheme=getattr(seqeval.scheme, scheme), output_dict=True, zero_division=0
        )
    micro = report.pop("micro avg")
    per_type = {
        k: {
            "precision": float(v["precision"]),
            "recall": float(v["recall"]),
            "f1": float(v["f1-score"]),
            "support": int(v["support"]),
        }
        for k, v in sorted(report.items())
        if not k.endswith(" avg")
    }
    n_tok = sum(len(s) for s in yt)
    correct = sum(a == b for s, r in zip(yt, yp) for a, b in zip(s, r))
    return {
        "entity_precision": float(micro["precision"]),
        "entity_recall": float(micro["recall"]),
        "entity_f1": float(micro["f1-score"]),
        "token_accuracy": correct / n_tok if n_tok else 0.0,
        "n_entities": int(micro["support"]),
        "per_type": per_type,
    }


def _token_metrics(yt: list[list[str]], yp: list[list[str]]) -> dict:
    """Plain tags (POS): ``token_accuracy``, ``tag_macro_f1`` (over the tags in ``yt``), ``n_words`` and
    ``per_tag`` = {tag: {precision, recall, f1, support}}, per token; undefined ratios are 0."""
    true = [t for s in yt for t in s]
    pred = [t for s in yp for t in s]
    per_tag = {}
    for tag in sorted(set(true)):
        tp = sum(a == b == tag for a, b in zip(true, pred))
        n_true, n_pred = true.count(tag), pred.count(tag)
        p, r = (tp / n_pred if n_pred else 0.0), tp / n_true
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        per_tag[tag] = {"precision": p, "recall": r, "f1": f1, "support": n_true}
    correct = sum(a == b for a, b in zip(true, pred))
    return {
        "token_accuracy": correct / len(true) if true else 0.0,
        "tag_macro_f1": float(np.mean([v["f1"] for v in per_tag.values()])) if per_tag else 0.0,
        "n_words": len(true),
        "per_tag": per_tag,
    }


def per_type_table(metrics: dict) -> str:
    """``tagging_metrics`` as the text table ``fastft eval`` prints: one row per type, then the micro
    average and the token accuracy (plain tags: one row per tag, then the macro average)."""
    plain = "per_tag" in metrics
    table = metrics["per_tag" if plain else "per_type"]
    rows = [(k, v["precision"], v["recall"], v["f1"], v["support"]) for k, v in table.items()]
    if plain:
        avg = [float(np.mean([r[i] for r in rows])) if rows else 0.0 for i in (1, 2, 3)]
        rows.append(("macro avg", *avg, metrics["n_words"]))
    else:
        rows.append(("micro avg", metrics["entity_precision"], metrics["entity_recall"],
                     metrics["entity_f1"], metrics["n_entities"]))  # fmt: skip
    w = max(len("token accuracy"), *(len(r[0]) for r in rows))
    head = "tag" if plain else "type"
    lines = [f"{head:<{w}}  {'precision':>9}  {'recall':>9}  {'f1':>9}  {'support':>7}"]
    for i, (name, p, r, f, s) in enumerate(rows):
        if i == len(rows) - 1:
            lines.append("-" * len(lines[0]))
        lines.append(f"{name:<{w}}  {p:>9.4f}  {r:>9.4f}  {f:>9.4f}  {s:>7d}")
    lines.append(f"{'token accuracy':<{w}}  {metrics['token_accuracy']:>9.4f}")
    return "\n".join(lines)
