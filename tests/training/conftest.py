"""Shared settings of the constraint, problem and training tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _cg_one_thread_seeded() -> Iterator[None]:
    """One intra-op thread (tiny models on a loaded 2-core machine run faster so) and a
    fixed global seed, restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)
