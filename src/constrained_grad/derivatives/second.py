r"""Diagonal second derivatives :math:`\partial^2 f_i / \partial x_j^2` (convexity along ``x_j``).

Default path: forward-over-forward, ``jvp(jvp(f, e_j), e_j)`` with ``torch.func``: one
nested forward pass per input ``j`` gives the curvature of every output along ``x_j``,
whatever the number of outputs. Fallback (``method="autograd"``, or automatically where
forward mode cannot run): the column :math:`\partial f/\partial x_j` by double backward,
then its own column by double backward again. A zero column derivative that autograd reports
as unused (a piecewise-linear model) is zero curvature, not an error.

BatchNorm in training mode couples the samples: values come from exact per-sample reverse
passes; asking for a graph (``create_graph=True``) raises :class:`EngineError`, since torch's
third-order derivatives of BatchNorm are wrong (pytorch/pytorch#186256).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch.func import jvp, vmap

from constrained_grad.derivatives._common import (
    COUPLING_MESSAGE,
    Fn,
    Forward,
    check_batch,
    check_func_result,
    check_indices,
    forward,
    has_train_mode_batchnorm,
    prepare_forward_ad,
    require_tensor,
    unit_vectors,
    unwrap_compiled,
    warn_fallback,
    watch_coupling,
    wrap_forward,
)
from constrained_grad.derivatives.columns import columns_from_forward
from constrained_grad.errors import EngineError, GraphCutError, InputValidationError

SecondMethod = Literal["auto", "forward", "autograd"]


def _second_forward(f: Fn, x: torch.Tensor, inputs: list[int]) -> torch.Tensor:
    prepare_forward_ad()
    x = x.contiguous()  # forward AD cannot pair a tangent with an expanded primal
    tangents = unit_vectors(inputs, x[0].numel(), x).reshape(len(inputs), 1, *x.shape[1:])

    def curvature(t: torch.Tensor) -> torch.Tensor:
        t = t.expand_as(x)

        def directional(z: torch.Tensor) -> torch.Tensor:
            out = jvp(f, (z,), (t,))[1]
            require_tensor(out, "second_derivatives")
            return out

        return jvp(directional, (x,), (t,))[1].reshape(x.shape[0], -1)

    return vmap(curvature)(tangents).permute(1, 2, 0)  # (B, m, k)


def _autograd_columns(
    fwd: Forward, idx: list[int], *, create_graph: bool, who: str
) -> torch.Tensor:
    """Columns by double backward, or by reverse rows where the backward pass gives a gradient
    independent of its cotangent (a structurally zero derivative such as ReLU's second one)."""
    try:
        return columns_from_forward(
            fwd, idx, method="double_backward", create_graph=create_graph, who=who
        )[0]
    except EngineError:
        return columns_from_forward(fwd, idx, method="reverse", create_graph=create_graph, who=who)[
            0
        ]


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
    f = unwrap_compiled(f)
    if method not in ("auto", "forward", "autograd"):
        raise InputValidationError(
            f"{who}: unknown method {method!r}. Choose 'auto', 'forward' or 'autograd'."
        )
    check_batch(x, who)
    idx = check_indices(
        [inputs] if isinstance(inputs, int) else list(inputs), x[0].numel(), "input", who
    )
    if method != "autograd" and not has_train_mode_batchnorm(f):
        try:
            with watch_coupling(refuse=True):
                out = _second_forward(f, x, idx)
        except GraphCutError:
            raise
        except (RuntimeError, NotImplementedError) as err:
            warn_fallback(who, "forward-over-forward AD", "autograd double backward", err)
        else:
            check_func_result(f, x, out, create_graph=create_graph, who=who)
            return (out if create_graph else out.detach()), "forward_over_forward"
    elif method != "autograd":
        warn_fallback(
            who,
            "forward-over-forward AD",
            "autograd double backward",
            RuntimeError(COUPLING_MESSAGE),
        )
    if fwd is None:
        fwd = forward(f, x, who)
    if fwd.coupled and create_graph:
        raise EngineError(
            f"{who}: the model couples the samples (got a BatchNorm layer in training mode); "
            "its second derivatives are right, but their gradients w.r.t. the parameters are "
            "third-order derivatives of BatchNorm, which torch computes wrongly "
            "(pytorch/pytorch#186256). Call model.eval() before constraining curvature, or "
            "pass create_graph=False to only read the values."
        )
    try:
        cols = _autograd_columns(fwd, idx, create_graph=True, who=who)
        curvatures = []
        for k, j in enumerate(idx):
            inner = wrap_forward(fwd.x, cols[:, :, k], who, coupled=fwd.coupled)
            try:
                c2 = _autograd_columns(inner, [j], create_graph=create_graph, who=who)
            except GraphCutError:
                # f itself depends on x (the columns exist), so a column that does not is
                # locally constant: a piecewise-linear model, whose curvature is zero.
                curvatures.append(torch.zeros_like(cols[:, :, k]).detach())
            else:
                curvatures.append(c2[:, :, 0])
    except GraphCutError:
        raise
    except RuntimeError as err:  # e.g. torch.cdist: neither forward AD nor a double backward
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise EngineError(
            f"{who}: neither forward-over-forward AD nor autograd double backward can "
            f"differentiate this model twice (got: {first_line}). Replace the offending op by a "
            "twice-differentiable one (e.g. torch.cdist by an explicit ((x - c) ** 2).sum(-1))."
        ) from err
    path = "autograd_diagonal_reverse" if fwd.coupled else "autograd_double_backward"
    return torch.stack(curvatures, dim=-1), path


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
