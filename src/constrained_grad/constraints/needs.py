"""What derivatives a set of constraints needs from one batch: plain data, mergeable.

The engine (:mod:`constrained_grad.derivatives.engine`) evaluates the union of the needs of
all constraints that share a set of points in one computation, so two constraints on the
same column cost one column.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Needs:
    """Derivative quantities requested per sample (indices are flat per-sample indices).

    Attributes:
        columns: inputs ``j`` whose Jacobian column ``∂f/∂x_j`` is needed.
        rows: outputs ``i`` whose input gradient ``∇_x f_i`` is needed.
        jacobian: the full per-sample Jacobian is needed.
        fro: ``(estimator, samples)`` pairs of Frobenius-norm estimates needed.
        projections: number of output-sphere projections ``v^T J`` needed (0 for none).
        second: inputs ``j`` whose curvature ``∂²f/∂x_j²`` is needed.
    """

    columns: frozenset[int] = frozenset()
    rows: frozenset[int] = frozenset()
    jacobian: bool = False
    fro: frozenset[tuple[str, int]] = frozenset()
    projections: int = 0
    second: frozenset[int] = frozenset()
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def merge(self, other: Needs) -> Needs:
        """The union of two sets of needs."""
        return Needs(
            columns=self.columns | other.columns,
            rows=self.rows | other.rows,
            jacobian=self.jacobian or other.jacobian,
            fro=self.fro | other.fro,
            projections=max(self.projections, other.projections),
            second=self.second | other.second,
        )

    @property
    def empty(self) -> bool:
        return not (
            self.columns
            or self.rows
            or self.jacobian
            or self.fro
            or self.projections
            or self.second
        )
