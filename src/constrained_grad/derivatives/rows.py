r"""Jacobian rows :math:`\nabla_x f_i` (input gradients) by reverse mode.

One vector-Jacobian product per requested output, vmapped over outputs
(``is_grads_batched``), all from a single forward pass. For a scalar model this is the
plain input gradient, the quantity of gradient matching (Sobolev training) and of
Lipschitz bounds :math:`\|\nabla_x f\|_2 \le L`.
"""

from __future__ import annotations

import torch

from constrained_grad.derivatives._common import (
    Fn,
    Forward,
    batched_vjp,
    check_indices,
    forward,
    unit_cotangents,
)
from constrained_grad.derivatives.diagnostics import grad as checked_grad


def rows_from_forward(
    fwd: Forward, outputs: list[int], *, create_graph: bool, who: str
) -> tuple[torch.Tensor, str]:
    """Rows for the (flat) ``outputs`` of a kept forward pass: ``(B, len(outputs), d)``."""
    if len(outputs) == 1 and not fwd.coupled:
        # the one-row case of batched_vjp with the same cotangent (e_i broadcast over the
        # batch) and the same backward pass, without its stack of views: each view would
        # be one more node in the graph the training step differentiates again
        seed = unit_cotangents(outputs, fwd.n_outputs, fwd.y).expand(fwd.batch, -1)
        g = checked_grad(fwd.y, fwd.x, seed, create_graph=create_graph, who=who)
        return g.reshape(fwd.batch, 1, -1), "reverse"
    vectors = unit_cotangents(outputs, fwd.n_outputs, fwd.y).unsqueeze(1).expand(-1, fwd.batch, -1)
    g, path = batched_vjp(fwd, vectors, create_graph=create_graph, who=who)
    if len(outputs) == 1:  # (1, B, ...) -> (B, 1, d) as one view
        return g.reshape(fwd.batch, 1, -1), path
    return g.reshape(len(outputs), fwd.batch, -1).transpose(0, 1), path


def jacobian_rows(
    f: Fn,
    x: torch.Tensor,
    outputs: list[int] | int | None = None,
    *,
    create_graph: bool = True,
) -> torch.Tensor:
    r"""Rows :math:`\partial f(x)_{b,i} / \partial x_b` for ``i`` in ``outputs`` (all if None).

    Returns ``(B, len(outputs), d)`` with inputs flattened per sample.

    Example:
        >>> import torch
        >>> lin = torch.nn.Linear(3, 2)
        >>> rows = jacobian_rows(lin, torch.randn(5, 3), outputs=[0])
        >>> torch.allclose(rows[2, 0], lin.weight[0])
        True
    """
    fwd = forward(f, x, "jacobian_rows")
    return rows_with_path(fwd, outputs, create_graph=create_graph)[0]


def rows_with_path(
    fwd: Forward, outputs: list[int] | int | None, *, create_graph: bool
) -> tuple[torch.Tensor, str]:
    who = "jacobian_rows"
    if outputs is None:
        idx = list(range(fwd.n_outputs))
    else:
        idx = check_indices(
            [outputs] if isinstance(outputs, int) else list(outputs), fwd.n_outputs, "output", who
        )
    return rows_from_forward(fwd, idx, create_graph=create_graph, who=who)


def input_gradient(f: Fn, x: torch.Tensor, *, create_graph: bool = True) -> torch.Tensor:
    r"""Gradient :math:`\nabla_x f(x)_b` of a model with one output per sample: ``x.shape``.

    Raises :class:`~constrained_grad.errors.InputValidationError` for vector outputs; use
    :func:`jacobian_rows` there.
    """
    from constrained_grad.errors import InputValidationError

    fwd = forward(f, x, "input_gradient")
    if fwd.n_outputs != 1:
        raise InputValidationError(
            f"input_gradient: model has {fwd.n_outputs} outputs per sample (got output shape "
            f"{(fwd.batch, *fwd.out_shape)}). Use jacobian_rows(f, x, outputs=[i]) for one row, "
            "or jacobian_fro_norm_sq for a norm."
        )
    rows, _ = rows_from_forward(fwd, [0], create_graph=create_graph, who="input_gradient")
    return rows[:, 0].reshape(x.shape)
