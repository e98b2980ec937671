r"""Diagonal second derivatives :math:`\partial^2 f_i / \partial x_j^2` (convexity along ``x_j``).

Default path: forward-over-forward, ``jvp(jvp(f, e_j), e_j)`` with ``torch.func``: one
nested forward pass per input ``j`` gives the curvature of every output along ``x_j``,
whatever the number of outputs. Fallback (``method="autograd"``, or automatically where
forward mode cannot run): the column :math:`\partial f/\partial x_j` by double backward,
then its own column by double backward again.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch.func import jvp, vmap

from constrained_grad.derivatives._common import (
    Fn,
    Forward,
    check_batch,
    check_indices,
    forward,
    has_train_mode_batchnorm,
    unit_vectors,
    warn_fallback,
    wrap_forward,
)
from constrained_grad.derivatives.columns import columns_from_forward
from constrained_grad.errors import GraphCutError, InputValidationError

SecondMethod = Literal["auto", "forward", "autograd"]


def _second_forward(f: Fn, x: torch.Tensor, inputs: list[int]) -> torch.Tensor:
    tangents = unit_vectors(inputs, x[0].numel(), x).reshape(len(inputs), 1, *x.shape[1:])

    def curvature(t: torch.Tensor) -> torch.Tensor:
        t = t.expand_as(x)

        def directional(z: torch.Tensor) -> torch.Tensor:
            return jvp(f, (z,), (t,))[1]

        return jvp(directional, (x,), (t,))[1].reshape(x.shape[0], -1)

    return vmap(curvature)(tangents).permute(1, 2, 0)  # (B, m, k)


def second_with_path(
    f: Fn,
    x: torch.Tensor,
    inputs: list[int] | int,
    *,
    method: str = "auto",
    create_graph: bool = True,
    fwd: Forward | None = None,
) -> tuple[torch.Tensor, str]:
    """:func:`second_derivatives` that also says which path ran."""
    who = "second_derivatives"
    if method not in ("auto", "forward", "autograd"):
        raise InputValidationError(f"{who}: unknown method {method!r}. "
                                   "Choose 'auto', 'forward' or 'autograd'.")
    check_batch(x, who)
    idx = check_indices([inputs] if isinstance(inputs, int) else list(inputs), x[0].numel(),
                        "input", who)
    if method != "autograd" and not has_train_mode_batchnorm(f):
        try:
            out = _second_forward(f, x, idx)
        except GraphCutError:
            raise
        except (RuntimeError, NotImplementedError) as err:
            warn_fallback(who, "forward-over-forward AD", "autograd double backward", err)
        else:
            return (out if create_graph else out.detach()), "forward_over_forward"
    if fwd is None:
        fwd = forward(f, x, who)
    cols, _ = columns_from_forward(fwd, idx, method="double_backward", create_graph=True, who=who)
    out = []
    for k, j in enumerate(idx):
        inner = wrap_forward(fwd.x, cols[:, :, k], who)
        c2, _ = columns_from_forward(inner, [j], method="double_backward",
                                     create_graph=create_graph, who=who)
        out.append(c2[:, :, 0])
    return torch.stack(out, dim=-1), "autograd_double_backward"


def second_derivatives(
    f: Fn,
    x: torch.Tensor,
    inputs: list[int] | int,
    *,
    method: SecondMethod = "auto",
    create_graph: bool = True,
) -> torch.Tensor:
    r"""Curvatures :math:`\partial^2 f(x)_{b,i} / \partial x_{b,j}^2`, shape ``(B, m, k)``.

    Example:
        >>> import torch
        >>> sq = lambda x: (x ** 2).sum(dim=1, keepdim=True) * torch.tensor([[1.0, -2.0]])
        >>> second_derivatives(sq, torch.randn(3, 2), inputs=[0])[0, :, 0]
        tensor([ 2., -4.])
    """
    return second_with_path(f, x, inputs, method=method, create_graph=create_graph)[0]
