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

import functools
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
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
from constrained_grad.training.checkpointing import CHECKPOINT_NAME as CHECKPOINT_NAME
from constrained_grad.training.checkpointing import Checkpointing
from constrained_grad.training.dual import DualFactory, build_dual_optimizer, dual_step
from constrained_grad.training.epochs import Epochs
from constrained_grad.training.interrupts import DeferredSignals
from constrained_grad.training.lagrangian import StepLagrangian
from constrained_grad.training.options import check_loop_options, check_step_options
from constrained_grad.training.reporting import Evaluation, ProgressBar
from constrained_grad.training.results import Callback, FitResult
from constrained_grad.training.results import StepInfo as StepInfo
from constrained_grad.training.stats import FIELDS, StepStats
from constrained_grad.training.stopping import StopRules


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
    callbacks = list(callbacks)
    check_loop_options(
        loader,
        epochs=epochs,
        steps=steps,
        eval_every=eval_every,
        patience=patience,
        checkpoint_every=checkpoint_every,
        checkpoint_dir=checkpoint_dir,
        callbacks=callbacks,
        eval_fn=eval_fn,
        stop_tolerance=stop_tolerance,
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
    rules = StopRules(
        trainer.names,
        steps=steps,
        stop_tolerance=stop_tolerance,
        patience=patience,
        callbacks=callbacks,
    )
    evaluation = Evaluation(eval_fn, eval_every, trainer.history)
    signals = DeferredSignals()
    ckpt = Checkpointing(
        trainer,
        checkpoint_dir,
        every=checkpoint_every,
        resume=resume,
        loader=loader,
        signals=signals,
        on_nonfinite=on_nonfinite,
        result=lambda: _result(trainer, rules, ckpt),
    )
    start = ckpt.open()  # the folder locked until ckpt.close()
    try:
        batches = Epochs(
            loader,
            epochs,
            start,
            go_on=lambda: rules.budget_left(trainer.step_count),
            capture=ckpt.path is not None,
            source=ckpt.path,
        )
        total = steps  # else the bar starts at the steps already in the history
        left = batches.remaining() if steps is None else None
        if left is not None:
            total = trainer.step_count + left
        rank0 = trainer.sync is None or trainer.sync.rank == 0
        bar = ProgressBar(
            progress and rank0, total, trainer.step_count, problem.loss_fn is not None
        )
        if trainer.sync is None:  # ranks would see a signal at different steps: not deferred
            ckpt.hold(signals)
        _train(trainer, batches, ckpt, rules, bar, evaluation)
        ckpt.finish()
    finally:
        ckpt.close()
    return _end(trainer, rules, ckpt, evaluation)


def _train(
    trainer: Trainer,
    batches: Epochs,
    ckpt: Checkpointing,
    rules: StopRules,
    bar: ProgressBar,
    evaluation: Evaluation,
) -> None:
    """One step per batch until the batches or a stop rule end it; the policies read each
    logged step in this order: bar, evaluation, checkpoint, stop rules, signals, budget.

    A :class:`NonFiniteError` saves the state before the failed step first (if it is
    intact), a ``KeyboardInterrupt`` between steps the current one.
    """
    between_steps = True  # False while a step runs: no consistent state to save
    try:
        for epoch, index, batch in batches:
            skipped = trainer.skipped
            between_steps = False
            try:
                row = trainer.step(batch, epoch)
            except NonFiniteError:
                if trainer.state_consistent:
                    ckpt.save()  # the state before the failed step is intact
                raise
            batches.position.batch_in_epoch = index + 1
            between_steps = True
            if trainer.skipped > skipped:  # on_nonfinite="skip": no step, nothing logged,
                bar.skipped()  # so no eval, checkpoint, callback or stop rule either
                ckpt.check_signals()
                continue
            # the worst violation only for its readers (a plain run pays nothing)
            worst = rules.worst(row) if rules.wants_worst or bar.enabled else math.nan
            bar.step(trainer.step_count, row, worst)
            evaluation.after_step(trainer.step_count, trainer.problem.model)
            ckpt.after_step(trainer.step_count)
            if rules.after_step(trainer, epoch, row, worst):
                break
            ckpt.check_signals()  # Ctrl-C/SIGTERM during this step: save it, stop here
            if not rules.budget_left(trainer.step_count):
                break
    except KeyboardInterrupt:
        if between_steps:  # raised by a callback, say
            ckpt.interrupted_between_steps()
        raise
    finally:
        bar.close()


def _result(trainer: Trainer, rules: StopRules, ckpt: Checkpointing) -> FitResult:
    return FitResult(
        trainer.history,
        trainer.problem,
        trainer.step_count,
        rules.stopped,
        trainer.dual_optimizer,
        {"skipped_steps": trainer.skipped, "checkpoint": ckpt.path},
    )


def _end(
    trainer: Trainer, rules: StopRules, ckpt: Checkpointing, evaluation: Evaluation
) -> FitResult:
    """After training (and the folder's lock): rank 0's buffers everywhere, the final
    evaluation, then the callbacks' ``on_fit_end(result)`` (e.g. :class:`Prover`)."""
    model = trainer.problem.model
    if trainer.sync is not None and isinstance(model, torch.nn.Module):
        trainer.sync.broadcast(list(model.buffers()))  # e.g. BatchNorm statistics: rank 0's
    evaluation.at_end(trainer.step_count, model)
    final = _result(trainer, rules, ckpt)
    for cb in rules.callbacks:  # policies that act once training is over (e.g. cg.Prover)
        end = getattr(cb, "on_fit_end", None)
        if callable(end):
            end(final)
    return final


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
