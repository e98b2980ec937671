"""The derivative engine: input derivatives of a model over a batch, differentiable in its
parameters, through torch.func and autograd (see each module for the maths)."""

from constrained_grad.derivatives._common import FallbackWarning
from constrained_grad.derivatives.columns import jacobian_columns
from constrained_grad.derivatives.diagnostics import (
    check_depends_on_parameters,
    check_independent_of_parameters_numerically,
)
from constrained_grad.derivatives.engine import DerivativeValues, evaluate, prefetch
from constrained_grad.derivatives.jacobian import batch_jacobian
from constrained_grad.derivatives.norms import input_gradient_norm, jacobian_fro_norm_sq
from constrained_grad.derivatives.rows import input_gradient, jacobian_rows
from constrained_grad.derivatives.second import second_derivatives

__all__ = [
    "DerivativeValues",
    "FallbackWarning",
    "batch_jacobian",
    "check_depends_on_parameters",
    "check_independent_of_parameters_numerically",
    "evaluate",
    "input_gradient",
    "input_gradient_norm",
    "jacobian_columns",
    "jacobian_fro_norm_sq",
    "jacobian_rows",
    "prefetch",
    "second_derivatives",
]
