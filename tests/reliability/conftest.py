"""Shared settings of the reliability tests: one intra-op thread, global random states
restored afterwards (several tests train in-process and reseed torch/numpy/random)."""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _cg_reliability_isolation() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch_state, py_state = torch.get_rng_state(), random.getstate()
    np_state = np.random.get_state()  # noqa: NPY002 (the legacy global state is what we restore)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)
    torch.set_rng_state(torch_state)
    np.random.set_state(np_state)  # noqa: NPY002
    random.setstate(py_state)
