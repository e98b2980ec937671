"""Dual optimisers built the safe way.

Cooper's ``cmp.dual_parameters()`` iterates a ``set``, so its order changes between
processes and a reloaded optimizer state can land on the wrong multipliers. Here the dual
optimizer has one parameter group per constraint, in registration order, and remembers the
constraint names so a state can be checked before it is loaded.
"""

from __future__ import annotations

from collections.abc import Callable

import cooper
import torch

from constrained_grad.errors import InputValidationError
from constrained_grad.problem import DerivativeProblem

DualFactory = Callable[[list[dict]], torch.optim.Optimizer]


def build_dual_optimizer(
    problem: DerivativeProblem, dual_lr: float, dual_optimizer: str | DualFactory = "sgd"
) -> tuple[torch.optim.Optimizer | None, list[str]]:
    """One optimizer, one param group per stepped multiplier, ``maximize=True``.

    Returns the optimizer (``None`` if no multiplier is learned) and the ordered names of
    the constraints whose multipliers it steps. Fixed penalties are never stepped.
    """
    groups, names = [], []
    for name, multiplier in problem.named_multipliers():
        lr = problem.dual_lr_of(name, dual_lr)
        if lr == 0.0:
            continue
        groups.append({"params": list(multiplier.parameters()), "lr": lr, "name": name})
        names.append(name)
    if not groups:
        return None, names
    sparse = [n for n in names if isinstance(problem._constraints[n].multiplier,
                                             cooper.multipliers.IndexedMultiplier)]
    if callable(dual_optimizer):
        opt = dual_optimizer(groups)
        if not isinstance(opt, torch.optim.Optimizer):
            raise InputValidationError(f"fit: the dual optimizer factory must return a "
                                       f"torch.optim.Optimizer (got {type(opt).__name__}). Return "
                                       "e.g. torch.optim.SGD(param_groups, lr=..., maximize=True).")
        for group in opt.param_groups:
            if not group.get("maximize", False):
                raise InputValidationError("fit: the dual optimizer factory must build an "
                                           "optimizer with maximize=True (got maximize=False). "
                                           "Multipliers ascend the Lagrangian.")
        return opt, names
    if dual_optimizer == "sgd":
        return torch.optim.SGD(groups, lr=dual_lr, maximize=True), names
    if dual_optimizer == "adam":
        if sparse:
            raise InputValidationError(
                f"fit: dual_optimizer='adam' cannot step pointwise multipliers (sparse gradients) "
                f"of {sparse}. Use dual_optimizer='sgd' (default), or a factory building "
                "torch.optim.SparseAdam/Adagrad with maximize=True.")
        return torch.optim.Adam(groups, lr=dual_lr, maximize=True), names
    raise InputValidationError(f"fit: unknown dual_optimizer {dual_optimizer!r}. Use 'sgd', "
                               "'adam' or a factory (param_groups) -> optimizer.")
