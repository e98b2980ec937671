r"""PyTorch Lightning integration: derivative constraints inside a ``LightningModule``.

:class:`ConstrainedLightningModule` is a ``lightning.pytorch.LightningModule`` whose
``training_step`` is constrained_grad's primal-dual step (:class:`constrained_grad.Trainer`).
With :math:`L(\theta, \lambda) = f(\theta) + \sum_c \lambda_c^\top g_c(\theta)` each batch
does one backward pass (through ``manual_backward``, so Lightning's precision plugin and
hooks apply), a step of the user's primal optimizer (descent in :math:`\theta`, through
Lightning so ``trainer.global_step`` and ``max_steps`` count it) and a dual step
:math:`\lambda \leftarrow [\lambda + \eta \nabla_\lambda L]_+`. Lightning needs manual
optimisation for this (two optimizers, one backward): the module sets
``automatic_optimization = False`` itself.

Subclasses implement :meth:`~ConstrainedLightningModule.build_problem` (model, loss and
constraints) and ``configure_optimizers`` (the primal optimizer only; the dual optimizer is
built from ``dual_lr`` / ``dual_optimizer``). The multipliers, dual optimizer state, history
and the problem's random state travel in Lightning checkpoints, so ``fit(ckpt_path=...)``
resumes the constrained state exactly.

Needs the optional dependency ``lightning`` (``pip install "constrained-grad[lightning]"``);
``import constrained_grad`` never imports it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

try:
    import lightning.pytorch as pl
except ImportError as _err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "constrained_grad.integrations.lightning: PyTorch Lightning is not installed "
        f"({_err}). Install it with: pip install 'constrained-grad[lightning]'."
    ) from _err

from constrained_grad.errors import CheckpointError, InputValidationError
from constrained_grad.history import History
from constrained_grad.history.record import STATS, history_columns
from constrained_grad.problem import DerivativeProblem
from constrained_grad.training import Trainer
from constrained_grad.training.dual import DualFactory
from constrained_grad.training.options import check_step_options

__all__ = ["CHECKPOINT_KEY", "ConstrainedLightningModule"]

#: key of the constrained state in a Lightning checkpoint dict
CHECKPOINT_KEY = "constrained_grad"
_DEFAULT_FIELDS = ("violation_max", "violation_mean", "multiplier_max")
# Lightning saves and restores these itself (model weights, primal optimizer state)
_LIGHTNING_OWNED = ("model", "primal_optimizer", "primal_optimizer_type")


class _LightningStepOptimizer(torch.optim.Optimizer):
    """The primal optimizer as :class:`~constrained_grad.Trainer` sees it.

    State, parameter groups, ``zero_grad`` and (de)serialisation are those of the wrapped
    ``torch.optim.Optimizer``; ``step()`` goes through Lightning's ``LightningOptimizer`` so
    that the precision plugin, ``on_before_optimizer_step`` and the step counter behind
    ``trainer.global_step`` (hence ``max_steps``) all see it.
    """

    def __init__(self, lightning_optimizer: Any) -> None:
        # no Optimizer.__init__: every piece of state lives in the wrapped optimizer
        self._lightning_optimizer = lightning_optimizer
        self._inner: torch.optim.Optimizer = lightning_optimizer.optimizer

    def __getattr__(self, name: str) -> Any:  # param_groups, state, defaults, ...
        if name in ("_inner", "_lightning_optimizer"):
            raise AttributeError(name)
        return getattr(self._inner, name)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        return self._lightning_optimizer.step(closure=closure)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._inner.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return self._inner.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._inner.load_state_dict(state_dict)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self._inner.add_param_group(param_group)

    def __repr__(self) -> str:
        return f"LightningStep({self._inner!r})"


class ConstrainedLightningModule(pl.LightningModule):
    r"""A ``LightningModule`` trained by constrained_grad's primal-dual step.

    Implement :meth:`build_problem` (return a :class:`~constrained_grad.DerivativeProblem`
    over a submodule of ``self``) and ``configure_optimizers`` (one primal optimizer over
    ``self.parameters()``, optionally with learning-rate schedulers). Everything else —
    ``training_step``, logging, dual updates, checkpoints — is provided.

    Args:
        dual_lr: dual ascent step size (per-constraint ``dual_lr`` overrides it).
        dual_optimizer: ``"sgd"`` (default), ``"adam"`` (aggregate constraints only) or
            ``factory(param_groups) -> optimizer`` with ``maximize=True``, as in
            :func:`constrained_grad.fit`.
        update: ``"simultaneous"`` or ``"alternating"`` primal-dual updates.
        on_nonfinite: ``"raise"`` a :class:`~constrained_grad.errors.NonFiniteError`, or
            ``"skip"`` the step (no optimizer step: ``global_step`` does not advance).
        log_prefix: metrics are logged as ``"<prefix>/loss"``, ``"<prefix>/lagrangian"``,
            ``"<prefix>/max_violation"`` (worst ``violation_max`` over the constraints) and
            ``"<prefix>/<constraint>/<field>"``.
        log_fields: the per-constraint history fields sent to ``self.log`` (any of
            ``violation_mean``, ``violation_max``, ``fraction_violated``,
            ``multiplier_mean``, ``multiplier_max``, ``multiplier_min``, ``multiplier_q50``,
            ``multiplier_q90``). The full record is :attr:`constraint_history` either way.
        prog_bar: show the loss and the worst violation in Lightning's progress bar.
        step_schedulers: step the schedulers returned by ``configure_optimizers`` after
            the optimizer step, by their ``"interval"`` (``"step"`` or ``"epoch"``) and
            ``"frequency"``, as automatic optimisation would. ``False``: step them yourself.

    Attributes:
        constraint_problem: the problem (built on first use, normally at the start of fit).
        constraint_trainer: the :class:`~constrained_grad.Trainer` of the current fit.
        constraint_history: the :class:`~constrained_grad.History` of every step so far, for
            :func:`constrained_grad.plot_history`. Its epochs count on across fits: a fit
            continuing a history (a second ``fit``, or one after ``load_from_checkpoint``)
            records Lightning's ``current_epoch`` plus the history's last epoch + 1;
            resuming with ``ckpt_path=`` keeps the numbering of the saved run.
    """

    def __init__(
        self,
        *,
        dual_lr: float = 1e-2,
        dual_optimizer: str | DualFactory = "sgd",
        update: str = "simultaneous",
        on_nonfinite: str = "raise",
        log_prefix: str = "cg",
        log_fields: Sequence[str] = _DEFAULT_FIELDS,
        prog_bar: bool = True,
        step_schedulers: bool = True,
    ) -> None:
        super().__init__()
        who = type(self).__name__
        check_step_options(
            who,
            dual_lr=dual_lr,
            update=update,
            on_nonfinite=on_nonfinite,
            dual_optimizer=dual_optimizer,
        )
        if not isinstance(log_prefix, str) or not log_prefix:
            raise InputValidationError(
                f"{who}: log_prefix must be a non-empty string (got {log_prefix!r})."
            )
        if isinstance(log_fields, str):
            raise InputValidationError(
                f"{who}: log_fields must be a list of field names (got the string "
                f"{log_fields!r}). Wrap it in a list: [{log_fields!r}]."
            )
        fields = list(log_fields)
        unknown = [f for f in fields if f not in STATS]
        if unknown:
            raise InputValidationError(
                f"{who}: unknown log_fields {unknown} (got {fields}). Choose from {list(STATS)}."
            )
        self.automatic_optimization = False
        self._cg_options: dict[str, Any] = {
            "dual_lr": float(dual_lr),
            "dual_optimizer": dual_optimizer,
            "update": update,
            "on_nonfinite": on_nonfinite,
        }
        self._cg_log_prefix = log_prefix
        self._cg_log_fields = fields
        self._cg_prog_bar = bool(prog_bar)
        self._cg_step_schedulers = bool(step_schedulers)
        self._cg_problem: DerivativeProblem | None = None
        self._cg_trainer: Trainer | None = None
        #: constrained state waiting to be applied (from a checkpoint or a previous fit)
        self._cg_pending: dict[str, Any] | None = None
        #: history epoch = Lightning's current_epoch + this (a fit continuing a history)
        self._cg_epoch_offset = 0

    # -- what subclasses provide ---------------------------------------------------------------
    def build_problem(self) -> DerivativeProblem:
        """Return the :class:`~constrained_grad.DerivativeProblem` to train.

        Its model must be a submodule of ``self`` (assigned in ``__init__``, e.g.
        ``self.net``), so that Lightning moves, saves and optimises it. Called once, at the
        start of the first fit (after Lightning moved the module to its device).
        """
        raise NotImplementedError(
            f"{type(self).__name__}.build_problem: not implemented (got the default). "
            "Override build_problem(self) to return cg.DerivativeProblem(self.net, loss, "
            "[constraints])."
        )

    # -- state ---------------------------------------------------------------------------------
    @property
    def constraint_problem(self) -> DerivativeProblem:
        """The problem returned by :meth:`build_problem` (built on first access)."""
        if self._cg_problem is None:
            self._cg_problem = self._build_problem()
        return self._cg_problem

    @property
    def constraint_trainer(self) -> Trainer:
        """The :class:`~constrained_grad.Trainer` running the steps of the current fit."""
        if self._cg_trainer is None:
            raise InputValidationError(
                f"{type(self).__name__}.constraint_trainer: no fit has started (got None). "
                "Call lightning.Trainer(...).fit(module) first."
            )
        return self._cg_trainer

    @property
    def constraint_history(self) -> History:
        """Loss, Lagrangian, violations and multipliers of every step so far."""
        if self._cg_trainer is not None:
            return self._cg_trainer.history
        if self._cg_pending is not None:  # loaded from a checkpoint, not trained since
            return History.from_dict(self._cg_pending["history"])
        return History(list(self.constraint_problem.specs))

    def _build_problem(self) -> DerivativeProblem:
        who = f"{type(self).__name__}.build_problem"
        problem = self.build_problem()
        if not isinstance(problem, DerivativeProblem):
            raise InputValidationError(
                f"{who}: must return a cg.DerivativeProblem (got {type(problem).__name__}). "
                "Return cg.DerivativeProblem(self.net, loss, [constraints])."
            )
        model = problem.model
        if isinstance(model, torch.nn.Module) and not any(model is m for m in self.modules()):
            raise InputValidationError(
                f"{who}: the problem's model ({type(model).__name__}) is not a submodule of "
                f"this {type(self).__name__} (got a separate module). Assign it in __init__ "
                "(self.net = ...) and pass self.net, so Lightning moves, saves and optimises it."
            )
        return problem

    # -- set-up at the start of fit ------------------------------------------------------------
    def on_fit_start(self) -> None:
        """Build the problem and the :class:`~constrained_grad.Trainer`; check the set-up."""
        who = type(self).__name__
        if self.automatic_optimization:
            raise InputValidationError(
                f"{who}: automatic_optimization must stay False (got True). The primal-dual "
                "step runs two optimizers with one backward, which needs manual optimisation; "
                "do not set self.automatic_optimization."
            )
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if scaler is not None:
            raise InputValidationError(
                f"{who}: precision with a gradient scaler is not supported (got "
                f"{type(self.trainer.precision_plugin).__name__} with "
                f"{type(scaler).__name__}). The multipliers would ascend scaled gradients. "
                "Use precision='32-true', '64-true' or 'bf16-mixed'."
            )
        primal = self._primal_optimizer()
        self._check_schedulers()
        problem = self.constraint_problem
        if isinstance(problem.model, torch.nn.Module):
            device = next((p.device for p in problem.model.parameters()), torch.device(self.device))
            if device != problem.device:  # the problem was built before the module moved
                problem.to(device=device)
                problem.device = device
        previous = self._cg_trainer
        if previous is not None and self._cg_pending is None:  # a second fit: carry it over
            self._cg_pending = self._constrained_state(previous)
        self._cg_epoch_offset = 0
        self._cg_trainer = Trainer(
            problem,
            primal,
            dual_lr=self._cg_options["dual_lr"],
            dual_optimizer=self._cg_options["dual_optimizer"],
            update=self._cg_options["update"],
            on_nonfinite=self._cg_options["on_nonfinite"],
            backward=self.manual_backward,
        )

    def on_train_start(self) -> None:
        """Apply a restored constrained state (Lightning restored the optimizers by now)."""
        self._apply_pending()

    def _apply_pending(self) -> None:
        if self._cg_pending is None or self._cg_trainer is None:
            return
        trainer = self._cg_trainer
        state = trainer.state_dict()  # this run's weights and primal optimizer state ...
        state.update(  # ... with the saved multipliers, dual state, history, random state
            {k: v for k, v in self._cg_pending.items() if k not in _LIGHTNING_OWNED}
        )
        trainer.load_state_dict(state, source="the Lightning checkpoint")
        if self.trainer.global_step == 0 and self.current_epoch == 0:
            # Lightning starts afresh (a new pl.Trainer, or load_from_checkpoint): the
            # history's epochs go on after its last one
            self._cg_epoch_offset = trainer.next_epoch
        else:  # Lightning restored its loops (ckpt_path=...): the saved run's numbering
            self._cg_epoch_offset = int(self._cg_pending.get("epoch_offset", 0))
        self._cg_pending = None

    def _primal_optimizer(self) -> _LightningStepOptimizer:
        who = f"{type(self).__name__}.configure_optimizers"
        optimizers = self.optimizers()
        if isinstance(optimizers, list):
            raise InputValidationError(
                f"{who}: must return one primal optimizer (got {len(optimizers)}). The dual "
                "optimizer is built from dual_lr/dual_optimizer; optimise every model "
                "parameter with one optimizer (parameter groups for different settings)."
            )
        inner = getattr(optimizers, "optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer) or type(inner).__name__ == (
            "_MockOptimizer"
        ):
            raise InputValidationError(
                f"{who}: must return a torch.optim.Optimizer (got "
                f"{type(inner).__name__}). Return e.g. torch.optim.Adam(self.parameters())."
            )
        return _LightningStepOptimizer(optimizers)

    def _check_schedulers(self) -> None:
        if not self._cg_step_schedulers:
            return
        who = f"{type(self).__name__}.configure_optimizers"
        for config in self.trainer.lr_scheduler_configs:
            if config.reduce_on_plateau or isinstance(
                config.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau
            ):
                raise InputValidationError(
                    f"{who}: ReduceLROnPlateau needs a monitored metric, which the automatic "
                    f"scheduler steps do not support (got {type(config.scheduler).__name__}). "
                    "Pass step_schedulers=False and call scheduler.step(metric) yourself, "
                    "e.g. in on_validation_epoch_end."
                )
            if config.interval not in ("step", "epoch"):
                raise InputValidationError(
                    f"{who}: scheduler interval must be 'step' or 'epoch' "
                    f"(got {config.interval!r})."
                )

    # -- the step ------------------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> None:
        """One primal-dual step on ``batch`` (see :meth:`constrained_step`)."""
        self.constrained_step(batch)

    def constrained_step(self, batch: Any) -> dict[str, float]:
        """Run one primal-dual step, log it, step the schedulers; return the logged row.

        Call it from your own ``training_step`` if you override that.
        """
        if self._cg_trainer is None:
            raise InputValidationError(
                f"{type(self).__name__}.constrained_step: the constrained trainer was not "
                "built (got None). If you override on_fit_start, call super().on_fit_start()."
            )
        self._apply_pending()  # normally done in on_train_start
        trainer = self._cg_trainer
        skipped = trainer.skipped
        row = trainer.step(batch, self._cg_epoch_offset + self.current_epoch)
        values = dict(zip(history_columns(trainer.names), row, strict=True))
        prefix = self._cg_log_prefix
        if trainer.skipped != skipped:  # non-finite step skipped: nothing was updated
            self.log(f"{prefix}/skipped_steps", float(trainer.skipped), on_step=True)
            return values
        metrics: dict[str, float] = {}
        if trainer.problem.loss_fn is not None:
            metrics[f"{prefix}/loss"] = values["loss"]
        metrics[f"{prefix}/lagrangian"] = values["lagrangian"]
        worst = [values[f"{n}/violation_max"] for n in trainer.names]
        if worst:
            metrics[f"{prefix}/max_violation"] = max(worst)
        for name in trainer.names:
            for field in self._cg_log_fields:
                value = values[f"{name}/{field}"]
                if not math.isnan(value):  # no multiplier (penalty formulations)
                    metrics[f"{prefix}/{name}/{field}"] = value
        shown = {f"{prefix}/loss", f"{prefix}/max_violation"} if self._cg_prog_bar else set()
        self.log_dict(
            {k: v for k, v in metrics.items() if k in shown},
            on_step=True,
            on_epoch=False,
            prog_bar=True,
        )
        self.log_dict(
            {k: v for k, v in metrics.items() if k not in shown}, on_step=True, on_epoch=False
        )
        if self._cg_step_schedulers:
            self._step_schedulers("step")
        return values

    def on_train_epoch_end(self) -> None:
        """Step the epoch-interval schedulers (``step_schedulers=True``)."""
        if self._cg_step_schedulers:
            self._step_schedulers("epoch")

    def _step_schedulers(self, interval: str) -> None:
        count = self.trainer.global_step if interval == "step" else self.current_epoch + 1
        for config in self.trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                continue  # refused at the start of fit
            if config.interval == interval and count % config.frequency == 0:
                scheduler.step()

    # -- checkpoints ---------------------------------------------------------------------------
    def _constrained_state(self, trainer: Trainer) -> dict[str, Any]:
        state = trainer.state_dict()
        state["epoch_offset"] = self._cg_epoch_offset
        return {k: v for k, v in state.items() if k not in _LIGHTNING_OWNED}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Add multipliers, dual optimizer state, history and random state to ``checkpoint``."""
        if self._cg_trainer is not None:
            checkpoint[CHECKPOINT_KEY] = self._constrained_state(self._cg_trainer)
        elif self._cg_pending is not None:
            checkpoint[CHECKPOINT_KEY] = dict(self._cg_pending)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the constrained state; it is applied when training starts."""
        state = checkpoint.get(CHECKPOINT_KEY)
        if state is None:
            return
        if not isinstance(state, dict) or "history" not in state:
            raise CheckpointError(
                f"{type(self).__name__}.on_load_checkpoint: the checkpoint's "
                f"{CHECKPOINT_KEY!r} entry is not a constrained_grad state (got "
                f"{type(state).__name__}). Load a checkpoint written by this module."
            )
        self._cg_pending = state
