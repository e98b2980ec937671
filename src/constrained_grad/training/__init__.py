"""The primal-dual training loop."""

from constrained_grad.training.dual import build_dual_optimizer
from constrained_grad.training.fit import Trainer, fit
from constrained_grad.training.prove import Prover
from constrained_grad.training.results import FitResult, StepInfo

__all__ = ["FitResult", "Prover", "StepInfo", "Trainer", "build_dual_optimizer", "fit"]
