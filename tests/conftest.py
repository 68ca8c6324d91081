import os

# Busy-waiting OpenMP threads make 2-thread torch ops far slower when other processes share the cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_torch():
    """Each test starts from the same seed and a small thread count (CI has 2 cores)."""
    torch.manual_seed(0)
    torch.set_num_threads(2)
    yield


@pytest.fixture
def one_thread():
    """Run a test on one intra-op thread (for tiny models, where a second thread only adds synchronization)."""
    torch.set_num_threads(1)
    yield
