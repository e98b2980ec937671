"""What a run shows while it trains: the progress bar, and evaluations logged in the history."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from constrained_grad.history import History


class ProgressBar:
    """A tqdm bar over a run's steps (``total`` may be ``None``), starting at ``initial``,
    with the loss and the worst violation refreshed every 10 steps. When not ``enabled``
    (``progress=False``, or a rank other than 0) every method does nothing."""

    def __init__(self, enabled: bool, total: int | None, initial: int, has_loss: bool) -> None:
        self._has_loss = has_loss
        self._bar: Any = None
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total,
                initial=initial,
                desc="constrained fit",
                unit="step",
                dynamic_ncols=True,
            )

    @property
    def enabled(self) -> bool:
        return self._bar is not None

    def skipped(self) -> None:
        """A step skipped (``on_nonfinite="skip"``): counted, nothing to show."""
        if self._bar is not None:
            self._bar.update(1)

    def step(self, step_count: int, row: list[float], worst: float) -> None:
        """A logged step; ``step_count`` counts it already."""
        if self._bar is None:
            return
        self._bar.update(1)
        if step_count % 10 == 1:
            self._bar.set_postfix(
                loss=f"{row[0]:.4g}" if self._has_loss else "no loss",
                max_violation=f"{worst:.3g}",
                refresh=False,
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class Evaluation:
    """``fn(model) -> {metric: value}`` logged in ``history`` every ``every`` steps and once
    more when training ends (``fn=None``: nothing)."""

    def __init__(
        self, fn: Callable[[Any], dict[str, float]] | None, every: int | None, history: History
    ) -> None:
        self.fn, self.every, self.history = fn, every, history

    def after_step(self, step_count: int, model: Any) -> None:
        if self.fn is not None and self.every and step_count % self.every == 0:
            self.history.log_eval(step_count, self.fn(model))

    def at_end(self, step_count: int, model: Any) -> None:
        if self.fn is not None:
            self.history.log_eval(step_count, self.fn(model))
