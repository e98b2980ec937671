"""What :func:`~constrained_grad.fit` hands out: to callbacks after each step, and at the end."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from constrained_grad.history import History
from constrained_grad.problem import DerivativeProblem


@dataclass
class StepInfo:
    """What callbacks see after each step."""

    step: int
    epoch: int
    loss: float
    max_violation: float
    history: History
    problem: DerivativeProblem


@dataclass
class FitResult:
    """Outcome of :func:`fit`."""

    history: History
    problem: DerivativeProblem
    steps: int
    stopped: str  # "budget", "feasible", "callback"
    dual_optimizer: torch.optim.Optimizer | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> Any:
        return self.problem.model


Callback = Callable[[StepInfo], Any]
