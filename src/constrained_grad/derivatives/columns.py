r"""Jacobian columns :math:`\partial f / \partial x_j` for every output and chosen inputs ``j``.

A column is what a monotonicity or derivative-bound constraint needs: all ``m`` outputs
differentiated with respect to one input. Its cost should not grow with ``m``.

Methods (``method=``):

``"double_backward"``
    One reverse pass with a dummy cotangent ``u`` gives :math:`g(u) = u^\top J`, linear in
    ``u``; differentiating :math:`\sum_b g(u)_{b,j}` with respect to ``u`` gives column ``j``
    for every sample. Reuses the forward pass of the loss; fastest on CPU (two backward
    passes, no vmap over the forward).
``"forward"``
    Forward-mode JVP (``torch.func.jvp``) with tangent :math:`e_j`, vmapped over the chosen
    inputs. Exact and cheap per column, but recomputes the forward pass.
``"reverse"``
    ``m`` vector-Jacobian products (one per output, vmapped) and a slice: the best choice
    when there are fewer outputs than requested columns (e.g. a scalar model).
``"auto"``
    ``"reverse"`` when ``m <= k`` (``k`` requested columns), otherwise
    ``"double_backward"``. On any failure of a torch.func path the engine falls back to
    double backward, and where an op has no double backward (``torch.cdist``) to
    ``"reverse"``, warning with :class:`FallbackWarning`.

For a model that couples the samples (BatchNorm in training mode) every method returns the
exact per-sample columns by reverse mode, at ``B`` times the cost (see :mod:`._common`).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch.func import jvp, vmap

from constrained_grad.derivatives._common import (
    COUPLING_MESSAGE,
    Fn,
    Forward,
    batched_vjp,
    check_batch,
    check_func_result,
    check_indices,
    forward,
    has_train_mode_batchnorm,
    prepare_forward_ad,
    unit_vectors,
    unwrap_compiled,
    warn_fallback,
    watch_coupling,
)
from constrained_grad.derivatives.diagnostics import grad as checked_grad
from constrained_grad.errors import EngineError, GraphCutError, InputValidationError

ColumnMethod = Literal["auto", "double_backward", "forward", "reverse"]
COLUMN_METHODS = ("auto", "double_backward", "forward", "reverse")


def choose_column_method(n_outputs: int, n_columns: int) -> str:
    """The ``"auto"`` rule: reverse rows if there are no more outputs than columns."""
    return "reverse" if n_outputs <= n_columns else "double_backward"


def columns_from_forward(
    fwd: Forward, inputs: list[int], *, method: str, create_graph: bool, who: str
) -> tuple[torch.Tensor, str]:
    """Columns from a kept forward pass (autograd methods only). Returns ``(B, m, k)``.

    A forward pass that couples the samples always takes ``"reverse"``: double backward
    through train-mode BatchNorm is right, but gradients of it w.r.t. the parameters are
    third-order derivatives, which torch computes wrongly (pytorch/pytorch#186256).
    """
    if fwd.coupled:
        method = "reverse"
    if method == "reverse" and fwd.n_outputs == 1 and not fwd.coupled:  # one output: one VJP
        g = checked_grad(fwd.y, fwd.x, torch.ones_like(fwd.y), create_graph=create_graph, who=who)
        return g.reshape(fwd.batch, 1, -1)[:, :, inputs], "reverse"
    if method == "reverse":
        vectors = unit_vectors(list(range(fwd.n_outputs)), fwd.n_outputs, fwd.y)
        vectors = vectors.unsqueeze(1).expand(-1, fwd.batch, -1)  # (m, B, m)
        rows, path = batched_vjp(fwd, vectors, create_graph=create_graph, who=who)
        rows = rows.reshape(fwd.n_outputs, fwd.batch, -1)[:, :, inputs]  # (m, B, k)
        return rows.permute(1, 0, 2), path
    if method != "double_backward":
        raise InputValidationError(
            f"{who}: method {method!r} cannot reuse a forward pass. "
            "Use 'double_backward' or 'reverse'."
        )
    u = torch.zeros_like(fwd.y, requires_grad=True)
    g = checked_grad(fwd.y, fwd.x, u, create_graph=True, who=who).reshape(fwd.batch, -1)
    # selected[b, j] = sum_{b', i} u_{b'i} dy_{b'i}/dx_{bj}: linear in u, so its VJP with the
    # seed e_j on every sample, taken w.r.t. u, is column j of every sample at once.
    inner = Forward(x=u, y=g[:, inputs], out_shape=(len(inputs),), coupled=fwd.coupled)
    seeds = unit_vectors(list(range(len(inputs))), len(inputs), g)
    seeds = seeds.unsqueeze(1).expand(-1, fwd.batch, -1)  # (k, B, k)
    try:
        cols, path = batched_vjp(inner, seeds, create_graph=create_graph, who=who)  # (k, B, m)
    except GraphCutError as err:
        # y depends on x (the first pass worked), so u is lost inside the backward pass itself
        raise EngineError(
            f"{who}: the backward pass of this model is not differentiable (got a gradient that "
            "does not depend on its cotangent), so double backward cannot give columns. An "
            "autograd.Function marked @once_differentiable or computing its backward outside "
            "torch is the usual cause; use method='reverse' or make the backward differentiable."
        ) from err
    return cols.permute(1, 2, 0), path.replace("reverse", "double_backward")


def _columns_forward_mode(f: Fn, x: torch.Tensor, inputs: list[int]) -> torch.Tensor:
    prepare_forward_ad()
    x = x.contiguous()  # forward AD cannot pair a tangent with an expanded primal
    in_shape = x.shape[1:]
    d = x[0].numel()
    tangents = unit_vectors(inputs, d, x).reshape(len(inputs), 1, *in_shape)

    def column(t: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = jvp(f, (x,), (t.expand_as(x),))[1]
        return out.reshape(x.shape[0], -1)

    if len(inputs) == 1:
        return column(tangents[0]).unsqueeze(-1)
    return vmap(column)(tangents).permute(1, 2, 0)


def jacobian_columns(
    f: Fn,
    x: torch.Tensor,
    inputs: list[int] | int,
    *,
    method: ColumnMethod = "auto",
    create_graph: bool = True,
) -> torch.Tensor:
    r"""Columns :math:`\partial f(x)_b / \partial x_{b,j}` for ``j`` in ``inputs``.

    Args:
        f: a module or function mapping ``(B, *in_shape)`` to ``(B, *out_shape)``.
        x: the batch of inputs.
        inputs: flat per-sample input index or indices.
        method: see the module docstring.
        create_graph: keep the result differentiable w.r.t. the parameters of ``f``
            (needed to train on it; switch off for verification).

    Returns:
        ``(B, m, k)`` with ``m`` the number of (flattened) outputs and ``k = len(inputs)``.

    Example:
        >>> import torch
        >>> lin = torch.nn.Linear(2, 3)
        >>> cols = jacobian_columns(lin, torch.randn(4, 2), inputs=[1])
        >>> torch.allclose(cols[0, :, 0], lin.weight[:, 1])
        True
    """
    values, _ = columns_with_path(f, x, inputs, method=method, create_graph=create_graph)
    return values


def columns_with_path(
    f: Fn,
    x: torch.Tensor,
    inputs: list[int] | int,
    *,
    method: str = "auto",
    create_graph: bool = True,
    fwd: Forward | None = None,
) -> tuple[torch.Tensor, str]:
    """:func:`jacobian_columns` that also says which path ran (and may reuse ``fwd``)."""
    who = "jacobian_columns"
    f = unwrap_compiled(f)
    if method not in COLUMN_METHODS:
        raise InputValidationError(
            f"{who}: unknown method {method!r}. Choose one of {COLUMN_METHODS}."
        )
    idx = [inputs] if isinstance(inputs, int) else list(inputs)
    if method == "forward" and not has_train_mode_batchnorm(f):
        if fwd is None:
            check_batch(x, who)
        idx = check_indices(idx, x[0].numel(), "input", who)
        try:
            with watch_coupling(refuse=True):
                cols = _columns_forward_mode(f, x, idx)
        except GraphCutError:
            raise
        except (RuntimeError, NotImplementedError) as err:
            warn_fallback(who, "forward-mode AD (torch.func.jvp)", "double backward", err)
            method = "double_backward"
        else:
            check_func_result(f, x, cols, create_graph=create_graph, who=who)
            return (cols if create_graph else cols.detach()), "forward"
    elif method == "forward":
        warn_fallback(who, "forward-mode AD", "double backward", RuntimeError(COUPLING_MESSAGE))
        method = "double_backward"
    if fwd is None:
        fwd = forward(f, x, who)
    idx = check_indices(idx, fwd.n_inputs, "input", who)
    if method == "auto":
        method = choose_column_method(fwd.n_outputs, len(idx))
    if method == "reverse":
        return columns_from_forward(fwd, idx, method=method, create_graph=create_graph, who=who)
    try:
        return columns_from_forward(fwd, idx, method=method, create_graph=create_graph, who=who)
    except GraphCutError:
        raise
    except RuntimeError as err:  # an op without a double backward (e.g. torch.cdist)
        warn_fallback(who, "double backward", "one reverse pass per output", err)
        return columns_from_forward(fwd, idx, method="reverse", create_graph=create_graph, who=who)
