"""Validation of the options of :func:`fit`: the step options it shares with :class:`Trainer`
and the framework integrations, and those of its loop."""

from __future__ import annotations

import math
from collections.abc import Iterator
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


def _check_positive_int(value: Any, what: str, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputValidationError(f"fit: {what} must be a positive int (got {value!r}).")


def check_loop_options(
    loader: Any,
    *,
    epochs: Any,
    steps: Any,
    eval_every: Any,
    patience: Any,
    checkpoint_every: Any,
    checkpoint_dir: Any,
    callbacks: list[Any],
    eval_fn: Any,
    stop_tolerance: Any,
) -> None:
    """Raise :class:`InputValidationError` for a bad option of :func:`fit`'s loop (before
    anything is built, so a typo costs no training)."""
    _check_positive_int(epochs, "epochs", allow_none=False)
    _check_positive_int(steps, "steps")
    _check_positive_int(eval_every, "eval_every")
    _check_positive_int(patience, "patience", allow_none=False)
    _check_positive_int(checkpoint_every, "checkpoint_every")
    if checkpoint_every is not None and checkpoint_dir is None:
        raise InputValidationError(
            "fit: checkpoint_every needs checkpoint_dir (got None). Name "
            "a folder for the checkpoints."
        )
    if isinstance(loader, (str, bytes)) or not (
        hasattr(loader, "__iter__") or hasattr(loader, "__getitem__")
    ):
        raise InputValidationError(
            f"fit: loader must be an iterable of batches such as a "
            f"DataLoader (got {type(loader).__name__})."
        )
    if epochs > 1 and isinstance(loader, Iterator):
        raise InputValidationError(
            f"fit: loader is a one-shot iterator ({type(loader).__name__}) but epochs={epochs}: "
            "it would be empty after the first epoch. Pass a re-iterable loader (a DataLoader "
            "or a list of batches), or epochs=1."
        )
    for cb in [*callbacks, eval_fn]:
        if cb is not None and not callable(cb):
            raise InputValidationError(
                f"fit: callbacks and eval_fn must be callable (got {type(cb).__name__})."
            )
    if stop_tolerance is not None and (
        isinstance(stop_tolerance, bool)
        or not isinstance(stop_tolerance, (int, float))
        or math.isnan(stop_tolerance)
    ):
        raise InputValidationError(
            f"fit: stop_tolerance must be a number or None (got {stop_tolerance!r})."
        )
