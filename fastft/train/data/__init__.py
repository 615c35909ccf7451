"""Data: sources, cleaning, labels (through the task), splitting, cached tokenization, batching.

One module per pipeline step: :mod:`.sources` (files, hub, the offline Rotten Tomatoes),
:mod:`.clean`, :mod:`.split`, :mod:`.tokenize`, :mod:`.loader` (deterministic batches), and
:mod:`.pipeline` (``prepare_data`` / ``prepare_file``, which chain them).
"""

from fastft.train.assets import rotten_tomatoes_path
from fastft.train.data.loader import MODEL_COLUMNS, global_batch_order, make_dataloader
from fastft.train.data.pipeline import PreparedData, prepare_data, prepare_file
from fastft.train.data.split import split_indices
from fastft.train.errors import DataError

__all__ = [
    "DataError",
    "PreparedData",
    "prepare_data",
    "prepare_file",
    "make_dataloader",
    "split_indices",
    "global_batch_order",
    "rotten_tomatoes_path",
    "MODEL_COLUMNS",
]
