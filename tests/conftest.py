"""Test-suite set-up shared by every test.

Without a GPU, every Triton kernel runs in the Triton CPU interpreter: ``TRITON_INTERPRET=1``
must be set before triton is first imported, which is why it is set here, at collection.
"""

import os

# One intra-op thread per test process (inherited by the CLI subprocesses): the suite runs as
# `pytest -n 2` on 2 cores, and two workers with a thread per core each oversubscribe the box:
# OpenMP's spin-waiting then made tiny-model steps ~60x slower under load. Tests of the threaded
# paths set their thread counts themselves.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import fastft  # noqa: E402,F401  (after the environment defaults above)


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # not `in item.keywords`: that matches dir names
            item.add_marker(skip)


@pytest.fixture
def device() -> torch.device:
    """The device kernels are tested on: CUDA when present, else CPU through the interpreter."""
    return torch.device("cuda" if HAS_CUDA else "cpu")
