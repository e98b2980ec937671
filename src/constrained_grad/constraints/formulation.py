r"""How a constraint enters the training objective: declarative policies.

* :class:`Lagrangian` — :math:`L = f + \lambda^\top g` with :math:`\lambda \ge 0` learned
  by projected dual ascent :math:`\lambda \leftarrow [\lambda + \eta g]_+`. The default:
  it finds the weight that makes the constraint hold instead of guessing it.
* :class:`AugmentedLagrangian` — adds :math:`\tfrac{\rho}{2}\|[g]_+\|^2`-type terms
  (Cooper's formulation); the dual step is :math:`\eta = \rho` unless set, the classical
  method of multipliers. ``penalty`` must be positive.
* :class:`QuadraticPenalty` — :math:`f + \tfrac{c}{2}\|[g]_+\|^2`, no multiplier.
* :class:`FixedPenalty` — :math:`f + w\,g`: the hand-tuned baseline users start from, with
  no guarantee; kept for comparisons (its "multiplier" is the constant ``w``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from constrained_grad.errors import ConstraintSpecError


def _check_positive(value: float, who: str, what: str, allow_zero: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = "non-negative" if allow_zero else "positive"
        raise ConstraintSpecError(f"{who}: {what} must be a finite {bound} number (got {value!r}).")
    return float(value)


@dataclass(frozen=True)
class Formulation:
    """Base of the formulation policies."""

    uses_multiplier = True


@dataclass(frozen=True)
class Lagrangian(Formulation):
    """Plain Lagrangian with learned multipliers (default)."""


@dataclass(frozen=True)
class AugmentedLagrangian(Formulation):
    """Augmented Lagrangian with a constant penalty coefficient ``penalty`` > 0."""

    penalty: float = 1.0

    def __post_init__(self) -> None:
        _check_positive(self.penalty, "AugmentedLagrangian", "penalty")


@dataclass(frozen=True)
class QuadraticPenalty(Formulation):
    """Quadratic penalty with constant coefficient ``coefficient`` > 0 (no multiplier)."""

    coefficient: float = 1.0
    uses_multiplier = False

    def __post_init__(self) -> None:
        _check_positive(self.coefficient, "QuadraticPenalty", "coefficient")


@dataclass(frozen=True)
class FixedPenalty(Formulation):
    """Fixed-weight linear penalty ``weight * g`` (baseline; never updated)."""

    weight: float = 1.0

    def __post_init__(self) -> None:
        _check_positive(self.weight, "FixedPenalty", "weight", allow_zero=True)
