r"""Sound certificates of derivative bounds for smooth (and piecewise-linear) networks:
interval Jacobian columns and branch and bound over the box.

The bounds themselves come from :mod:`constrained_grad.derivatives.bounds` (the same code
that certified training differentiates), run in float64 with rounding slack
(``sound=True``): interval propagation of the Jacobian column forward and in reverse
order, intersected, and for smooth activations the mean-value form
:math:`g(c) \pm \sum_k r_k \max |H_{jk}|` whose width shrinks quadratically with the box.
They enclose :math:`\partial f_i/\partial x_j` at every point of a box for the network's
real-arithmetic function with the model's weights in float64.

Branch and bound proves ``derivative >= lower`` (``<= upper``) on the whole box: a priority
queue holds sub-boxes ordered by their worst interval bound. The worst ones are popped in
batches; each is split in two, by default along the continuous feature with the largest
width x sensitivity term :math:`r_k \max |H_{jk}|` of the mean-value bound
(``split="widest"``: the widest relative to the box). Categorical features and one-hot
groups are enumerated first, one child per value or category, so the leaves only contain
inputs that can occur (a box that still spans several values is a superset and may already be
closed by its bound); fixed features are never split.
A child whose bound proves the constraint is closed. At every other child the true derivative
is evaluated by autograd (float64 copy of the model) at its centre projected onto the domain:
a value beyond ``bound - tol`` there is a confirmed counterexample (``"violated"``). The
result is ``"certified"`` only when every leaf is closed; a node or time budget ends with
``"unknown"`` and the worst bound still open (``milp_bound``).

The method is sound but not complete: the interval bounds are loose on wide boxes and deep
networks (the dependency between the pre-activation and the tangent intervals is lost), so
the number of boxes grows quickly with the box dimension and the distance between the true
extreme derivative and the bound; see the measured sizes in the documentation.

Activations whose derivative it cannot bound exactly (SiLU, GELU, ELU, ...) are refused with a
:class:`~constrained_grad.errors.CertificationError` naming the layer.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from constrained_grad.constraints.domain import BoundsLike, Box
from constrained_grad.derivatives.bounds import Activation, Affine, Layer
from constrained_grad.derivatives.bounds import column_bounds as column_bounds_torch
from constrained_grad.errors import InputValidationError
from constrained_grad.verify.milp import (
    BoundCheck,
    Certificate,
    Status,
    _Activation,
    _Affine,
    _aggregate,
    _check_bounds,
    _check_index,
    _check_time_limit,
    _check_tol,
    _prepare,
    _Prepared,
    parse_network,
)
from constrained_grad.verify.search import _check_positive_int


def _expit(z: Any) -> Any:
    """scipy's logistic function, imported on first use (scipy.special is slow to import)."""
    from scipy.special import expit

    return expit(z)


SMOOTH_LAYERS = (
    "the interval certifier bounds nn.Linear, nn.Tanh, nn.Sigmoid, nn.Softplus, nn.ReLU, "
    "nn.LeakyReLU, nn.Identity, nn.Flatten (start_dim=1) and eval-mode nn.Dropout inside "
    "(nested) nn.Sequential, or a cg.Ensemble of such networks of equal depth; activations "
    "with non-monotone derivatives (SiLU, GELU, ELU, Mish, ...) are not bounded"
)
Split = Literal["sensitivity", "widest", "best"]


@dataclass(frozen=True)
class Smooth:
    """A smooth elementwise activation: ``"tanh"``, ``"sigmoid"`` or ``"softplus"``."""

    kind: str
    beta: float = 1.0
    threshold: float = 20.0

    def __call__(self, z: np.ndarray) -> np.ndarray:
        """The activation's value (as torch computes it), used to check the parsed layers."""
        if self.kind == "tanh":
            return np.tanh(z)
        if self.kind == "sigmoid":
            return np.asarray(_expit(z))
        bz = self.beta * z
        return np.where(bz > self.threshold, z, np.logaddexp(0.0, bz) / self.beta)


def _smooth_layer(m: torch.nn.Module) -> Smooth | None:
    if isinstance(m, torch.nn.Tanh):
        return Smooth("tanh")
    if isinstance(m, torch.nn.Sigmoid):
        return Smooth("sigmoid")
    if isinstance(m, torch.nn.Softplus):
        return Smooth("softplus", float(m.beta), float(m.threshold))
    return None


def torch_layers(layers: Sequence[object]) -> list[Layer]:
    """The parsed float64 layers as the bound engine's layers (shared, one implementation)."""
    out: list[Layer] = []
    for layer in layers:
        if isinstance(layer, _Affine):
            out.append(Affine(torch.from_numpy(layer.weight), torch.from_numpy(layer.bias)))
        elif isinstance(layer, _Activation):
            out.append(Activation("relu", slope=layer.slope))
        else:
            assert isinstance(layer, Smooth)
            out.append(Activation(layer.kind, beta=layer.beta, threshold=layer.threshold))
    return out


def column_bounds(
    layers: Sequence[object],
    lo: np.ndarray,
    hi: np.ndarray,
    input_index: int,
    *,
    centred: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    r"""Interval enclosure of :math:`\partial f / \partial x_j` over each box.

    Args:
        layers: parsed layers (``_Affine``, ``_Activation``, :class:`Smooth`).
        lo, hi: ``(B, d)`` float64 corners of ``B`` boxes.
        input_index: ``j``.
        centred: also use the mean-value form :math:`g(c) \pm \sum_k r_k \max |H_{jk}|`
            (see :mod:`constrained_grad.derivatives.bounds`).

    Returns:
        ``(B, n_out)`` lower and upper bounds of every output's derivative by ``x_j``.
    """
    gl, gh, _ = _bounds(layers, lo, hi, input_index, centred=centred)
    return gl, gh


def _bounds(
    layers: Sequence[object], lo: np.ndarray, hi: np.ndarray, input_index: int, *, centred: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """:func:`column_bounds` and the spread ``r_k max |H_jk|`` per box, feature and output
    (None without the mean-value form; 0 on boxes where it does not apply): the sound
    float64 bounds of :func:`constrained_grad.derivatives.bounds.column_bounds`."""
    tl = layers if all(isinstance(x, (Affine, Activation)) for x in layers) else None
    b = column_bounds_torch(
        tl if tl is not None else torch_layers(layers),  # type: ignore[arg-type]
        torch.as_tensor(np.asarray(lo, dtype=np.float64)),
        torch.as_tensor(np.asarray(hi, dtype=np.float64)),
        [input_index],
        mean_value=centred,
        sound=True,
        who="certify_interval",
    )
    spread = None if b.spread is None else b.spread[..., 0].numpy()
    return b.lower[..., 0].numpy(), b.upper[..., 0].numpy(), spread


_prepare_smooth = functools.partial(_prepare, extra=_smooth_layer, supported=SMOOTH_LAYERS)


def parse_smooth(model: torch.nn.Module, n_inputs: int, *, who: str = "certify_interval") -> None:
    """Raise :class:`~constrained_grad.errors.CertificationError` naming the first layer of
    ``model`` the interval certifier cannot bound (checks the layers only)."""
    parse_network(model, n_inputs, who=who, extra=_smooth_layer, supported=SMOOTH_LAYERS)


def interval_derivative_bounds(
    model: torch.nn.Module,
    low: BoundsLike,
    high: BoundsLike,
    *,
    input_index: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Sound bounds of :math:`\partial f_i/\partial x_j` over the box, for every output ``i``.

    One interval propagation (no branching) over ``low <= x <= high``; see the module
    documentation. Returns float64 ``(n_out,)`` lower and upper bounds.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(1, 1), torch.nn.Tanh()).double()
        >>> with torch.no_grad():
        ...     _ = net[0].weight.fill_(1.0), net[0].bias.fill_(0.0)
        >>> lo, hi = interval_derivative_bounds(net, [-1.0], [1.0], input_index=0)
        >>> round(float(lo[0]), 4), round(float(hi[0]), 4)   # 1 - tanh(1)^2 and 1
        (0.42, 1.0)
    """
    who = "interval_derivative_bounds"
    prep = _prepare_smooth(model, low, high, None, None, None, who)
    j = _check_index(input_index, prep.box.dim, "input_index", who)
    lo, hi = column_bounds(
        prep.layers, prep.box.low.numpy()[None, :], prep.box.high.numpy()[None, :], j
    )
    return torch.from_numpy(lo[0]), torch.from_numpy(hi[0])


# ----------------------------------------------------------------------------- branch and bound


@dataclass
class _Node:
    lo: np.ndarray
    hi: np.ndarray
    stage: int  # discrete items (categorical features, then one-hot groups) enumerated so far
    key: float  # worst bound of the (signed) derivative: smaller is worse
    spread: np.ndarray  # (d,) what each feature's width adds to the bound (mean-value form)


def _discrete_children(box: Box, node: _Node) -> list[tuple[np.ndarray, np.ndarray]]:
    """One child per value of the next categorical feature or category of the next group
    that the node still allows (a node from a given partition may have decided some)."""
    cats = box.categorical_indices
    levels = box.categorical_levels
    out = []
    if node.stage < len(cats):
        i = cats[node.stage]
        for v in levels[i]:
            if not node.lo[i] <= v <= node.hi[i]:
                continue
            lo, hi = node.lo.copy(), node.hi.copy()
            lo[i] = hi[i] = v
            out.append((lo, hi))
        return out
    group = list(box.one_hot[node.stage - len(cats)])
    low, high = box.low.numpy(), box.high.numpy()
    for k in group:
        if node.hi[k] < high[k] or any(node.lo[o] > low[o] for o in group if o != k):
            continue  # the node rules this category out
        lo, hi = node.lo.copy(), node.hi.copy()
        lo[group] = hi[group] = low[group]
        lo[k] = hi[k] = high[k]
        out.append((lo, hi))
    return out


def _branch_and_bound(
    prep: _Prepared,
    j: int,
    i: int,
    side: Literal["lower", "upper"],
    bound: float,
    *,
    tol: float,
    max_boxes: int,
    time_limit: float | None,
    batch: int,
    split: Split,
    cells: tuple[np.ndarray, np.ndarray] | None = None,
) -> BoundCheck:
    start = time.perf_counter()
    box, layers, oracle = prep.box, prep.layers, prep.oracle
    sign = 1.0 if side == "lower" else -1.0
    target = sign * bound - tol  # prove sign * derivative >= target
    free = box.continuous_free
    root_w = (box.high - box.low).numpy()
    n_disc = len(box.categorical) + len(box.one_hot)

    def keys(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        return bounds(lo, hi)[0]

    def bounds(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dl, dh, spread = _bounds(layers, lo, hi, j, centred=True)
        rel = (hi - lo) / np.where(root_w > 0, root_w, 1.0)
        per = rel if spread is None else spread[:, :, i] + 1e-12 * rel
        return (dl[:, i] if sign > 0 else -dh[:, i]), per

    def centres(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        x = torch.from_numpy((lo + hi) * 0.5)
        return box.project(x).numpy()

    seen = math.inf  # worst signed derivative at evaluated points
    worst_x: np.ndarray | None = None
    closed_min = math.inf
    heap: list[tuple[float, int, _Node]] = []
    stuck: list[_Node] = []
    count = 0
    order = itertools.count()  # unique tie-break: nodes themselves are never compared

    def result(status: Status, proven: float | None, note: str) -> BoundCheck:
        ce = (
            torch.from_numpy(worst_x.copy())
            if status == "violated" and worst_x is not None
            else None
        )
        return BoundCheck(
            side,
            bound,
            status,
            None if seen == math.inf else sign * seen,
            None if proven is None else sign * proven,
            ce,
            None if seen == math.inf else sign * seen,
            solver_status="interval branch and bound",
            solve_time=time.perf_counter() - start,
            nodes=count,
            note=note,
        )

    def add(lo: np.ndarray, hi: np.ndarray, stages: Sequence[int]) -> bool:
        """Bound children, check their centres; True if a counterexample was found."""
        nonlocal seen, worst_x, closed_min, count
        k, spread = bounds(lo, hi)
        pts = centres(lo, hi)
        vals = sign * oracle.batch(pts, j, i)
        count += len(k)
        m = int(np.argmin(vals))
        if vals[m] < seen:
            seen, worst_x = float(vals[m]), pts[m]
        if seen < target:
            return True
        for r in range(len(k)):
            if k[r] >= target:
                closed_min = min(closed_min, float(k[r]))
            else:
                heapq.heappush(
                    heap,
                    (
                        float(k[r]),
                        next(order),
                        _Node(lo[r], hi[r], stages[r], float(k[r]), spread[r]),
                    ),
                )
        return False

    # the whole box, or a partition of it to start from (e.g. certified training's cells)
    roots = (box.low.numpy()[None, :], box.high.numpy()[None, :]) if cells is None else cells
    if add(roots[0], roots[1], [0] * len(roots[0])):
        return result("violated", None, "the centre of a box violates the bound")
    while heap:
        if count >= max_boxes or (
            time_limit is not None and time.perf_counter() - start > time_limit
        ):
            worst = min(heap[0][0], *(n.key for n in stuck)) if stuck else heap[0][0]
            why = f"{count} boxes" if count >= max_boxes else f"{time_limit:g} s"
            return result(
                "unknown",
                min(worst, closed_min),
                f"budget reached ({why}) with {len(heap)} open boxes; worst open bound "
                f"{sign * worst:.6g}",
            )
        nodes = [heapq.heappop(heap)[2] for _ in range(min(batch, len(heap)))]
        los, his, stages = [], [], []
        bisect = []
        for node in nodes:
            if node.stage < n_disc:
                for lo, hi in _discrete_children(box, node):
                    los.append(lo)
                    his.append(hi)
                    stages.append(node.stage + 1)
                continue
            dims = [d for d in free if node.hi[d] - node.lo[d] > 1e-9 * root_w[d]]
            if not dims:
                stuck.append(node)
                continue
            bisect.append((node, dims))
        if bisect:
            pairs = _bisect(bisect, keys, split, root_w)
            for lo, hi, st in pairs:
                los.append(lo)
                his.append(hi)
                stages.append(st)
        if los and add(np.stack(los), np.stack(his), stages):
            return result(
                "violated", None, "autograd at the centre of a sub-box violates the bound"
            )
    if stuck:
        worst = min(n.key for n in stuck)
        return result(
            "unknown",
            min(worst, closed_min),
            f"{len(stuck)} sub-boxes cannot be split further (bound {sign * worst:.6g} within "
            "rounding of the required bound); no proof either way",
        )
    return result("certified", closed_min, f"all {count} boxes closed by their interval bound")


def _bisect(
    todo: list[tuple[_Node, list[int]]],
    keys: Callable[[np.ndarray, np.ndarray], np.ndarray],
    split: Split,
    root_w: np.ndarray,
) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """Two halves of each node: along its widest dimension (relative to the box), or along the
    one whose halves improve the bound most (the worse half first, the better one a tenth as
    much; the widest when no split improves it)."""
    out = []

    def widest(node: _Node, dims: list[int]) -> int:
        return max(dims, key=lambda k: (node.hi[k] - node.lo[k]) / root_w[k])

    if split == "widest":
        for node, dims in todo:
            out += _halves(node, widest(node, dims))
        return out
    if split == "sensitivity":
        for node, dims in todo:
            out += _halves(node, max(dims, key=lambda k: node.spread[k]))
        return out
    cand: list[tuple[np.ndarray, np.ndarray, int]] = []
    spans = []
    for node, dims in todo:
        spans.append((len(cand), dims))
        for d in dims:
            cand += _halves(node, d)
    lo = np.stack([c[0] for c in cand])
    hi = np.stack([c[1] for c in cand])
    k = keys(lo, hi)
    for (first, dims), (node, _) in zip(spans, todo, strict=True):
        a, b = k[first : first + 2 * len(dims) : 2], k[first + 1 : first + 2 * len(dims) : 2]
        score = np.minimum(a, b) - node.key + 0.1 * (np.maximum(a, b) - node.key)
        if float(score.max()) <= 1e-9 * (1.0 + abs(node.key)):
            n = dims.index(widest(node, dims))
        else:
            n = int(np.argmax(score))
        out += cand[first + 2 * n : first + 2 * n + 2]
    return out


def _halves(node: _Node, d: int) -> list[tuple[np.ndarray, np.ndarray, int]]:
    mid = 0.5 * (node.lo[d] + node.hi[d])
    a_hi, b_lo = node.hi.copy(), node.lo.copy()
    a_hi[d] = b_lo[d] = mid
    return [(node.lo.copy(), a_hi, node.stage), (b_lo, node.hi.copy(), node.stage)]


def certify_interval(
    model: torch.nn.Module,
    low: BoundsLike,
    high: BoundsLike,
    *,
    input_index: int,
    output_index: int = 0,
    lower: float | None = None,
    upper: float | None = None,
    fixed: Mapping[int, float] | None = None,
    categorical: Mapping[int, Sequence[float]] | None = None,
    one_hot: Sequence[Sequence[int]] | None = None,
    tol: float = 1e-6,
    max_boxes: int = 100_000,
    time_limit: float | None = None,
    batch: int = 64,
    split: Split = "sensitivity",
    cells: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Certificate:
    r"""Prove or refute ``lower <= d f_out / d x_in <= upper`` on the whole box, for smooth
    networks, by interval bounds and branch and bound (see the module documentation).

    Args:
        model: ``nn.Sequential`` of ``nn.Linear`` and ``nn.Tanh``, ``nn.Sigmoid``,
            ``nn.Softplus``, ``nn.ReLU``, ``nn.LeakyReLU`` (and ``nn.Identity``,
            ``nn.Flatten``, eval-mode ``nn.Dropout``), or a ``cg.Ensemble`` of them.
        low, high, fixed, categorical, one_hot: the domain, as in
            :func:`~constrained_grad.certify_derivative_sign`.
        input_index, output_index, lower, upper, tol: as in
            :func:`~constrained_grad.certify_derivative_sign` (certified means
            ``derivative >= lower - tol`` on the whole domain; violated means autograd finds
            ``derivative < lower - tol`` at the counterexample).
        max_boxes: sub-boxes bounded per side before giving up with ``"unknown"``.
        time_limit: seconds per side (None: no limit).
        batch: open boxes split per step (one vectorised interval pass for all children).
        split: ``"sensitivity"`` splits the continuous feature with the largest
            width x curvature term :math:`r_k \max|H_{jk}|` of the mean-value bound (the
            widest relative to the box where that form does not apply); ``"widest"`` the
            widest; ``"best"`` tries every feature and keeps the split whose halves have the
            best bounds (d times the interval passes, rarely fewer boxes).
        cells: ``(lo, hi)``, two ``(N, d)`` tensors of a partition of the box to start from
            instead of the whole box (e.g. the cells of certified training,
            :class:`~constrained_grad.Cells`); each cell is clipped to the box. Sound
            whatever the cells are: only their union must cover the box, which is the
            caller's promise (a partition from :class:`~constrained_grad.Cells` does).

    Returns:
        A :class:`~constrained_grad.verify.Certificate` with ``method="interval"``; each
        check's ``milp_value`` is the worst derivative seen at evaluated points, its
        ``milp_bound`` the proven bound (the worst open bound if ``"unknown"``) and ``nodes``
        the number of boxes.

    Raises:
        CertificationError: a layer the interval certifier cannot bound (named).
        InputValidationError: bad arguments.

    Example:
        >>> import torch, constrained_grad as cg
        >>> torch.manual_seed(0)
        <torch._C.Generator object at ...>
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(),
        ...                           torch.nn.Linear(8, 1))
        >>> with torch.no_grad():
        ...     _ = net[0].weight.abs_(), net[2].weight.abs_()
        >>> cg.certify_interval(net, [-1, -1], [1, 1], input_index=0, lower=0.0).status
        'certified'
    """
    who = "certify_interval"
    lower, upper = _check_bounds(lower, upper, who)
    max_boxes = _check_positive_int(max_boxes, "max_boxes", who)
    batch = _check_positive_int(batch, "batch", who)
    _check_time_limit(time_limit, who)
    if split not in ("sensitivity", "widest", "best"):
        raise InputValidationError(
            f"{who}: unknown split {split!r}. Use 'sensitivity', 'widest' or 'best'."
        )
    tol = _check_tol(tol, who)
    start = time.perf_counter()
    prep = _prepare_smooth(model, low, high, fixed, categorical, one_hot, who)
    j = _check_index(input_index, prep.box.dim, "input_index", who)
    i = _check_index(output_index, prep.n_outputs, "output_index", who)
    roots = None
    if cells is not None:
        roots = _check_cells(cells, prep.box, who)
    encode_time = time.perf_counter() - start
    checks = []
    sides: list[tuple[Literal["lower", "upper"], float | None]] = [
        ("lower", lower),
        ("upper", upper),
    ]
    for side, b in sides:
        if b is None:
            continue
        checks.append(
            _branch_and_bound(
                prep,
                j,
                i,
                side,
                b,
                tol=float(tol),
                max_boxes=max_boxes,
                time_limit=time_limit,
                batch=batch,
                split=split,
                cells=roots,
            )
        )
    return Certificate(
        status=_aggregate([c.status for c in checks]),
        input_index=j,
        output_index=i,
        lower=lower,
        upper=upper,
        checks=checks,
        n_binaries=0,
        n_variables=0,
        n_constraints=0,
        encode_time=encode_time,
        solve_time=sum(c.solve_time for c in checks),
        tol=float(tol),
        tighten="interval",
        mode=split,
        method="interval",
    )


def _check_cells(cells: object, box: Box, who: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate a partition ``(lo, hi)`` and clip it to the box (fixed features pinned)."""
    if not (isinstance(cells, (tuple, list)) and len(cells) == 2):
        raise InputValidationError(
            f"{who}: cells must be a pair (lo, hi) of (N, d) tensors (got "
            f"{type(cells).__name__}). Pass (cells.lo[:cells.n], cells.hi[:cells.n])."
        )
    lo, hi = (torch.as_tensor(c, dtype=torch.float64).detach().cpu() for c in cells)
    d = box.dim
    if lo.dim() != 2 or lo.shape != hi.shape or lo.shape[1] != d or lo.shape[0] == 0:
        raise InputValidationError(
            f"{who}: cells must be two non-empty (N, {d}) tensors (got {tuple(lo.shape)} and "
            f"{tuple(hi.shape)})."
        )
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()) or bool((lo > hi).any()):
        raise InputValidationError(
            f"{who}: cells must have finite corners with lo <= hi (got a NaN, an infinite "
            "bound or lo > hi)."
        )
    lo = torch.maximum(lo, box.low)
    hi = torch.minimum(hi, box.high)
    keep = (lo <= hi).all(dim=1)  # cells outside the box add nothing
    return lo[keep].numpy().copy(), hi[keep].numpy().copy()
