r"""Where a constraint is enforced: the points its derivatives are evaluated at, per step.

* :class:`OnBatch` — the training batch itself (reuses the loss's forward pass: cheapest).
* :class:`InBox` — ``n`` points drawn uniformly in a :class:`~constrained_grad.Box` each
  step, covering the empty corners of the domain that data never visits.
* :class:`Between` — ``n`` random convex combinations of pairs of batch points.
* :class:`AtPoints` — a fixed set of points (e.g. a grid or counterexamples); each point
  keeps its index, so pointwise multipliers persist across epochs.

A point source returns ``(x, indices)``; ``indices`` are stable point ids (``torch.long``)
or ``None`` where points have no identity (fresh random samples).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from constrained_grad.constraints.domain import Box
from constrained_grad.errors import ConstraintSpecError, InputValidationError


def positive_int(value: object, who: str, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConstraintSpecError(f"{who}: {what} must be a positive int (got {value!r}).")
    return value


def subset_ids(n: int, batch_size: int | None, generator: torch.Generator | None) -> torch.Tensor:
    """Ids of the points used this step: all ``n``, or ``batch_size`` of them at random."""
    if batch_size is None or batch_size >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=generator)[:batch_size]


def check_box_width(box: Box, n_inputs: int, who: str, what: str) -> None:
    """Raise if a box does not have one bound per model input."""
    if box.dim != n_inputs:
        raise ConstraintSpecError(
            f"{who}: {what} has {box.dim} features but the model takes {n_inputs} inputs per "
            "sample. Give one bound per input feature."
        )


class PointSource:
    """Base class: produces the points a constraint is evaluated at on one step."""

    #: Number of points with stable ids, or ``None`` if the source has no stable ids.
    num_points: int | None = None
    #: True if the points are the training batch (the loss's forward pass is reused).
    uses_batch: bool = False
    #: True if each data-parallel rank makes its own points from its shard of the batch;
    #: False if every rank draws the same points, which are then split across ranks.
    per_rank: bool = False

    def points(
        self,
        batch_x: torch.Tensor,
        batch_index: torch.Tensor | None,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def check_inputs(self, n_inputs: int, who: str) -> None:
        """Raise if this source produces points of another width than the model takes."""

    def attach(self, violations: Callable[[torch.Tensor, bool], torch.Tensor]) -> None:
        """Called by the problem for each constraint using this source with a function
        ``violations(x, graph_in_x) -> (B, C)`` of the current model. Sources that search
        for points (counterexample-guided training) keep it; others ignore it."""

    def state_dict(self) -> dict[str, Any]:
        """What this source changes while training (plain data and tensors), for checkpoints.

        Empty for sources whose points depend only on the batch and the problem's random
        generator (which the checkpoint saves anyway). Sources that keep points between
        steps (:class:`~constrained_grad.Counterexamples`) return them here, so a resumed
        run continues from the same points.
        """
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (raise ``ValueError``/``TypeError`` if
        it does not fit this source); a no-op for stateless sources."""


class OnBatch(PointSource):
    """Enforce at the training batch. ``num_points`` enables pointwise multipliers: the
    loader must then yield each sample's index (see :func:`constrained_grad.with_indices`)."""

    uses_batch = True
    per_rank = True

    def __init__(self, num_points: int | None = None) -> None:
        if num_points is not None:
            positive_int(num_points, "OnBatch", "num_points")
        self.num_points = num_points

    def points(
        self,
        batch_x: torch.Tensor,
        batch_index: torch.Tensor | None,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return batch_x, batch_index

    def __repr__(self) -> str:
        return "OnBatch()" if self.num_points is None else f"OnBatch(num_points={self.num_points})"


class InBox(PointSource):
    """Enforce at ``n`` points drawn uniformly in ``box`` on every step."""

    def __init__(self, box: Box | tuple[Sequence[float], Sequence[float]], n: int = 256) -> None:
        self.box = box if isinstance(box, Box) else Box(*box)
        self.n = positive_int(n, "InBox", "n")

    def points(
        self,
        batch_x: torch.Tensor,
        batch_index: torch.Tensor | None,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = self.box.sample(self.n, generator=generator, dtype=batch_x.dtype)
        return x.to(batch_x.device).reshape(self.n, *batch_x.shape[1:]), None

    def check_inputs(self, n_inputs: int, who: str) -> None:
        check_box_width(self.box, n_inputs, who, "InBox box")

    def __repr__(self) -> str:
        return f"InBox({self.box!r}, n={self.n})"


class Between(PointSource):
    """Enforce at ``n`` points ``t x_a + (1-t) x_b`` between random pairs of batch points."""

    per_rank = True  # pairs of this rank's batch points

    def __init__(self, n: int = 256) -> None:
        self.n = positive_int(n, "Between", "n")

    def points(
        self,
        batch_x: torch.Tensor,
        batch_index: torch.Tensor | None,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        b = batch_x.shape[0]
        a = torch.randint(b, (self.n,), generator=generator).to(batch_x.device)
        c = torch.randint(b, (self.n,), generator=generator).to(batch_x.device)
        t = torch.rand(self.n, generator=generator, dtype=batch_x.dtype).to(batch_x.device)
        t = t.reshape(self.n, *([1] * (batch_x.dim() - 1)))
        x = t * batch_x[a].detach() + (1 - t) * batch_x[c].detach()
        return x, None

    def __repr__(self) -> str:
        return f"Between(n={self.n})"


class AtPoints(PointSource):
    """Enforce at a fixed set of points; ``batch_size`` of them (random, seeded) per step,
    or all when ``batch_size`` is None. Indices are stable positions in ``points``."""

    def __init__(self, points: torch.Tensor, batch_size: int | None = None) -> None:
        if not isinstance(points, torch.Tensor) or points.dim() < 2 or points.shape[0] == 0:
            got = tuple(points.shape) if isinstance(points, torch.Tensor) else type(points).__name__
            raise ConstraintSpecError(
                f"AtPoints: points must be a non-empty (N, d) tensor (got "
                f"{got}). Pass torch.as_tensor(array, dtype=torch.float32)."
            )
        if not points.is_floating_point():
            raise ConstraintSpecError(
                f"AtPoints: points must be floating point (got {points.dtype})."
                " Cast with points.float()."
            )
        self.data = points.detach()
        self.n = int(points.shape[0])
        self.num_points = self.n
        self.batch_size = (
            None if batch_size is None else positive_int(batch_size, "AtPoints", "batch_size")
        )

    def points(
        self,
        batch_x: torch.Tensor,
        batch_index: torch.Tensor | None,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        idx = subset_ids(self.n, self.batch_size, generator)
        device = batch_x.device if batch_x is not None else self.data.device
        dtype = batch_x.dtype if batch_x is not None else self.data.dtype
        return self.data[idx].to(device=device, dtype=dtype), idx.to(device)

    def check_inputs(self, n_inputs: int, who: str) -> None:
        if self.data[0].numel() != n_inputs:
            raise ConstraintSpecError(
                f"{who}: AtPoints points have {self.data[0].numel()} "
                f"features but the model takes {n_inputs}. Pass points of "
                "the model's input shape."
            )

    def __repr__(self) -> str:
        return f"AtPoints(N={self.num_points}, batch_size={self.batch_size})"


def check_batch_index(index: torch.Tensor | None, source: PointSource, who: str) -> None:
    """Validate point ids handed over by the data loader for pointwise multipliers."""
    if index is None:
        raise InputValidationError(
            f"{who}: pointwise reduction on the batch needs each sample's index, but the loader "
            "yields none. Wrap the dataset with constrained_grad.with_indices(dataset) or enforce "
            "at AtPoints(...)."
        )
    if index.dtype != torch.long:
        raise InputValidationError(f"{who}: sample indices must be torch.long (got {index.dtype}).")
    n = source.num_points or 0
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n):
        raise InputValidationError(
            f"{who}: sample index out of range [0, {n}) (got "
            f"{int(index.min())}..{int(index.max())}). Set "
            "OnBatch(num_points=len(dataset))."
        )
