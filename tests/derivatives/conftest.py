"""Shared settings of the derivative-engine tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    """Run the tiny test models on one thread.

    On a loaded 2-core machine, waking the intra-op thread pool costs ~0.1 s per BatchNorm
    call on a 5x4 batch (1e-4 s on one thread); the numbers checked do not depend on it.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
