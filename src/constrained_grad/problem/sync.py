r"""Data-parallel constraint training: every rank takes the step of the global batch.

With :math:`W` ranks, rank :math:`r` holding :math:`n_r` of the :math:`N = \sum_r n_r`
points of a step, the Lagrangian of the global batch is
:math:`L = f + \sum_c \lambda_c^\top g_c` where each :math:`g_c` reduces over all :math:`N`
points. Rank :math:`r` builds a local objective :math:`L_r` whose *value* is :math:`L` and
whose gradients average to the global one, :math:`\tfrac1W \sum_r \nabla L_r = \nabla L`, so
averaging parameter gradients over ranks (what DDP does) gives the exact global step:

* a mean over points, :math:`m = \sum_r \tfrac{n_r}{N} m_r`, enters as
  :math:`m + s_r\,(m_r - \mathrm{sg}(m_r))` with :math:`s_r = W n_r / N`;
* a max over points enters the same way with :math:`s_r = W` on the first rank holding the
  maximum and :math:`0` elsewhere (``sg`` = stop-gradient);
* per-point (pointwise) terms keep their local values, with gradient scale :math:`W`; their
  multiplier gradients are *summed* over ranks (each rank observes its own points);
* the loss enters as :math:`\bar f + (f_r - \mathrm{sg}(f_r))`, :math:`\bar f` the mean of
  the ranks' losses (DDP's convention: exact for equal shards, e.g. a ``DistributedSampler``).

Every quantity a rank needs for this — per constraint the count, the means of
:math:`g`, :math:`[g]_+`, :math:`[g]_+^2`, the max and the fraction violated, and the loss —
travels in **one** ``all_gather`` per step; parameter and pointwise multiplier gradients in
one reduction per dtype. Aggregate multiplier gradients need no communication: they are
computed from global values and are identical on every rank.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist

from constrained_grad.errors import InputValidationError
from constrained_grad.parallel import distributed_ready, rank_and_world

#: on gloo, sums of up to this many gathered elements use all_gather + a local sum
_GATHER_SUM_LIMIT = 1 << 22


class RankSync:
    r"""Makes per-rank constraint values those of the global batch (see the module docstring).

    Args:
        group: the ``torch.distributed`` process group (default: the default group), which
            must be initialised and span more than one process.
    """

    def __init__(self, group: Any = None) -> None:
        if not distributed_ready(group):
            raise InputValidationError(
                "RankSync: torch.distributed is not initialised with more than one process "
                f"(got world size {rank_and_world(group)[1]}). Launch with torchrun and call "
                "torch.distributed.init_process_group() first, or train without distributed=."
            )
        self.group = group
        self.rank, self.world_size = rank_and_world(group)
        self._global: dict[str, dict[str, torch.Tensor]] = {}
        self._scale: dict[str, dict[str, torch.Tensor]] = {}
        self._summary: dict[str, torch.Tensor] = {}
        self._loss: torch.Tensor | None = None
        self._gather_sums = dist.get_backend(group) == "gloo"

    # -- the one exchange per step ------------------------------------------------------------
    def exchange(self, loss: torch.Tensor | None, violations: dict[str, torch.Tensor]) -> None:
        """All-gather the per-rank summaries of ``loss`` and the ``(n_r, C)`` violations."""
        ref = next(iter(violations.values())) if violations else loss
        device = ref.device if ref is not None else torch.device("cpu")
        f64 = torch.float64
        head = torch.full((1 + len(violations),), float("nan"), dtype=f64, device=device)
        if loss is not None:
            head[0] = loss.detach().reshape(())
        parts = [head]
        sizes: list[tuple[str, int, torch.dtype]] = []
        for k, (name, g) in enumerate(violations.items()):
            head[1 + k] = g.shape[0]
            g64 = g.detach().to(f64)
            hinge = torch.relu(g64)
            # rows: mean g, mean [g]+, mean [g]+^2, max g, fraction g > 0 -> (5, C)
            parts.append(
                torch.cat(
                    [
                        torch.stack([g64, hinge, hinge * hinge]).mean(1),
                        g64.amax(0, keepdim=True),
                        (g64 > 0).to(f64).mean(0, keepdim=True),
                    ]
                ).reshape(-1)
            )
            sizes.append((name, g.shape[1], g.dtype))
        local = torch.cat(parts)
        gathered = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(gathered, local, group=self.group)
        table = torch.stack(gathered)  # (W, K)
        self._loss = table[:, 0].mean()
        counts = table[:, 1 : 1 + len(sizes)]  # (W, constraints)
        weights = counts / counts.sum(0)  # n_r / N
        pos = 1 + len(sizes)
        world = float(self.world_size)
        self._global, self._scale, self._summary = {}, {}, {}
        for k, (name, c, dtype) in enumerate(sizes):
            stats = table[:, pos : pos + 5 * c].reshape(self.world_size, 5, c)
            pos += 5 * c
            w = weights[:, k].reshape(-1, 1, 1)
            means = (w * stats[:, [0, 1, 2, 4]]).sum(0)  # (4, C): mean, hinge, hinge^2, fraction
            peak = stats[:, 3].amax(0)
            holder = (stats[:, 3] == peak).to(torch.int8).argmax(0)  # first rank holding it
            glob = {"mean": means[0], "hinge_mean": means[1], "hinge_sq_mean": means[2]}
            glob["max"] = peak
            self._global[name] = {label: v.to(dtype) for label, v in glob.items()}
            self._scale[name] = {
                "mean": (world * weights[self.rank, k]).to(dtype).expand(c),
                "max": (world * (holder == self.rank)).to(dtype),
            }
            self._summary[name] = torch.stack([means[0].mean(), peak.max(), means[3].mean()])

    # -- values of the global batch -------------------------------------------------------------
    def loss(self, loss: torch.Tensor) -> torch.Tensor:
        r""":math:`\bar f + (f_r - \mathrm{sg}(f_r))`: the ranks' mean loss, local gradient."""
        assert self._loss is not None, "exchange() runs first"
        return loss + (self._loss.to(loss.dtype) - loss.detach())

    def reducer(self, name: str) -> Any:
        """``reduce(h, label) -> (C,)`` for :func:`~constrained_grad.constraints.reduce_violations`.

        The value is the global mean (or max) of ``h`` over every rank's points; the
        gradient is the local one scaled by :math:`s_r`.
        """
        glob, scale = self._global[name], self._scale[name]

        def reduce(h: torch.Tensor, label: str) -> torch.Tensor:
            if label == "max":
                local, s = h.amax(0), scale["max"]
            else:
                local, s = h.mean(0), scale["mean"]
            if not local.requires_grad:
                return glob[label]
            return glob[label] + s * (local - local.detach())

        return reduce

    def pointwise(self, g: torch.Tensor) -> torch.Tensor:
        """Per-point violations: local values, gradients scaled by the world size."""
        return g.detach() + self.world_size * (g - g.detach())

    def summary(self, name: str) -> torch.Tensor:
        """``[mean, max, fraction violated]`` of constraint ``name`` over the global batch."""
        return self._summary[name]

    # -- gradients and state ----------------------------------------------------------------------
    def reduce_gradients(
        self,
        averaged: Iterable[torch.Tensor],
        summed: Iterable[torch.Tensor] = (),
        extra: Sequence[float] = (),
    ) -> list[float]:
        """Average the gradients of ``averaged``, sum those of ``summed`` (sparse ones made
        dense) and sum the numbers ``extra`` over ranks, in one reduction per dtype.

        A tensor without a gradient on every rank keeps ``grad = None``; returns the sums of
        ``extra``.
        """
        entries = [(t, True) for t in averaged] + [(t, False) for t in summed]
        by_kind: dict[tuple[torch.dtype, torch.device], list[tuple[torch.Tensor, bool]]] = {}
        for t, avg in entries:
            by_kind.setdefault((t.dtype, t.device), []).append((t, avg))
        totals = [0.0] * len(extra)
        if not by_kind and extra:
            by_kind[(torch.float64, torch.device("cpu"))] = []
        for k, ((dtype, device), group) in enumerate(by_kind.items()):
            flats, flags = [], []
            for t, avg in group:
                grad = t.grad
                if grad is None:
                    flats.append(torch.zeros(t.numel(), dtype=dtype, device=device))
                    flags.append(0.0)
                    continue
                dense = grad.to_dense() if grad.is_sparse else grad
                dense = dense.reshape(-1)
                flats.append(dense / self.world_size if avg else dense)
                flags.append(1.0)
            tail = torch.tensor(flags + (list(extra) if k == 0 else []), dtype=dtype, device=device)
            buffer = self._sum_over_ranks(torch.cat([*flats, tail]))
            pos = 0
            for t, _ in group:
                n = t.numel()
                t.grad = buffer[pos : pos + n].reshape(t.shape).clone()
                pos += n
            for (t, _), flag in zip(group, buffer[pos : pos + len(group)].tolist(), strict=True):
                if flag == 0.0:
                    t.grad = None
            if k == 0 and extra:
                totals = buffer[pos + len(group) :].tolist()
        return totals

    def _sum_over_ranks(self, buffer: torch.Tensor) -> torch.Tensor:
        """Sum of ``buffer`` over ranks, identical on every rank.

        gloo's ``all_reduce`` costs ~1.3 ms on a CPU whatever the size, about three times its
        ``all_gather`` (measured in benchmarks/distributed.py), so on gloo small buffers are
        gathered and summed in rank order; other backends (NCCL) use ``all_reduce``.
        """
        if self._gather_sums and buffer.numel() * self.world_size <= _GATHER_SUM_LIMIT:
            parts = [torch.empty_like(buffer) for _ in range(self.world_size)]
            dist.all_gather(parts, buffer, group=self.group)
            total = parts[0]
            for part in parts[1:]:
                total = total + part
            return total
        dist.all_reduce(buffer, op=dist.ReduceOp.SUM, group=self.group)
        return buffer

    def broadcast(self, tensors: Iterable[torch.Tensor], src: int = 0) -> None:
        """Copy ``tensors`` (weights, multipliers, buffers) from rank ``src`` to every rank."""
        with torch.no_grad():
            for t in tensors:
                dist.broadcast(t.data, src=src, group=self.group)

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` on every rank (e.g. a checkpoint only rank 0 can read)."""
        box = [obj]
        dist.broadcast_object_list(box, src=src, group=self.group)
        return box[0]

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (e.g. random states for a checkpoint), in rank order."""
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def barrier(self) -> None:
        dist.barrier(group=self.group)
