"""Entity rows and tagging metrics: seqeval strict-mode entity precision/recall/F1 and token accuracy,
or per-tag scores for ``plain`` tags."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from fastft.train.tagging.schemes import PLAIN, check_scheme, spans

__all__ = [
    "entity_rows",
    "tagging_metrics",
    "per_type_table",
]


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
    check_scheme(scheme)
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
