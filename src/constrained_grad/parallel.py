"""Which process am I? Rank facts for data-parallel training (``torch.distributed``), and
the intra-op thread count of a run (:func:`torch_threads`).

Everything here works without ``torch.distributed`` being initialised: a single process is
rank 0 of a world of size 1, and it is the main process (the one that writes files).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

from constrained_grad.errors import InputValidationError


def distributed_ready(group: Any = None) -> bool:
    """True when a process group is initialised and spans more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def rank_and_world(group: Any = None) -> tuple[int, int]:
    """``(rank, world_size)`` in ``group`` (default group); ``(0, 1)`` when not distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def is_main_process() -> bool:
    """True on global rank 0, or when not distributed: the process that writes files."""
    return rank_and_world()[0] == 0


def check_threads(threads: Any, who: str) -> int | None:
    """Validate a ``threads=`` argument: a positive int, or None (keep torch's setting)."""
    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
    ):
        raise InputValidationError(
            f"{who}: threads must be a positive int or None (got {threads!r}). "
            "Pass e.g. threads=1 for small models, or None to keep torch's setting."
        )
    return threads


@contextlib.contextmanager
def torch_threads(threads: int | None, who: str = "torch_threads") -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)``, then restore the old count.

    ``None`` changes nothing. For small models (a few thousand weights, batches of a few
    hundred) every kernel is too small to split, so extra intra-op threads only add
    synchronisation, and on a CPU shared with other busy processes each parallel region
    may wait for a descheduled thread: one thread is then faster.
    """
    check_threads(threads, who)
    if threads is None:
        yield
        return
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)
