"""Fixtures shared by the tests of tria/."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: on 2 shared cores, 2 OpenMP threads wait on each other (6x slower here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
