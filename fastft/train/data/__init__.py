"""Data: sources, cleaning, labels (through the task), splitting, cached tokenization, batching.

One module per pipeline step: the readers :mod:`.sources` (files, hub, the offline Rotten
Tomatoes), :mod:`.images`, :mod:`.clean`, :mod:`.split`, :mod:`.tokenize`, the table of input kinds
:mod:`.modalities` and the collates :mod:`.collate` sit with the train libraries; :mod:`.pipeline`
(``prepare_data`` / ``prepare_file``, which chain them) and :mod:`.loader` (deterministic batches) drive the tasks, a layer up, so this package does not import
them: use ``fastft.train.data.pipeline`` / ``fastft.train.data.loader``.
"""

from fastft.train.assets import rotten_tomatoes_path
from fastft.train.data.split import split_indices
from fastft.train.errors import DataError

__all__ = ["DataError", "split_indices", "rotten_tomatoes_path"]
