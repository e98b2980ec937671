"""Declarative derivative constraints: what is constrained, where, and how it is weighed."""

from constrained_grad.constraints.base import REDUCTIONS, DerivativeConstraint, reduce_violations
from constrained_grad.constraints.cells import Cells
from constrained_grad.constraints.domain import Box
from constrained_grad.constraints.formulation import (
    AugmentedLagrangian,
    FixedPenalty,
    Formulation,
    Lagrangian,
    QuadraticPenalty,
)
from constrained_grad.constraints.kinds import (
    Concave,
    Convex,
    Custom,
    DerivativeBound,
    GradientMatch,
    JacobianNormBound,
    Lipschitz,
    Monotonic,
)
from constrained_grad.constraints.needs import Needs
from constrained_grad.constraints.points import AtPoints, Between, InBox, OnBatch, PointSource

__all__ = [
    "REDUCTIONS",
    "AtPoints",
    "AugmentedLagrangian",
    "Between",
    "Box",
    "Cells",
    "Concave",
    "Convex",
    "Custom",
    "DerivativeBound",
    "DerivativeConstraint",
    "FixedPenalty",
    "Formulation",
    "GradientMatch",
    "InBox",
    "JacobianNormBound",
    "Lagrangian",
    "Lipschitz",
    "Monotonic",
    "Needs",
    "OnBatch",
    "PointSource",
    "QuadraticPenalty",
    "reduce_violations",
]
