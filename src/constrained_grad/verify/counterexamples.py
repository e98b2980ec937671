r"""Counterexample-guided training: constraint points found by searching the model.

:class:`Counterexamples` is a point source (use it as ``where=``) that, every ``every``
training steps, runs the adversarial search of :func:`constrained_grad.verify` on the
current model and keeps the violating points it finds in a buffer of ``capacity`` slots.
The constraint is then enforced at the buffered points; each slot is a stable point id, so
``reduction="pointwise"`` gives every counterexample its own multiplier, which grows until
that point is fixed. When the buffer is full, new counterexamples replace the slots whose
points are now satisfied with the most slack.

This is what drives out violations in the empty corners of the domain that neither the
data nor uniform box samples visit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from constrained_grad.constraints.domain import Box
from constrained_grad.constraints.points import (
    PointSource,
    check_box_width,
    positive_int,
    subset_ids,
)
from constrained_grad.errors import ConstraintSpecError, InputValidationError
from constrained_grad.verify.search import adversarial_search

Violations = Callable[[torch.Tensor, bool], torch.Tensor]


class Counterexamples(PointSource):
    """Points where the model violates its constraints, found during training.

    Args:
        domain: the :class:`~constrained_grad.Box` to search.
        capacity: buffer slots (= point ids for pointwise multipliers).
        every: search every ``every`` steps (the first search runs on the first step).
        starts / steps / step_size: the adversarial search per round.
        batch_size: buffered points used per step (all filled slots if None).
        seed: seeds the searches (round ``r`` uses ``seed + r``).
    """

    def __init__(
        self,
        domain: Box,
        *,
        capacity: int = 256,
        every: int = 50,
        starts: int = 64,
        steps: int = 30,
        step_size: float = 0.05,
        batch_size: int | None = None,
        seed: int = 0,
    ) -> None:
        if not isinstance(domain, Box):
            raise ConstraintSpecError(
                f"Counterexamples: domain must be a cg.Box (got {type(domain).__name__})."
            )
        self.domain = domain
        self.capacity = positive_int(capacity, "Counterexamples", "capacity")
        self.num_points = self.capacity
        self.every = positive_int(every, "Counterexamples", "every")
        self.starts = positive_int(starts, "Counterexamples", "starts")
        self.steps = positive_int(steps, "Counterexamples", "steps")
        self.step_size = float(step_size)
        self.batch_size = (
            None
            if batch_size is None
            else positive_int(batch_size, "Counterexamples", "batch_size")
        )
        self.seed = int(seed)
        self._violations: list[Violations] = []
        self._model: Any = None
        self.buffer = torch.zeros(self.capacity, domain.dim, dtype=torch.float64)
        self.filled = 0
        self.calls = 0
        self.rounds = 0
        self.found = 0  # counterexamples added so far
        self._dtype, self._device = torch.get_default_dtype(), torch.device("cpu")

    def attach(self, violations: Violations) -> None:
        self._violations.append(violations)

    def check_inputs(self, n_inputs: int, who: str) -> None:
        check_box_width(self.domain, n_inputs, who, "Counterexamples domain")

    def _all_violations(self, x: torch.Tensor, graph_in_x: bool) -> torch.Tensor:
        return torch.cat([fn(x, graph_in_x) for fn in self._violations], dim=1)

    def search(self, dtype: torch.dtype, device: torch.device) -> int:
        """One search round; returns how many counterexamples were added."""
        if not self._violations:
            raise ConstraintSpecError(
                "Counterexamples: not attached to a problem. Use it as "
                "where= of a constraint in a DerivativeProblem."
            )
        init = self.buffer[: self.filled] if self.filled else None
        res = adversarial_search(
            lambda x: self._all_violations(x, True),
            self.domain.low,
            self.domain.high,
            starts=self.starts,
            steps=self.steps,
            step_size=self.step_size,
            seed=self.seed + self.rounds,
            fixed=self.domain.fixed or None,
            categorical=self.domain.categorical or None,
            one_hot=self.domain.one_hot or None,
            init_points=init,
            device=device,
            dtype=dtype,
            top_k=self.starts,
        )
        self.rounds += 1
        worst = res.worst_violations.max(dim=1).values
        return self._store(res.worst_inputs[worst > 0].to(torch.float64), dtype, device)

    def _store(self, new: torch.Tensor, dtype: torch.dtype, device: torch.device) -> int:
        """Put float64 points into free slots, then over the buffered points with the most
        slack (evaluated in ``dtype`` on ``device``); returns how many were added."""
        if new.numel() == 0:
            return 0
        take = min(self.capacity - self.filled, new.shape[0])
        self.buffer[self.filled : self.filled + take] = new[:take]
        self.filled += take
        rest = new[take:]
        if rest.shape[0]:  # full: replace the buffered points with the most slack
            if self._violations:
                x = self.buffer.to(device=device, dtype=dtype)
                slack = self._all_violations(x, False).max(dim=1).values
                order = torch.argsort(slack.cpu())[: rest.shape[0]]
            else:
                order = torch.arange(min(rest.shape[0], self.capacity))
            self.buffer[order] = rest[: order.numel()]
        self.found += int(new.shape[0])
        return int(new.shape[0])

    def add(self, points: torch.Tensor) -> int:
        """Put points into the buffer (e.g. counterexamples a certificate found), as a
        search round would: free slots first, then the slots with the most slack. Points are
        projected onto the domain. Returns how many were added."""
        if not isinstance(points, torch.Tensor) or points.dim() != 2:
            raise InputValidationError(
                f"Counterexamples.add: points must be an (N, {self.domain.dim}) tensor (got "
                f"{getattr(points, 'shape', type(points).__name__)})."
            )
        if points.shape[1] != self.domain.dim or not bool(torch.isfinite(points).all()):
            raise InputValidationError(
                f"Counterexamples.add: points must be finite with {self.domain.dim} features "
                f"(got shape {tuple(points.shape)}). Pass points of the domain's width."
            )
        new = self.domain.project(points.detach().to("cpu", torch.float64))
        return self._store(new, self._dtype, self._device)

    def points(
        self,
        batch_x: torch.Tensor,
        batch_index: torch.Tensor | None,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        dtype = batch_x.dtype if batch_x is not None else torch.get_default_dtype()
        device = batch_x.device if batch_x is not None else torch.device("cpu")
        self._dtype, self._device = dtype, device
        if self.calls % self.every == 0:
            self.search(dtype, device)
        self.calls += 1
        if self.filled == 0:  # nothing found yet: the domain's centre, a harmless point
            centre = ((self.domain.low + self.domain.high) / 2).reshape(1, -1)
            return centre.to(dtype=dtype, device=device), torch.zeros(
                1, dtype=torch.long, device=device
            )
        idx = subset_ids(self.filled, self.batch_size, generator)
        return self.buffer[idx].to(dtype=dtype, device=device), idx.to(device)

    def state_dict(self) -> dict[str, Any]:
        """The buffer and the counters that decide the next search (for checkpoints)."""
        return {
            "buffer": self.buffer.clone(),
            "filled": self.filled,
            "calls": self.calls,
            "rounds": self.rounds,
            "found": self.found,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; ``ValueError`` if it was saved by another buffer."""
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict (got {type(state).__name__})")
        buffer = state.get("buffer")
        if not isinstance(buffer, torch.Tensor) or buffer.shape != self.buffer.shape:
            got = tuple(buffer.shape) if isinstance(buffer, torch.Tensor) else type(buffer).__name__
            raise ValueError(
                f"buffer must be a tensor of shape {tuple(self.buffer.shape)} (got {got})"
            )
        counts = {}
        for key in ("filled", "calls", "rounds", "found"):
            value = state.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{key} must be a non-negative int (got {value!r})")
            counts[key] = value
        if counts["filled"] > self.capacity:
            raise ValueError(f"filled must be <= capacity {self.capacity} (got {counts['filled']})")
        self.buffer = buffer.detach().to(torch.float64).clone()
        self.filled, self.calls = counts["filled"], counts["calls"]
        self.rounds, self.found = counts["rounds"], counts["found"]

    def __repr__(self) -> str:
        return (
            f"Counterexamples(capacity={self.capacity}, every={self.every}, filled={self.filled})"
        )
