r"""Train until proved: periodic certificates during :func:`~constrained_grad.fit`, their
counterexamples fed back into training, and selection of a proved state.

A :class:`Prover` is a callback. Every ``every`` steps (and once more when the fit ends) it
runs :func:`~constrained_grad.verify` with certificates on the declared domain, for the
problem's sign and bound constraints (``Monotonic``, ``DerivativeBound``):

* **proved** — every checked constraint is ``"certified"``: the model's weights are kept
  (the last proved state, or the best by ``score`` among proved states);
* **violated** — the counterexamples the search and the certificate found are handed to a
  :class:`~constrained_grad.Counterexamples` point source (``feed=``), whose pointwise
  multipliers then push at exactly those points;
* otherwise the check is undecided within its time budget.

When the fit ends, :meth:`Prover.on_fit_end` checks the final weights, and if they are not
proved but an earlier state was, restores that state into the model (``restore=True``).
:attr:`Prover.status` is then ``"proved"`` (with :attr:`Prover.proved_step`) or
``"not proved"``: a budget that ran out is never reported as a proof.

Each check is logged into the history's evaluations as ``proof/certified`` (1 or 0),
``proof/seconds`` and, per constraint over :class:`~constrained_grad.Cells`,
``cells/<name>/cells``, ``cells/<name>/proved`` and ``cells/<name>/worst_bound``.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from constrained_grad.constraints import Box, DerivativeBound, Monotonic
from constrained_grad.constraints.cells import Cells
from constrained_grad.errors import InputValidationError
from constrained_grad.verify import Counterexamples, VerificationReport, verify

Score = Callable[[Any], float]


class Prover:
    """Certify during training, feed counterexamples back, keep a proved state.

    Args:
        domain: the :class:`~constrained_grad.Box` to prove the constraints on.
        every: steps between checks.
        constraints: names of the problem's constraints to prove (default: those declared
            over :class:`~constrained_grad.Cells` if any, else every ``Monotonic`` and
            number-bound ``DerivativeBound``).
        time_limit: seconds for one check (all constraints together).
        samples: Sobol points of the search that runs before the certificate (finds
            counterexamples fast; 0 to skip).
        feed: a :class:`~constrained_grad.Counterexamples` source of the problem that
            receives the counterexamples of each failed check.
        score: ``score(model) -> float``, lower is better (e.g. validation loss): keep the
            best proved state instead of the last.
        restore: at the end of the fit, load the kept proved state into the model when the
            final weights are not proved (with ``score``: also when an earlier proved state
            scored better than the final weights).
        stop_when_proved: stop the fit at the first proved check.
        log_every: steps between cell statistics in the history (constraints over cells).

    Example:
        >>> import constrained_grad as cg
        >>> prover = cg.Prover(cg.Box([0, 0], [1, 1]), every=100)
        >>> prover.status
        'not checked'
    """

    def __init__(
        self,
        domain: Box,
        *,
        every: int = 100,
        constraints: Sequence[str] | None = None,
        time_limit: float = 10.0,
        samples: int = 1024,
        feed: Counterexamples | None = None,
        score: Score | None = None,
        restore: bool = True,
        stop_when_proved: bool = False,
        log_every: int = 10,
    ) -> None:
        who = "Prover"
        if not isinstance(domain, Box):
            raise InputValidationError(
                f"{who}: domain must be a cg.Box (got {type(domain).__name__})."
            )
        for what, v in (("every", every), ("log_every", log_every)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputValidationError(f"{who}: {what} must be a positive int (got {v!r}).")
        if (
            isinstance(time_limit, bool)
            or not isinstance(time_limit, (int, float))
            or not math.isfinite(time_limit)
            or time_limit <= 0
        ):
            raise InputValidationError(
                f"{who}: time_limit must be a positive number of seconds (got {time_limit!r})."
            )
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 0:
            raise InputValidationError(f"{who}: samples must be an int >= 0 (got {samples!r}).")
        if feed is not None and not isinstance(feed, Counterexamples):
            raise InputValidationError(
                f"{who}: feed must be a cg.Counterexamples point source (got "
                f"{type(feed).__name__})."
            )
        if score is not None and not callable(score):
            raise InputValidationError(f"{who}: score must be a function of the model.")
        self.domain = domain
        self.every = every
        self.names = None if constraints is None else list(constraints)
        self.time_limit = float(time_limit)
        self.samples = samples
        self.feed = feed
        self.score = score
        self.restore = restore
        self.stop_when_proved = stop_when_proved
        self.log_every = log_every
        self.checks: list[dict[str, Any]] = []  # one record per check
        self.proved_step: int | None = None
        self.proved_score: float | None = None
        self.proved_state: dict[str, torch.Tensor] | None = None
        self.last_report: VerificationReport | None = None
        self.final_proved: bool | None = None
        self._last_checked = -1

    # -- status ------------------------------------------------------------------------------
    @property
    def status(self) -> str:
        """``"proved"`` (the model now holds a proved state), ``"not proved"`` or
        ``"not checked"``."""
        if not self.checks:
            return "not checked"
        if self.final_proved or (self.final_proved is None and self.checks[-1]["proved"]):
            return "proved"
        return "not proved"

    # -- the callback ------------------------------------------------------------------------
    def __call__(self, info: Any) -> bool:
        problem = info.problem
        if info.step % self.every:
            if info.step % self.log_every == 0:
                self._log_cells(problem, info.history, info.step)
            return False
        proved = self.check(problem, info.history, info.step)
        return bool(proved and self.stop_when_proved)

    def on_fit_end(self, result: Any) -> None:
        """Check the final weights; restore the kept proved state if they are not proved."""
        problem, history, step = result.problem, result.history, result.steps
        proved = self.checks[-1]["proved"] if self._last_checked == step else None
        if proved is None:
            proved = self.check(problem, history, step)
        self.final_proved = proved
        # restore the kept proved state when the final weights are not proved, or, with a
        # score, when an earlier proved state scored better than the final one
        better_kept = self.score is not None and self.proved_step not in (None, step)
        if self.restore and self.proved_state is not None and (not proved or better_kept):
            problem.model.load_state_dict(self.proved_state)
            self.final_proved = True
            history.meta["proof_restored_step"] = self.proved_step
        history.meta["proof"] = {
            "status": self.status,
            "proved_step": self.proved_step if self.final_proved else None,
            "checks": len(self.checks),
            "cells": {
                name: {
                    "cells": c.where.n,
                    "bound_holds": c.where.proved,
                    "worst_bound": c.where.worst if math.isfinite(c.where.worst) else None,
                    "budget_exhausted": c.where.exhausted,
                }
                for name, c in problem.specs.items()
                if isinstance(c.where, Cells)
            },
        }
        if not self.final_proved:
            advice = self._advice(problem)
            if advice:
                history.meta["proof"]["advice"] = advice
                warnings.warn(f"Prover: not proved. {advice}", stacklevel=2)

    @staticmethod
    def _advice(problem: Any) -> str:
        """What to change when constraints over cells ended unproved."""
        tips = []
        for name, c in problem.specs.items():
            cells = c.where
            if not isinstance(cells, Cells) or not math.isfinite(cells.worst):
                continue
            if cells.worst <= 0:
                continue
            if cells.exhausted:
                tips.append(
                    f"{name!r}: the cell budget is spent ({cells.n} cells) with bounds still "
                    f"violated by up to {cells.worst:.3g}; raise Cells(max_cells=...)."
                )
            elif cells.slack == 0 and cells.worst < 1e-4:
                tips.append(
                    f"{name!r}: the worst cell misses by only {cells.worst:.1e}, too little "
                    "for its multiplier to grow; give Cells a small slack (e.g. "
                    "slack=1e-4 in the derivative's units)."
                )
        return " ".join(tips)

    # -- one check ---------------------------------------------------------------------------
    def _specs(self, problem: Any) -> list[Any]:
        specs = []
        for name, c in problem.specs.items():
            if self.names is not None and name not in self.names:
                continue
            if isinstance(c, Monotonic) or (isinstance(c, DerivativeBound) and c.supports_cells):
                specs.append(c)
        if self.names is not None:
            missing = [n for n in self.names if n not in problem.specs]
            if missing:
                raise InputValidationError(
                    f"Prover: no constraint named {missing} in the problem (got "
                    f"{list(problem.specs)})."
                )
        if self.names is None and any(isinstance(c.where, Cells) for c in specs):
            # the property is the constraint over cells; point constraints' margins are a
            # training device, not something to prove over the whole box
            specs = [c for c in specs if isinstance(c.where, Cells)]
        if not specs:
            raise InputValidationError(
                "Prover: the problem has no Monotonic or number-bound DerivativeBound "
                "constraint to prove. Declare one, or name them with constraints=."
            )
        return specs

    def check(self, problem: Any, history: Any, step: int) -> bool:
        """Certify now; log the outcome, keep or feed back. Returns True when proved."""
        specs = self._specs(problem)
        model = problem.model
        t0 = time.perf_counter()
        report = verify(
            model,
            specs,
            self.domain,
            samples=self.samples,
            adversarial=False,
            certify=True,
            time_limit=self.time_limit,
            seed=step,
            progress=False,
        )
        seconds = time.perf_counter() - t0
        self.last_report = report
        self._last_checked = step
        proved = all(r.status == "certified" for r in report.constraints)
        record = {
            "step": step,
            "proved": proved,
            "seconds": seconds,
            "status": {r.name: r.status for r in report.constraints},
        }
        if proved:
            score = None if self.score is None else float(self.score(model))
            record["score"] = score
            better = (
                self.proved_state is None
                or score is None
                or self.proved_score is None
                or score <= self.proved_score
            )
            if better:
                self.proved_state = copy.deepcopy(model.state_dict())
                self.proved_step, self.proved_score = step, score
        elif self.feed is not None:
            points = [
                torch.tensor(ce.x, dtype=torch.float64)
                for r in report.constraints
                for ce in r.counterexamples
            ]
            record["fed"] = self.feed.add(torch.stack(points)) if points else 0
        self.checks.append(record)
        metrics = {"proof/certified": float(proved), "proof/seconds": seconds}
        history.log_eval(step, {**metrics, **self._cell_metrics(problem)})
        return proved

    # -- cells -------------------------------------------------------------------------------
    @staticmethod
    def _cell_metrics(problem: Any) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, c in problem.specs.items():
            if isinstance(c.where, Cells):
                out[f"cells/{name}/cells"] = float(c.where.n)
                out[f"cells/{name}/proved"] = float(c.where.proved)
                out[f"cells/{name}/worst_bound"] = c.where.worst
        return out

    def _log_cells(self, problem: Any, history: Any, step: int) -> None:
        metrics = self._cell_metrics(problem)
        if metrics:
            history.log_eval(step, metrics)

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "checks": copy.deepcopy(self.checks),
            "proved_step": self.proved_step,
            "proved_score": self.proved_score,
            "proved_state": self.proved_state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.checks = list(state["checks"])
        self.proved_step = state["proved_step"]
        self.proved_score = state["proved_score"]
        self.proved_state = state["proved_state"]

    def __repr__(self) -> str:
        return f"Prover(every={self.every}, status={self.status!r}, checks={len(self.checks)})"
