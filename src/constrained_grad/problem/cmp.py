r"""The bridge to Cooper: a :class:`cooper.ConstrainedMinimizationProblem` built from
declared derivative constraints.

For each declared constraint there is exactly one ``cooper.Constraint`` (never one per
scalar: grouped constraints are what keeps Cooper fast), holding

* a ``DenseMultiplier`` with one entry per constrained component (aggregate reductions) or
  an ``IndexedMultiplier`` with one entry per point and component (``"pointwise"``),
  created on the model's device, in float32 or the model's dtype if wider (a bf16 or
  fp16 model keeps float32 multipliers);
* Cooper's ``Lagrangian``, ``AugmentedLagrangian`` or ``QuadraticPenalty`` formulation.

Per batch, :meth:`DerivativeProblem.compute_cmp_state` runs the model once on the batch,
evaluates the loss, and evaluates every constraint through one shared derivative
computation per set of points (:func:`constrained_grad.derivatives.evaluate`). Constraint
states carry the differentiable (primal) violation and, where it differs, the value that
drives the multiplier (``strict_violation``): e.g. the mean hinge for the weights and the
worst point for the multiplier.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import cooper
import torch

from constrained_grad.constraints import (
    AugmentedLagrangian,
    DerivativeConstraint,
    FixedPenalty,
    QuadraticPenalty,
    reduce_violations,
)
from constrained_grad.constraints.cells import Cells
from constrained_grad.constraints.points import check_batch_index
from constrained_grad.derivatives import evaluate
from constrained_grad.derivatives._common import unwrap_compiled
from constrained_grad.derivatives.bounds import cell_values, network_layers
from constrained_grad.derivatives.diagnostics import (
    CONSTRAINT_CUT_HINT,
    LOSS_CUT_HINT,
    check_depends_on_parameters,
)
from constrained_grad.derivatives.engine import DerivativeValues, constraint_violations
from constrained_grad.derivatives.model_info import (
    dtype_and_device,
    output_shape,
    piecewise_linear_layers,
)
from constrained_grad.errors import ConstraintSpecError, InputValidationError
from constrained_grad.problem.batch import Batch, as_batch
from constrained_grad.problem.sync import RankSync

LossFn = Callable[[torch.Tensor, Any], torch.Tensor]


@dataclass
class ConstraintEval:
    """Detached per-step evaluation of one constraint, for history and checks."""

    violations: torch.Tensor  # (B, C) signed, tolerance applied (> 0 is violated)
    index: torch.Tensor | None  # point ids for pointwise constraints
    paths: dict[str, str]


def infer_dims(
    model: Callable[[torch.Tensor], torch.Tensor],
    example_input: torch.Tensor | None,
    input_shape: Sequence[int] | None,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Per-sample input and output shapes, from an example, a shape, or the first layer."""
    who = "DerivativeProblem"
    if example_input is None:
        if input_shape is None:
            first = (
                next((m for m in model.modules() if isinstance(m, torch.nn.Linear)), None)
                if isinstance(model, torch.nn.Module)
                else None
            )
            if first is None:
                raise InputValidationError(
                    f"{who}: cannot infer the model's input size. Pass "
                    "example_input=x[:1] or input_shape=(d,)."
                )
            input_shape = (first.in_features,)
        dtype, device = dtype_and_device(model)
        example_input = torch.zeros(1, *input_shape, dtype=dtype, device=device)
    if not isinstance(example_input, torch.Tensor) or example_input.dim() < 2:
        raise InputValidationError(
            f"{who}: example_input must be a batched tensor (1, *in_shape) "
            f"(got {getattr(example_input, 'shape', type(example_input))})."
        )
    out_shape = output_shape(model, example_input, who, "Pass example_input= with a real sample.")
    return tuple(example_input.shape[1:]), out_shape


class DerivativeProblem(cooper.ConstrainedMinimizationProblem):
    r"""Minimise ``loss(model(x), y)`` subject to derivative constraints on ``model``.

    Args:
        model: a ``torch.nn.Module`` (or function of a batch) whose input derivatives are
            constrained. A ``DistributedDataParallel`` wrapper is unwrapped: derivative
            terms are computed locally and :func:`~constrained_grad.fit` synchronises
            the gradients itself (see :meth:`distribute`). A ``torch.compile``'d module is
            unwrapped too (to ``_orig_mod``, which shares its parameters) and trained
            eagerly: compiled code has no double backward, which every derivative
            constraint needs. Compile the trained model for inference afterwards.
        loss: ``loss(outputs, targets) -> scalar``, e.g. ``torch.nn.functional.mse_loss``;
            ``None`` for a problem made of constraints only (e.g. gradient matching).
        constraints: declared constraints; names default to ``"<kind>_<k>"``.
        example_input / input_shape: to size the problem when the model's first layer is
            not a ``Linear``.
        seed: seeds the generator of random points and projections (reproducible runs).
        column_method: the engine's column method (``"auto"``, ``"double_backward"``,
            ``"forward"``, ``"reverse"``).

    The problem *is* a ``cooper.ConstrainedMinimizationProblem``: use it with
    :func:`constrained_grad.fit`, or with any Cooper optimizer in your own loop
    (``compute_cmp_state(batch)``).
    """

    def __init__(
        self,
        model: Any,
        loss: LossFn | None = None,
        constraints: Sequence[DerivativeConstraint] = (),
        *,
        example_input: torch.Tensor | None = None,
        input_shape: Sequence[int] | None = None,
        seed: int = 0,
        column_method: str = "auto",
    ) -> None:
        super().__init__()
        who = "DerivativeProblem"
        if not callable(model):
            raise InputValidationError(
                f"{who}: model must be a torch.nn.Module or a function "
                f"(got {type(model).__name__})."
            )
        if loss is not None and not callable(loss):
            raise InputValidationError(
                f"{who}: loss must be a function (outputs, targets) -> "
                f"scalar or None (got {type(loss).__name__})."
            )
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InputValidationError(f"{who}: seed must be an int (got {seed!r}).")
        if not -(2**63) <= seed < 2**64:
            raise InputValidationError(
                f"{who}: seed must fit in 64 bits, [-2**63, 2**64) (got {seed!r}). "
                "Pass seed % 2**64."
            )
        if constraints is None:
            constraints = ()
        if isinstance(constraints, DerivativeConstraint) or not isinstance(constraints, Iterable):
            raise InputValidationError(
                f"{who}: constraints must be a list of declared constraints "
                f"(got {type(constraints).__name__}). Wrap a single one in "
                "a list: [cg.Monotonic(...)]."
            )
        constraints = list(constraints)
        for c in constraints:
            if not isinstance(c, DerivativeConstraint):
                raise InputValidationError(
                    f"{who}: constraints must be declared constraints such "
                    f"as cg.Monotonic(...) (got {type(c).__name__})."
                )
        if loss is None and not constraints:
            raise InputValidationError(
                f"{who}: nothing to optimise (no loss, no constraints). "
                "Give a loss, constraints, or both."
            )
        while True:  # DDP(compile(m)), compile(DDP(m)), ...: down to the module itself
            if isinstance(model, torch.nn.parallel.DistributedDataParallel):
                # DDP's gradient hooks do not cover create_graph paths; fit synchronises
                model = model.module
            elif unwrap_compiled(model) is not model:
                # compiled code has no double backward: train the module it compiles
                # (same parameters, so the caller's optimizer and model stay in step)
                model = unwrap_compiled(model)
            else:
                break
        if dtype_and_device(model)[1].type == "meta":
            raise InputValidationError(
                f"{who}: the model's parameters are on the meta device (got device='meta'): "
                "they hold no values to train. Materialise them first, e.g. "
                "model.to_empty(device='cpu') then initialise or load the weights."
            )
        self.model = model
        self.loss_fn = loss
        self.column_method = column_method
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.in_shape, self.out_shape = infer_dims(model, example_input, input_shape)
        self.n_inputs, self.n_outputs = math.prod(self.in_shape), math.prod(self.out_shape)
        self.dtype, self.device = dtype_and_device(model)
        #: multipliers and dual state: float32 or wider whatever the model's dtype (in bf16,
        #: dual steps below a multiplier's resolution, 2**-8 of it, would be lost)
        self.multiplier_dtype = torch.promote_types(self.dtype, torch.float32)

        self.specs: dict[str, DerivativeConstraint] = {}
        counts: dict[str, int] = {}
        kinks = piecewise_linear_layers(model)
        for declared in constraints:
            # a declaration already bound (by another problem, or verify) is resolved as a
            # copy, so sharing it never re-binds the first problem's constraint to this model
            c = declared.unbound_copy() if declared.resolved else declared
            base = type(c).__name__.lower()
            name = c.name
            if name is None:
                name = f"{base}_{counts.get(base, 0)}"
                counts[base] = counts.get(base, 0) + 1
            if name in self.specs:
                raise ConstraintSpecError(
                    f"{who}: two constraints are named {name!r}. Give each a unique name=."
                )
            try:
                c.resolve(self.n_inputs, self.n_outputs)
            except ConstraintSpecError as err:
                if c.name is not None:  # the message already starts with the name
                    raise
                # unnamed: say which of possibly several constraints of one kind failed
                raise ConstraintSpecError(f"{name}: {err}") from err
            if c.needs.second and kinks:
                raise ConstraintSpecError(
                    f"{name}: {type(c).__name__} constrains second derivatives, but the model "
                    f"is piecewise linear (got {', '.join(kinks[:3])}"
                    f"{', ...' if len(kinks) > 3 else ''}): its curvature is zero almost "
                    "everywhere, so the constraint would read as met at every point while the "
                    "fit need not be convex or concave. Use a smooth activation (nn.Softplus, "
                    "nn.SiLU, nn.Tanh) in place of the kinked ones."
                )
            if c.reduction == "pointwise" and not c.formulation.uses_multiplier:
                raise ConstraintSpecError(
                    f"{name}: pointwise reduction needs a multiplier; "
                    f"{type(c.formulation).__name__} has none. Use an "
                    "aggregate reduction."
                )
            self.specs[name] = c
            setattr(self, name, self._make_cooper_constraint(c))
            c.where.attach(self._violations_for(name))
            if isinstance(c.where, Cells):
                network_layers(model, self.n_inputs, who=name)  # refuse unboundable layers now
                c.where.attach_cells(self._cell_violations_for(name))
        # constraints enforced at the same points share one engine computation
        self._groups: dict[object, list[str]] = {}
        for name, c in self.specs.items():
            key = "batch" if c.where.uses_batch else id(c.where)
            self._groups.setdefault(key, []).append(name)
        self._uses_batch = any(c.where.uses_batch for c in self.specs.values())
        # BatchNorm layers couple the samples in training mode; checked each step, cheaply
        self._batchnorms = (
            [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
            if isinstance(model, torch.nn.Module)
            else []
        )
        self.last_evals: dict[str, ConstraintEval] = {}
        self._graph_checked = False  # loss and constraints reach the parameters (first step)
        #: data-parallel synchronisation (:meth:`distribute`); None in a single process
        self.sync: RankSync | None = None
        #: constraints whose points were too few to split across ranks on the last step
        self.replicated: set[str] = set()
        self._last_points: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}

    # -- construction ----------------------------------------------------------------------
    def _make_cooper_constraint(self, c: DerivativeConstraint) -> cooper.Constraint:
        dtype, device = self.multiplier_dtype, self.device
        ctype = (
            cooper.ConstraintType.EQUALITY
            if c.effective_kind == "equality"
            else cooper.ConstraintType.INEQUALITY
        )
        pointwise = c.reduction == "pointwise"
        size = c.n_components * (c.where.num_points or 1) if pointwise else c.n_components
        form = c.formulation
        multiplier = None
        if form.uses_multiplier:
            init = None
            if isinstance(form, FixedPenalty):
                init = torch.full((size,), form.weight, dtype=dtype, device=device)
            mcls = (
                cooper.multipliers.IndexedMultiplier
                if pointwise
                else cooper.multipliers.DenseMultiplier
            )
            multiplier = mcls(num_constraints=size, init=init, dtype=dtype, device=device)
        penalty = None
        if isinstance(form, (AugmentedLagrangian, QuadraticPenalty)):
            value = form.penalty if isinstance(form, AugmentedLagrangian) else form.coefficient
            pcls = (
                cooper.penalty_coefficients.IndexedPenaltyCoefficient
                if pointwise
                else cooper.penalty_coefficients.DensePenaltyCoefficient
            )
            penalty = pcls(init=torch.full((size,), value, dtype=dtype, device=device))
        formulation_type: type[cooper.formulations.Formulation] = cooper.formulations.Lagrangian
        if isinstance(form, AugmentedLagrangian):
            formulation_type = cooper.formulations.AugmentedLagrangian
        elif isinstance(form, QuadraticPenalty):
            formulation_type = cooper.formulations.QuadraticPenalty
        return cooper.Constraint(
            constraint_type=ctype,
            formulation_type=formulation_type,
            multiplier=multiplier,
            penalty_coefficient=penalty,
        )

    def dual_lr_of(self, name: str, default: float) -> float:
        """The dual step size of a constraint: its own, the AL penalty, or ``default``."""
        c = self.specs[name]
        if isinstance(c.formulation, FixedPenalty):
            return 0.0
        if c.dual_lr is not None:
            return c.dual_lr
        if isinstance(c.formulation, AugmentedLagrangian):
            return c.formulation.penalty
        return default

    # -- evaluation ------------------------------------------------------------------------
    def compute_cmp_state(
        self, batch: Any, *, create_graph: bool = True, reuse_points: bool = False
    ) -> cooper.CMPState:
        """Loss and constraint states on one batch (see the class docstring).

        ``create_graph=False`` evaluates violations only (no parameter graph through the
        derivatives): what an alternating dual update or an evaluation needs.
        ``reuse_points=True`` evaluates at the points drawn by the previous call (box samples,
        interpolations, counterexamples) instead of drawing new ones, so an alternating dual
        step sees the same points as the primal step it follows.
        """
        b = as_batch(batch).to(self.device)
        self._check_inputs(b.x)
        with torch.enable_grad():  # Cooper's alternating optimizers call us under no_grad
            x = b.x.detach().requires_grad_(self._uses_batch)
            outputs = self._forward(x)
            loss = None
            if self.loss_fn is not None:
                loss = self._loss(outputs, b.y)
                if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                    raise InputValidationError(
                        f"DerivativeProblem: loss must return a scalar "
                        f"tensor (got {getattr(loss, 'shape', loss)})."
                    )
                loss = loss.reshape(())
            self.last_evals = {}
            self.replicated = set()
            evaluated: list[tuple[str, torch.Tensor, DerivativeValues]] = []
            for names in self._groups.values():
                source = self.specs[names[0]].where
                if isinstance(source, Cells):
                    evaluated += self._over_cells(source, names, create_graph, reuse_points)
                    continue
                values = self._values_for(source, b, x, outputs, names, create_graph, reuse_points)
                for name in names:
                    evaluated.append((name, self.specs[name].violations(values, b), values))
            if create_graph and not self._graph_checked:
                self._check_graph(loss, evaluated)
            if self.sync is not None:  # data-parallel: values of the global batch
                self.sync.exchange(loss, {name: g for name, g, _ in evaluated})
                if loss is not None:
                    loss = self.sync.loss(loss)
            observed = {
                self._constraints[name]: self._state_for(name, g, values, b)
                for name, g, values in evaluated
            }
        return cooper.CMPState(
            loss=loss, observed_constraints=observed, misc={"outputs": outputs.detach()}
        )

    def _check_graph(
        self, loss: torch.Tensor | None, evaluated: list[tuple[str, torch.Tensor, Any]]
    ) -> None:
        """First step only: the loss and every constraint value must reach the parameters.

        A loss computed from detached outputs, or a constraint whose function detaches its
        derivative values, would otherwise train silently on the rest (one graph walk each).
        """
        params = list(self.model.parameters()) if isinstance(self.model, torch.nn.Module) else []
        who = "DerivativeProblem"
        if loss is not None:
            check_depends_on_parameters(loss, params, who, what="the loss", hint=LOSS_CUT_HINT)
        for name, g, _ in evaluated:
            check_depends_on_parameters(
                g, params, who, what=f"constraint {name!r}", hint=CONSTRAINT_CUT_HINT
            )
        self._graph_checked = True

    def _check_inputs(self, x: torch.Tensor) -> None:
        if x.dim() < 2 or tuple(x.shape[1:]) != self.in_shape:
            raise InputValidationError(
                f"DerivativeProblem: batch inputs have shape "
                f"{tuple(x.shape)} but the model takes (B, "
                f"{', '.join(map(str, self.in_shape))}). Check the loader."
            )
        if not x.is_floating_point():
            raise InputValidationError(
                f"DerivativeProblem: batch inputs must be floating point to "
                f"be differentiated (got {x.dtype}). Cast with .float()."
            )
        if x.shape[0] == 0:
            raise InputValidationError(
                f"DerivativeProblem: empty batch (got inputs of shape "
                f"{tuple(x.shape)}). Drop empty batches from the loader."
            )

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """``model(x)``; a failure on inputs of another dtype than the weights names it."""
        try:
            return self.model(x)
        except Exception as err:
            if x.dtype == self.dtype or not isinstance(self.model, torch.nn.Module):
                raise
            raise InputValidationError(
                f"DerivativeProblem: the model fails on batch inputs of "
                f"dtype {x.dtype} ({type(err).__name__}: {err}); its "
                f"parameters are {self.dtype}. Cast the data with "
                f".to({self.dtype}) or the model to the data's dtype."
            ) from err

    def _loss(self, outputs: torch.Tensor, y: Any) -> Any:
        """``loss(outputs, y)``; a failure on missing or mis-shaped targets names them."""
        assert self.loss_fn is not None
        try:
            return self.loss_fn(outputs, y)
        except Exception as err:
            if y is None:
                raise InputValidationError(
                    f"DerivativeProblem: the loss fails without targets "
                    f"({type(err).__name__}: {err}). The batch has no "
                    "targets: yield (x, y) from the loader."
                ) from err
            if isinstance(y, torch.Tensor) and y.shape != outputs.shape:
                raise InputValidationError(
                    f"DerivativeProblem: the loss fails on outputs of "
                    f"shape {tuple(outputs.shape)} and targets of shape "
                    f"{tuple(y.shape)} ({type(err).__name__}: {err}). "
                    "Give targets of the model's output shape."
                ) from err
            raise

    def _values_for(
        self,
        source: Any,
        b: Batch,
        x: torch.Tensor,
        outputs: torch.Tensor,
        names: list[str],
        create_graph: bool,
        reuse_points: bool,
    ) -> DerivativeValues:
        needs = self.specs[names[0]].needs
        for name in names[1:]:
            needs = needs.merge(self.specs[name].needs)
        if source.uses_batch:
            return evaluate(
                self.model,
                x,
                needs,
                outputs=outputs,
                create_graph=create_graph,
                generator=self.generator,
                column_method=self.column_method,
                index=b.index,
                coupled=any(m.training for m in self._batchnorms),
            )
        key = id(source)
        if reuse_points and key in self._last_points:
            points, index = self._last_points[key]
        else:
            points, index = source.points(x.detach(), b.index, self.generator)
            if self.sync is not None and not source.per_rank:
                points, index = self._shard(points, index, names)
            self._last_points[key] = (points, index)
        return evaluate(
            self.model,
            points,
            needs,
            create_graph=create_graph,
            generator=self.generator,
            column_method=self.column_method,
            index=index,
        )

    def _over_cells(
        self, source: Cells, names: list[str], create_graph: bool, reuse_points: bool
    ) -> list[tuple[str, torch.Tensor, Any]]:
        """Violations of the constraints ``names`` over the cells of ``source``: the worst
        end of each sound column enclosure, plus the cells' slack. Refines the partition
        first when a round is due (children inherit their parent's multipliers)."""
        key = id(source)
        if reuse_points and key in self._last_points:
            lo, hi, ids = self._last_points[key]  # type: ignore[misc]
        else:
            if source.due():
                self.refine_cells(names)
            lo, hi, ids = source.cells(self.generator)
            self._last_points[key] = (lo, hi, ids)  # type: ignore[assignment]
        cols: set[int] = set()
        for name in names:
            cols |= self.specs[name].needs.columns
        ids = ids.to(self.device)
        low, high = cell_values(
            self.model, lo, hi, sorted(cols), index=ids, create_graph=create_graph, who=names[0]
        )
        out = []
        worst = None
        for name in names:
            spec = self.specs[name]
            g = torch.maximum(spec.violations(low), spec.violations(high)) + source.slack
            out.append((name, g, low))
            w = g.detach().amax(dim=1)
            worst = w if worst is None else torch.maximum(worst, w)
        assert worst is not None
        source.observe(ids, worst)
        if self.sync is not None:  # every rank holds the same cells
            self.replicated.update(names)
        return out

    def _cell_violations_for(
        self, name: str
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``(lo, hi) -> (N, C)`` violations of constraint ``name`` over cells (no graph)."""
        spec = self.specs[name]
        source = spec.where
        assert isinstance(source, Cells)

        def violations(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
            low, high = cell_values(
                self.model, lo, hi, sorted(spec.needs.columns), create_graph=False, who=name
            )
            g = torch.maximum(spec.violations(low), spec.violations(high))
            return g + source.slack

        return violations

    def refine_cells(self, names: Sequence[str] | None = None) -> int:
        """Run one refinement round of the cells of the constraints ``names`` (all
        constraints over cells when None); children inherit their parent's multipliers.
        Returns the number of cells split."""
        names = [
            n
            for n in (self.specs if names is None else names)
            if isinstance(self.specs[n].where, Cells)
        ]
        split = 0
        sources: dict[int, tuple[Any, list[str]]] = {}
        for n in names:
            where = self.specs[n].where
            sources.setdefault(id(where), (where, []))[1].append(n)
        for source, group in sources.values():
            pairs = source.refine_round(self.dtype, self.device)
            split += len(pairs)
            for n in group:
                m = self._constraints[n].multiplier
                if self.specs[n].reduction != "pointwise" or m is None:
                    continue
                c = self.specs[n].n_components
                with torch.no_grad():
                    w = m.weight
                    for parent, ids in pairs:
                        for child in ids[1:]:
                            w[child * c : (child + 1) * c] = w[parent * c : (parent + 1) * c]
        return split

    def _shard(
        self, points: torch.Tensor, index: torch.Tensor | None, names: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This rank's share ``points[rank::W]`` of points every rank drew alike.

        Fewer points than ranks are evaluated whole on every rank (``replicated``).
        """
        assert self.sync is not None
        rank, world = self.sync.rank, self.sync.world_size
        if points.shape[0] < world:
            self.replicated.update(names)
            return points, index
        return points[rank::world], None if index is None else index[rank::world]

    def _state_for(
        self, name: str, g: torch.Tensor, values: DerivativeValues, b: Batch
    ) -> cooper.ConstraintState:
        """Cooper's state of constraint ``name`` from its ``(B, C)`` violations ``g``."""
        c = self.specs[name]
        if g.dtype != self.multiplier_dtype:  # bf16/fp16 models: violations meet the
            g = g.to(self.multiplier_dtype)  # float32 multipliers in Cooper's products
        self.last_evals[name] = ConstraintEval(g.detach(), values.index, dict(values.paths))
        if c.reduction == "pointwise":
            if c.where.uses_batch:
                check_batch_index(values.index, c.where, name)
            idx = values.index
            assert idx is not None
            ids = (
                idx.reshape(-1, 1) * c.n_components
                + torch.arange(c.n_components, device=idx.device)
            ).reshape(-1)
            if self.sync is not None and name not in self.replicated:
                g = self.sync.pointwise(g)
            return cooper.ConstraintState(violation=g.reshape(-1), constraint_features=ids)
        if self.sync is not None:
            primal, dual = reduce_violations(g, c.reduction, self.sync.reducer(name))
        else:
            primal, dual = reduce_violations(g, c.reduction)
        return cooper.ConstraintState(violation=primal, strict_violation=dual)

    def _violations_for(self, name: str) -> Callable[[torch.Tensor, bool], torch.Tensor]:
        """``(x, graph_in_x) -> (B, C)`` violations of one constraint for point searches."""
        spec = self.specs[name]

        def violations(x: torch.Tensor, graph_in_x: bool) -> torch.Tensor:
            return constraint_violations(
                self.model, spec, x, graph_in_x=graph_in_x, column_method=self.column_method
            )

        return violations

    # -- data parallel -----------------------------------------------------------------------
    def distribute(self, group: Any = None) -> RankSync:
        """Evaluate on this rank's shard, with the values of the global batch.

        After this, :meth:`compute_cmp_state` exchanges per-rank summaries (one all-gather),
        reduces every constraint over all ranks' points, and splits points that every rank
        draws alike (``InBox``, ``AtPoints``, counterexamples) as ``points[rank::W]``. The
        caller averages parameter gradients and sums pointwise multiplier gradients over
        ranks after the backward pass (:meth:`RankSync.reduce_gradients`); :func:`fit` does
        all of this when ``torch.distributed`` is initialised.
        """
        self.sync = RankSync(group)
        return self.sync

    # -- introspection ---------------------------------------------------------------------
    def multiplier_values(self) -> dict[str, torch.Tensor]:
        """Current multipliers by constraint name (detached, flat)."""
        return {
            name: m.weight.detach().reshape(-1)  # type: ignore[operator]
            for name, m in self.named_multipliers()
        }

    def violations(self, name: str, x: torch.Tensor, batch: Any = None) -> torch.Tensor:
        """``(B, C)`` violations of constraint ``name`` at points ``x`` (no parameter graph)."""
        if name not in self.specs:
            raise InputValidationError(
                f"DerivativeProblem.violations: no constraint named "
                f"{name!r} (got constraints {list(self.specs)})."
            )
        c = self.specs[name]
        values = evaluate(
            self.model,
            x,
            c.needs,
            create_graph=False,
            generator=self.generator,
            column_method=self.column_method,
        )
        return c.violations(values, as_batch(batch) if batch is not None else None).detach()
