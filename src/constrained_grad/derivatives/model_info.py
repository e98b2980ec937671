"""What the engine's callers need to know about a model before differentiating it."""

from __future__ import annotations

import inspect
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
        n_args = _required_inputs(model)
        if isinstance(err, TypeError) and n_args > 1:
            raise InputValidationError(
                f"{who}: the model's forward takes {n_args} inputs (got {type(err).__name__}: "
                f"{err}); constraints differentiate a model of one input tensor. Wrap it as a "
                "one-input module whose forward(x) splits the columns of x and calls the "
                "model, e.g. forward(self, x): return self.net(x[:, :k], x[:, k:])."
            ) from err
        raise InputValidationError(
            f"{who}: the model fails on an input of shape {(1, *example.shape[1:])} "
            f"({type(err).__name__}: {err}). {fix}"
        ) from err
    if not isinstance(out, torch.Tensor):
        raise InputValidationError(
            f"{who}: the model must return a tensor (got {type(out).__name__}). Wrap it so it "
            "returns the tensor to constrain, e.g. lambda x: model(x)['key'] or a module "
            "whose forward picks that entry."
        )
    if out.dim() == 0 or out.shape[0] != 1:
        raise InputValidationError(
            f"{who}: the model must return one row per input row (got output shape "
            f"{tuple(out.shape)} for input shape {(1, *example.shape[1:])}). Do not reduce "
            "over the batch or close over a whole batch inside the model."
        )
    return tuple(out.shape[1:])


def _required_inputs(model: Any) -> int:
    """How many positional arguments without defaults the model's forward (or call) takes."""
    fn = model.forward if isinstance(model, torch.nn.Module) else model
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature
        return 1
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(p.kind in kinds and p.default is inspect.Parameter.empty for p in params)


#: activations and pools whose second derivative is zero almost everywhere
_PIECEWISE_LINEAR = (
    torch.nn.ReLU,
    torch.nn.ReLU6,
    torch.nn.LeakyReLU,
    torch.nn.PReLU,
    torch.nn.RReLU,
    torch.nn.Hardtanh,
    torch.nn.Hardsigmoid,
    torch.nn.Hardshrink,
    torch.nn.Softshrink,
    torch.nn.Threshold,
    torch.nn.modules.pooling._MaxPoolNd,
    torch.nn.modules.pooling._AdaptiveMaxPoolNd,
)
#: layers affine in their input (in eval mode, for the normalisations)
_AFFINE = (
    torch.nn.Linear,
    torch.nn.modules.conv._ConvNd,
    torch.nn.Flatten,
    torch.nn.Unflatten,
    torch.nn.Identity,
    torch.nn.modules.dropout._DropoutNd,
    torch.nn.modules.batchnorm._BatchNorm,
    torch.nn.modules.pooling._AvgPoolNd,
    torch.nn.modules.pooling._AdaptiveAvgPoolNd,
    torch.nn.modules.padding._ConstantPadNd,
)


def piecewise_linear_layers(model: Any) -> list[str]:
    """Names of the kinks of a piecewise-linear module, ``[]`` unless it is one.

    A module is read as piecewise linear when every leaf module is affine (``Linear``,
    convolutions, pooling by averages, ...) or piecewise linear (``ReLU``, ``LeakyReLU``,
    ``Hardtanh``, max pooling, ...), and at least one is the latter: its second input
    derivatives are then zero almost everywhere. Any other leaf (a smooth activation, a
    custom module) gives ``[]``.
    """
    if not isinstance(model, torch.nn.Module):
        return []
    kinks = []
    for name, module in model.named_modules():
        if next(module.children(), None) is not None:
            continue  # containers: their leaves decide
        if isinstance(module, _PIECEWISE_LINEAR):
            kinks.append(f"layer {name or '(the model)'} ({type(module).__name__})")
        elif not isinstance(module, _AFFINE):
            return []
    return kinks
