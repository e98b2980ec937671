r"""The constraint kinds users declare.

================================  ==============================================  =========
kind                              holds when (per point)                           needs
================================  ==============================================  =========
:class:`Monotonic`                :math:`\pm\partial f_i/\partial x_j \ge m`       columns
:class:`DerivativeBound`          :math:`l \le \partial f_i/\partial x_j \le u`    columns
:class:`GradientMatch`            :math:`\|\partial f/\partial x - S\|^2 \le \tau`  rows / VJPs
:class:`JacobianNormBound`        :math:`\|J\|_F \le r` (exact or projected)       Frobenius
:class:`Lipschitz`                :math:`\|\nabla_x f_i\|_2 \le L`                 rows
:class:`Convex`, :class:`Concave` :math:`\pm\partial^2 f_i/\partial x_j^2 \ge 0`   curvature
:class:`Custom`                   user function :math:`g(x, f, D) \le 0`           declared
================================  ==============================================  =========
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from constrained_grad.constraints.base import (
    BoundLike,
    DerivativeConstraint,
    DerivativeValues,
    check_index_list,
    check_number,
    resolve_indices,
)
from constrained_grad.constraints.needs import Needs
from constrained_grad.constraints.signs import at_least, at_most, equal_to
from constrained_grad.errors import ConstraintSpecError, InputValidationError

DIRECTIONS = ("increasing", "decreasing")


class _ColumnConstraint(DerivativeConstraint):
    """Constraints on the block ``∂f_i/∂x_j`` for declared outputs ``i`` and inputs ``j``."""

    def __init__(
        self, inputs: int | Sequence[int], outputs: int | Sequence[int] | None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.inputs = check_index_list(inputs, type(self).__name__, "inputs")
        if self.inputs is None:
            raise ConstraintSpecError(
                f"{type(self).__name__}: inputs must name at least one input feature (got None)."
            )
        self.outputs = check_index_list(outputs, type(self).__name__, "outputs")

    def resolve(self, n_inputs: int, n_outputs: int) -> None:
        super().resolve(n_inputs, n_outputs)
        self._inputs = resolve_indices(self.inputs, n_inputs, self.label, "input")
        self._outputs = resolve_indices(self.outputs, n_outputs, self.label, "output")
        self.n_components = len(self._inputs) * len(self._outputs)
        self._needs = self._make_needs()

    def _make_needs(self) -> Needs:
        return Needs(columns=frozenset(self._inputs))

    def block(self, values: DerivativeValues) -> torch.Tensor:
        """``(B, len(outputs), len(inputs))`` block of the Jacobian."""
        cols = values.columns(self._inputs)
        return cols if self.outputs is None else cols[:, self._outputs, :]

    @property
    def component_names(self) -> list[str]:
        return [f"{self.label}[out {i}, in {j}]" for i in self._outputs for j in self._inputs]


class Monotonic(_ColumnConstraint):
    r"""Every selected output is monotone in every selected input.

    ``direction="increasing"``: :math:`\partial f_i/\partial x_j \ge m`;
    ``"decreasing"``: :math:`\partial f_i/\partial x_j \le -m`, with margin :math:`m \ge 0`.

    Example:
        >>> Monotonic(inputs=[5], direction="increasing")
        Monotonic(inputs=(5,), outputs=all, direction='increasing', margin=0.0)
    """

    supports_cells = True

    def __init__(
        self,
        inputs: int | Sequence[int],
        direction: str = "increasing",
        *,
        outputs: int | Sequence[int] | None = None,
        margin: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(inputs, outputs, **kwargs)
        if direction not in DIRECTIONS:
            raise ConstraintSpecError(
                f"Monotonic: unknown direction {direction!r}. Use 'increasing' or 'decreasing'."
            )
        self.direction = direction
        self.margin = check_number(margin, "Monotonic", "margin", minimum=0.0)

    def signed_values(self, values: DerivativeValues, batch: Any) -> torch.Tensor:
        d = self.block(values).reshape(values.x.shape[0], -1)
        if self.direction == "increasing":
            return at_least(d, self.margin)
        return at_most(d, -self.margin)

    def __repr__(self) -> str:
        outs = "all" if self.outputs is None else list(self.outputs)
        return (
            f"Monotonic(inputs={self.inputs}, outputs={outs}, direction={self.direction!r}, "
            f"margin={self.margin})"
        )


def _bound_value(
    bound: BoundLike, x: torch.Tensor, like: torch.Tensor, who: str, what: str
) -> torch.Tensor | float:
    if bound is None or isinstance(bound, float):
        return bound  # type: ignore[return-value]
    value = bound(x) if callable(bound) else bound
    value = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    try:
        return torch.broadcast_to(value, like.shape)
    except RuntimeError:
        raise InputValidationError(
            f"{who}: {what} bound of shape {tuple(value.shape)} does not "
            f"broadcast to the derivative block {tuple(like.shape)} "
            "(batch, outputs, inputs)."
        ) from None


class DerivativeBound(_ColumnConstraint):
    r""":math:`l \le \partial f_i/\partial x_j \le u` for selected outputs and inputs.

    ``lower``/``upper`` are numbers, tensors broadcastable to ``(B, outputs, inputs)``, or
    functions of the points ``x`` returning such tensors. Components: the lower bounds
    first, then the upper bounds.
    """

    def __init__(
        self,
        inputs: int | Sequence[int],
        *,
        lower: BoundLike = None,
        upper: BoundLike = None,
        outputs: int | Sequence[int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(inputs, outputs, **kwargs)
        if lower is None and upper is None:
            raise ConstraintSpecError("DerivativeBound: give lower, upper or both (got neither).")
        for what, b in (("lower", lower), ("upper", upper)):
            if isinstance(b, (int, float)) and not isinstance(b, bool):
                check_number(b, "DerivativeBound", what)
            elif b is not None and not (callable(b) or isinstance(b, torch.Tensor)):
                raise ConstraintSpecError(
                    f"DerivativeBound: {what} must be a number, a tensor or "
                    f"a function of x (got {type(b).__name__})."
                )
        self.lower = float(lower) if isinstance(lower, (int, float)) else lower
        self.upper = float(upper) if isinstance(upper, (int, float)) else upper
        if (
            isinstance(self.lower, float)
            and isinstance(self.upper, float)
            and self.lower > self.upper
        ):
            raise ConstraintSpecError(
                f"DerivativeBound: lower > upper (got lower={self.lower}, "
                f"upper={self.upper}). Swap or correct the bounds."
            )
        if (
            isinstance(self.lower, torch.Tensor)
            and isinstance(self.upper, torch.Tensor)
            and bool((self.lower > self.upper).any())
        ):
            raise ConstraintSpecError(
                "DerivativeBound: lower > upper for some entries. Correct the bound tensors."
            )

    @property
    def supports_cells(self) -> bool:  # type: ignore[override]
        return all(b is None or isinstance(b, float) for b in (self.lower, self.upper))

    def resolve(self, n_inputs: int, n_outputs: int) -> None:
        super().resolve(n_inputs, n_outputs)
        self.n_components *= (self.lower is not None) + (self.upper is not None)

    def signed_values(self, values: DerivativeValues, batch: Any) -> torch.Tensor:
        d = self.block(values)
        parts = []
        if self.lower is not None:
            lo = _bound_value(self.lower, values.x, d, self.label, "lower")
            parts.append(at_least(d, lo).reshape(d.shape[0], -1))
        if self.upper is not None:
            hi = _bound_value(self.upper, values.x, d, self.label, "upper")
            parts.append(at_most(d, hi).reshape(d.shape[0], -1))
        return torch.cat(parts, dim=1)


class _CurvatureConstraint(_ColumnConstraint):
    sign = 1.0

    def _make_needs(self) -> Needs:
        return Needs(second=frozenset(self._inputs))

    def signed_values(self, values: DerivativeValues, batch: Any) -> torch.Tensor:
        c = values.second(self._inputs)[:, self._outputs, :].reshape(values.x.shape[0], -1)
        return at_least(c, 0.0) if self.sign > 0 else at_most(c, 0.0)


class Convex(_CurvatureConstraint):
    r"""Convex along each selected input: :math:`\partial^2 f_i/\partial x_j^2 \ge 0`."""

    def __init__(
        self,
        inputs: int | Sequence[int],
        *,
        outputs: int | Sequence[int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(inputs, outputs, **kwargs)


class Concave(_CurvatureConstraint):
    r"""Concave along each selected input: :math:`\partial^2 f_i/\partial x_j^2 \le 0`."""

    sign = -1.0

    def __init__(
        self,
        inputs: int | Sequence[int],
        *,
        outputs: int | Sequence[int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(inputs, outputs, **kwargs)


TargetLike = torch.Tensor | str | Callable[[Any], torch.Tensor]


class GradientMatch(DerivativeConstraint):
    r"""Sobolev / gradient matching: :math:`\frac{1}{n}\|\partial f/\partial x - S\|^2 \le \tau`.

    Args:
        targets: derivative samples ``S``. A tensor aligned with ``AtPoints`` points
            (indexed by the point ids), the name of a batch field (``"targets"`` or an extra
            field of a dict batch), or a function of the batch. Shape per point: ``(d,)`` for
            a single selected output, else ``(outputs, d)``.
        outputs: outputs whose rows are matched (default all).
        normalize: divide the squared error by the batch's mean :math:`\|S\|^2`, so that
            ``tolerance=1e-4`` means a 1% relative RMS error. The mean is computed once
            per targets tensor while it comes back unedited (full-batch training).
        estimator: ``"exact"`` (all rows) or ``"vjp_sphere"`` (``samples`` random output
            projections :math:`\|v^\top (J - S)\|^2`, unbiased, for many outputs).

    The tolerance (keyword ``tolerance=``, common to all constraints) is the allowed mean
    squared error :math:`\tau`; with the default 0 the constraint can never hold strictly and
    its multiplier keeps growing, acting as an ever larger weight on the matching error. The
    default reduction is ``"mean"``: the constraint is on the batch-mean error.
    """

    default_reduction = "mean"

    def __init__(
        self,
        targets: TargetLike,
        *,
        outputs: int | Sequence[int] | None = None,
        normalize: bool = False,
        estimator: str = "exact",
        samples: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not (isinstance(targets, (torch.Tensor, str)) or callable(targets)):
            raise ConstraintSpecError(
                "GradientMatch: targets must be a tensor, a batch field name "
                f"or a function of the batch (got {type(targets).__name__})."
            )
        if isinstance(targets, torch.Tensor) and self.where.num_points is None:
            raise ConstraintSpecError(
                "GradientMatch: a targets tensor must be aligned with fixed "
                "points; use where=AtPoints(points) (got where="
                f"{self.where!r}) or pass a batch field name."
            )
        if isinstance(targets, torch.Tensor) and targets.shape[0] != self.where.num_points:
            raise ConstraintSpecError(
                f"GradientMatch: targets have {targets.shape[0]} rows but "
                f"the points number {self.where.num_points}. Give one target"
                " per point."
            )
        if estimator not in ("exact", "vjp_sphere"):
            raise ConstraintSpecError(
                f"GradientMatch: unknown estimator {estimator!r}. Use 'exact' or 'vjp_sphere'."
            )
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ConstraintSpecError(
                f"GradientMatch: samples must be a positive int (got {samples!r})."
            )
        self.targets = targets
        self.outputs = check_index_list(outputs, "GradientMatch", "outputs")
        self.normalize = bool(normalize)
        self.estimator = estimator
        self.samples = samples

    def resolve(self, n_inputs: int, n_outputs: int) -> None:
        super().resolve(n_inputs, n_outputs)
        self._outputs = resolve_indices(self.outputs, n_outputs, self.label, "output")
        if self.estimator == "vjp_sphere":
            if self.outputs is not None and len(self._outputs) != n_outputs:
                raise ConstraintSpecError(
                    "GradientMatch: the vjp_sphere estimator projects all "
                    "outputs; leave outputs=None."
                )
            self._needs = Needs(projections=self.samples)
        else:
            self._needs = Needs(rows=frozenset(self._outputs))
        self.n_components = 1

    def target_tensor(
        self,
        batch: Any,
        index: torch.Tensor | None,
        like: torch.Tensor,
        in_shape: tuple[int, ...] | None = None,
    ) -> torch.Tensor:
        """Targets as ``(B, k, d)``; per point ``(k, d)`` or ``(k, *in_shape)``, and for a
        single selected output also ``(d,)`` or ``in_shape`` (never just a matching size:
        a transposed ``(d, k)`` must not be read as ``(k, d)``)."""
        who = self.label
        if isinstance(self.targets, torch.Tensor):
            if index is None:
                raise InputValidationError(
                    f"{who}: targets tensor needs point ids; enforce at AtPoints(points)."
                )
            s = self.targets[index.to(self.targets.device)]
        elif batch is None:
            source = (
                f"the batch field {self.targets!r}"
                if isinstance(self.targets, str)
                else "a function of the batch"
            )
            raise InputValidationError(
                f"{who}: the derivative targets come from {source}, but no batch was given "
                "(got batch=None). Pass the batch that holds them as well: "
                f"problem.violations({who!r}, x, batch)."
            )
        elif isinstance(self.targets, str):
            s = batch.field(self.targets, who) if hasattr(batch, "field") else batch[self.targets]
        else:
            s = self.targets(batch)
        try:
            s = torch.as_tensor(s)
            if s.dtype != like.dtype or s.device != like.device:
                s = s.to(dtype=like.dtype, device=like.device)
        except (TypeError, ValueError, RuntimeError) as err:
            raise InputValidationError(
                f"{who}: targets must be numeric tensors (got "
                f"{type(s).__name__}: {err}). Yield gradient samples as a "
                "float tensor."
            ) from err
        k, d = len(self._outputs), self.n_inputs
        want = (like.shape[0], k, d)
        per_point = {(k, d)} | ({(k, *in_shape)} if in_shape else set())
        if k == 1:
            per_point |= {(d,)} | ({tuple(in_shape)} if in_shape else set())
        if s.dim() == 0 or s.shape[0] != like.shape[0] or tuple(s.shape[1:]) not in per_point:
            raise InputValidationError(
                f"{who}: targets of shape {tuple(s.shape)} do not match the "
                f"derivatives (batch, outputs, inputs) = {want}. Give one "
                "gradient sample per point and selected output."
            )
        return s.reshape(want)

    def signed_values(self, values: DerivativeValues, batch: Any) -> torch.Tensor:
        index = getattr(values, "index", None)
        b = values.x.shape[0]
        if self.estimator == "vjp_sphere":
            v, vj = values.projections(self.samples)  # (S, B, m), (S, B, d)
            s = self.target_tensor(
                batch, index, values.outputs, tuple(values.x.shape[1:])
            )  # (B, m, d)
            vs = torch.einsum("sbm,bmd->sbd", v, s)
            sq_err = (vj.reshape(vs.shape) - vs).pow(2).sum(-1).mean(0)  # unbiased for ||J-S||^2
        else:
            rows = values.rows(self._outputs)  # (B, k, d)
            s = self.target_tensor(batch, index, rows, tuple(values.x.shape[1:]))
            sq_err = equal_to(rows, s).pow(2).sum(dim=(1, 2))
        err = sq_err / math.prod(s.shape[1:])  # mean squared error per derivative entry
        if self.normalize:
            err = err / self._target_scale(s, err.dtype)
        return err.reshape(b, 1)

    def _target_scale(self, s: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The normaliser ``mean(S**2)`` (at least the dtype's tiny), computed once per
        targets tensor: full-batch training meets the same targets every step.

        Reused only for a view of the same memory, shape and strides whose version counter
        has not moved (an in-place edit of the targets recomputes it); the cache holds
        ``s``, so its memory cannot be freed and reused by other targets meanwhile.
        """
        if s.requires_grad or s.is_inference():  # a graph to keep, or no version counter
            return s.pow(2).mean().clamp_min(torch.finfo(dtype).tiny)
        try:
            key = (s.data_ptr(), s.shape, s.stride(), s.dtype, s.device, s._version, dtype)
        except RuntimeError:  # a tensor without storage (under torch.func transforms)
            return s.pow(2).mean().clamp_min(torch.finfo(dtype).tiny)
        cached = self.__dict__.get("_scale_cache")
        if cached is not None and cached[0] == key:
            return cached[2]
        scale = s.pow(2).mean().clamp_min(torch.finfo(dtype).tiny)
        self._scale_cache = (key, s, scale)
        return scale


class JacobianNormBound(DerivativeConstraint):
    r""":math:`\|\partial f/\partial x\|_F \le r`, enforced as :math:`\|J\|_F^2 - r^2 \le 0`.

    ``estimator="exact"`` builds the per-sample Jacobian; ``"vjp_sphere"`` and
    ``"jvp_gaussian"`` use ``samples`` random projections per point (unbiased for
    :math:`\|J\|_F^2`). The default reduction ``"mean"`` bounds the batch mean of
    :math:`\|J\|_F^2`, which the projections estimate without bias.
    """

    default_reduction = "mean"

    def __init__(
        self, max_norm: float, *, estimator: str = "exact", samples: int = 1, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.max_norm = check_number(max_norm, "JacobianNormBound", "max_norm", minimum=0.0)
        if estimator not in ("exact", "vjp_sphere", "jvp_gaussian"):
            raise ConstraintSpecError(
                f"JacobianNormBound: unknown estimator {estimator!r}. Use "
                "'exact', 'vjp_sphere' or 'jvp_gaussian'."
            )
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ConstraintSpecError(
                f"JacobianNormBound: samples must be a positive int (got {samples!r})."
            )
        if estimator != "exact" and self.reduction in ("max", "mean_hinge", "l2_hinge"):
            raise ConstraintSpecError(
                f"JacobianNormBound: reduction {self.reduction!r} of a random"
                " estimate is biased; use reduction='mean' (or 'pointwise') "
                "with projections, or estimator='exact'."
            )
        self.estimator = estimator
        self.samples = samples

    def resolve(self, n_inputs: int, n_outputs: int) -> None:
        super().resolve(n_inputs, n_outputs)
        self.n_components = 1
        if self.estimator == "vjp_sphere":
            self._needs = Needs(projections=self.samples)
        else:
            self._needs = Needs(fro=frozenset({(self.estimator, self.samples)}))

    def signed_values(self, values: DerivativeValues, batch: Any) -> torch.Tensor:
        if self.estimator == "vjp_sphere":
            _, vj = values.projections(self.samples)
            fro = vj.reshape(self.samples, vj.shape[1], -1).pow(2).sum(-1).mean(0)
        else:
            fro = values.fro_sq(self.estimator, self.samples)
        return at_most(fro, self.max_norm**2).reshape(-1, 1)


class Lipschitz(DerivativeConstraint):
    r"""Input-gradient norm bound :math:`\|\nabla_x f_i\|_2 \le L` per selected output.

    Enforced as :math:`\|\nabla_x f_i\|^2 - L^2 \le 0` (smooth at zero gradient).
    """

    def __init__(
        self, max_norm: float, *, outputs: int | Sequence[int] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.max_norm = check_number(max_norm, "Lipschitz", "max_norm", minimum=0.0)
        self.outputs = check_index_list(outputs, "Lipschitz", "outputs")

    def resolve(self, n_inputs: int, n_outputs: int) -> None:
        super().resolve(n_inputs, n_outputs)
        self._outputs = resolve_indices(self.outputs, n_outputs, self.label, "output")
        self.n_components = len(self._outputs)
        self._needs = Needs(rows=frozenset(self._outputs))

    def signed_values(self, values: DerivativeValues, batch: Any) -> torch.Tensor:
        rows = values.rows(self._outputs)
        return at_most(rows.pow(2).sum(-1), self.max_norm**2)


class Custom(DerivativeConstraint):
    r"""A user-defined constraint :math:`g(x, f(x), D) \le 0` (or :math:`h = 0`).

    Args:
        fn: ``fn(values) -> (B, C)`` tensor, where ``values`` offers ``x``, ``outputs``
            and the derivatives declared in ``needs`` (``values.columns([j])``,
            ``values.rows([i])``, ``values.jacobian()``, ``values.second([j])``, ...).
            Positive entries are violations.
        needs: the :class:`~constrained_grad.Needs` the function reads.
        n_components: ``C``, the number of constrained components.
        kind: ``"inequality"`` or ``"equality"``.
    """

    def __init__(
        self,
        fn: Callable[[DerivativeValues], torch.Tensor],
        *,
        needs: Needs,
        n_components: int = 1,
        kind: str = "inequality",
        **kwargs: Any,
    ) -> None:
        if kind not in ("inequality", "equality"):
            raise ConstraintSpecError(
                f"Custom: kind must be 'inequality' or 'equality' (got {kind!r})."
            )
        self.kind = kind
        if kind == "equality" and "reduction" not in kwargs:
            kwargs["reduction"] = "mean"
        super().__init__(**kwargs)
        if not callable(fn):
            raise ConstraintSpecError(f"Custom: fn must be callable (got {type(fn).__name__}).")
        if not isinstance(needs, Needs):
            raise ConstraintSpecError(
                f"Custom: needs must be a constrained_grad.Needs (got {type(needs).__name__})."
            )
        if isinstance(n_components, bool) or not isinstance(n_components, int) or n_components < 1:
            raise ConstraintSpecError(
                f"Custom: n_components must be a positive int (got {n_components!r})."
            )
        self.fn = fn
        self._declared_needs = needs
        self._declared_components = n_components

    def resolve(self, n_inputs: int, n_outputs: int) -> None:
        super().resolve(n_inputs, n_outputs)
        n = self._declared_needs
        resolve_indices(tuple(n.columns) or None, n_inputs, self.label, "input")
        resolve_indices(tuple(n.rows) or None, n_outputs, self.label, "output")
        resolve_indices(tuple(n.second) or None, n_inputs, self.label, "input")
        self._needs = n
        self.n_components = self._declared_components

    def signed_values(self, values: DerivativeValues, batch: Any) -> torch.Tensor:
        g = self.fn(values)
        b = values.x.shape[0]
        if not isinstance(g, torch.Tensor) or g.numel() != b * self.n_components:
            got = tuple(g.shape) if isinstance(g, torch.Tensor) else type(g).__name__
            raise InputValidationError(
                f"{self.label}: fn must return a ({b}, {self.n_components}) "
                f"tensor (got {got}). Return one value per point and "
                "component; set n_components to match."
            )
        return g.reshape(b, self.n_components)
