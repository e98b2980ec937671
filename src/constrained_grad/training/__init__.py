"""The primal-dual training loop."""

from constrained_grad.training.dual import build_dual_optimizer
from constrained_grad.training.fit import FitResult, StepInfo, Trainer, fit

__all__ = ["FitResult", "StepInfo", "Trainer", "build_dual_optimizer", "fit"]
