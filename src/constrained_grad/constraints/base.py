r"""The base of every derivative constraint: sign, tolerance, reduction, points, policy.

A constraint produces, per evaluation point ``b`` and constrained component ``c``, a signed
value :math:`g_{bc}` (:mod:`~constrained_grad.constraints.signs`: :math:`g \le 0` holds)
from which the tolerance is subtracted. The **reduction** turns the ``(B, C)`` matrix into
what the optimiser sees:

``"mean_hinge"``
    primal :math:`\frac1B\sum_b [g_{bc}]_+` (gradient only from violating points), dual
    :math:`\max_b g_{bc}`: the multiplier grows while any point of the batch violates and
    decays when all hold with slack. One multiplier per component.
``"max"``
    primal and dual :math:`\max_b g_{bc}`. One multiplier per component.
``"mean"``
    primal and dual :math:`\frac1B\sum_b g_{bc}`: for constraints *on average*, e.g. an
    unbiased estimate of :math:`E\|J\|_F^2 \le r^2`. One multiplier per component.
``"l2_hinge"``
    primal and dual :math:`\sqrt{\frac1B\sum_b [g_{bc}]_+^2}`.
``"pointwise"``
    one multiplier per point and component (Cooper's ``IndexedMultiplier``), observed by
    the stable point ids of the batch: right when each point must hold on its own and the
    points recur (a fixed set, or the dataset with :func:`~constrained_grad.with_indices`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

from constrained_grad.constraints.formulation import Formulation, Lagrangian
from constrained_grad.constraints.needs import Needs
from constrained_grad.constraints.points import OnBatch, PointSource
from constrained_grad.errors import ConstraintSpecError

REDUCTIONS = ("mean_hinge", "max", "mean", "l2_hinge", "pointwise")


class DerivativeValues(Protocol):
    """What the engine hands to a constraint (see ``derivatives.engine.DerivativeValues``)."""

    @property
    def x(self) -> torch.Tensor: ...
    @property
    def outputs(self) -> torch.Tensor: ...

    def columns(self, inputs: Sequence[int]) -> torch.Tensor: ...
    def rows(self, outputs: Sequence[int]) -> torch.Tensor: ...
    def jacobian(self) -> torch.Tensor: ...
    def fro_sq(self, estimator: str, samples: int) -> torch.Tensor: ...
    def projections(self, samples: int) -> tuple[torch.Tensor, torch.Tensor]: ...
    def second(self, inputs: Sequence[int]) -> torch.Tensor: ...


def check_index_list(value: object, who: str, what: str) -> tuple[int, ...] | None:
    """Normalise an index or list of indices given at declaration time (None passes)."""
    if value is None:
        return None
    items = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    try:
        out: tuple[Any, ...] = tuple(items)  # type: ignore[arg-type]
    except TypeError:
        raise ConstraintSpecError(
            f"{who}: {what} must be an int or a list of ints (got {value!r})."
        ) from None
    if not out:
        raise ConstraintSpecError(f"{who}: {what} is empty (got {value!r}). Name at least one.")
    for i in out:
        if isinstance(i, bool) or not isinstance(i, int):
            raise ConstraintSpecError(f"{who}: {what} must be ints (got {i!r} in {value!r}).")
    if len(set(out)) != len(out):
        raise ConstraintSpecError(f"{who}: {what} has duplicates (got {list(out)}).")
    return out


def resolve_indices(indices: tuple[int, ...] | None, size: int, who: str, what: str) -> list[int]:
    """Check declared indices against the model's size; ``None`` means all."""
    if indices is None:
        return list(range(size))
    out: list[int] = []
    for i in indices:
        if not -size <= i < size:
            raise ConstraintSpecError(
                f"{who}: {what} index {i} is out of range: the model has "
                f"{size} {what}s per sample. Use an index in "
                f"[0, {size - 1}] (negative counts from the end)."
            )
        out.append(i % size)
    return out


def check_number(value: object, who: str, what: str, *, minimum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConstraintSpecError(f"{who}: {what} must be a finite number (got {value!r}).")
    if minimum is not None and value < minimum:
        raise ConstraintSpecError(f"{who}: {what} must be >= {minimum} (got {value!r}).")
    return float(value)


class DerivativeConstraint:
    """Common declaration of a derivative constraint.

    Subclasses set ``_needs``/``n_components`` in :meth:`resolve` and implement
    :meth:`signed_values`. Declarations validate what they can when built; indices are
    checked against the model when the constraint is resolved by a problem or verifier.
    """

    kind: str = "inequality"  # or "equality"
    default_reduction: str = "mean_hinge"
    #: whether ``where=Cells(...)`` applies: the signed value must be monotone in each
    #: derivative entry, so its worst case over an interval is at an endpoint
    supports_cells: bool = False

    def __init__(
        self,
        *,
        name: str | None = None,
        where: PointSource | None = None,
        reduction: str | None = None,
        tolerance: float = 0.0,
        formulation: Formulation | None = None,
        dual_lr: float | None = None,
    ) -> None:
        who = type(self).__name__
        if name is not None and (not isinstance(name, str) or not name.strip() or "/" in name):
            raise ConstraintSpecError(
                f"{who}: name must be a non-empty string without '/' (got {name!r})."
            )
        self.name = name
        self.where = OnBatch() if where is None else where
        if not isinstance(self.where, PointSource):
            raise ConstraintSpecError(
                f"{who}: where must be OnBatch(), InBox(...), Between(...) or "
                f"AtPoints(...) (got {type(where).__name__})."
            )
        if reduction is None:  # cells recur with stable ids: one multiplier per cell
            over_cells = getattr(self.where, "over_cells", False)
            reduction = "pointwise" if over_cells else self.default_reduction
        self.reduction = reduction
        if self.reduction not in REDUCTIONS:
            raise ConstraintSpecError(
                f"{who}: unknown reduction {self.reduction!r}. Choose one of {REDUCTIONS}."
            )
        if self.kind == "equality" and self.reduction in ("mean_hinge", "l2_hinge", "max"):
            raise ConstraintSpecError(
                f"{who}: reduction {self.reduction!r} makes no sense for an "
                "equality constraint. Use 'mean' or 'pointwise'."
            )
        if self.reduction == "pointwise" and self.where.num_points is None:
            raise ConstraintSpecError(
                f"{who}: pointwise multipliers need points with stable ids (got where="
                f"{self.where!r}). Use AtPoints(points) or OnBatch(num_points=len(dataset)) "
                "with a loader over constrained_grad.with_indices(dataset)."
            )
        self.tolerance = check_number(tolerance, who, "tolerance", minimum=0.0)
        self.formulation = Lagrangian() if formulation is None else formulation
        if not isinstance(self.formulation, Formulation):
            raise ConstraintSpecError(
                f"{who}: formulation must be Lagrangian(), "
                "AugmentedLagrangian(...), QuadraticPenalty(...) or "
                f"FixedPenalty(...) (got {formulation!r})."
            )
        self.dual_lr = (
            None if dual_lr is None else check_number(dual_lr, who, "dual_lr", minimum=0.0)
        )
        self._needs: Needs | None = None
        self.n_components = 0
        self.n_inputs = 0
        self.n_outputs = 0

    # -- binding to a model -------------------------------------------------------------
    def resolve(self, n_inputs: int, n_outputs: int) -> None:
        """Check the declaration against a model with ``n_inputs``/``n_outputs`` per sample.

        A constraint is bound to one model size: resolving it again for another size raises
        :class:`ConstraintSpecError` (a :class:`DerivativeProblem` resolves a copy of a
        declaration that is already bound, so one declaration can serve several problems).
        """
        if self.resolved and (n_inputs, n_outputs) != (self.n_inputs, self.n_outputs):
            raise ConstraintSpecError(
                f"{self.label}: already bound to a model of {self.n_inputs} inputs and "
                f"{self.n_outputs} outputs per sample (got {n_inputs} and {n_outputs}); "
                "re-binding it would change the problem that uses it. Declare a new "
                "constraint for this model, or pass constraint.unbound_copy()."
            )
        self.n_inputs, self.n_outputs = n_inputs, n_outputs
        self.where.check_inputs(n_inputs, self.label)
        if getattr(self.where, "over_cells", False) and not self.supports_cells:
            raise ConstraintSpecError(
                f"{self.label}: where=Cells(...) bounds first derivatives over cells, which "
                f"applies to Monotonic and DerivativeBound with number bounds (got "
                f"{type(self).__name__}). Enforce this constraint at points (OnBatch, InBox)."
            )

    @property
    def resolved(self) -> bool:
        """Whether the constraint has been bound to a model (:meth:`resolve`)."""
        return self._needs is not None

    def unbound_copy(self) -> DerivativeConstraint:
        """A shallow copy of the declaration, not yet bound to any model."""
        twin = copy.copy(self)
        twin._needs = None
        twin.n_components = twin.n_inputs = twin.n_outputs = 0
        return twin

    @property
    def needs(self) -> Needs:
        if self._needs is None:
            raise ConstraintSpecError(
                f"{self.label}: used before being resolved against a model. "
                "Build a DerivativeProblem or call resolve(n_inputs, "
                "n_outputs) first."
            )
        return self._needs

    @property
    def label(self) -> str:
        return self.name or type(self).__name__

    @property
    def component_names(self) -> list[str]:
        """Human-readable names of the ``n_components`` constrained components."""
        return [f"{self.label}[{c}]" for c in range(self.n_components)]

    # -- evaluation ---------------------------------------------------------------------
    def signed_values(self, values: DerivativeValues, batch: Any) -> torch.Tensor:
        """``(B, C)`` signed values, ``g <= 0`` where the constraint holds (before tolerance)."""
        raise NotImplementedError

    def violations(self, values: DerivativeValues, batch: Any = None) -> torch.Tensor:
        """``(B, C)`` with the tolerance applied: ``> 0`` is a violation of that size."""
        g = self.signed_values(values, batch)
        if self.kind == "equality":
            return g if self.tolerance == 0 else g.abs() - self.tolerance
        return g - self.tolerance if self.tolerance else g

    @property
    def effective_kind(self) -> str:
        """Equalities with a tolerance become the inequality ``|h| <= tol``."""
        return "equality" if self.kind == "equality" and self.tolerance == 0 else "inequality"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, where={self.where!r}, "
            f"reduction={self.reduction!r})"
        )


def _over_points(h: torch.Tensor, label: str) -> torch.Tensor:
    return h.amax(0) if label == "max" else h.mean(0)


def reduce_violations(
    g: torch.Tensor,
    reduction: str,
    over_points: Callable[[torch.Tensor, str], torch.Tensor] = _over_points,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(primal, dual)`` views of a ``(B, C)`` violation matrix for an aggregate reduction.

    The primal value carries gradients to the model; the dual value (detached) drives the
    multiplier update. Both have shape ``(C,)``. Every reduction over the points goes
    through ``over_points(h, label)`` — a mean, or the max when ``label == "max"`` — which
    data-parallel training replaces by the global reduction over all ranks' points.
    """
    if reduction == "mean_hinge":
        return over_points(torch.relu(g), "hinge_mean"), over_points(g.detach(), "max")
    if reduction == "max":
        m = over_points(g, "max")
        return m, m.detach()
    if reduction == "mean":
        m = over_points(g, "mean")
        return m, m.detach()
    if reduction == "l2_hinge":
        sq = over_points(torch.relu(g).pow(2), "hinge_sq_mean")
        m = sq.add(torch.finfo(g.dtype).tiny).sqrt()
        return m, m.detach()
    raise ConstraintSpecError(
        f"reduce_violations: reduction {reduction!r} is not an aggregate. "
        "Pointwise constraints are reduced by the problem."
    )


BoundLike = float | torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None
