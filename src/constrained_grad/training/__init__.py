"""The primal-dual training loop."""

from constrained_grad.training.dual import build_dual_optimizer
from constrained_grad.training.fit import FitResult, StepInfo, Trainer, fit
from constrained_grad.training.prove import Prover

__all__ = ["FitResult", "Prover", "StepInfo", "Trainer", "build_dual_optimizer", "fit"]
