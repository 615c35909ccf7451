"""Token-classification (NER, POS) building blocks: reading, tag schemes, alignment, decoding, metrics.

Pure python + numpy (seqeval for the metrics); the token-classification task builds on these.
Modules: :mod:`.read` (reading), :mod:`.schemes` (schemes, validation, alignment, decoding),
:mod:`.metrics` (entity rows and metrics); this package re-exports their API.

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

Bad data raises ``fastft.train.errors.DataError`` (one line naming the sentence and the fix; CLI exit 2).
Programming errors (mismatched internal lengths) raise ``ValueError``.
"""

from fastft.train.tagging.metrics import entity_rows, per_type_table, tagging_metrics
from fastft.train.tagging.read import read_conll, read_records
from fastft.train.tagging.schemes import (
    PLAIN,
    SCHEMES,
    align_labels,
    detect_scheme,
    inside_label_map,
    is_plain,
    label_list,
    scheme_of_labels,
    spans,
    to_iob2,
    unseen_tags,
    validate_sentences,
    validate_tags,
    word_predictions,
)

__all__ = [
    "SCHEMES",
    "PLAIN",
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
