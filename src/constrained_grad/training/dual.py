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
        dtype = next(iter(multiplier.parameters())).dtype
        biggest = torch.finfo(dtype).max
        if lr > biggest:
            raise InputValidationError(
                f"fit: the dual step size of {name!r} does not fit its "
                f"{dtype} multipliers (got {lr:g} > {biggest:.3g}). Use "
                "a dual_lr of a sensible size (typically 1e-3 to 10)."
            )
        groups.append({"params": list(multiplier.parameters()), "lr": lr, "name": name})
        names.append(name)
    if not groups:
        return None, names
    sparse = [
        n
        for n in names
        if isinstance(problem._constraints[n].multiplier, cooper.multipliers.IndexedMultiplier)
    ]
    if callable(dual_optimizer):
        opt = dual_optimizer(groups)
        if not isinstance(opt, torch.optim.Optimizer):
            raise InputValidationError(
                f"fit: the dual optimizer factory must return a "
                f"torch.optim.Optimizer (got {type(opt).__name__}). Return "
                "e.g. torch.optim.SGD(param_groups, lr=..., maximize=True)."
            )
        for group in opt.param_groups:
            if not group.get("maximize", False):
                raise InputValidationError(
                    "fit: the dual optimizer factory must build an "
                    "optimizer with maximize=True (got maximize=False). "
                    "Multipliers ascend the Lagrangian."
                )
        return opt, names
    if dual_optimizer == "sgd":
        return torch.optim.SGD(groups, lr=dual_lr, maximize=True), names
    if dual_optimizer == "adam":
        if sparse:
            raise InputValidationError(
                f"fit: dual_optimizer='adam' cannot step pointwise multipliers (sparse gradients) "
                f"of {sparse}. Use dual_optimizer='sgd' (default), or a factory building "
                "torch.optim.SparseAdam/Adagrad with maximize=True."
            )
        return torch.optim.Adam(groups, lr=dual_lr, maximize=True), names
    raise InputValidationError(
        f"fit: unknown dual_optimizer {dual_optimizer!r}. Use 'sgd', "
        "'adam' or a factory (param_groups) -> optimizer."
    )


def _is_plain_ascent_sgd(opt: torch.optim.Optimizer) -> bool:
    return (
        type(opt) is torch.optim.SGD
        and not opt._optimizer_step_pre_hooks
        and not opt._optimizer_step_post_hooks
        and all(
            g["maximize"] and g["momentum"] == 0 and g["weight_decay"] == 0 and not g["nesterov"]
            for g in opt.param_groups
        )
    )


def dual_step(opt: torch.optim.Optimizer) -> None:
    r"""One dual ascent step :math:`\lambda \leftarrow \lambda + \eta\, \nabla_\lambda L`.

    For the default plain SGD ascent (no momentum, no weight decay, no hooks) the update is
    applied in place directly — the same arithmetic as ``torch.optim.SGD(maximize=True)``,
    without its ~70 µs of per-call machinery, which matters for small tabular models where
    a whole training step takes about a millisecond. Any other optimizer steps as usual.
    """
    if not _is_plain_ascent_sgd(opt):
        opt.step()
        return
    with torch.no_grad():
        for group in opt.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=group["lr"])
