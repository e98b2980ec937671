r"""Local certificates: prove a constraint along each declared feature at given rows.

A global certificate asks whether :math:`\partial f_i/\partial x_j \ge m` on the whole box.
A *local* one asks it along one line: feature :math:`j` over its whole range, every other
feature held at the values of one row :math:`r` (individual monotonicity: "would this
applicant's score have gone up had their income been higher, everything else equal?"):

.. math:: \forall t \in [\mathrm{low}_j, \mathrm{high}_j]:\quad
          \partial f_i / \partial x_j \,(r_1, \dots, r_{j-1}, t, r_{j+1}, \dots, r_d) \ge m.

The line is a box whose other features are fixed, so the certificates of the global check
decide it: interval branch and bound along the line first (one dimension: a few dozen
segments usually settle it, for piecewise-linear and smooth nets alike), then, for
piecewise-linear nets, the exact MILP on what is left undecided; both are far cheaper
than the global check: only the units the one free feature can switch are undecided. A
categorical feature runs over its values, a feature of a one-hot group over the group's
categories; a feature the box fixes is checked at its value.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from constrained_grad.constraints import Box, DerivativeConstraint
from constrained_grad.constraints.domain import as_box
from constrained_grad.derivatives.engine import frozen_eval
from constrained_grad.errors import CertificationError, InputValidationError
from constrained_grad.verify.milp import (
    Certificate,
    _AutogradOracle,
    _check_time_limit,
    _check_tol,
    _encode,
    _prepare,
    _Prepared,
)
from constrained_grad.verify.report import LocalCheck, LocalReport, RowVerdict
from constrained_grad.verify.run import (
    _MIN_SOLVE,
    _Budget,
    _certifiable,
    _certifier,
    _interval_on,
    _milp_on,
    _model_dims,
    _out_of_time,
    _sides,
)
from constrained_grad.verify.search import _check_positive_int


def _check_rows(rows: object, domain: Box, who: str) -> torch.Tensor:
    """``rows`` as a float64 CPU ``(n, d)`` tensor of points of ``domain``."""
    if isinstance(rows, np.ndarray):
        rows = torch.from_numpy(rows)
    if not isinstance(rows, torch.Tensor) or rows.dim() != 2 or rows.shape[1] != domain.dim:
        got = tuple(rows.shape) if isinstance(rows, torch.Tensor) else type(rows).__name__
        raise InputValidationError(
            f"{who}: rows must be a tensor or array of shape (n, {domain.dim}), one row per "
            f"decision and one column per feature of the box (got {got}). Pass x_test, or "
            "x[None] for a single row."
        )
    if rows.shape[0] == 0:
        raise InputValidationError(
            f"{who}: rows is empty (got shape {tuple(rows.shape)}). Pass at least one row."
        )
    if rows.is_complex() or rows.dtype == torch.bool:
        raise InputValidationError(
            f"{who}: rows must be real numbers (got dtype {rows.dtype}). Pass float rows."
        )
    x = rows.detach().to("cpu", torch.float64)
    bad = (~torch.isfinite(x)).any(dim=1).nonzero().flatten().tolist()
    if bad:
        raise InputValidationError(
            f"{who}: rows contain NaN or inf (got {len(bad)} such rows, first row {bad[0]}). "
            "Drop or impute them before certifying."
        )
    scale = 1.0 + float(torch.maximum(domain.low.abs(), domain.high.abs()).max())
    outside = (~domain.contains(x, atol=1e-9 * scale)).nonzero().flatten().tolist()
    if outside:
        r = outside[0]
        lo, hi = domain.low, domain.high
        cols = ((x[r] < lo - 1e-9 * scale) | (x[r] > hi + 1e-9 * scale)).nonzero().flatten()
        where = (
            f"feature {int(cols[0])} = {float(x[r, cols[0]]):.6g} outside "
            f"[{float(lo[cols[0]]):.6g}, {float(hi[cols[0]]):.6g}]"
            if len(cols)
            else "a categorical or one-hot value the box does not allow"
        )
        raise InputValidationError(
            f"{who}: {len(outside)} rows lie outside the domain (first row {r}: {where}). "
            "A local certificate is only meaningful for points of the box: widen the box "
            "(e.g. cg.Box.around(all_rows)) or drop those rows."
        )
    return x


def _line(domain: Box, row: torch.Tensor, j: int) -> Box:
    """The domain's line through ``row`` along feature ``j``: every other feature fixed at
    its value in ``row``; ``j`` keeps its range, its categorical values or its one-hot
    group."""
    group = next((list(g) for g in domain.one_hot if j in g), None)
    free = set(group) if group is not None else {j}
    fixed = {k: float(row[k]) for k in range(domain.dim) if k not in free}
    categorical = {j: domain.categorical[j]} if j in domain.categorical else None
    return as_box(
        domain.low,
        domain.high,
        fixed=fixed,
        categorical=categorical,
        one_hot=[group] if group is not None else None,
        who="verify_local",
    )


def verify_local(
    model: torch.nn.Module,
    constraints: Sequence[DerivativeConstraint],
    domain: Box,
    rows: torch.Tensor | np.ndarray,
    *,
    time_limit: float | None = None,
    max_boxes: int = 100_000,
    tol: float = 0.0,
    progress: bool = True,
) -> LocalReport:
    r"""Prove each sign/bound constraint along each of its features at each of ``rows``.

    For every row, every constraint, every declared input ``j`` and output ``i``, the
    certificate decides :math:`\partial f_i/\partial x_j` over the line through the row along
    feature ``j`` (the other features held at the row's values; see the module
    documentation). A row is ``"certified"`` when every line through it is proved,
    ``"violated"`` when one has a counterexample (a point of that line, confirmed by autograd
    on a float64 copy of the model), else ``"unknown"``.

    Args:
        model: a ``nn.Sequential`` the MILP encodes (``Linear``, ``ReLU``, ``LeakyReLU``) or
            the interval certificate bounds (also ``Tanh``, ``Sigmoid``, ``Softplus``);
            evaluated in eval mode, its state restored.
        constraints: ``Monotonic`` or constant-bound ``DerivativeBound`` declarations (their
            margin and tolerance count as in :func:`~constrained_grad.verify`).
        domain: the :class:`~constrained_grad.Box` giving each feature's range (its fixed,
            categorical and one-hot features are respected).
        rows: ``(n, d)`` points of ``domain`` (e.g. the test rows).
        time_limit: ONE budget in seconds for the whole call (None: no limit). Each solve
            (row, constraint, input, output, side) is offered the time left divided by the
            solves left, so the time quick rows do not use passes to slow ones. A solve
            stopped by its share gives ``"unknown"``, never ``"certified"``.
        max_boxes: sub-boxes per interval branch and bound (smooth nets) before
            ``"unknown"``.
        tol: a violation counts when it exceeds ``tol``.
        progress: a progress bar over the rows (stderr), with the running counts.

    Returns:
        A :class:`~constrained_grad.verify.LocalReport`: per-row verdicts, the fraction
        certified, seconds per row, counterexamples; ``summary()`` and ``to_dict()``.

    Raises:
        InputValidationError: rows of the wrong width, empty, non-finite or outside the
            domain; bad arguments.
        CertificationError: a constraint no certificate decides, or a layer neither
            certificate handles (named).

    Example:
        >>> import torch, constrained_grad as cg
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.ReLU(),
        ...                           torch.nn.Linear(4, 1))
        >>> with torch.no_grad():
        ...     _ = net[0].weight.abs_(), net[2].weight.abs_()
        >>> report = cg.verify_local(net, [cg.Monotonic(inputs=[0])], cg.Box([0, 0], [1, 1]),
        ...                          torch.rand(5, 2), progress=False)
        >>> report.n_certified, report.fraction_certified
        (5, 1.0)
    """
    who = "verify_local"
    if not isinstance(domain, Box):
        raise InputValidationError(
            f"{who}: domain must be a cg.Box (got {type(domain).__name__}). "
            "Build one with cg.Box(low, high)."
        )
    if not isinstance(model, torch.nn.Module):
        raise CertificationError(
            f"{who}: model must be a torch.nn.Module the certificates can encode (got "
            f"{type(model).__name__}). Wrap it in an nn.Sequential."
        )
    tol = _check_tol(tol, who)
    _check_time_limit(time_limit, who)
    _check_positive_int(max_boxes, "max_boxes", who)
    constraints = list(constraints)
    if not constraints:
        raise InputValidationError(f"{who}: no constraints given (got []). Pass at least one.")
    x = _check_rows(rows, domain, who)
    t0 = time.perf_counter()
    n_in, n_out, _, _ = _model_dims(model, domain.dim)
    names, counts = [], {}  # type: ignore[var-annotated]
    for c in constraints:
        if not isinstance(c, DerivativeConstraint):
            raise InputValidationError(
                f"{who}: constraints must be declared constraints (got {type(c).__name__})."
            )
        base = type(c).__name__.lower()
        name = c.name or f"{base}_{counts.get(base, 0)}"
        if c.name is None:
            counts[base] = counts.get(base, 0) + 1
        if not _certifiable(c):
            raise CertificationError(
                f"{who}: {name} ({type(c).__name__}) cannot be certified: local "
                "certificates decide Monotonic and constant-bound DerivativeBound "
                "constraints. Check the others with cg.verify (sampling and search)."
            )
        c.resolve(n_in, n_out)
        names.append(name)
    jobs = [
        (name, c, j, i, side, bound)
        for name, c in zip(names, constraints, strict=True)
        for j in c._inputs  # type: ignore[attr-defined]
        for i in c._outputs  # type: ignore[attr-defined]
        for side, bound in _sides(c, tol)
    ]
    verdicts: list[RowVerdict] = []
    with frozen_eval(model):
        method = _certifier(model, domain.dim)
        prep = (
            _prepare(model, domain.low, domain.high, None, None, None, who)
            if method == "milp"
            else None
        )
        oracle = prep.oracle if prep is not None else _AutogradOracle(model)
        budget = _Budget(time_limit, len(jobs) * x.shape[0], start=t0)
        tally = {"certified": 0, "violated": 0, "unknown": 0}
        with tqdm(
            total=x.shape[0], disable=not progress, desc=f"{who} ({method})", unit="row"
        ) as bar:
            for r in range(x.shape[0]):
                start = time.perf_counter()
                checks = []
                lines: dict[int, Box] = {}
                for name, _c, j, i, side, bound in jobs:
                    if j not in lines:
                        lines[j] = _line(domain, x[r], j)
                    cert = _decide(
                        model,
                        prep,
                        lines[j],
                        method,
                        j,
                        i,
                        side,
                        bound,
                        budget.share(),
                        max_boxes,
                        n_out,
                    )
                    budget.spent()
                    checks.append(_local_check(name, cert, side, bound, tol, x[r], j, oracle))
                statuses = [ch.status for ch in checks]
                status = (
                    "violated"
                    if "violated" in statuses
                    else "unknown"
                    if "unknown" in statuses
                    else "certified"
                )
                tally[status] += 1
                verdicts.append(
                    RowVerdict(r, x[r].tolist(), status, time.perf_counter() - start, checks)
                )
                bar.set_postfix(tally, refresh=False)
                bar.update(1)
    return LocalReport(
        verdicts,
        names,
        method,
        domain.to_dict(),
        float(tol),
        time_limit,
        time.perf_counter() - t0,
    )


_LINE_BOXES = 4096  # interval segments tried on a line before the MILP takes over


def _decide(
    model: torch.nn.Module,
    prep: _Prepared | None,
    line: Box,
    method: str,
    j: int,
    i: int,
    side: str,
    bound: float,
    time_limit: float | None,
    max_boxes: int,
    n_out: int,
) -> Certificate:
    """One side of ``d f_i / d x_j`` on one line, within ``time_limit`` seconds."""
    if time_limit is not None and time_limit < _MIN_SOLVE:
        return _out_of_time(j, i, side, bound, method)
    lower, upper = (bound, None) if side == "lower" else (None, bound)
    if prep is None:
        return _interval_on(model, line, j, i, lower, upper, time_limit, max_boxes)
    # a line is one-dimensional: interval branch and bound usually decides it in a few dozen
    # segments; the MILP takes what the intervals leave undecided
    start = time.perf_counter()
    share = None if time_limit is None else time_limit / 2
    quick = _interval_on(model, line, j, i, lower, upper, share, min(max_boxes, _LINE_BOXES))
    if quick.status != "unknown":
        return quick
    if time_limit is not None:
        time_limit -= time.perf_counter() - start
        if time_limit < _MIN_SOLVE:
            return _out_of_time(j, i, side, bound, method)
    on_line = _Prepared(prep.layers, line, prep.n_outputs, prep.oracle)
    return _milp_on(
        on_line, lambda: _encode(prep.layers, line, j, "ibp"), j, i, side, bound, time_limit
    )


def _local_check(
    name: str,
    cert: Certificate,
    side: str,
    bound: float,
    tol: float,
    row: torch.Tensor,
    j: int,
    oracle: Any,
) -> LocalCheck:
    """The verdict of one line, its counterexample re-checked: on the line, and violating
    by float64 autograd (else ``"unknown"``)."""
    (check,) = cert.checks
    status, note = cert.status, check.note
    ce, value, violation = None, None, None
    if status == "violated":
        assert check.counterexample is not None
        point = check.counterexample.to(torch.float64)
        others = [k for k in range(row.numel()) if k != j]
        value = float(oracle(point.numpy(), j, cert.output_index))
        off_line = bool((point[others] - row[others]).abs().max() > 1e-9) if others else False
        violation = (bound - value if side == "lower" else value - bound) + tol
        if off_line or not violation > tol:
            status = "unknown"
            note += (
                f"; counterexample not confirmed (autograd {value:.6g}"
                + (", off the row's line" if off_line else "")
                + ")"
            )
        else:
            ce = point.tolist()
    seconds = cert.solve_time + cert.encode_time
    return LocalCheck(
        name,
        j,
        cert.output_index,
        side,
        bound,
        status,
        seconds,
        ce,
        value,
        None if violation is None or math.isnan(violation) else float(violation),
        note,
    )
