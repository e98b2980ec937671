"""When :func:`~constrained_grad.fit` stops before its last epoch.

Three rules, read after each logged step in this order: a callback returning ``True``
(``stopped="callback"``), every constraint's worst violation on the batch within
``stop_tolerance`` for ``patience`` consecutive steps (``"feasible"``), and the total step
budget ``steps`` (``"budget"``, also the reason when the epochs run out).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from constrained_grad.training.results import Callback, StepInfo
from constrained_grad.training.stats import FIELDS

if TYPE_CHECKING:
    from constrained_grad.training.fit import Trainer


class StopRules:
    """The stop rules of a run over constraints ``names``; :attr:`stopped` says which fired."""

    def __init__(
        self,
        names: Sequence[str],
        *,
        steps: int | None,
        stop_tolerance: float | None,
        patience: int,
        callbacks: Sequence[Callback],
    ) -> None:
        self.steps = steps
        self.stop_tolerance = stop_tolerance
        self.patience = patience
        self.callbacks = list(callbacks)
        self.stopped = "budget"
        self._feasible_run = 0
        # where each constraint's worst violation sits in a history row
        self._worst_idx = [2 + k * len(FIELDS) + 1 for k in range(len(names))]
        self.wants_worst = bool(self.callbacks) or stop_tolerance is not None

    def budget_left(self, step_count: int) -> bool:
        """Whether the step budget allows another step."""
        return self.steps is None or step_count < self.steps

    def worst(self, row: list[float]) -> float:
        """The worst violation over the constraints in a history row (NaN without any)."""
        return max((row[i] for i in self._worst_idx), default=math.nan)

    def after_step(self, trainer: Trainer, epoch: int, row: list[float], worst: float) -> bool:
        """Call the callbacks, then count feasible steps; True (and :attr:`stopped`) to stop."""
        if self.callbacks:
            info = StepInfo(
                trainer.step_count, epoch, row[0], worst, trainer.history, trainer.problem
            )
            if any(cb(info) is True for cb in self.callbacks):
                self.stopped = "callback"
                return True
        if self.stop_tolerance is not None and self._worst_idx:
            self._feasible_run = self._feasible_run + 1 if worst <= self.stop_tolerance else 0
            if self._feasible_run >= self.patience:
                self.stopped = "feasible"
                return True
        return False
