r"""Per-sample Jacobians :math:`J_b = \partial f(x)_b / \partial x_b` over a batch.

The answer to the forum question "compute per-sample Jacobians over a batch, correctly and
fast": ``torch.func.vmap`` over the batch of ``jacrev`` (reverse mode, ``m`` VJPs: best when
outputs are fewer than inputs) or ``jacfwd`` (forward mode, ``d`` JVPs: best when inputs are
fewer), chosen by shape. ``chunk_size`` bounds memory by vmapping over at most that many
basis vectors at a time. Models torch.func cannot run (in-place updates of captured state,
random ops such as dropout, ``nn.LSTM`` under vmap) fall back to autograd with one batched VJP
per output; BatchNorm in training mode couples the samples and gets the exact per-sample
blocks of the batch Jacobian, one backward pass per sample and output.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch.func import jacfwd, jacrev, vmap

from constrained_grad.derivatives._common import (
    COUPLING_MESSAGE,
    Fn,
    Forward,
    check_batch,
    check_func_result,
    forward,
    has_train_mode_batchnorm,
    prepare_forward_ad,
    require_tensor,
    unwrap_compiled,
    warn_fallback,
    watch_coupling,
)
from constrained_grad.derivatives.rows import rows_from_forward
from constrained_grad.errors import GraphCutError, InputValidationError

JacobianMode = Literal["auto", "forward", "reverse", "autograd"]
JACOBIAN_MODES = ("auto", "forward", "reverse", "autograd")


def choose_jacobian_mode(n_inputs: int, n_outputs: int) -> str:
    """Forward mode when there are fewer inputs than outputs, reverse mode otherwise."""
    return "forward" if n_inputs < n_outputs else "reverse"


def _per_sample(f: Fn) -> Fn:
    return lambda xb: f(xb.unsqueeze(0)).squeeze(0)


def _func_jacobian(f: Fn, x: torch.Tensor, mode: str, chunk_size: int | None) -> torch.Tensor:
    single = _per_sample(f)
    prepare_forward_ad()
    x = x.contiguous()  # forward AD cannot pair a tangent with an expanded primal
    if mode == "reverse":
        jac = jacrev(single, chunk_size=chunk_size)
    else:
        jac = jacfwd(single) if chunk_size is None else _chunked_jacfwd(single, chunk_size)
    return vmap(jac)(x)


def _chunked_jacfwd(single: Fn, chunk_size: int) -> Fn:
    """``jacfwd`` with the basis vmapped ``chunk_size`` tangents at a time."""
    from torch.func import jvp

    def jac(xb: torch.Tensor) -> torch.Tensor:
        d = xb.numel()
        basis = torch.eye(d, dtype=xb.dtype, device=xb.device).reshape(d, *xb.shape)
        out = vmap(lambda t: jvp(single, (xb,), (t,))[1], chunk_size=chunk_size)(basis)
        return out.movedim(0, -1).reshape(*out.shape[1:], *xb.shape)

    return jac


def _autograd_jacobian(fwd: Forward, create_graph: bool, who: str) -> tuple[torch.Tensor, str]:
    rows, path = rows_from_forward(
        fwd, list(range(fwd.n_outputs)), create_graph=create_graph, who=who
    )
    return rows, "autograd_" + path  # (B, m, d)


def batch_jacobian(
    f: Fn,
    x: torch.Tensor,
    *,
    mode: JacobianMode = "auto",
    chunk_size: int | None = None,
    create_graph: bool = True,
) -> torch.Tensor:
    r"""Per-sample Jacobians, shape ``(B, *out_shape, *in_shape)``.

    Args:
        f: module or function of a batch, samples treated independently.
        x: inputs ``(B, *in_shape)``.
        mode: ``"forward"`` (jacfwd), ``"reverse"`` (jacrev), ``"autograd"`` (no torch.func),
            or ``"auto"`` (forward if ``d < m`` else reverse).
        chunk_size: vmap over at most this many basis vectors at once (bounds memory).
        create_graph: keep the result differentiable w.r.t. the parameters.

    ``f`` must treat the samples independently: output row ``b`` a function of input row
    ``b`` alone. This is checked first, with one backward pass from a random cotangent on
    sample 0 (it must reach no other sample): a function mixing rows (``x - x.mean(0)``)
    has no per-sample Jacobian and raises
    :class:`~constrained_grad.errors.InputValidationError` instead of returning wrong
    blocks (BatchNorm in training mode is the one coupling handled: exact diagonal blocks).
    The torch.func modes call ``f`` on single rows; a closure over the whole batch
    (``lambda h: g(x_batch, h)``) returns ``B`` rows for one and is refused in ``"forward"``
    and ``"reverse"`` mode, and computed by ``"autograd"`` (which calls ``f`` on the
    batch) in ``"auto"`` mode, with a :class:`~constrained_grad.derivatives.FallbackWarning`.

    Example:
        >>> import torch
        >>> lin = torch.nn.Linear(3, 2)
        >>> J = batch_jacobian(lin, torch.randn(4, 3))
        >>> J.shape, torch.allclose(J[1], lin.weight)
        (torch.Size([4, 2, 3]), True)
    """
    if mode in JACOBIAN_MODES:
        check_batch(x, "batch_jacobian")
        rows = check_independent_samples(f, x, "batch_jacobian", mode)
        if rows is not None and mode == "auto":
            warn_fallback("batch_jacobian", "torch.func", "autograd", RuntimeError(rows))
            mode = "autograd"
    values, _ = jacobian_with_path(
        f, x, mode=mode, chunk_size=chunk_size, create_graph=create_graph
    )
    return values


#: rows of the batch that :func:`check_independent_samples` probes for mixing
PROBE_ROWS = 4


def check_independent_samples(f: Fn, x: torch.Tensor, who: str, mode: str) -> str | None:
    """Raise :class:`InputValidationError` if ``f`` mixes the samples of its batch.

    Two cheap probes: the gradient of a random cotangent on output row 0 must vanish on
    every other input row (one forward and one backward pass, on the first
    :data:`PROBE_ROWS` rows when ``f`` runs on single rows); and, for the torch.func
    modes, ``f`` on one row must return one row (a closure over the whole batch broadcasts
    to ``B`` rows). Returns why the torch.func modes cannot run ``f`` in ``"auto"`` mode
    (None if they can). Train-mode BatchNorm couples the samples on purpose and is left to
    the exact diagonal path.
    """
    single_rows: str | None = None
    if mode != "autograd":
        with torch.no_grad():
            one = f(x[:1])
        require_tensor(one, who)
        if one.dim() > 0 and one.shape[0] != 1:
            single_rows = (
                f"f returns {one.shape[0]} rows for 1 input row (got output shape "
                f"{tuple(one.shape)} for input shape {tuple(x[:1].shape)}), so it reads "
                "other samples, e.g. a closure over the whole batch (lambda h: g(x_batch, h))"
            )
            if mode != "auto":
                raise InputValidationError(
                    f"{who}: {single_rows}. Use mode='autograd' (or 'auto') if output row b "
                    "depends on input row b only, or make f a function of its argument alone."
                )
    if x.shape[0] < 2 or has_train_mode_batchnorm(f):
        return single_rows
    # a function that runs on single rows is probed on a few (mixing shows there too, at a
    # fraction of the cost); one that may need the whole batch (a closure) on all of them
    probe = x if single_rows is not None or mode == "autograd" else x[:PROBE_ROWS]
    xr = probe.detach().requires_grad_(True)
    with torch.enable_grad(), watch_coupling() as seen:
        y = f(xr)
    if seen or not isinstance(y, torch.Tensor) or not y.requires_grad or y.dim() == 0:
        return single_rows  # train-mode BatchNorm, or a cut graph / bad output: the caller says
    gen = torch.Generator().manual_seed(0)
    cot = torch.zeros_like(y)
    cot[0] = torch.randn(y[0].shape, generator=gen).to(y.dtype)
    (g,) = torch.autograd.grad(y, xr, cot, allow_unused=True)
    if g is not None and bool(torch.any(g[1:] != 0)):
        b = int(torch.nonzero(g[1:].reshape(probe.shape[0] - 1, -1).abs().sum(1))[0]) + 1
        raise InputValidationError(
            f"{who}: output row 0 depends on input row {b} (got a non-zero cross-sample "
            "derivative), so f mixes the samples of the batch and has no per-sample "
            "Jacobian. Make f act on each row on its own (no reductions over the batch, no "
            "closure over other samples)."
        )
    return single_rows


def jacobian_with_path(
    f: Fn,
    x: torch.Tensor,
    *,
    mode: str = "auto",
    chunk_size: int | None = None,
    create_graph: bool = True,
    fwd: Forward | None = None,
) -> tuple[torch.Tensor, str]:
    """:func:`batch_jacobian` that also reports the path that ran."""
    who = "batch_jacobian"
    f = unwrap_compiled(f)
    if mode not in JACOBIAN_MODES:
        raise InputValidationError(f"{who}: unknown mode {mode!r}. Choose one of {JACOBIAN_MODES}.")
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise InputValidationError(
            f"{who}: chunk_size must be a positive int or None (got {chunk_size!r})."
        )
    check_batch(x, who)
    in_shape = tuple(x.shape[1:])
    if mode != "autograd" and not has_train_mode_batchnorm(f):
        try:
            with watch_coupling(refuse=True):
                if mode == "auto":
                    if fwd is not None:
                        m = fwd.n_outputs
                    else:
                        with torch.no_grad():
                            m = f(x[:1]).numel()
                    mode = choose_jacobian_mode(x[0].numel(), m)
                jac = _func_jacobian(f, x, mode, chunk_size)
        except GraphCutError:
            raise
        except (RuntimeError, NotImplementedError) as err:
            warn_fallback(who, f"torch.func ({mode} mode)", "autograd", err)
        else:
            check_func_result(f, x, jac, create_graph=create_graph, who=who)
            return (jac if create_graph else jac.detach()), mode
    elif mode != "autograd":
        warn_fallback(who, "torch.func", "autograd", RuntimeError(COUPLING_MESSAGE))
    if fwd is None:
        fwd = forward(f, x, who)
    rows, path = _autograd_jacobian(fwd, create_graph, who)
    return rows.reshape(fwd.batch, *fwd.out_shape, *in_shape), path
