r"""Certified training: enforce a derivative constraint on whole cells of a box, not at points.

``where=Cells(box)`` makes a :class:`~constrained_grad.Monotonic` or
:class:`~constrained_grad.DerivativeBound` hold on every cell :math:`C` of a partition of
``box`` through a *sound bound* of the derivative over the cell
(:mod:`constrained_grad.derivatives.bounds`): for ``Monotonic(direction="increasing")`` the
constraint of cell :math:`C` is

.. math:: g_C = m + s - \underline{\partial_j f_i}(C) \le 0,

where :math:`\underline{\partial_j f_i}(C) \le \partial f_i/\partial x_j(x)` for every
:math:`x \in C`, :math:`m` the declared margin and :math:`s` the cell ``slack``. The bound is
differentiable in the weights, so the multipliers of violated cells push the network towards
weights whose bounds are tight. Every ``refine_every`` steps the cells whose bound is still
violated (without the slack) are split (the worst first, up to ``refine`` per round) along
the axis whose halves have the best worst bound (continuous features are halved; a
categorical feature or one-hot group not yet decided is split into one child per value); a
child inherits its parent's multiplier. ``max_cells`` caps the partition.

When every cell's bound holds, recomputing the bounds in float64 with rounding slack over
the final partition, splitting further where rounding leaves a cell a hair short, is a
proof that the constraint holds on the whole box (:func:`constrained_grad.verify` does this
for constraints declared over cells).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
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

#: ``(lo, hi) -> (N, C)`` violations of a constraint over N cells (no autograd graph)
CellViolations = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Cells(PointSource):
    """Cells of a partition of ``box``; a constraint ``where=Cells(box)`` holds on each whole
    cell through a sound derivative bound (see the module documentation).

    Args:
        box: the domain (a :class:`~constrained_grad.Box`; fixed features stay fixed,
            categorical features and one-hot groups are split into their values).
        splits: initial number of equal parts per continuous free feature (an int for all,
            or one per feature); ``1`` starts from the whole box.
        max_cells: the cell budget (also the number of multipliers).
        refine_every: steps between refinement rounds (0: never refine).
        refine: most cells split per round (the most violated first).
        slack: extra margin the cells' bounds must clear in training (0 by default). A
            cell whose bound sits a hair (say 1e-6) on the wrong side grows its multiplier
            by only ``dual_lr`` times that hair per step, so such cells can hover unproved;
            a small slack in the derivative's units (e.g. 1e-4 for standardised data) keeps
            pushing them across. Refinement and the count of cells whose bound holds
            ignore the slack (they judge the declared constraint).
        batch_size: cells evaluated per step (all when None).
    """

    over_cells = True

    def __init__(
        self,
        box: Box,
        *,
        splits: int | Sequence[int] = 1,
        max_cells: int = 4096,
        refine_every: int = 20,
        refine: int = 32,
        slack: float = 0.0,
        batch_size: int | None = None,
    ) -> None:
        who = "Cells"
        if not isinstance(box, Box):
            raise ConstraintSpecError(
                f"{who}: box must be a cg.Box (got {type(box).__name__}). Build one with "
                "cg.Box(low, high)."
            )
        if not (torch.isfinite(box.low).all() and torch.isfinite(box.high).all()):
            raise ConstraintSpecError(
                f"{who}: the box must be bounded (got a non-finite bound). Give every "
                "feature finite low/high."
            )
        self.box = box
        self.max_cells = positive_int(max_cells, who, "max_cells")
        self.num_points = self.max_cells
        if isinstance(refine_every, bool) or not isinstance(refine_every, int) or refine_every < 0:
            raise ConstraintSpecError(
                f"{who}: refine_every must be an int >= 0 (got {refine_every!r})."
            )
        self.refine_every = refine_every
        self.refine = positive_int(refine, who, "refine")
        if (
            isinstance(slack, bool)
            or not isinstance(slack, (int, float))
            or not math.isfinite(slack)
            or slack < 0
        ):
            raise ConstraintSpecError(f"{who}: slack must be a finite number >= 0 (got {slack!r}).")
        self.slack = float(slack)
        self.batch_size = None if batch_size is None else positive_int(batch_size, who, "batch")
        free = box.continuous_free
        if isinstance(splits, int):
            per = [splits] * len(free)
        elif isinstance(splits, (str, bytes)) or not isinstance(splits, Sequence):
            raise ConstraintSpecError(
                f"{who}: splits must be an int or a list of ints, one per continuous free "
                f"feature (got {splits!r})."
            )
        else:
            per = list(splits)
            if len(per) != len(free):
                raise ConstraintSpecError(
                    f"{who}: splits has {len(per)} entries but the box has {len(free)} "
                    "continuous free features. Give one per feature, or one int."
                )
        for s in per:
            positive_int(s, who, "splits")
        n0 = math.prod(per)
        if n0 > self.max_cells:
            raise ConstraintSpecError(
                f"{who}: the initial grid has {n0} cells, more than max_cells={self.max_cells}."
                " Use fewer splits or a larger max_cells."
            )
        d = box.dim
        self.lo = torch.zeros(self.max_cells, d, dtype=torch.float64)
        self.hi = torch.zeros(self.max_cells, d, dtype=torch.float64)
        lo0, hi0 = box.low.clone(), box.high.clone()
        self.n = 0
        for k in range(n0):  # the initial grid, cell by cell
            lo, hi, rest = lo0.clone(), hi0.clone(), k
            for i, s in zip(free, per, strict=True):
                part, rest = rest % s, rest // s
                w = (hi0[i] - lo0[i]) / s
                lo[i], hi[i] = (
                    lo0[i] + part * w,
                    lo0[i] + (part + 1) * w if part < s - 1 else hi0[i],
                )
            self.lo[self.n], self.hi[self.n] = lo, hi
            self.n += 1
        #: last violation (worst component) of each cell, NaN if not evaluated yet
        self._last = torch.full((self.max_cells,), math.nan, dtype=torch.float64)
        # the same on the model's device, written each step without a host sync; copied to
        # _last only when read (statistics, refinement, state)
        self._device_last: torch.Tensor | None = None
        self.steps = 0
        self.splits_done = 0
        self.exhausted = False  # a refinement round wanted more cells than the budget
        self._fns: list[CellViolations] = []

    # -- what the problem reads --------------------------------------------------------------
    def cells(
        self, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(lo, hi, ids)`` of the cells evaluated this step (all, or ``batch_size``)."""
        ids = subset_ids(self.n, self.batch_size, generator)
        return self.lo[ids], self.hi[ids], ids

    def points(
        self,
        batch_x: torch.Tensor,
        batch_index: torch.Tensor | None,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The cells' centres (for searches and plots; the constraint uses the cells)."""
        lo, hi, ids = self.cells(generator)
        return ((lo + hi) / 2).to(batch_x.dtype), ids

    def check_inputs(self, n_inputs: int, who: str) -> None:
        check_box_width(self.box, n_inputs, who, "Cells box")

    def covers(self, domain: Box) -> bool:
        """True if the cells' box contains ``domain``'s bounds (the cells then partition a
        superset of it, so they can seed its certificate)."""
        return (
            domain.dim == self.box.dim
            and bool((self.box.low <= domain.low).all())
            and bool((self.box.high >= domain.high).all())
        )

    def attach_cells(self, fn: CellViolations) -> None:
        """The problem hands over ``(lo, hi) -> (N, C)`` violations of each constraint here."""
        self._fns.append(fn)

    def observe(self, ids: torch.Tensor, worst: torch.Tensor) -> None:
        """Record each evaluated cell's worst violation (``(N,)``, slack included), on the
        evaluation's device: no host synchronisation on the training step."""
        dev = self._device_last
        if dev is None or dev.device != worst.device:
            dtype = torch.float32 if worst.device.type == "mps" else torch.float64
            dev = self._device_last = self._last.to(worst.device, dtype)
        dev[ids.to(worst.device)] = worst.detach().to(dev.dtype) - self.slack

    @property
    def last(self) -> torch.Tensor:
        """``(max_cells,)`` last violation of each cell's bound (without the slack; NaN for
        cells not evaluated yet and unused slots)."""
        if self._device_last is not None:
            self._last.copy_(self._device_last.to("cpu", torch.float64))
        return self._last

    @property
    def proved(self) -> int:
        """Cells whose last training bound met the constraint (without the slack)."""
        return int((self.last[: self.n] <= 0).sum())

    @property
    def worst(self) -> float:
        """The largest last violation of the bound over the cells (without the slack;
        NaN before the first evaluation)."""
        v = self.last[: self.n]
        return float(v.max()) if self.n and not torch.isnan(v).all() else math.nan

    # -- refinement --------------------------------------------------------------------------
    def due(self) -> bool:
        """Count a step; True when a refinement round is due."""
        self.steps += 1
        return self.refine_every > 0 and self.steps % self.refine_every == 0

    def _violation(self, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        return torch.stack([fn(lo, hi).amax(dim=1) for fn in self._fns]).amax(dim=0)

    def _children(self, k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Candidate splits of cell ``k``: a list of child stacks ``(lo, hi)``, one per axis."""
        lo, hi = self.lo[k], self.hi[k]
        out = []
        for i, values in self.box.categorical_levels.items():
            if lo[i] < hi[i]:
                vals = torch.tensor(values, dtype=torch.float64)
                clo, chi = lo.repeat(len(values), 1), hi.repeat(len(values), 1)
                clo[:, i] = chi[:, i] = vals
                out.append((clo, chi))
        for group in self.box.one_hot:
            g = list(group)
            if bool((lo[g] < hi[g]).sum() > 1):
                clo, chi = lo.repeat(len(g), 1), hi.repeat(len(g), 1)
                clo[:, g] = chi[:, g] = self.box.low[g]
                for r, col in enumerate(g):
                    clo[r, col] = chi[r, col] = self.box.high[col]
                out.append((clo, chi))
        for i in self.box.continuous_free:
            if hi[i] - lo[i] > 1e-9 * float(self.box.high[i] - self.box.low[i]):
                mid = (lo[i] + hi[i]) / 2
                clo, chi = lo.repeat(2, 1), hi.repeat(2, 1)
                chi[0, i] = clo[1, i] = mid
                out.append((clo, chi))
        return out

    def refine_round(self, dtype: torch.dtype, device: torch.device) -> list[tuple[int, list[int]]]:
        """Split the most violated cells; returns ``(parent id, new child ids)`` pairs (the
        first child keeps the parent's id, so its multiplier carries on)."""
        if not self._fns:
            raise ConstraintSpecError(
                "Cells: not attached to a problem. Use it as where= of a Monotonic or "
                "DerivativeBound constraint in a DerivativeProblem."
            )
        last = self.last[: self.n]
        self._device_last = None  # refinement writes the children's bounds on the host
        order = torch.argsort(last, descending=True)
        todo = [int(k) for k in order[: self.refine] if last[k] > 0]  # the property fails
        cands = {k: self._children(k) for k in todo}
        todo = [k for k in todo if cands[k]]
        if not todo:
            return []
        # bound every candidate child of every cell in one pass
        los = torch.cat([c[0] for k in todo for c in cands[k]])
        his = torch.cat([c[1] for k in todo for c in cands[k]])
        with torch.no_grad():
            v = self._violation(los.to(device, dtype), his.to(device, dtype))
        v = v.to("cpu", torch.float64)
        done: list[tuple[int, list[int]]] = []
        start = 0
        for k in todo:
            best, best_score, best_start = None, None, 0
            for c in cands[k]:
                m = c[0].shape[0]
                part = v[start : start + m]
                score = (float(part.max()), float(part.mean()))
                if best_score is None or score < best_score:
                    best, best_score, best_start = c, score, start
                start += m
            assert best is not None
            clo, chi = best
            extra = clo.shape[0] - 1
            if self.n + extra > self.max_cells:
                self.exhausted = True
                continue
            ids = [k, *range(self.n, self.n + extra)]
            for r, cid in enumerate(ids):
                self.lo[cid], self.hi[cid] = clo[r], chi[r]
                self._last[cid] = float(v[best_start + r]) - self.slack
            self.n += extra
            self.splits_done += 1
            done.append((k, ids))
        return done

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        n = self.n
        return {
            "n": n,
            "lo": self.lo[:n].clone(),
            "hi": self.hi[:n].clone(),
            "last": self.last[:n].clone(),
            "steps": self.steps,
            "splits_done": self.splits_done,
            "exhausted": self.exhausted,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        lo, hi = state["lo"], state["hi"]
        n = int(lo.shape[0])
        if lo.shape != hi.shape or lo.shape[1:] != (self.box.dim,) or n > self.max_cells:
            raise InputValidationError(
                f"Cells.load_state_dict: saved partition of shape {tuple(lo.shape)} does not "
                f"fit this Cells (dim {self.box.dim}, max_cells {self.max_cells}). Resume with "
                "the same declaration."
            )
        self.lo.zero_()
        self.hi.zero_()
        self._device_last = None
        self._last.fill_(math.nan)
        self.lo[:n], self.hi[:n], self._last[:n] = lo, hi, state["last"]
        self.n = n
        self.steps = int(state["steps"])
        self.splits_done = int(state["splits_done"])
        self.exhausted = bool(state["exhausted"])

    def __repr__(self) -> str:
        return f"Cells(n={self.n}, max_cells={self.max_cells}, slack={self.slack})"
