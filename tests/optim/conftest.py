"""One intra-op thread for the optimizer tests: CI runs pytest -n 2 on 2 cores, and oversubscribed OpenMP
barriers make every parallel region stall (10x slower). Thread-count independence is tested explicitly."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
