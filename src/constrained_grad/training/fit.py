r"""The primal-dual training loop.

Each step on a batch, with the Lagrangian
:math:`L(\theta, \lambda) = f(\theta) + \sum_c \lambda_c^\top g_c(\theta)`:

1. evaluate the loss and every constraint (one shared derivative computation per set of
   points, :meth:`DerivativeProblem.compute_cmp_state`);
2. one backward pass of the primal Lagrangian (multipliers detached) plus the dual
   Lagrangian (violations detached): gradients for the weights and the multipliers;
3. a step of the user's primal optimizer (descent) and of the dual optimizer (ascent,
   ``maximize=True``), then Cooper's projection :math:`\lambda \leftarrow [\lambda]_+`.

``update="alternating"`` instead steps the weights first and updates the multipliers with
the violations *re-evaluated at the new weights* (derivatives need autograd, so the
re-evaluation runs with grad enabled, unlike Cooper's ``AlternatingPrimalDualOptimizer``).

The step is written out here, not delegated to Cooper's ``roll()``, to keep the per-step
overhead near that of a hand-written loop; the formulations, multipliers and Lagrangians
are Cooper's own.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec

import cooper
import torch

from constrained_grad.derivatives.diagnostics import raise_if_compiled
from constrained_grad.errors import (
    CheckpointError,
    ConstrainedGradError,
    InputValidationError,
    NonFiniteError,
)
from constrained_grad.history import History
from constrained_grad.parallel import check_threads, distributed_ready, torch_threads
from constrained_grad.problem import DerivativeProblem
from constrained_grad.problem.sync import RankSync
from constrained_grad.training import checkpoint
from constrained_grad.training.dual import DualFactory, build_dual_optimizer, dual_step
from constrained_grad.training.interrupts import DeferredSignals
from constrained_grad.training.lagrangian import StepLagrangian
from constrained_grad.training.options import check_step_options
from constrained_grad.training.stats import FIELDS, StepStats


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


def _check_positive_int(value: Any, what: str, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputValidationError(f"fit: {what} must be a positive int (got {value!r}).")


class Trainer:
    """The pieces of :func:`fit`, reusable step by step (``trainer.step(batch)``).

    ``backward(tensor)`` replaces ``tensor.backward()`` (e.g. a LightningModule's
    ``manual_backward``, which applies the framework's precision scaling).
    """

    def __init__(
        self,
        problem: DerivativeProblem,
        primal_optimizer: torch.optim.Optimizer,
        *,
        dual_lr: float = 1e-2,
        dual_optimizer: str | DualFactory = "sgd",
        update: str = "simultaneous",
        history: History | None = None,
        on_nonfinite: str = "raise",
        backward: Callable[[torch.Tensor], Any] | None = None,
        distributed: bool | None = None,
        process_group: Any = None,
    ) -> None:
        if not isinstance(problem, DerivativeProblem):
            raise InputValidationError(
                f"fit: problem must be a cg.DerivativeProblem (got {type(problem).__name__})."
            )
        if not isinstance(primal_optimizer, torch.optim.Optimizer):
            raise InputValidationError(
                f"fit: primal_optimizer must be a torch.optim.Optimizer "
                f"(got {type(primal_optimizer).__name__}). Build it on "
                "model.parameters()."
            )
        check_step_options(
            "fit",
            dual_lr=dual_lr,
            update=update,
            on_nonfinite=on_nonfinite,
            dual_optimizer=dual_optimizer,
        )
        if backward is not None and not callable(backward):
            raise InputValidationError(
                f"fit: backward must be a function (tensor) -> None or None "
                f"(got {type(backward).__name__}). Pass e.g. a LightningModule's manual_backward."
            )
        if history is not None and not isinstance(history, History):
            raise InputValidationError(
                f"fit: history must be a cg.History or None (got {type(history).__name__}). "
                "Pass a previous run's result.history or History.load_json(path), or leave it "
                "out for a new one."
            )
        self.problem = problem
        self.primal_optimizer = primal_optimizer
        self._backward = backward if backward is not None else torch.Tensor.backward
        self.dual_optimizer, self.dual_names = build_dual_optimizer(
            problem, float(dual_lr), dual_optimizer
        )
        self.update = update
        self.on_nonfinite = on_nonfinite
        self.names = list(problem.specs)
        self.history = history if history is not None else History(self.names)
        # how diagnose() reads each constraint (signed equalities vs inequalities)
        self.history.meta.setdefault(
            "constraint_kinds", {n: c.effective_kind for n, c in problem.specs.items()}
        )
        # what each multiplier sees: a mean over points is read by its mean, not its max;
        # "estimated" marks random estimates, whose max-type reductions are refused
        self.history.meta.setdefault(
            "constraint_reductions",
            {
                n: c.reduction
                + ("/estimated" if getattr(c, "estimator", "exact") != "exact" else "")
                for n, c in problem.specs.items()
            },
        )
        last = self.history.last()  # a loaded CSVLogger(every=k) history has gaps in its steps
        self.step_count = 0 if last is None else int(last["step"]) + 1
        self.skipped = 0
        self.state_consistent = True  # False after a failure between primal and dual updates
        self._multipliers = {n: c.multiplier for n, c in problem.named_constraints()}
        self._stepped_multipliers = [problem._constraints[n].multiplier for n in self.dual_names]
        self._dual_weights: list[torch.Tensor] = [
            m.weight for m in self._stepped_multipliers if m is not None
        ]
        self._steps_dual = self.dual_optimizer is not None
        # the projection after a dual step: the multipliers of inequalities whose
        # post_step_ is Cooper's own (weight.data = relu(weight.data)) are projected in
        # place, the same values; a multiplier class with its own post_step_ keeps it
        self._projected_in_place: list[torch.Tensor] = []
        self._projected_by_cooper: list[cooper.multipliers.Multiplier] = []
        explicit = cooper.multipliers.ExplicitMultiplier
        for multiplier in self._stepped_multipliers:
            if multiplier is None:
                continue
            own = type(multiplier).post_step_ is not explicit.post_step_
            if isinstance(multiplier, explicit) and not own:
                if multiplier.constraint_type == cooper.ConstraintType.INEQUALITY:
                    self._projected_in_place.append(multiplier.weight)
            else:
                self._projected_by_cooper.append(multiplier)
        self._lagrangian = StepLagrangian(problem)
        self._packer = StepStats(
            self.names,
            {
                n: (m.weight if m is not None else None)  # type: ignore[misc]
                for n, m in self._multipliers.items()
            },
        )
        # entries of a history row that must be finite, with their names for messages
        self._labels = ["loss", "Lagrangian"] + [f"{n}/{f}" for n in self.names for f in FIELDS]
        self._finite_idx = [1] if problem.loss_fn is None else [0, 1]
        for k, name in enumerate(self.names):
            fields = range(len(FIELDS)) if self._multipliers[name] is not None else range(3)
            self._finite_idx += [2 + k * len(FIELDS) + j for j in fields]
        self._primal_params = [p for g in primal_optimizer.param_groups for p in g["params"]]
        self._pointwise: list[tuple[str, torch.Tensor]] = []
        self.sync = self._distribute(distributed, process_group)
        self._declared: dict[str, dict[str, Any]] | None = None
        self._t0 = time.perf_counter()

    @property
    def next_epoch(self) -> int:
        """The epoch after the last one :attr:`history` records (0 for an empty history).

        Where a run continuing the history numbers its first epoch, as :func:`fit` does.
        """
        last = self.history.last()
        return 0 if last is None else int(last["epoch"]) + 1

    # -- data parallel -----------------------------------------------------------------------
    def _distribute(self, distributed: bool | None, group: Any) -> RankSync | None:
        """Set up data-parallel steps; start every rank from rank 0's weights and multipliers."""
        if distributed not in (None, True, False):
            raise InputValidationError(
                f"fit: distributed must be True, False or None (auto) (got {distributed!r})."
            )
        use = distributed_ready(group) if distributed is None else distributed
        if not use:
            self.problem.sync = None
            return None
        sync = self.problem.distribute(group)
        model = self.problem.model
        tensors = list(self._primal_params)
        if isinstance(model, torch.nn.Module):
            tensors += [*model.parameters(), *model.buffers()]
        tensors += [m.weight for m in self._multipliers.values() if m is not None]
        sync.broadcast(list({id(t): t for t in tensors}.values()))
        state = self.problem.generator.get_state()
        sync.broadcast([state])
        self.problem.generator.set_state(state)
        indexed = {n for n, c in self.problem.specs.items() if c.reduction == "pointwise"}
        self._pointwise = [
            (n, w) for n, w in zip(self.dual_names, self._dual_weights, strict=True) if n in indexed
        ]
        return sync

    def _reduce_gradients(self, primal: bool) -> float | None:
        """Average parameter gradients and sum pointwise multiplier gradients over ranks.

        Returns the global sum of the pointwise primal terms (their local values differ).
        """
        assert self.sync is not None
        replicated = self.problem.replicated
        summed = [w for n, w in self._pointwise if n not in replicated]
        averaged = [w for n, w in self._pointwise if n in replicated]
        if primal:
            averaged = self._primal_params + averaged
        local = self._lagrangian.pointwise_value if primal else None
        extra = [] if local is None else [float(local)]
        totals = self.sync.reduce_gradients(averaged, summed, extra)
        return totals[0] if totals else None

    def _zero_grad(self) -> None:
        opt = self.primal_optimizer
        if type(opt).zero_grad is torch.optim.Optimizer.zero_grad:
            # what Optimizer.zero_grad(set_to_none=True) does, without its profiler
            # record_function (~40 µs a call, a few % of a small model's step)
            for group in opt.param_groups:
                for p in group["params"]:
                    p.grad = None
        else:  # an optimizer with its own zero_grad (a wrapper, say) keeps it
            opt.zero_grad(set_to_none=True)
        for weight in self._dual_weights:
            weight.grad = None

    def step(self, batch: Any, epoch: int = 0) -> list[float]:
        """One primal-dual step; returns the flat history row that was logged."""
        self._zero_grad()
        state = self.problem.compute_cmp_state(batch)
        simultaneous = self.update == "simultaneous"
        primal, dual = self._lagrangian(state, dual=simultaneous and self._steps_dual)
        violations = {n: e.violations for n, e in self.problem.last_evals.items()}
        sync = self.sync
        summaries = None if sync is None else {n: sync.summary(n) for n in self.names}
        flat = self._packer.pack(state.loss, primal, violations, summaries).tolist()
        row, small = self._packer.unpack(flat)
        if not all(math.isfinite(row[i]) for i in self._finite_idx):
            self._nonfinite(row, epoch)  # raises unless on_nonfinite="skip"
            self.skipped += 1
            return row
        total = primal
        if dual is not None:
            total = dual if total is None else total + dual
        if total is not None and total.requires_grad:
            try:
                self._backward(total)
            except RuntimeError as err:  # compiled code the problem could not unwrap
                raise_if_compiled(err, "fit")
                raise
        if sync is not None:
            pointwise_total = self._reduce_gradients(primal=True)
            local = self._lagrangian.pointwise_value
            if pointwise_total is not None and local is not None:
                row[1] += pointwise_total - float(local)  # the Lagrangian of the global batch
        self.primal_optimizer.step()
        if self._steps_dual and (simultaneous or self._alternating_dual(batch, epoch)):
            self._dual_step()
        self.history.log_step(self.step_count, epoch, time.perf_counter() - self._t0, row, small)
        self.step_count += 1
        return row

    def _dual_step(self) -> None:
        assert self.dual_optimizer is not None
        dual_step(self.dual_optimizer)
        if self._projected_in_place:
            with torch.no_grad():  # Cooper's projection, in place (its post_step_ allocates)
                for weight in self._projected_in_place:
                    weight.relu_()
        for multiplier in self._projected_by_cooper:
            multiplier.post_step_()

    def _alternating_dual(self, batch: Any, epoch: int) -> bool:
        """Dual gradients from violations re-evaluated at the new weights (grad enabled).

        Returns False (no dual step) if they are not finite and ``on_nonfinite="skip"``;
        raises :class:`NonFiniteError` naming the constraints otherwise.
        """
        for weight in self._dual_weights:
            weight.grad = None
        state = self.problem.compute_cmp_state(batch, create_graph=False, reuse_points=True)
        _, dual = self._lagrangian(state, primal=False, dual=True)
        if dual is not None:
            self._backward(dual)
        if self.sync is not None:
            self._reduce_gradients(primal=False)
        bad = [
            n
            for n, w in zip(self.dual_names, self._dual_weights, strict=True)
            if w.grad is not None and not _all_finite(w.grad)
        ]
        if not bad:
            return True
        for weight in self._dual_weights:
            weight.grad = None
        if self.on_nonfinite == "raise":
            self.state_consistent = False  # weights stepped, step not logged: do not save
            raise NonFiniteError(
                f"fit: non-finite violation of {', '.join(bad)} re-evaluated "
                f"after the primal update of step {self.step_count} (epoch "
                f"{epoch}). Lower the learning rates, or pass "
                "on_nonfinite='skip' to skip such dual updates."
            )
        return False

    def nonfinite_state(self) -> list[str]:
        """Parameters and multipliers holding NaN/inf: a state never worth checkpointing."""
        named: list[tuple[str, Any]] = [
            (f"parameter {n}", p) for n, p in _named_params(self.problem.model)
        ]
        named += [
            (f"{n}/multiplier", m.weight) for n, m in self._multipliers.items() if m is not None
        ]
        if not named or bool(torch.stack([torch.isfinite(t).all() for _, t in named]).all()):
            return []
        return [label for label, t in named if not bool(torch.isfinite(t).all())]

    def _nonfinite(self, row: list[float], epoch: int) -> None:
        what = [self._labels[i] for i in self._finite_idx if not math.isfinite(row[i])]
        what += [
            f"parameter {pn}"
            for pn, p in _named_params(self.problem.model)
            if not bool(torch.isfinite(p).all())
        ]
        msg = (
            f"fit: non-finite value at step {self.step_count} (epoch {epoch}) in "
            f"{', '.join(what)}. Lower the learning rates, check the data for NaN/inf, or "
            "pass on_nonfinite='skip' to skip such steps."
        )
        if self.on_nonfinite == "raise":
            raise NonFiniteError(msg)

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything the next step depends on, as plain tensors and containers."""
        model = self.problem.model
        return {
            "format": checkpoint.FORMAT,
            "constraints": checkpoint.constraint_signature(self.problem),
            "declarations": self._declarations(),
            "point_sources": checkpoint.point_source_states(self.problem),
            "model": model.state_dict() if isinstance(model, torch.nn.Module) else None,
            "primal_optimizer": self.primal_optimizer.state_dict(),
            "primal_optimizer_type": type(self.primal_optimizer).__name__,
            "dual_optimizer": None
            if self.dual_optimizer is None
            else {"names": list(self.dual_names), "state": self.dual_optimizer.state_dict()},
            "cmp": self.problem.state_dict(),
            "problem_generator": self.problem.generator.get_state(),
            "history": self.history.to_dict(),
            "step": self.step_count,
            "skipped": self.skipped,
        }

    def _declarations(self) -> dict[str, dict[str, Any]]:
        """Each constraint's declaration as plain data (once: tensors in it are hashed)."""
        if self._declared is None:
            self._declared = {n: checkpoint.declaration(c) for n, c in self.problem.specs.items()}
        return self._declared

    def load_state_dict(self, state: dict[str, Any], source: Any = "state") -> None:
        """Restore a :meth:`state_dict`; raises ``CheckpointError`` if it does not fit."""
        checkpoint.require_keys(state, _TRAINER_KEYS, source)
        checkpoint.validate(state, source)
        checkpoint.check_signature(state["constraints"], self.problem, source)
        checkpoint.check_declarations(state.get("declarations"), self.problem, source)
        saved_type = state.get("primal_optimizer_type", type(self.primal_optimizer).__name__)
        current_type = type(self.primal_optimizer).__name__
        if saved_type != current_type:
            raise CheckpointError(
                f"load_checkpoint: {source} holds a {saved_type} state but this "
                f"run's primal optimizer is {current_type}. Resume with the "
                "same optimizer or start a new run directory."
            )
        saved_dual = state["dual_optimizer"]
        saved_names = None if saved_dual is None else saved_dual["names"]
        if saved_names != (self.dual_names if self.dual_optimizer is not None else None):
            raise CheckpointError(
                f"load_checkpoint: {source} steps the multipliers of "
                f"{saved_names} but this run steps {self.dual_names}. Use the "
                "same dual learning rates and formulations as the saved run."
            )
        model = self.problem.model
        what = "model weights"
        try:
            if isinstance(model, torch.nn.Module):
                model.load_state_dict(state["model"])
            what = "primal optimizer state"
            self.primal_optimizer.load_state_dict(state["primal_optimizer"])
            what = "dual optimizer state"
            if self.dual_optimizer is not None:
                self.dual_optimizer.load_state_dict(saved_dual["state"])
            what = "multipliers"
            self.problem.load_state_dict(state["cmp"])
            what = "random state"
            self.problem.generator.set_state(state["problem_generator"])
        except ConstrainedGradError:
            raise
        except Exception as err:  # tampered fields raise assorted errors
            detail = " ".join(str(err).split())[:300]
            raise CheckpointError(
                f"load_checkpoint: the {what} in {source} do not fit this run "
                f"({type(err).__name__}: {detail}). Resume with the same model, "
                "optimizers and constraints, or start a new run directory."
            ) from err
        checkpoint.load_point_source_states(state.get("point_sources"), self.problem, source)
        try:
            restored = History.from_dict(state["history"], source=f"{source} (field 'history')")
        except ConstrainedGradError:
            raise
        except Exception as err:
            raise CheckpointError(
                f"load_checkpoint: field 'history' of {source} is not a saved History "
                f"({type(err).__name__}: {err}). Resume from an older copy or start afresh."
            ) from err
        self.history.truncate(-1)  # drop every row: the checkpoint holds the whole history
        self.history.extend(restored)
        for key, value in restored.meta.items():  # the run's own records (seed, settings, ...)
            self.history.meta.setdefault(key, value)
        self.step_count = int(state["step"])
        self.skipped = int(state["skipped"])
        times = self.history.wall_times
        self._t0 = time.perf_counter() - (times[-1] if times else 0.0)


_TRAINER_KEYS = (
    "constraints",
    "model",
    "primal_optimizer",
    "dual_optimizer",
    "cmp",
    "problem_generator",
    "history",
    "step",
    "skipped",
)
_FIT_KEYS = ("epoch", "batch_in_epoch", "epoch_rng", "rng", "loader_rng")


def _all_finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t._values() if t.is_sparse else t).all())


def _named_params(model: Any) -> Iterable[tuple[str, torch.Tensor]]:
    return model.named_parameters() if isinstance(model, torch.nn.Module) else []


P = ParamSpec("P")


def _threads_for_the_call(fn: Callable[P, FitResult]) -> Callable[P, FitResult]:
    """Apply ``fn``'s ``threads=`` keyword around the whole call (checked first)."""

    @functools.wraps(fn)
    def call(*args: P.args, **kwargs: P.kwargs) -> FitResult:
        threads = check_threads(kwargs.get("threads"), "fit")
        with torch_threads(threads, "fit"):
            return fn(*args, **kwargs)

    return call


@_threads_for_the_call
def fit(
    problem: DerivativeProblem,
    loader: Iterable[Any],
    primal_optimizer: torch.optim.Optimizer,
    *,
    dual_lr: float = 1e-2,
    dual_optimizer: str | DualFactory = "sgd",
    epochs: int = 1,
    steps: int | None = None,
    update: str = "simultaneous",
    callbacks: Sequence[Callback] = (),
    eval_fn: Callable[[Any], dict[str, float]] | None = None,
    eval_every: int | None = None,
    stop_tolerance: float | None = None,
    patience: int = 20,
    progress: bool = True,
    device: torch.device | str | None = None,
    on_nonfinite: str = "raise",
    history: History | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    checkpoint_every: int | None = None,
    resume: bool = True,
    distributed: bool | None = None,
    process_group: Any = None,
    threads: int | None = None,
) -> FitResult:
    r"""Train ``problem.model`` by primal-dual steps over ``loader``.

    Args:
        problem: the :class:`~constrained_grad.DerivativeProblem`.
        loader: any iterable of batches (a ``DataLoader``), re-iterated each epoch (a
            one-shot iterator such as a generator only with ``epochs=1``).
        primal_optimizer: the user's optimizer over the model parameters.
        dual_lr: dual ascent step size (per-constraint ``dual_lr`` overrides it; an
            augmented Lagrangian steps by its penalty coefficient).
        dual_optimizer: ``"sgd"`` (default, works with pointwise multipliers), ``"adam"``
            (aggregate constraints only), or ``factory(param_groups) -> optimizer`` with
            ``maximize=True``.
        epochs: passes over the loader in this call. With ``history=`` they are *more*
            epochs, numbered on from the history's last epoch (a history ending in epoch 9
            and ``epochs=10`` trains epochs 10..19); a run resumed from ``checkpoint_dir``
            counts the epochs its interrupted call already did (call it again with the same
            arguments).
        steps: optional budget on the total step count, which includes the steps of a
            continued history and of a resumed run (``steps=200`` after a history of 150
            steps trains 50 more).
        update: ``"simultaneous"`` or ``"alternating"`` primal-dual updates.
        callbacks: ``callback(StepInfo)`` after every step; returning True stops training.
            A callback with an ``on_fit_end(result)`` method is also called once with the
            :class:`FitResult` when training ends (e.g. :class:`~constrained_grad.Prover`).
        eval_fn / eval_every: ``eval_fn(model) -> {metric: value}`` logged every
            ``eval_every`` steps and at the end.
        stop_tolerance / patience: stop once every constraint's worst violation on the
            batch is ``<= stop_tolerance`` for ``patience`` consecutive steps.
        progress: show a progress bar with the loss and the worst violation (on rank 0 only
            when data-parallel).
        device: move the model and multipliers there first (batches follow).
        on_nonfinite: ``"raise"`` (default) a :class:`~constrained_grad.errors.NonFiniteError`
            naming the quantity and step (after checkpointing the last good state), or
            ``"skip"`` the step: no update, no history row, no callback or evaluation (counted
            in ``FitResult.extras["skipped_steps"]``).
        history: continue an existing history: steps and epochs are numbered on from its
            last row (in the history, ``StepInfo``, evaluations and loggers), and a sampler's
            ``set_epoch`` gets those epoch numbers too.
        checkpoint_dir: folder for ``checkpoint.pt``, written atomically every
            ``checkpoint_every`` steps, at the end, on interruption and before raising on a
            non-finite value. With ``resume=True`` an existing checkpoint there is loaded
            first and training continues exactly where it stopped (the history's rows are
            the checkpoint's; its ``meta`` keys that ``history`` does not set come back too).
            The folder is checked writable before the first step and locked
            (``checkpoint.lock``) against a second run; a resume is refused with a
            :class:`~constrained_grad.errors.CheckpointError` naming what differs if the
            constraint declarations or the loader changed, or the file is damaged (it
            carries a SHA-256). In one process, Ctrl-C and SIGTERM take effect at the end
            of the current step, after saving it (``KeyboardInterrupt``, or
            ``SystemExit(143)``); a second Ctrl-C stops at once. A failed write (e.g. a
            full disk) raises a ``CheckpointError`` whose ``.result`` is the
            :class:`FitResult` so far. See the "Checkpoints, interruptions and resuming"
            guide.
        distributed / process_group: data-parallel training over the ranks of
            ``process_group`` (default group). ``None`` (default) turns it on when
            ``torch.distributed`` is initialised with more than one process. Each rank
            passes its own shard of the data (e.g. a ``DistributedSampler``, whose
            ``set_epoch`` is called every epoch); every rank then takes the step of the
            global batch, multipliers stay identical, and only rank 0 writes checkpoints
            (resume with the same world size). See the "From one machine to many" guide.
        threads: torch intra-op CPU threads for the duration of the call (restored
            afterwards); ``None`` (default) keeps torch's setting. Small models (a few
            thousand weights, batches of a few hundred points) train fastest on one thread,
            and much faster than multi-threaded when other processes share the cores (see
            "Small models and shared CPUs" in the getting-started guide).

    Returns:
        :class:`FitResult` with the history and the problem.
    """
    _check_positive_int(epochs, "epochs", allow_none=False)
    _check_positive_int(steps, "steps")
    _check_positive_int(eval_every, "eval_every")
    _check_positive_int(patience, "patience", allow_none=False)
    _check_positive_int(checkpoint_every, "checkpoint_every")
    if checkpoint_every is not None and checkpoint_dir is None:
        raise InputValidationError(
            "fit: checkpoint_every needs checkpoint_dir (got None). Name "
            "a folder for the checkpoints."
        )
    if isinstance(loader, (str, bytes)) or not (
        hasattr(loader, "__iter__") or hasattr(loader, "__getitem__")
    ):
        raise InputValidationError(
            f"fit: loader must be an iterable of batches such as a "
            f"DataLoader (got {type(loader).__name__})."
        )
    if epochs > 1 and isinstance(loader, Iterator):
        raise InputValidationError(
            f"fit: loader is a one-shot iterator ({type(loader).__name__}) but epochs={epochs}: "
            "it would be empty after the first epoch. Pass a re-iterable loader (a DataLoader "
            "or a list of batches), or epochs=1."
        )
    callbacks = list(callbacks)
    for cb in [*callbacks, eval_fn]:
        if cb is not None and not callable(cb):
            raise InputValidationError(
                f"fit: callbacks and eval_fn must be callable (got {type(cb).__name__})."
            )
    if stop_tolerance is not None and (
        isinstance(stop_tolerance, bool)
        or not isinstance(stop_tolerance, (int, float))
        or math.isnan(stop_tolerance)
    ):
        raise InputValidationError(
            f"fit: stop_tolerance must be a number or None (got {stop_tolerance!r})."
        )
    if device is not None:
        _move(problem, device)
    trainer = Trainer(
        problem,
        primal_optimizer,
        dual_lr=dual_lr,
        dual_optimizer=dual_optimizer,
        update=update,
        history=history,
        on_nonfinite=on_nonfinite,
        distributed=distributed,
        process_group=process_group,
    )
    sync = trainer.sync
    rank, world = (0, 1) if sync is None else (sync.rank, sync.world_size)
    ckpt_path = None
    saved = None
    held = contextlib.ExitStack()  # the checkpoint folder's lock, until fit ends
    if checkpoint_dir is not None:  # only rank 0 touches the folder
        ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME
        if rank == 0:
            folder = checkpoint.prepare_dir(checkpoint_dir)
            held.enter_context(checkpoint.folder_lock(folder))
            ckpt_path = folder / CHECKPOINT_NAME
            try:
                checkpoint.remove_stale_temps(ckpt_path)  # left by writes killed before rename
                if resume and ckpt_path.exists():
                    saved = checkpoint.load(ckpt_path)
                    checkpoint.check_loader(saved.get("loader"), loader, ckpt_path)
            except BaseException:
                held.close()
                raise
    if sync is not None and ckpt_path is not None:
        saved = sync.broadcast_object(saved)  # no shared file system needed
    # the first epoch of this call: after a continued history's last one; a checkpoint
    # keeps its own (its history already holds this call's epochs)
    first_epoch = trainer.next_epoch
    start_epoch, skip_batches = first_epoch, 0
    epoch_rng, resume_rng, loader_state = None, None, None
    if saved is not None:
        assert ckpt_path is not None
        checkpoint.require_keys(saved, _FIT_KEYS, ckpt_path)
        checkpoint.validate(saved, ckpt_path)
        if saved.get("world_size", 1) != world:
            raise CheckpointError(
                f"load_checkpoint: {ckpt_path} was written by a run over "
                f"{saved.get('world_size', 1)} processes but this run has {world}. Resume "
                "with the same world size or start a new run directory."
            )
        trainer.load_state_dict(saved, ckpt_path)
        mine = saved["ranks"][rank] if saved.get("ranks") is not None else saved
        first_epoch = int(saved.get("first_epoch", 0))  # 0 in checkpoints of older versions
        start_epoch, skip_batches = saved["epoch"], saved["batch_in_epoch"]
        epoch_rng, resume_rng = mine["epoch_rng"], mine["rng"]
        loader_state = mine["loader_rng"]
    gen = checkpoint.loader_generator(loader)
    samplers = [getattr(loader, a, None) for a in ("sampler", "batch_sampler")]
    set_epochs = [f for f in (getattr(x, "set_epoch", None) for x in samplers) if callable(f)]
    total = steps
    if steps is None:  # the bar starts at the steps already in the history
        left = _epoch_len(loader, max(0, first_epoch + epochs - start_epoch))
        total = None if left is None else trainer.step_count + max(0, left - skip_batches)
    bar = _progress(total, progress and rank == 0, initial=trainer.step_count)  # one bar per run
    stopped, feasible_run = "budget", 0
    n = len(FIELDS)
    idx_max = [2 + k * n + 1 for k in range(len(trainer.names))]
    needs_worst = bool(callbacks) or bar is not None or stop_tolerance is not None
    position: dict[str, Any] = {
        "epoch": start_epoch,
        "batch_in_epoch": skip_batches,
        "epoch_rng": epoch_rng,
        "first_epoch": first_epoch,
    }
    loader_sig = checkpoint.loader_signature(loader)
    signals = DeferredSignals()

    def result() -> FitResult:
        return FitResult(
            trainer.history,
            problem,
            trainer.step_count,
            stopped,
            trainer.dual_optimizer,
            {"skipped_steps": trainer.skipped, "checkpoint": ckpt_path},
        )

    def save(check: bool = False, collective: bool = True) -> None:
        """Write the checkpoint (rank 0). ``collective``: all ranks call this together, so
        each rank's random state is gathered; otherwise only rank 0's is kept."""
        if ckpt_path is not None:
            bad = trainer.nonfinite_state()
            if bad:  # never replace the last good checkpoint by a broken state
                if check and on_nonfinite == "raise":
                    raise NonFiniteError(
                        f"fit: non-finite {', '.join(bad)} after step {trainer.step_count - 1} "
                        f"(epoch {position['epoch']}); {ckpt_path} keeps the last finite state. "
                        "Lower the learning rates or check the data for NaN/inf."
                    )
                return
            mine = {
                "epoch_rng": position["epoch_rng"],
                "rng": checkpoint.capture_rng(),
                "loader_rng": None if gen is None else gen.get_state(),
            }
            ranks = None
            if sync is not None and collective:
                ranks = sync.gather_objects(mine)
            if rank != 0:
                return
            state = trainer.state_dict()
            state.update(position, **mine, world_size=world, ranks=ranks, loader=loader_sig)
            try:
                with signals.writing():
                    checkpoint.atomic_save(state, ckpt_path)
            except CheckpointError as err:  # keep the work: hand the result over with it
                failure = CheckpointError(
                    f"{err} The run's state after step {trainer.step_count} is not lost: this "
                    "error's .result holds the FitResult (model, problem, history)."
                )
                failure.result = result()  # type: ignore[attr-defined]
                raise failure from err

    def interrupted() -> None:
        """At a step boundary after SIGINT/SIGTERM: save this consistent state, then stop."""
        if not signals.emergency:
            save(collective=False)  # the other ranks may be anywhere: no collective call
        signals.emergency = True  # saved: the KeyboardInterrupt handler must not save again
        signals.raise_now()

    def budget_left() -> bool:
        return steps is None or trainer.step_count < steps

    between_steps = True  # False while a step runs: no consistent state to save
    if sync is None:  # ranks would see a signal at different steps: not deferred there
        held.enter_context(signals)
    try:
        for epoch in range(start_epoch, first_epoch + epochs):
            if not budget_left():
                break
            if epoch == start_epoch and skip_batches and position["epoch_rng"] is not None:
                # resume mid-epoch: replay this epoch's order, skip what was already seen
                _restore_epoch_rng(position["epoch_rng"], gen)
                for set_epoch in set_epochs:  # DistributedSampler: this epoch's shuffle
                    set_epoch(epoch)
                iterator = iter(loader)
                for k in range(skip_batches):
                    try:
                        next(iterator)
                    except StopIteration:
                        raise CheckpointError(
                            f"load_checkpoint: {ckpt_path} stopped at batch {skip_batches} of "
                            f"epoch {epoch} but the loader now ends after {k} batches. Resume "
                            "with the same loader, or start a new run directory."
                        ) from None
            else:
                skip_batches = 0
                if resume_rng is not None:  # resume at an epoch boundary
                    checkpoint.restore_rng(resume_rng)
                    resume_rng = None
                # only a checkpoint reads it (capturing every RNG costs ~0.1 ms per epoch,
                # per step for full-batch training)
                position["epoch_rng"] = _epoch_rng(gen) if ckpt_path is not None else None
                for set_epoch in set_epochs:  # DistributedSampler: this epoch's shuffle
                    set_epoch(epoch)
                iterator = iter(loader)
            if resume_rng is not None:
                checkpoint.restore_rng(resume_rng)
                resume_rng = None
            if loader_state is not None and gen is not None:
                gen.set_state(loader_state)
            loader_state = None
            position["epoch"], position["batch_in_epoch"] = epoch, skip_batches
            seen = skip_batches
            for batch in iterator:
                seen += 1
                skipped = trainer.skipped
                between_steps = False
                try:
                    row = trainer.step(batch, epoch)
                except NonFiniteError:
                    if trainer.state_consistent:
                        save()  # the state before the failed step is intact
                    raise
                position["batch_in_epoch"] = seen
                between_steps = True
                if trainer.skipped > skipped:  # on_nonfinite="skip": no step, nothing logged,
                    if bar is not None:  # so no eval, checkpoint, callback or stop rule either
                        bar.update(1)
                    if signals.signum:
                        interrupted()
                    continue
                # the worst violation only for its readers (a plain run pays nothing)
                worst = (
                    max((row[i] for i in idx_max), default=float("nan"))
                    if needs_worst
                    else float("nan")
                )
                if bar is not None:
                    bar.update(1)
                    if trainer.step_count % 10 == 1:
                        bar.set_postfix(
                            loss="no loss" if problem.loss_fn is None else f"{row[0]:.4g}",
                            max_violation=f"{worst:.3g}",
                            refresh=False,
                        )
                if eval_fn is not None and eval_every and trainer.step_count % eval_every == 0:
                    trainer.history.log_eval(trainer.step_count, eval_fn(problem.model))
                if checkpoint_every and trainer.step_count % checkpoint_every == 0:
                    save(check=True)
                if callbacks:
                    info = StepInfo(
                        trainer.step_count, epoch, row[0], worst, trainer.history, problem
                    )
                    if any(cb(info) is True for cb in callbacks):
                        stopped = "callback"
                        break
                if stop_tolerance is not None and idx_max:
                    feasible_run = feasible_run + 1 if worst <= stop_tolerance else 0
                    if feasible_run >= patience:
                        stopped = "feasible"
                        break
                if signals.signum:  # Ctrl-C/SIGTERM during this step: stop here
                    interrupted()
                if not budget_left():
                    break
            else:  # the epoch ran to its end: the next checkpoint starts the next epoch
                if seen == 0:
                    raise InputValidationError(
                        "fit: the loader yielded no batch. Check the "
                        "dataset is not empty and drop_last does not drop "
                        "everything."
                    )
                position.update(epoch=epoch + 1, batch_in_epoch=0, epoch_rng=None)
                continue
            break
    except KeyboardInterrupt:
        try:
            if between_steps and not signals.emergency:  # raised by a callback, say
                save(collective=False)  # the other ranks may be anywhere: no collective call
        finally:
            held.close()
        raise
    except BaseException:
        held.close()
        raise
    finally:
        if bar is not None:
            bar.close()
    try:
        save(check=True)
        if signals.signum:  # interrupted during the last step: saved, now stop
            signals.emergency = True
            signals.raise_now()
    finally:
        held.close()
    if sync is not None and isinstance(problem.model, torch.nn.Module):
        sync.broadcast(list(problem.model.buffers()))  # e.g. BatchNorm statistics: rank 0's
    if eval_fn is not None:
        trainer.history.log_eval(trainer.step_count, eval_fn(problem.model))
    final = result()
    for cb in callbacks:  # policies that act once training is over (e.g. cg.Prover)
        end = getattr(cb, "on_fit_end", None)
        if callable(end):
            end(final)
    return final


CHECKPOINT_NAME = "checkpoint.pt"


def _epoch_rng(gen: torch.Generator | None) -> dict[str, Any]:
    """Random states that decide an epoch's data order, captured before ``iter(loader)``."""
    return {"global": checkpoint.capture_rng(), "loader": None if gen is None else gen.get_state()}


def _restore_epoch_rng(state: dict[str, Any], gen: torch.Generator | None) -> None:
    checkpoint.restore_rng(state["global"])
    if gen is not None and state["loader"] is not None:
        gen.set_state(state["loader"])


def _epoch_len(loader: Any, epochs: int) -> int | None:
    try:
        return len(loader) * epochs
    except TypeError:
        return None


def _progress(total: int | None, enabled: bool, initial: int = 0) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(
        total=total, initial=initial, desc="constrained fit", unit="step", dynamic_ncols=True
    )


def _move(problem: DerivativeProblem, device: torch.device | str) -> None:
    try:
        dev = torch.device(device)
        if dev.type == "meta":
            raise InputValidationError(
                "fit: cannot train on the meta device (got device='meta'): meta tensors "
                "hold no values. Use 'cpu' or an available accelerator."
            )
        if isinstance(problem.model, torch.nn.Module):
            problem.model.to(dev)
        problem.to(device=dev)
    except (RuntimeError, TypeError, AssertionError) as err:
        raise InputValidationError(
            f"fit: cannot move the model to device {device!r} "
            f"({type(err).__name__}: {err}). Use 'cpu' or an available "
            "accelerator."
        ) from err
    problem.device = dev
