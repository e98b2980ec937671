r"""Sound certificates of derivative bounds for smooth networks: interval Jacobian columns and
branch and bound over the box.

For :math:`f = W_L \sigma(\dots \sigma(W_1 x + b_1) \dots) + b_L` and a box :math:`B`, the
column :math:`\partial f / \partial x_j` is the forward-mode tangent

.. math:: d_0 = e_j, \qquad d_k = \operatorname{diag}(\sigma'(z_k))\, W_k d_{k-1}, \qquad
          \partial f / \partial x_j = W_L d_{L-1},

with :math:`z_k` the pre-activations. Over :math:`B` every quantity is enclosed in an interval:

* **affine layers** in centre/radius form: :math:`[c \pm r] \mapsto [W c + b \pm |W| r]`;
* **activation values**: monotone :math:`\sigma` (tanh, sigmoid, softplus, (leaky) ReLU) map
  :math:`[l, u]` to :math:`[\sigma(l), \sigma(u)]` (a negative-slope LeakyReLU also takes the
  kink value 0 when :math:`0 \in [l, u]`);
* **activation derivatives** over :math:`[l, u]`: :math:`\tanh' = 1 - \tanh^2` and
  :math:`s' = s(1 - s)` (sigmoid) decrease in :math:`|z|`, so their minimum is at the endpoint
  of larger :math:`|z|` and their maximum is 1 (1/4) if :math:`0 \in [l, u]`, else at the
  endpoint of smaller :math:`|z|`; ``softplus' = sigmoid(beta z)`` (1 above the threshold) is
  monotone; (leaky) ReLU has slope 1 above 0, ``alpha`` below and either on an interval that
  contains 0 (autograd takes 0 at 0, which lies in it);
* **products** :math:`\operatorname{diag}(s) v` of two interval vectors: the minimum and the
  maximum of the four endpoint products.

**Mean-value form.** The same pass also bounds the Hessian column
:math:`H_{jk} = \partial^2 f_i / \partial x_j \partial x_k` over :math:`B` (second-order
tangents :math:`q_k = \sigma''(z_k) (W_k d_{k-1}) \odot (W_k s_{k-1}) + \sigma'(z_k) W_k q_{k-1}`,
with :math:`s` the tangents along every input and :math:`\sigma''` bounded from its critical
points: :math:`\tanh'' = -2t(1-t^2)` at :math:`t = \pm 1/\sqrt 3`, sigmoid'' at
:math:`s = (3 \pm \sqrt 3)/6`, softplus'' = :math:`\beta s (1-s)` at :math:`s = 1/2`), and
intersects the plain interval with
:math:`g(c) \pm \sum_k r_k \max |H_{jk}|` (:math:`g(c)` bounded at the centre :math:`c` of a box
of half-widths :math:`r`): its width shrinks quadratically with the box, which is what lets
branch and bound close the last gap to a tight bound. It is skipped on boxes where
:math:`\sigma'` jumps (a (leaky) ReLU unit changing sign, softplus crossing its threshold).

The output interval encloses :math:`\partial f_i/\partial x_j` at every point of :math:`B`
(the network's real-arithmetic function with the model's weights in float64). Floating-point
rounding is covered by widening every affine result by :math:`(n + 8) \cdot 2^{-51}` times
:math:`|W| (|c| + r) + |b|` (:math:`n` the fan-in; a bound on the rounding of float64 dot
products) and every activation value and derivative and every product by :math:`10^{-15}`
relative (and absolute) slack, far more than the few ulps numpy's ``tanh``, ``expit`` and
``logaddexp`` lose.

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
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from constrained_grad.constraints.domain import BoundsLike, Box
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
_REL = 1e-15  # relative (and absolute) slack of activations and products
_ULP2 = 2.0**-51  # twice the float64 unit roundoff
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


def _widen(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return lo - _REL * (1.0 + np.abs(lo)), hi + _REL * (1.0 + np.abs(hi))


def _affine(
    lo: np.ndarray, hi: np.ndarray, layer: _Affine, tangent: bool
) -> tuple[np.ndarray, np.ndarray]:
    """``W [lo, hi] (+ b)`` for rows of intervals, widened for float64 rounding."""
    w = layer.weight
    aw = np.abs(w)
    c, r = (lo + hi) * 0.5, (hi - lo) * 0.5
    mid = c @ w.T
    if not tangent:
        mid = mid + layer.bias
    rad = r @ aw.T
    scale = (np.abs(c) + r) @ aw.T + (0.0 if tangent else np.abs(layer.bias))
    rad = rad + (w.shape[1] + 8) * _ULP2 * scale + 1e-300
    return mid - rad, mid + rad


def _unimodal(
    lo: np.ndarray, hi: np.ndarray, g: np.ndarray, gl: np.ndarray, gh: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of a function even in ``z`` and decreasing in ``|z|`` with peak ``g`` at 0,
    from its values ``gl``, ``gh`` at the endpoints."""
    dmin = np.minimum(gl, gh)
    dmax = np.where((lo <= 0) & (hi >= 0), g, np.maximum(gl, gh))
    return dmin, dmax


def _activation(
    layer: _Activation | Smooth, lo: np.ndarray, hi: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Value bounds ``[vl, vh]`` and derivative bounds ``[dl, dh]`` over ``[lo, hi]``."""
    if isinstance(layer, _Activation):
        a = layer.slope
        vl, vh = np.where(lo > 0, lo, a * lo), np.where(hi > 0, hi, a * hi)
        if a < 0:  # not monotone: the kink value 0 is the minimum of an interval around 0
            both = (lo <= 0) & (hi >= 0)
            vl, vh = np.where(both, 0.0, np.minimum(vl, vh)), np.maximum(vl, vh)
        dl = np.where(lo > 0, 1.0, np.where(hi < 0, a, min(a, 1.0)))
        dh = np.where(lo > 0, 1.0, np.where(hi < 0, a, max(a, 1.0)))
        vl, vh = _widen(vl, vh)
        return vl, vh, dl, dh
    if layer.kind == "tanh":
        tl, th = np.tanh(lo), np.tanh(hi)
        dl, dh = _unimodal(lo, hi, np.ones_like(lo), 1.0 - tl * tl, 1.0 - th * th)
        top = 1.0
        vl, vh = tl, th
    elif layer.kind == "sigmoid":
        sl, sh = _expit(lo), _expit(hi)
        dl, dh = _unimodal(lo, hi, np.full_like(lo, 0.25), sl * (1 - sl), sh * (1 - sh))
        top = 0.25
        vl, vh = sl, sh
    else:  # softplus: value increasing; derivative sigmoid(beta z), 1 above the threshold
        b, t = layer.beta, layer.threshold
        vl, vh = layer(lo), layer(hi)
        # torch switches to the identity above the threshold, a jump of log1p(exp(-t)) / b
        jump = math.log1p(math.exp(-t)) / b
        vl, vh = vl - jump, vh + jump
        dl = np.where(b * lo > t, 1.0, _expit(b * lo))
        dh = np.where(b * hi > t, 1.0, _expit(b * hi))
        top = 1.0
    vl, vh = _widen(vl, vh)
    dl = np.maximum(dl - 4 * _REL, 0.0)
    dh = np.minimum(dh + 4 * _REL, top)
    return vl, vh, dl, dh


def _product(
    tl: np.ndarray, th: np.ndarray, dl: np.ndarray, dh: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``[tl, th] * [dl, dh]`` elementwise: min and max of the four endpoint products."""
    p = np.stack([tl * dl, tl * dh, th * dl, th * dh])
    return _widen(p.min(axis=0), p.max(axis=0))


def _extremes(
    f: Callable[[np.ndarray], np.ndarray], a: np.ndarray, b: np.ndarray, crit: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Min and max of a smooth ``f`` over ``[a, b]`` given its critical points ``crit``."""
    vals = [f(a), f(b)] + [np.where((a <= c) & (c <= b), f(np.full_like(a, c)), f(a)) for c in crit]
    v = np.stack(vals)
    return v.min(axis=0) - 1e-14, v.max(axis=0) + 1e-14


def _curvature(
    layer: _Activation | Smooth, lo: np.ndarray, hi: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Bounds of :math:`\sigma''` over ``[lo, hi]`` and, per box, whether :math:`\sigma'` is
    continuous there (no (leaky) ReLU kink, no softplus threshold inside)."""
    if isinstance(layer, _Activation):
        kink = (lo <= 0) & (hi >= 0) & (layer.slope != 1.0)
        zero = np.zeros_like(lo)
        return zero, zero, np.asarray(~kink.reshape(kink.shape[0], -1).any(axis=1))
    ok = np.ones(lo.shape[0], dtype=bool)
    if layer.kind == "tanh":  # tanh'' = -2 t (1 - t^2), t = tanh z increasing; h' = 0 at 1/sqrt 3
        cl, ch = _extremes(
            lambda t: -2 * t * (1 - t * t), np.tanh(lo), np.tanh(hi), [-(3**-0.5), 3**-0.5]
        )
    elif layer.kind == "sigmoid":  # s (1 - s)(1 - 2 s), s = sigmoid z; critical (3 +- sqrt 3)/6
        r3 = 3**0.5
        cl, ch = _extremes(
            lambda v: v * (1 - v) * (1 - 2 * v),
            _expit(lo),
            _expit(hi),
            [(3 - r3) / 6, (3 + r3) / 6],
        )
    else:  # softplus'' = beta s (1 - s), s = sigmoid(beta z); 0 above the threshold
        b, t = layer.beta, layer.threshold
        cl, ch = _extremes(lambda v: b * v * (1 - v), _expit(b * lo), _expit(b * hi), [0.5])
        above = b * hi > t
        cl = np.where(above, np.minimum(cl, 0.0), cl)
        ok = np.asarray(~((b * lo <= t) & above).reshape(lo.shape[0], -1).any(axis=1))
    return cl, ch, ok


def _add(
    al: np.ndarray, ah: np.ndarray, bl: np.ndarray, bh: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    return _widen(al + bl, ah + bh)


def _propagate(
    layers: Sequence[object], lo: np.ndarray, hi: np.ndarray, j: int, second: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray]:
    r"""Interval forward pass: derivative by ``x_j`` and, if ``second``, the Hessian column
    :math:`\partial^2 f / \partial x_j \partial x_k` for every ``k`` (``(B, d, n_out)``),
    with the mask of boxes on which the derivative is continuously differentiable."""
    zl, zh = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    b, d = zl.shape
    ql: np.ndarray | None
    qh: np.ndarray | None
    if second:  # tangents along every input (B, d, n), j-th row is the column we bound
        sl = np.broadcast_to(np.eye(d), (b, d, d)).copy()
        sh, ql, qh = sl.copy(), np.zeros_like(sl), np.zeros_like(sl)
    else:
        sl = np.zeros((b, 1, d))
        sl[:, 0, j] = 1.0
        sh = sl.copy()
        ql = qh = None
    row = j if second else 0
    ok = np.ones(b, dtype=bool)
    for layer in layers:
        if isinstance(layer, _Affine):
            zl, zh = _affine(zl, zh, layer, tangent=False)
            sl, sh = _affine(sl, sh, layer, tangent=True)
            if ql is not None and qh is not None:
                ql, qh = _affine(ql, qh, layer, tangent=True)
        else:
            assert isinstance(layer, _Activation | Smooth)
            if ql is not None and qh is not None:
                cl, ch, smooth = _curvature(layer, zl, zh)
                ok &= smooth
                tl, th = sl[:, row : row + 1], sh[:, row : row + 1]
                pl, ph = _product(tl, th, sl, sh)  # t_j * t_k
                pl, ph = _product(pl, ph, cl[:, None], ch[:, None])
            zl, zh, dl, dh = _activation(layer, zl, zh)
            if ql is not None and qh is not None:
                ql, qh = _add(pl, ph, *_product(ql, qh, dl[:, None], dh[:, None]))
            sl, sh = _product(sl, sh, dl[:, None], dh[:, None])
    return sl[:, row], sh[:, row], ql, qh, ok


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
            (:math:`g(c)` at the centre, :math:`H` the interval Hessian column over the box)
            and intersect: its width shrinks quadratically with the box, the plain
            interval's linearly. Skipped on boxes where :math:`\sigma'` jumps (a ReLU kink).

    Returns:
        ``(B, n_out)`` lower and upper bounds of every output's derivative by ``x_j``.
    """
    gl, gh, _ = _bounds(layers, lo, hi, input_index, centred=centred)
    return gl, gh


def _bounds(
    layers: Sequence[object], lo: np.ndarray, hi: np.ndarray, input_index: int, *, centred: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """:func:`column_bounds` and the spread ``r_k max |H_jk|`` per box, feature and output
    (None without the mean-value form; 0 on boxes where it does not apply)."""
    gl, gh, hl, hh, ok = _propagate(layers, lo, hi, input_index, second=centred)
    if not centred or hl is None or hh is None or not ok.any():
        return gl, gh, None
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    c = (lo + hi) * 0.5
    r = (hi - lo) * 0.5 * (1 + 4 * _ULP2) + 1e-300  # covers |x - c| despite rounding
    cl, ch, _, _, _ = _propagate(layers, c, c, input_index, second=False)
    per = r[:, :, None] * np.maximum(np.abs(hl), np.abs(hh))
    spread = per.sum(axis=1) * (1 + (lo.shape[1] + 4) * _ULP2) + 1e-300
    ml, mh = _widen(cl - spread, ch + spread)
    gl = np.where(ok[:, None], np.maximum(gl, ml), gl)
    gh = np.where(ok[:, None], np.minimum(gh, mh), gh)
    return gl, gh, np.where(ok[:, None, None], per, 0.0)


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
    """One child per value of the next categorical feature or category of the next group."""
    cats = box.categorical_indices
    levels = box.categorical_levels
    out = []
    if node.stage < len(cats):
        i = cats[node.stage]
        for v in levels[i]:
            lo, hi = node.lo.copy(), node.hi.copy()
            lo[i] = hi[i] = v
            out.append((lo, hi))
        return out
    group = list(box.one_hot[node.stage - len(cats)])
    low, high = box.low.numpy(), box.high.numpy()
    for k in group:
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
                        count + r,
                        _Node(lo[r], hi[r], stages[r], float(k[r]), spread[r]),
                    ),
                )
        return False

    if add(box.low.numpy()[None, :], box.high.numpy()[None, :], [0]):
        return result("violated", None, "the centre of the box violates the bound")
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
