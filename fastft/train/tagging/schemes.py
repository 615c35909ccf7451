"""Tag schemes (IOB1, IOB2, IOBES, plain): parsing, detection, validation, conversion to IOB2, label
lists, sub-token alignment and span decoding (seqeval's strict mode)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from fastft.train.errors import DataError
from fastft.train.numerics import IGNORE_INDEX

__all__ = [
    "SCHEMES",
    "PLAIN",
    "to_iob2",
    "scheme_of_labels",
    "detect_scheme",
    "validate_tags",
    "validate_sentences",
    "label_list",
    "unseen_tags",
    "align_labels",
    "inside_label_map",
    "word_predictions",
    "check_scheme",
    "spans",
    "is_plain",
    "where_of",
]

SCHEMES = ("IOB1", "IOB2", "IOBES")
#: tags without a BIO scheme (POS: NN, VBZ): no entities, token-level metrics.
PLAIN = "plain"
_PREFIXES = {"IOB1": "BI", "IOB2": "BI", "IOBES": "BIES"}
_PREFIX_ORDER = {"B": 0, "I": 1, "E": 2, "S": 3}
_OUTSIDE = ("O", "")


def where_of(where: Sequence[str] | None, i: int) -> str:
    """How error messages name sentence ``i``: ``where[i]``, else ``row i+1``."""
    return where[i] if where is not None else f"row {i + 1}"


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
            raise DataError(
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


def check_scheme(scheme: str) -> str:
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
            return f"{where_of(where, i)}: {v}"
    return None


def detect_scheme(tag_seqs: Sequence[Sequence[str]], where: Sequence[str] | None = None) -> str:
    """The tag scheme the data is valid under: ``plain`` when no tag has a prefix (POS), IOBES when any
    E-/S- tag occurs, else IOB2 or IOB1 (whichever holds; all-O data -> IOB2, IO-only data -> IOB1).
    Raises one line naming the offending sentence and tag when none holds (e.g. IOB1- and IOB2-style
    entities mixed, or a prefix-less tag among prefixed ones)."""
    if is_plain(tag_seqs):
        return PLAIN
    parsed = [_parse_seq(s, where_of(where, i)) for i, s in enumerate(tag_seqs)]
    prefixes = {p for seq in parsed for p, _ in seq}
    if prefixes & {"E", "S"}:
        v = _first_violation(parsed, "IOBES", where)
        if v is None:
            return "IOBES"
        raise DataError(f"E-/S- tags make this IOBES, but {v}; fix the tags so one scheme holds")
    v2 = _first_violation(parsed, "IOB2", where)
    if v2 is None:
        return "IOB2"
    v1 = _first_violation(parsed, "IOB1", where)
    if v1 is None:
        return "IOB1"
    raise DataError(
        f"inconsistent tag scheme, neither IOB2 nor IOB1 holds: {v2}; {v1}; make every sentence follow one"
    )


def _check_shape(tags: Sequence[str], tokens: Sequence[str] | None, at: str) -> None:
    if len(tags) == 0 or (tokens is not None and len(tokens) == 0):
        raise DataError(f"{at}: empty sentence (no tokens); drop it")
    if tokens is not None and len(tokens) != len(tags):
        raise DataError(f"{at}: {len(tokens)} tokens but {len(tags)} tags; every token needs exactly one tag")


def validate_tags(
    tag_seqs: Sequence[Sequence[str]],
    scheme: str,
    where: Sequence[str] | None = None,
    token_seqs: Sequence[Sequence[str]] | None = None,
) -> None:
    """Raise one line naming the first bad sentence: empty, a token/tag count mismatch (when
    ``token_seqs`` is given), a tag that is not O/PREFIX-TYPE, or a tag sequence invalid under ``scheme``."""
    check_scheme(scheme)
    for i, tags in enumerate(tag_seqs):
        at = where_of(where, i)
        _check_shape(tags, None if token_seqs is None else token_seqs[i], at)
        if scheme == PLAIN:
            continue  # any tag string goes
        v = _violation(_parse_seq(tags, at), scheme)
        if v is not None:
            raise DataError(f"{at}: {v} (tag scheme {scheme}); fix the tags or the scheme")


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
    if check_scheme(scheme) != "IOB1":
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
        raise DataError(f"tag {sorted(bad)[0]!r} is not O or PREFIX-TYPE (e.g. B-PER)")
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
    if check_scheme(scheme) == PLAIN:
        return []
    seq = []
    for t in tags:
        p = _parse(t)
        if p is None or (p[0] != "O" and p[0] not in _PREFIXES[scheme]):
            raise ValueError(f"tag {t!r} is not valid in {scheme}")
        seq.append(p)
    return _spans_parsed(seq, scheme)
