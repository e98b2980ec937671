"""What the engine's callers need to know about a model before differentiating it."""

from __future__ import annotations

from typing import Any

import torch

from constrained_grad.derivatives.engine import frozen_eval
from constrained_grad.errors import InputValidationError


def dtype_and_device(model: Any) -> tuple[torch.dtype, torch.device]:
    """The dtype and device of a module's first parameter (defaults for a function)."""
    param = next(iter(model.parameters()), None) if isinstance(model, torch.nn.Module) else None
    if param is None:
        return torch.get_default_dtype(), torch.device("cpu")
    return param.dtype, param.device


def output_shape(model: Any, example: torch.Tensor, who: str, fix: str) -> tuple[int, ...]:
    """Per-sample output shape of ``model`` on one example row (eval mode, no graph).

    Any exception from the model becomes an :class:`InputValidationError` ending in ``fix``.
    """
    if not callable(model):
        raise InputValidationError(
            f"{who}: model must be a torch.nn.Module or a function (got {type(model).__name__})."
        )
    try:
        with frozen_eval(model), torch.no_grad():
            out = model(example[:1])
    except Exception as err:  # the user's model: any failure means the input does not fit
        raise InputValidationError(
            f"{who}: the model fails on an input of shape {(1, *example.shape[1:])} "
            f"({type(err).__name__}: {err}). {fix}"
        ) from err
    if not isinstance(out, torch.Tensor) or out.dim() == 0:
        raise InputValidationError(
            f"{who}: the model must return a batched tensor (got {type(out).__name__})."
        )
    return tuple(out.shape[1:])
