"""The checkpoint policy of a :func:`~constrained_grad.fit` run.

:class:`Checkpointing` owns the run's folder from :meth:`~Checkpointing.open` to
:meth:`~Checkpointing.close`: the lock against a second run, the checkpoint loaded and
checked on resume, atomic saves (each rank's random states gathered to rank 0, which alone
writes), and saving the last consistent state when a signal asks the run to stop. The file
format and its checks live in :mod:`constrained_grad.training.checkpoint`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from constrained_grad.errors import CheckpointError, NonFiniteError
from constrained_grad.training import checkpoint
from constrained_grad.training.epochs import Position, Start
from constrained_grad.training.interrupts import DeferredSignals

if TYPE_CHECKING:
    from constrained_grad.training.fit import Trainer

CHECKPOINT_NAME = "checkpoint.pt"
_FIT_KEYS = ("epoch", "batch_in_epoch", "epoch_rng", "rng", "loader_rng")


class Checkpointing:
    """``folder/checkpoint.pt`` for ``trainer``'s run over ``loader`` (``folder=None``: no
    file; saves do nothing, signals still stop the run at a step boundary).

    ``every``: save after every ``every``-th step; ``resume``: load an existing checkpoint;
    ``signals``: the run's :class:`DeferredSignals`; ``on_nonfinite``: the run's setting (a
    non-finite state is never saved, and with ``"raise"`` a save that meets one raises);
    ``result()``: the run's result so far, handed over with a failed write's error.
    """

    def __init__(
        self,
        trainer: Trainer,
        folder: str | os.PathLike[str] | None,
        *,
        every: int | None,
        resume: bool,
        loader: Iterable[Any],
        signals: DeferredSignals,
        on_nonfinite: str,
        result: Callable[[], Any],
    ) -> None:
        self.trainer = trainer
        sync = trainer.sync
        self.rank, self.world = (0, 1) if sync is None else (sync.rank, sync.world_size)
        self.folder = folder
        self.path = None if folder is None else Path(folder) / CHECKPOINT_NAME
        self.every = every
        self.resume = resume
        self.loader = loader
        self.signals = signals
        self.on_nonfinite = on_nonfinite
        self.result = result
        self.generator = checkpoint.loader_generator(loader)
        self.position = Position(trainer.next_epoch, 0, None, trainer.next_epoch)
        self._held = contextlib.ExitStack()  # the folder's lock (and the signal handlers)
        # what a resume must match; read now, as the run starts
        self._loader_sig = None if folder is None else checkpoint.loader_signature(loader)

    # -- start and end ------------------------------------------------------------------------
    def open(self) -> Start:
        """Lock the folder (rank 0) and load a checkpoint to resume; returns where to start.

        The first epoch of a new call follows a continued history's last one; a checkpoint
        keeps its own (its history already holds the interrupted call's epochs).
        """
        try:
            saved = self._load()
            if saved is None:
                return Start(self.position)
            return self._restore(saved)
        except BaseException:
            self.close()
            raise

    def hold(self, context: contextlib.AbstractContextManager[Any]) -> None:
        """Keep ``context`` entered until :meth:`close` (e.g. the deferred signals)."""
        self._held.enter_context(context)

    def close(self) -> None:
        """Release the folder's lock and what :meth:`hold` keeps."""
        self._held.close()

    def _load(self) -> dict[str, Any] | None:
        """Rank 0 locks the folder and reads the checkpoint; every rank gets its contents."""
        if self.folder is None:
            return None
        saved = None
        if self.rank == 0:  # only rank 0 touches the folder
            folder = checkpoint.prepare_dir(self.folder)
            self._held.enter_context(checkpoint.folder_lock(folder))
            self.path = folder / CHECKPOINT_NAME
            checkpoint.remove_stale_temps(self.path)  # left by writes killed before rename
            if self.resume and self.path.exists():
                saved = checkpoint.load(self.path)
                checkpoint.check_loader(saved.get("loader"), self.loader, self.path)
        if self.trainer.sync is not None:
            saved = self.trainer.sync.broadcast_object(saved)  # no shared file system needed
        return saved

    def _restore(self, saved: dict[str, Any]) -> Start:
        """Check ``saved`` fits this run, load it into the trainer; where to continue."""
        checkpoint.require_keys(saved, _FIT_KEYS, self.path)
        checkpoint.validate(saved, self.path)
        if saved.get("world_size", 1) != self.world:
            raise CheckpointError(
                f"load_checkpoint: {self.path} was written by a run over "
                f"{saved.get('world_size', 1)} processes but this run has {self.world}. "
                "Resume with the same world size or start a new run directory."
            )
        self.trainer.load_state_dict(saved, self.path)
        mine = saved["ranks"][self.rank] if saved.get("ranks") is not None else saved
        self.position = Position(
            epoch=saved["epoch"],
            batch_in_epoch=saved["batch_in_epoch"],
            epoch_rng=mine["epoch_rng"],
            first_epoch=int(saved.get("first_epoch", 0)),  # 0 in checkpoints of older versions
        )
        return Start(self.position, rng=mine["rng"], loader_rng=mine["loader_rng"])

    # -- saving ------------------------------------------------------------------------------
    def after_step(self, step_count: int) -> None:
        """Save after every ``every``-th step."""
        if self.every and step_count % self.every == 0:
            self.save(check=True)

    def save(self, check: bool = False, collective: bool = True) -> None:
        """Write the checkpoint (rank 0) unless the state holds NaN/inf.

        ``check``: a non-finite state raises :class:`NonFiniteError` (with
        ``on_nonfinite="raise"``) instead of being passed over. ``collective``: all ranks call
        this together, so each rank's random state is gathered; otherwise only rank 0's is kept.
        """
        if self.path is None:
            return
        trainer = self.trainer
        bad = trainer.nonfinite_state()
        if bad:  # never replace the last good checkpoint by a broken state
            if check and self.on_nonfinite == "raise":
                raise NonFiniteError(
                    f"fit: non-finite {', '.join(bad)} after step {trainer.step_count - 1} "
                    f"(epoch {self.position.epoch}); {self.path} keeps the last finite state. "
                    "Lower the learning rates or check the data for NaN/inf."
                )
            return
        mine = {
            "epoch_rng": self.position.epoch_rng,
            "rng": checkpoint.capture_rng(),
            "loader_rng": None if self.generator is None else self.generator.get_state(),
        }
        ranks = None
        if trainer.sync is not None and collective:
            ranks = trainer.sync.gather_objects(mine)
        if self.rank != 0:
            return
        state = trainer.state_dict()
        state.update(
            self.position.as_dict(),
            **mine,
            world_size=self.world,
            ranks=ranks,
            loader=self._loader_sig,
        )
        self._write(state)

    def _write(self, state: dict[str, Any]) -> None:
        assert self.path is not None
        try:
            with self.signals.writing():
                checkpoint.atomic_save(state, self.path)
        except CheckpointError as err:  # keep the work: hand the result over with it
            failure = CheckpointError(
                f"{err} The run's state after step {self.trainer.step_count} is not lost: "
                "this error's .result holds the FitResult (model, problem, history)."
            )
            failure.result = self.result()  # type: ignore[attr-defined]
            raise failure from err

    # -- signals -----------------------------------------------------------------------------
    def check_signals(self) -> None:
        """At a step boundary after SIGINT/SIGTERM: save this consistent state, then stop."""
        if not self.signals.signum:
            return
        if not self.signals.emergency:
            self.save(collective=False)  # the other ranks may be anywhere: no collective call
        self.signals.emergency = True  # saved: the KeyboardInterrupt handler must not save again
        self.signals.raise_now()

    def interrupted_between_steps(self) -> None:
        """A ``KeyboardInterrupt`` not raised by the signals (a callback's, say): save."""
        if not self.signals.emergency:
            self.save(collective=False)  # the other ranks may be anywhere: no collective call

    def finish(self) -> None:
        """Training over: save its last state; stop now if a signal came during the last step."""
        self.save(check=True)
        if self.signals.signum:
            self.signals.emergency = True
            self.signals.raise_now()
