"""constrained_grad: train neural networks under constraints on their input derivatives.

Declare constraints (monotone, derivative bounds, gradient matching, Jacobian and
Lipschitz bounds, convexity, custom), solve them by Lagrangian primal-dual training on
Cooper, record and plot multipliers and violations, and verify the trained model.

>>> import torch, constrained_grad as cg
>>> model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
>>> problem = cg.DerivativeProblem(model, torch.nn.functional.mse_loss,
...                                [cg.Monotonic(inputs=[2], direction="increasing")])
>>> list(problem.specs)
['monotonic_0']
"""

from typing import TYPE_CHECKING, Any

from constrained_grad import derivatives, errors
from constrained_grad.constraints import (
    AtPoints,
    AugmentedLagrangian,
    Between,
    Box,
    Cells,
    Concave,
    Convex,
    Custom,
    DerivativeBound,
    DerivativeConstraint,
    FixedPenalty,
    GradientMatch,
    InBox,
    JacobianNormBound,
    Lagrangian,
    Lipschitz,
    Monotonic,
    Needs,
    OnBatch,
    QuadraticPenalty,
)
from constrained_grad.derivatives import (
    batch_jacobian,
    input_gradient,
    input_gradient_norm,
    jacobian_columns,
    jacobian_fro_norm_sq,
    jacobian_rows,
    second_derivatives,
)
from constrained_grad.history import (
    ConstraintHealth,
    CSVLogger,
    History,
    TensorBoardLogger,
    diagnose,
)
from constrained_grad.models import Ensemble
from constrained_grad.parallel import is_main_process
from constrained_grad.problem import DerivativeProblem, RankSync, with_indices
from constrained_grad.training import FitResult, Prover, StepInfo, Trainer, fit
from constrained_grad.verify import (
    Counterexamples,
    LocalReport,
    VerificationReport,
    adversarial_search,
    certify_derivative_sign,
    certify_interval,
    certify_monotonic,
    sample_search,
    verify,
    verify_local,
)

if TYPE_CHECKING:  # for type checkers only: at run time, matplotlib loads on first use
    from constrained_grad.history.plots import plot_history, plot_partial_dependence, plot_proof

__version__ = "0.1.0"

__all__ = [
    "AtPoints",
    "AugmentedLagrangian",
    "Between",
    "Box",
    "CSVLogger",
    "Cells",
    "Concave",
    "ConstraintHealth",
    "Convex",
    "Counterexamples",
    "Custom",
    "DerivativeBound",
    "DerivativeConstraint",
    "DerivativeProblem",
    "Ensemble",
    "FitResult",
    "FixedPenalty",
    "GradientMatch",
    "History",
    "InBox",
    "JacobianNormBound",
    "Lagrangian",
    "Lipschitz",
    "LocalReport",
    "Monotonic",
    "Needs",
    "OnBatch",
    "Prover",
    "QuadraticPenalty",
    "RankSync",
    "StepInfo",
    "TensorBoardLogger",
    "Trainer",
    "VerificationReport",
    "adversarial_search",
    "batch_jacobian",
    "certify_derivative_sign",
    "certify_interval",
    "certify_monotonic",
    "derivatives",
    "diagnose",
    "errors",
    "fit",
    "input_gradient",
    "input_gradient_norm",
    "is_main_process",
    "jacobian_columns",
    "jacobian_fro_norm_sq",
    "jacobian_rows",
    "plot_history",
    "plot_partial_dependence",
    "plot_proof",
    "sample_search",
    "second_derivatives",
    "verify",
    "verify_local",
    "with_indices",
]


def __getattr__(name: str) -> Any:
    """``plot_history``/``plot_partial_dependence``: the real functions, loaded on first use.

    Importing constrained_grad does not import matplotlib; ``help(cg.plot_history)`` shows
    the function's own signature and docstring.
    """
    if name in ("plot_history", "plot_partial_dependence", "plot_proof"):
        from constrained_grad.history import plots

        return getattr(plots, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
