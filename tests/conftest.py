"""Shared fixtures: synthetic audio made in the test, never downloaded."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import tria  # noqa: F401  (torchaudio placeholder before any dac import)

# One torch thread per test process: on a shared 2-core machine torch's default (one per core) made
# small models several times slower through oversubscription (Ray workers and servers run beside).
torch.set_num_threads(1)

@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    have_gpu = torch.cuda.is_available()
    network = os.environ.get("TRIA_NETWORK_TESTS") == "1"
    for item in items:
        if "gpu" in item.keywords and not have_gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
        if "network" in item.keywords and not network:
            item.add_marker(pytest.mark.skip(reason="needs the internet; set TRIA_NETWORK_TESTS=1"))
