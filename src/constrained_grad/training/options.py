"""Validation of the step options shared by :class:`Trainer` and the framework integrations."""

from __future__ import annotations

import math
from typing import Any

from constrained_grad.errors import InputValidationError


def check_step_options(
    who: str, *, dual_lr: Any, update: Any, on_nonfinite: Any, dual_optimizer: Any = "sgd"
) -> None:
    """Raise :class:`InputValidationError` naming ``who`` for a bad step option."""
    if (
        isinstance(dual_lr, bool)
        or not isinstance(dual_lr, (int, float))
        or not math.isfinite(dual_lr)
        or dual_lr < 0
    ):
        raise InputValidationError(
            f"{who}: dual_lr must be a finite number >= 0 (got {dual_lr!r})."
        )
    if not (callable(dual_optimizer) or dual_optimizer in ("sgd", "adam")):
        raise InputValidationError(
            f"{who}: unknown dual_optimizer {dual_optimizer!r}. Use 'sgd', 'adam' or a factory "
            "(param_groups) -> optimizer."
        )
    if update not in ("simultaneous", "alternating"):
        raise InputValidationError(
            f"{who}: update must be 'simultaneous' or 'alternating' (got {update!r})."
        )
    if on_nonfinite not in ("raise", "skip"):
        raise InputValidationError(
            f"{who}: on_nonfinite must be 'raise' or 'skip' (got {on_nonfinite!r})."
        )
