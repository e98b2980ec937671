"""Which process am I? Rank facts for data-parallel training (``torch.distributed``).

Everything here works without ``torch.distributed`` being initialised: a single process is
rank 0 of a world of size 1, and it is the main process (the one that writes files).
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist


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
