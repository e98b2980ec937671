"""The batches of a run, epoch by epoch, in an order a resumed run can replay exactly.

An epoch's data order is decided by random states read when ``iter(loader)`` starts it (the
global torch state, or the loader's own generator) and by a sampler's ``set_epoch``. So
:class:`Epochs` captures those states just before each epoch starts (only when a checkpoint
will read them), and a run resumed in the middle of an epoch restores them, starts the epoch
again and skips the batches the interrupted run already took. The random states of the step
where the run stopped are then restored before its first new step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from constrained_grad.errors import CheckpointError, InputValidationError
from constrained_grad.training import checkpoint


@dataclass
class Position:
    """Where a run stands: what a checkpoint records to resume at the next batch.

    ``epoch_rng`` holds the random states captured before the current epoch started (``None``
    when no checkpoint reads them, or at an epoch boundary); ``first_epoch`` is the first
    epoch of the :func:`fit` call, so a resumed call ends where the interrupted one would have.
    """

    epoch: int
    batch_in_epoch: int
    epoch_rng: dict[str, Any] | None
    first_epoch: int

    def as_dict(self) -> dict[str, Any]:
        """The checkpoint's fields (the states themselves, not copies)."""
        return {
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "epoch_rng": self.epoch_rng,
            "first_epoch": self.first_epoch,
        }


@dataclass
class Start:
    """Where a run starts: its :class:`Position`, and for a resumed run the random states at
    the step where it stopped (global, and the loader's generator)."""

    position: Position
    rng: dict[str, Any] | None = None
    loader_rng: torch.Tensor | None = None


class Epochs:
    """Yields ``(epoch, batch_index, batch)`` over the epochs of a :func:`fit` call.

    Starts at ``start`` (mid-epoch for a resumed run) and keeps ``start.position`` up to date:
    its epoch when an epoch starts, the next epoch once one ran to its end. The caller records
    ``position.batch_in_epoch = batch_index + 1`` once a batch's step is done. ``go_on()`` is
    asked before each epoch starts (a spent step budget starts no epoch, so it draws no
    random numbers). ``capture``: record each epoch's random states (a checkpoint reads them);
    ``source`` names the checkpoint in errors.
    """

    def __init__(
        self,
        loader: Iterable[Any],
        epochs: int,
        start: Start,
        *,
        go_on: Callable[[], bool],
        capture: bool,
        source: Path | None = None,
    ) -> None:
        self.loader = loader
        self.position = start.position
        self.first_epoch = start.position.first_epoch
        self.start_epoch = start.position.epoch
        self.end_epoch = self.first_epoch + epochs
        self._skip = start.position.batch_in_epoch
        self._rng, self._loader_rng = start.rng, start.loader_rng
        self._go_on = go_on
        self._capture = capture
        self._source = source
        self.generator = checkpoint.loader_generator(loader)
        samplers = [getattr(loader, a, None) for a in ("sampler", "batch_sampler")]
        found = (getattr(x, "set_epoch", None) for x in samplers)
        self._set_epochs = [f for f in found if callable(f)]

    def remaining(self) -> int | None:
        """Batches left in this call (``None`` if the loader has no length)."""
        epochs = max(0, self.end_epoch - self.start_epoch)
        try:
            left = len(self.loader) * epochs  # type: ignore[arg-type]
        except TypeError:
            return None
        return max(0, left - self._skip)

    def __iter__(self) -> Iterator[tuple[int, int, Any]]:
        for epoch in range(self.start_epoch, self.end_epoch):
            if not self._go_on():
                return
            iterator, index = self._begin(epoch)
            for batch in iterator:
                yield epoch, index, batch
                index += 1
            if index == 0:
                raise InputValidationError(
                    "fit: the loader yielded no batch. Check the dataset is not empty and "
                    "drop_last does not drop everything."
                )
            # the epoch ran to its end: the next checkpoint starts the next epoch
            self.position.epoch, self.position.batch_in_epoch = epoch + 1, 0
            self.position.epoch_rng = None

    def _begin(self, epoch: int) -> tuple[Iterator[Any], int]:
        """Start ``epoch``'s iterator; returns it and the index of its next batch."""
        if epoch == self.start_epoch and self._skip and self.position.epoch_rng is not None:
            iterator = self._replay(epoch, self.position.epoch_rng)
        else:
            self._skip = 0
            if self._rng is not None:  # resume at an epoch boundary
                checkpoint.restore_rng(self._rng)
                self._rng = None
            # only a checkpoint reads it (capturing every RNG costs ~0.1 ms per epoch,
            # per step for full-batch training)
            self.position.epoch_rng = self._epoch_rng() if self._capture else None
            for set_epoch in self._set_epochs:  # DistributedSampler: this epoch's shuffle
                set_epoch(epoch)
            iterator = iter(self.loader)
        if self._rng is not None:
            checkpoint.restore_rng(self._rng)
            self._rng = None
        if self._loader_rng is not None and self.generator is not None:
            self.generator.set_state(self._loader_rng)
        self._loader_rng = None
        self.position.epoch, self.position.batch_in_epoch = epoch, self._skip
        return iterator, self._skip

    def _replay(self, epoch: int, state: dict[str, Any]) -> Iterator[Any]:
        """Resume mid-epoch: the epoch's order again, without the batches already taken."""
        checkpoint.restore_rng(state["global"])
        if self.generator is not None and state["loader"] is not None:
            self.generator.set_state(state["loader"])
        for set_epoch in self._set_epochs:  # DistributedSampler: this epoch's shuffle
            set_epoch(epoch)
        iterator = iter(self.loader)
        for k in range(self._skip):
            try:
                next(iterator)
            except StopIteration:
                raise CheckpointError(
                    f"load_checkpoint: {self._source} stopped at batch {self._skip} of "
                    f"epoch {epoch} but the loader now ends after {k} batches. Resume "
                    "with the same loader, or start a new run directory."
                ) from None
        return iterator

    def _epoch_rng(self) -> dict[str, Any]:
        """Random states that decide an epoch's data order, captured before ``iter(loader)``."""
        gen = self.generator
        return {
            "global": checkpoint.capture_rng(),
            "loader": None if gen is None else gen.get_state(),
        }
