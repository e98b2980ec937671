r"""Sound bounds of Jacobian columns over boxes, in torch: one implementation for training
(differentiable in the weights) and for certificates (float64 with rounding slack).

For :math:`f = W_L \sigma(\dots \sigma(W_1 x + b_1) \dots) + b_L` and a box
:math:`B = [l, u]`, the column :math:`\partial f / \partial x_j` is the forward-mode tangent

.. math:: s_0 = e_j, \qquad s_k = \operatorname{diag}(\sigma'(z_k))\, W_k s_{k-1}, \qquad
          \partial f / \partial x_j = W_L s_{L-1},

with :math:`z_k` the pre-activations. Over :math:`B` every quantity is enclosed in an
interval (:func:`column_bounds`):

* **affine layers** in centre/radius form, :math:`[c \pm r] \mapsto [W c + b \pm |W| r]`;
* **activation values**: monotone :math:`\sigma` maps :math:`[l, u]` to
  :math:`[\sigma(l), \sigma(u)]` (a negative-slope LeakyReLU also takes 0 on a kink);
* **activation derivatives** over :math:`[l, u]`: :math:`\tanh'` and sigmoid' are even and
  decrease in :math:`|z|` (minimum at the endpoint of larger :math:`|z|`, maximum at 0 if
  :math:`0 \in [l, u]`), softplus' is increasing, (leaky) ReLU has slope 1 above 0,
  ``alpha`` below and either on an interval containing 0;
* **products** of two intervals: the min and max of the four endpoint products.

Two enclosures of the same product :math:`W_L D_{L-1} W_{L-1} \cdots D_1 W_1 e_j` (``D_k``
the diagonal of derivative intervals) are intersected: the forward one above, and the
reverse one that starts from the rows of :math:`W_L` and walks back to :math:`e_j`. Each
loses the dependency between components at a different layer, so their intersection is
never looser than either.

**Mean-value form** (smooth activations): the same pass bounds the Hessian column
:math:`H_{jk}` over :math:`B` (:math:`q_k = \sigma''(z_k)(W_k s_{k-1}) \odot (W_k t_{k-1})
+ \sigma'(z_k) W_k q_{k-1}`, with :math:`t` the tangents along every input and
:math:`\sigma''` bounded at its critical points), and the bound
:math:`g(c) \pm \sum_k r_k \max|H_{jk}|` around the centre :math:`c` is intersected with
the plain one; its width shrinks quadratically with the box. It is skipped on boxes where
:math:`\sigma'` jumps (a ReLU kink, softplus crossing its threshold).

``sound=True`` (float64 only) widens each end of an affine map, computed as
:math:`l W^+ - h W^-` (and :math:`h W^+ - l W^-`), by :math:`(K + 9) 2^{-50}` times the
same sums of absolute values (:math:`K` terms: a bound on float64 dot-product rounding);
products get :math:`10^{-15}` relative slack, sums :math:`10^{-15}` relative, activation
values and derivatives :math:`10^{-15}` relative and absolute slack, and where an operand is
below :math:`2^{-500}` (a product could underflow) the smallest normal number is added.
A product with a zero factor and an end whose terms are all 0 get no slack, so a bound that
is exactly 0 in real arithmetic (a ReLU unit's derivative interval :math:`[0, 1]` times a
nonnegative column) stays 0 and a property that holds with equality there is still proved.
The bounds enclose the real-arithmetic derivative of the network with the given float64
weights: that is what a certificate needs. Without it the
same maths runs in the model's dtype and is differentiable in the weights (autograd through
``min``/``max``/``where``): that is what certified training needs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from constrained_grad.errors import CertificationError, InputValidationError

REL = 1e-15  # relative (and absolute) slack of activations, sums and products (sound mode)
TINY = 2.0**-1022  # smallest normal float64: covers one underflowed product or sum (sound mode)
ULP2 = 2.0**-51  # twice the float64 unit roundoff
SUPPORTED = (
    "nn.Linear, nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Identity, "
    "nn.Flatten (start_dim=1) and nn.Dropout inside (nested) nn.Sequential"
)


@dataclass(frozen=True)
class Affine:
    """``z = x W^T + b`` (the tensors may require grad)."""

    weight: torch.Tensor
    bias: torch.Tensor


@dataclass(frozen=True)
class Activation:
    """An elementwise activation: ``"relu"`` (LeakyReLU slope ``slope``; 0 for ReLU),
    ``"tanh"``, ``"sigmoid"`` or ``"softplus"`` (``beta``, ``threshold`` as in torch)."""

    kind: str
    slope: float = 0.0
    beta: float = 1.0
    threshold: float = 20.0

    @property
    def piecewise_linear(self) -> bool:
        return self.kind == "relu"


Layer = Affine | Activation


def _modules(model: torch.nn.Module, prefix: str) -> list[tuple[str, torch.nn.Module]]:
    if isinstance(model, torch.nn.Sequential):
        out: list[tuple[str, torch.nn.Module]] = []
        for name, child in model.named_children():
            out += _modules(child, f"{prefix}.{name}" if prefix else name)
        return out
    return [(prefix, model)]


def activation_of(m: torch.nn.Module) -> Activation | None:
    """The :class:`Activation` of a torch module, or None if it is not one we bound."""
    if isinstance(m, torch.nn.LeakyReLU):
        return Activation("relu", slope=float(m.negative_slope))
    if isinstance(m, torch.nn.ReLU):
        return Activation("relu")
    if isinstance(m, torch.nn.Tanh):
        return Activation("tanh")
    if isinstance(m, torch.nn.Sigmoid):
        return Activation("sigmoid")
    if isinstance(m, torch.nn.Softplus):
        return Activation("softplus", beta=float(m.beta), threshold=float(m.threshold))
    return None


def network_layers(model: object, n_inputs: int, *, who: str) -> list[Layer]:
    """The layers of an MLP, holding the model's own parameters (gradients flow to them).

    Raises :class:`~constrained_grad.errors.CertificationError` naming the first layer
    that cannot be bounded, or whose width does not fit.
    """
    if not isinstance(model, torch.nn.Module):
        raise CertificationError(
            f"{who}: sound derivative bounds need a torch.nn.Module (got "
            f"{type(model).__name__}). Build the model from {SUPPORTED}."
        )
    net: torch.nn.Module = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    layers: list[Layer] = []
    width = n_inputs
    for path, m in _modules(net, ""):
        name = f"layer {path or '0'} ({type(m).__name__})"
        if isinstance(m, torch.nn.Linear):
            if m.in_features != width:
                raise CertificationError(
                    f"{who}: {name} expects {m.in_features} inputs but receives {width}. "
                    "Check the box has one bound per model input and the layer order."
                )
            bias = m.bias if m.bias is not None else torch.zeros_like(m.weight[:, 0])
            layers.append(Affine(m.weight, bias))
            width = m.out_features
        elif (act := activation_of(m)) is not None:
            layers.append(act)
        elif isinstance(m, (torch.nn.Identity, torch.nn.Dropout)):
            continue  # dropout: the bound is of the deterministic (eval-mode) network
        elif isinstance(m, torch.nn.Flatten) and m.start_dim == 1 and m.end_dim == -1:
            continue
        else:
            raise CertificationError(
                f"{who}: {name} cannot be bounded. Sound derivative bounds cover {SUPPORTED}; "
                "replace the layer, or enforce the constraint at points (OnBatch, InBox) "
                "instead of over cells."
            )
    if not any(isinstance(layer, Affine) for layer in layers):
        raise CertificationError(
            f"{who}: the model has no nn.Linear layer (got {type(net).__name__}); nothing to bound."
        )
    return layers


# ------------------------------------------------------------------------- interval algebra
def _has_tiny(*tensors: torch.Tensor) -> torch.Tensor:
    """1.0 if some entry is nonzero but below :math:`2^{-500}` (a product of two entries could
    then underflow), else 0.0; a 0-dim tensor, no host sync."""
    a = torch.cat([t.reshape(-1) for t in tensors]).abs()
    return (torch.where(a > 0, a, 1.0).amin() < 2.0**-500).to(a.dtype)


class _Ops:
    """Interval arithmetic, plain (differentiable) or sound (float64 with rounding slack)."""

    def __init__(self, sound: bool) -> None:
        self.sound = sound

    def widen(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Relative and absolute slack: results of library functions (``tanh``, ...)."""
        if not self.sound:
            return lo, hi
        return lo - REL * (1.0 + lo.abs()), hi + REL * (1.0 + hi.abs())

    def affine(
        self, lo: torch.Tensor, hi: torch.Tensor, layer: Affine, *, tangent: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""``[lo, hi] W^T (+ b)`` for rows of intervals.

        With :math:`W = W^+ - W^-` (:math:`W^\pm \ge 0`) the ends are
        :math:`l W^+ - h W^-` and :math:`h W^+ - l W^-`: each term is
        :math:`\min`/:math:`\max(w_i l_i, w_i h_i)`, so an end that is 0 term by term in
        exact arithmetic (a unit whose derivative interval is ``[0, 1]`` times a nonnegative
        column, a dead region) is exactly 0 in floating point too. Sound mode: the error of
        each end is at most :math:`\gamma S` with :math:`S` the same sums of absolute
        values (0 for such an end, which therefore stays 0) and
        :math:`\gamma = (K + 9) 2^{-50}` for ``K`` terms; where an operand is so small that
        a product could underflow, the smallest normal number times ``K`` is added.
        """
        w = layer.weight
        wp, wn = w.clamp_min(0.0), (-w).clamp_min(0.0)
        lower = lo @ wp.T - hi @ wn.T
        upper = hi @ wp.T - lo @ wn.T
        if not tangent:
            lower, upper = lower + layer.bias, upper + layer.bias
        if not self.sound:
            return lower, upper
        la, ha = lo.abs(), hi.abs()
        s_lo = la @ wp.T + ha @ wn.T
        s_hi = ha @ wp.T + la @ wn.T
        k = w.shape[1] + 1
        if not tangent:
            s_lo, s_hi = s_lo + layer.bias.abs(), s_hi + layer.bias.abs()
        gamma = (k + 9) * ULP2
        under = k * TINY * _has_tiny(lo, hi, w)
        lower = lower - (gamma * s_lo + under)
        upper = upper + (gamma * s_hi + under)
        return lower - REL * lower.abs(), upper + REL * upper.abs()

    def product(
        self, al: torch.Tensor, ah: torch.Tensor, bl: torch.Tensor, bh: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``[al, ah] * [bl, bh]`` elementwise (broadcasting). Sound mode: relative slack, so
        a product with a zero factor stays exactly 0 (``[0, 1] * [t, u]`` with ``t >= 0``
        keeps its 0); where an operand is so small that a product could underflow, the
        smallest normal number is added."""
        p = torch.stack(torch.broadcast_tensors(al * bl, al * bh, ah * bl, ah * bh))
        if not self.sound:
            return p.amin(0), p.amax(0)
        slack = REL * p.abs() + TINY * _has_tiny(al, ah, bl, bh)
        return (p - slack).amin(0), (p + slack).amax(0)

    def add(
        self, al: torch.Tensor, ah: torch.Tensor, bl: torch.Tensor, bh: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Interval sum. Sound mode: a float64 sum is off by at most a relative rounding
        (addition never underflows), so ``0 + 0`` stays exactly 0."""
        lo, hi = al + bl, ah + bh
        if not self.sound:
            return lo, hi
        return lo - REL * lo.abs(), hi + REL * hi.abs()

    def activation(
        self, layer: Activation, lo: torch.Tensor, hi: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Value bounds ``[vl, vh]`` and derivative bounds ``[dl, dh]`` over ``[lo, hi]``."""
        if layer.kind == "relu":
            a = layer.slope
            vl = torch.where(lo > 0, lo, a * lo)
            vh = torch.where(hi > 0, hi, a * hi)
            if a < 0:  # not monotone: the kink value 0 is the minimum around 0
                both = (lo <= 0) & (hi >= 0)
                vl, vh = torch.where(both, 0.0 * lo, torch.minimum(vl, vh)), torch.maximum(vl, vh)
            one, slope = torch.ones_like(lo), torch.full_like(lo, a)
            dl = torch.where(lo > 0, one, torch.where(hi < 0, slope, min(a, 1.0) * one))
            dh = torch.where(lo > 0, one, torch.where(hi < 0, slope, max(a, 1.0) * one))
            vl, vh = self.widen(vl, vh)
            return vl, vh, dl.detach(), dh.detach()
        spans_zero = (lo <= 0) & (hi >= 0)
        if layer.kind == "tanh":
            vl, vh = torch.tanh(lo), torch.tanh(hi)
            gl, gh, top = 1 - vl * vl, 1 - vh * vh, 1.0
        elif layer.kind == "sigmoid":
            vl, vh = torch.sigmoid(lo), torch.sigmoid(hi)
            gl, gh, top = vl * (1 - vl), vh * (1 - vh), 0.25
        else:  # softplus: increasing, derivative sigmoid(beta z), 1 above the threshold
            b, t = layer.beta, layer.threshold
            vl = torch.nn.functional.softplus(lo, beta=b, threshold=t)
            vh = torch.nn.functional.softplus(hi, beta=b, threshold=t)
            if self.sound:  # torch switches to the identity above the threshold
                jump = math.log1p(math.exp(-t)) / b
                vl, vh = vl - jump, vh + jump
            one = torch.ones_like(lo)
            dl = torch.where(b * lo > t, one, torch.sigmoid(b * lo))
            dh = torch.where(b * hi > t, one, torch.sigmoid(b * hi))
            vl, vh = self.widen(vl, vh)
            if self.sound:
                dl, dh = (dl - 4 * REL).clamp_min(0.0), (dh + 4 * REL).clamp_max(1.0)
            return vl, vh, dl, dh
        # tanh', sigmoid': even, decreasing in |z|: min at the far endpoint, max at 0 if inside
        dl = torch.minimum(gl, gh)
        dh = torch.where(spans_zero, torch.full_like(lo, top), torch.maximum(gl, gh))
        vl, vh = self.widen(vl, vh)
        if self.sound:
            dl, dh = (dl - 4 * REL).clamp_min(0.0), (dh + 4 * REL).clamp_max(top)
        return vl, vh, dl, dh

    def curvature(
        self, layer: Activation, lo: torch.Tensor, hi: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        r"""Bounds of :math:`\sigma''` over ``[lo, hi]`` and, per box (first dim), whether
        :math:`\sigma'` is continuous there."""
        n = lo.shape[0]
        if layer.kind == "relu":
            kink = (lo <= 0) & (hi >= 0) & (layer.slope != 1.0)
            zero = torch.zeros_like(lo)
            return zero, zero, ~kink.reshape(n, -1).any(dim=1)
        ok = torch.ones(n, dtype=torch.bool, device=lo.device)
        if layer.kind == "tanh":  # tanh'' = -2 t (1 - t^2), t = tanh z; critical t = ±1/√3
            cl, ch = self._extremes(
                lambda t: -2 * t * (1 - t * t),
                torch.tanh(lo),
                torch.tanh(hi),
                (-(3**-0.5), 3**-0.5),
            )
        elif layer.kind == "sigmoid":  # s (1 - s)(1 - 2 s), s = sigmoid z; (3 ± √3)/6
            r3 = 3**0.5
            cl, ch = self._extremes(
                lambda v: v * (1 - v) * (1 - 2 * v),
                torch.sigmoid(lo),
                torch.sigmoid(hi),
                ((3 - r3) / 6, (3 + r3) / 6),
            )
        else:  # softplus'' = beta s (1 - s), s = sigmoid(beta z); 0 above the threshold
            b, t = layer.beta, layer.threshold
            cl, ch = self._extremes(
                lambda v: b * v * (1 - v), torch.sigmoid(b * lo), torch.sigmoid(b * hi), (0.5,)
            )
            above = b * hi > t
            cl = torch.where(above, torch.minimum(cl, torch.zeros_like(cl)), cl)
            ok = ~((b * lo <= t) & above).reshape(n, -1).any(dim=1)
        return cl, ch, ok

    def _extremes(
        self,
        f: Callable[[torch.Tensor], torch.Tensor],
        a: torch.Tensor,
        b: torch.Tensor,
        crit: Sequence[float],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Min and max of a smooth ``f`` over ``[a, b]`` given its critical points."""
        vals = [f(a), f(b)]
        for c in crit:
            inside = (a <= c) & (c <= b)
            vals.append(torch.where(inside, f(torch.full_like(a, c)), vals[0]))
        v = torch.stack(vals)
        slack = 1e-14 if self.sound else 0.0
        return v.amin(0) - slack, v.amax(0) + slack


# ------------------------------------------------------------------------ column bounds
@dataclass
class ColumnBounds:
    """Enclosure of the Jacobian columns over ``N`` boxes.

    Attributes:
        lower, upper: ``(N, n_out, k)`` bounds of :math:`\\partial f_i/\\partial x_j` for the
            ``k`` requested inputs.
        spread: ``(N, d, n_out, k)`` what each input's half-width adds to the mean-value
            bound (:math:`r_m \\max|H_{jm}|`, 0 where that form does not apply), or None;
            used to choose the axis to split.
        unstable: ``(N,)`` number of hidden units whose derivative is not constant on the box.
    """

    lower: torch.Tensor
    upper: torch.Tensor
    spread: torch.Tensor | None
    unstable: torch.Tensor


def _check_box(lo: torch.Tensor, hi: torch.Tensor, layers: Sequence[Layer], who: str) -> None:
    first = next(layer for layer in layers if isinstance(layer, Affine))
    d = first.weight.shape[1]
    if lo.dim() != 2 or lo.shape != hi.shape or lo.shape[1] != d:
        raise InputValidationError(
            f"{who}: boxes must be two (N, {d}) tensors of lower and upper corners (got "
            f"{tuple(lo.shape)} and {tuple(hi.shape)})."
        )
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise InputValidationError(
            f"{who}: box corners must be finite (got a NaN or infinite bound). Bound every "
            "input feature with finite numbers."
        )
    if bool((lo > hi).any()):
        raise InputValidationError(
            f"{who}: a box has a lower corner above its upper corner. Give low <= high."
        )


def column_bounds(
    layers: Sequence[Layer],
    lo: torch.Tensor,
    hi: torch.Tensor,
    inputs: Sequence[int],
    *,
    mean_value: bool = True,
    reverse: bool = True,
    sound: bool = False,
    who: str = "column_bounds",
) -> ColumnBounds:
    r"""Enclose :math:`\partial f_i / \partial x_j` over each box ``[lo[n], hi[n]]``.

    Args:
        layers: from :func:`network_layers` (or float64 copies for a certificate).
        lo, hi: ``(N, d)`` box corners, in the layers' dtype.
        inputs: the columns ``j`` to bound.
        mean_value: also use the mean-value form (smooth activations; see the module notes).
        reverse: intersect with the reverse-order enclosure.
        sound: float64 with rounding slack, no autograd graph (a certificate); otherwise
            differentiable in the layers' tensors.

    Returns:
        :class:`ColumnBounds`, ``lower <= d f_i / d x_j <= upper`` on every box.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(1, 1), torch.nn.Tanh()).double()
        >>> with torch.no_grad():
        ...     _ = net[0].weight.fill_(1.0), net[0].bias.fill_(0.0)
        >>> b = column_bounds(network_layers(net, 1, who="doc"),
        ...                   torch.tensor([[-1.0]], dtype=torch.float64),
        ...                   torch.tensor([[1.0]], dtype=torch.float64), [0], sound=True)
        >>> round(float(b.lower), 4), round(float(b.upper), 4)  # 1 - tanh(1)^2 and 1
        (0.42, 1.0)
    """
    _check_box(lo, hi, layers, who)
    d = lo.shape[1]
    bad = [j for j in inputs if isinstance(j, bool) or not isinstance(j, int) or not 0 <= j < d]
    if bad or not inputs:
        raise InputValidationError(
            f"{who}: inputs must be a non-empty list of column indices in [0, {d}) (got "
            f"{list(inputs)!r}). Name the input features whose derivative to bound."
        )
    if sound and lo.dtype != torch.float64:
        raise InputValidationError(
            f"{who}: sound bounds need float64 boxes and weights (got {lo.dtype}). Pass "
            "float64 copies."
        )
    with torch.set_grad_enabled(torch.is_grad_enabled() and not sound):
        return _column_bounds(layers, lo, hi, list(inputs), mean_value, reverse, _Ops(sound))


def _column_bounds(
    layers: Sequence[Layer],
    lo: torch.Tensor,
    hi: torch.Tensor,
    cols: list[int],
    mean_value: bool,
    reverse: bool,
    ops: _Ops,
) -> ColumnBounds:
    sound = ops.sound
    smooth = any(isinstance(a, Activation) and not a.piecewise_linear for a in layers)
    second = mean_value and smooth
    fwd = _forward(ops, layers, lo, hi, cols, second=second)
    gl, gh, unstable = fwd.lower, fwd.upper, fwd.unstable
    if reverse and fwd.deriv:  # (an affine map alone: the forward enclosure is exact)
        rl, rh = _reverse(ops, layers, fwd.deriv, cols)
        gl, gh = torch.maximum(gl, rl), torch.minimum(gh, rh)
    spread = None
    if second and fwd.hess is not None and bool(fwd.ok.any()):
        hl, hh = fwd.hess  # (N, k, d, n_out)
        c = (lo + hi) * 0.5
        r = (hi - lo) * 0.5
        if sound:
            r = r * (1 + 4 * ULP2) + 1e-300  # covers |x - c| despite rounding
        centre = _forward(ops, layers, c, c, cols, second=False)
        per = r[:, None, :, None] * torch.maximum(hl.abs(), hh.abs())  # (N, k, d, n_out)
        spread_sum = per.sum(dim=2).transpose(1, 2)  # (N, n_out, k)
        if sound:
            spread_sum = spread_sum * (1 + (lo.shape[1] + 4) * ULP2) + 1e-300
        ml, mh = ops.widen(centre.lower - spread_sum, centre.upper + spread_sum)
        ok = fwd.ok[:, None, None]
        gl = torch.where(ok, torch.maximum(gl, ml), gl)
        gh = torch.where(ok, torch.minimum(gh, mh), gh)
        per = per.permute(0, 2, 3, 1)  # (N, d, n_out, k)
        spread = torch.where(fwd.ok[:, None, None, None], per, torch.zeros_like(per))
    return ColumnBounds(gl, gh, spread, unstable)


@dataclass
class _Forward:
    lower: torch.Tensor  # (N, n_out, k)
    upper: torch.Tensor
    deriv: list[tuple[torch.Tensor, torch.Tensor]]  # activation-derivative bounds per layer
    hess: tuple[torch.Tensor, torch.Tensor] | None  # (N, k, d, n_out)
    ok: torch.Tensor  # (N,) mean-value form applies
    unstable: torch.Tensor  # (N,)


def _forward(
    ops: _Ops,
    layers: Sequence[Layer],
    lo: torch.Tensor,
    hi: torch.Tensor,
    cols: list[int],
    *,
    second: bool,
) -> _Forward:
    n, d = lo.shape
    zl, zh = lo, hi
    eye = torch.eye(d, dtype=lo.dtype, device=lo.device)
    k = len(cols)
    # tangents along the bounded columns (N, k, width)
    sl = eye[cols].expand(n, k, d)
    sh = sl
    tl = th = ql = qh = None
    if second:  # tangents along every input (N, d, width); Hessian columns (N, k, d, width)
        tl = th = eye.expand(n, d, d)
        ql = qh = torch.zeros(n, k, d, d, dtype=lo.dtype, device=lo.device)
    ok = torch.ones(n, dtype=torch.bool, device=lo.device)
    unstable = torch.zeros(n, dtype=torch.long, device=lo.device)
    deriv: list[tuple[torch.Tensor, torch.Tensor]] = []
    for layer in layers:
        if isinstance(layer, Affine):
            zl, zh = ops.affine(zl, zh, layer, tangent=False)
            sl, sh = ops.affine(sl, sh, layer, tangent=True)
            if tl is not None and th is not None and ql is not None and qh is not None:
                tl, th = ops.affine(tl, th, layer, tangent=True)
                ql, qh = ops.affine(ql, qh, layer, tangent=True)
            continue
        if tl is not None and th is not None and ql is not None and qh is not None:
            cl, ch, smooth = ops.curvature(layer, zl, zh)
            ok = ok & smooth
            # sigma'' (W s)_j (W t)_m: (N, k, 1, w) x (N, 1, d, w)
            pl, ph = ops.product(sl[:, :, None], sh[:, :, None], tl[:, None], th[:, None])
            pl, ph = ops.product(pl, ph, cl[:, None, None], ch[:, None, None])
        zl, zh, dl, dh = ops.activation(layer, zl, zh)
        deriv.append((dl, dh))
        unstable = unstable + (dh - dl > 0).sum(dim=1) if layer.kind == "relu" else unstable
        if tl is not None and th is not None and ql is not None and qh is not None:
            ql, qh = ops.add(pl, ph, *ops.product(ql, qh, dl[:, None, None], dh[:, None, None]))
            tl, th = ops.product(tl, th, dl[:, None], dh[:, None])
        sl, sh = ops.product(sl, sh, dl[:, None], dh[:, None])
    hess = None
    if ql is not None and qh is not None:
        hess = (ql, qh)
    return _Forward(sl.transpose(1, 2), sh.transpose(1, 2), deriv, hess, ok, unstable)


def _reverse(
    ops: _Ops,
    layers: Sequence[Layer],
    deriv: list[tuple[torch.Tensor, torch.Tensor]],
    cols: list[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reverse-order enclosure: rows of the last affine layer walked back to ``e_j``."""
    affines = [layer for layer in layers if isinstance(layer, Affine)]
    acts = [layer for layer in layers if isinstance(layer, Activation)]
    if len(acts) != len(deriv) or len(affines) != len(acts) + 1:
        # not an alternating MLP (e.g. two affines in a row): the forward enclosure stands
        n = deriv[0][0].shape[0] if deriv else 1
        w = affines[-1].weight
        inf = torch.full((n, w.shape[0], len(cols)), math.inf, dtype=w.dtype, device=w.device)
        return -inf, inf
    last = affines[-1].weight  # (n_out, w)
    n = deriv[-1][0].shape[0]
    rl = rh = last.expand(n, *last.shape)  # (N, n_out, w)
    for layer, (dl, dh) in zip(reversed(affines[:-1]), reversed(deriv), strict=True):
        rl, rh = ops.product(rl, rh, dl[:, None], dh[:, None])
        # (r W) with r an interval row vector: transpose to reuse the column affine
        w = layer.weight  # r W = r (W^T)^T: the affine map of the transposed layer
        rl, rh = ops.affine(rl, rh, Affine(w.T, w.new_zeros(w.shape[1])), tangent=True)
    return rl[:, :, cols], rh[:, :, cols]


# ------------------------------------------------------------------- what constraints read
class BoundValues:
    """One end of the column enclosures over cells, read by constraints like derivatives at
    points: ``columns(inputs)`` is the ``(N, n_out, k)`` lower (or upper) bound block.

    A constraint whose signed value is monotone in each derivative entry
    (``supports_cells``) is worst on each cell at one end, so the larger of its values on
    the lower and the upper :class:`BoundValues` is its worst case over the cell.
    """

    def __init__(
        self,
        x: torch.Tensor,
        bounds: torch.Tensor,
        columns: Sequence[int],
        index: torch.Tensor | None,
    ) -> None:
        self.x = x
        self._bounds = bounds
        self._pos = {j: p for p, j in enumerate(columns)}
        self.index = index
        self.paths = {"columns": "interval bound over cells"}

    def columns(self, inputs: Sequence[int]) -> torch.Tensor:
        return self._bounds[:, :, [self._pos[j] for j in inputs]]

    def _refuse(self, what: str) -> torch.Tensor:
        raise InputValidationError(
            f"Cells: constraints over cells read bounds of Jacobian columns only (got a "
            f"request for {what}). Use Monotonic or DerivativeBound with number bounds."
        )

    @property
    def outputs(self) -> torch.Tensor:
        return self._refuse("outputs")

    def rows(self, outputs: Sequence[int]) -> torch.Tensor:
        return self._refuse("rows")

    def jacobian(self) -> torch.Tensor:
        return self._refuse("the Jacobian")

    def fro_sq(self, estimator: str, samples: int) -> torch.Tensor:
        return self._refuse("Frobenius norms")

    def projections(self, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
        self._refuse("projections")
        raise AssertionError  # unreachable

    def second(self, inputs: Sequence[int]) -> torch.Tensor:
        return self._refuse("second derivatives")


def cell_values(
    model: object,
    lo: torch.Tensor,
    hi: torch.Tensor,
    columns: Sequence[int],
    *,
    index: torch.Tensor | None = None,
    create_graph: bool = True,
    who: str = "Cells",
) -> tuple[BoundValues, BoundValues]:
    """Lower and upper :class:`BoundValues` of the model's columns over the cells
    ``[lo, hi]`` (cast to the model's dtype and device), differentiable in its weights when
    ``create_graph``."""
    cols = sorted(columns)
    layers = network_layers(model, lo.shape[1], who=who)
    w = next(layer for layer in layers if isinstance(layer, Affine)).weight
    lo, hi = lo.to(w.device, w.dtype), hi.to(w.device, w.dtype)
    with torch.set_grad_enabled(create_graph):
        b = column_bounds(layers, lo, hi, cols, who=who)
    x = (lo + hi) / 2
    return BoundValues(x, b.lower, cols, index), BoundValues(x, b.upper, cols, index)
