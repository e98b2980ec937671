r"""One shared derivative computation per batch for every constraint that needs it.

:func:`evaluate` takes the union of the :class:`~constrained_grad.Needs` of the constraints
enforced at one set of points and computes each quantity once:

* columns for the union of requested inputs in one call (double backward by default, on
  the forward pass of the loss when the points are the batch);
* rows for the union of requested outputs in one batched VJP;
* the full Jacobian only if something asks for it (then columns, rows and the exact
  Frobenius norm are read off it instead of being recomputed);
* random projections ``v^T J`` once, shared by Frobenius estimates and projected gradient
  matching; curvatures by forward-over-forward mode.

Everything is computed lazily on first access and cached, and :attr:`DerivativeValues.paths`
records which engine path produced each quantity.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from constrained_grad.constraints.needs import Needs
from constrained_grad.derivatives._common import (
    Fn,
    Forward,
    batched_vjp,
    forward,
    has_train_mode_batchnorm,
    unwrap_compiled,
    wrap_forward,
)
from constrained_grad.derivatives.columns import columns_with_path
from constrained_grad.derivatives.jacobian import jacobian_with_path
from constrained_grad.derivatives.norms import fro_sq_with_path, sphere_vectors
from constrained_grad.derivatives.rows import rows_from_forward
from constrained_grad.derivatives.second import second_with_path
from constrained_grad.errors import EngineError


class DerivativeValues:
    """Derivatives of ``f`` at points ``x``, computed on demand and cached.

    Attributes:
        x: the points ``(B, *in_shape)`` (requiring grad).
        outputs: ``f(x)`` flattened to ``(B, m)``.
        index: stable point ids ``(B,)`` or None.
        paths: quantity name -> engine path that computed it.
    """

    def __init__(
        self,
        f: Fn,
        fwd: Forward,
        needs: Needs,
        *,
        create_graph: bool = True,
        generator: torch.Generator | None = None,
        column_method: str = "auto",
        index: torch.Tensor | None = None,
        graph_in_x: bool = False,
    ) -> None:
        self.f = f
        self._fwd = fwd
        self.needs = needs
        self.create_graph = create_graph
        self.generator = generator
        self.column_method = column_method
        self.index = index
        self._graph_in_x = graph_in_x
        self._func_x_cache: torch.Tensor | None = None
        self.paths: dict[str, str] = {}
        self._columns: dict[int, torch.Tensor] = {}
        self._rows: dict[int, torch.Tensor] = {}
        self._row_blocks: dict[int, torch.Tensor] = {}  # one row as (B, 1, d)
        self._second: dict[int, torch.Tensor] = {}
        self._fro: dict[tuple[str, int], torch.Tensor] = {}
        self._jacobian: torch.Tensor | None = None
        self._projections: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def x(self) -> torch.Tensor:
        return self._fwd.x

    @property
    def _func_x(self) -> torch.Tensor:
        # torch.func paths see a detached copy unless derivatives must depend on x itself;
        # made on first use (the rows of a kept forward pass never need it)
        if self._func_x_cache is None:
            self._func_x_cache = self._fwd.x if self._graph_in_x else self._fwd.x.detach()
        return self._func_x_cache

    @property
    def outputs(self) -> torch.Tensor:
        return self._fwd.y

    @property
    def batch(self) -> int:
        return self._fwd.batch

    # -- quantities -------------------------------------------------------------------------
    def jacobian(self) -> torch.Tensor:
        """Per-sample Jacobians ``(B, m, d)``."""
        if self._jacobian is None:
            jac, path = jacobian_with_path(
                self.f, self._func_x, create_graph=self.create_graph, fwd=self._fwd
            )
            self._jacobian = jac.reshape(self.batch, self._fwd.n_outputs, self._fwd.n_inputs)
            self.paths["jacobian"] = path
        return self._jacobian

    def columns(self, inputs: Sequence[int]) -> torch.Tensor:
        """Columns ``(B, m, k)`` for flat input indices ``inputs``."""
        missing = [j for j in inputs if j not in self._columns]
        if missing:
            if self._jacobian is not None or self.needs.jacobian:
                jac = self.jacobian()
                for j in missing:
                    self._columns[j] = jac[:, :, j]
            else:
                wanted = sorted(set(missing) | (set(self.needs.columns) - set(self._columns)))
                cols, path = columns_with_path(
                    self.f,
                    self.x,
                    wanted,
                    method=self.column_method,
                    create_graph=self.create_graph,
                    fwd=self._fwd,
                )
                for k, j in enumerate(wanted):
                    self._columns[j] = cols[:, :, k]
                self.paths["columns"] = path
        if len(inputs) == 1:
            return self._columns[inputs[0]].unsqueeze(-1)
        return torch.stack([self._columns[j] for j in inputs], dim=-1)

    def rows(self, outputs: Sequence[int]) -> torch.Tensor:
        """Rows ``(B, k, d)`` for flat output indices ``outputs``."""
        if len(outputs) == 1 and outputs[0] in self._row_blocks:
            return self._row_blocks[outputs[0]]
        missing = [i for i in outputs if i not in self._rows]
        if missing:
            if self._jacobian is not None or self.needs.jacobian:
                jac = self.jacobian()
                for i in missing:
                    self._rows[i] = jac[:, i, :]
            else:
                wanted = sorted(set(missing) | (set(self.needs.rows) - set(self._rows)))
                rows, path = rows_from_forward(
                    self._fwd, wanted, create_graph=self.create_graph, who="engine"
                )
                if len(wanted) == 1:  # (B, 1, d) as computed: no select-then-unsqueeze
                    self._row_blocks[wanted[0]] = rows
                for k, i in enumerate(wanted):
                    self._rows[i] = rows[:, k, :]
                self.paths["rows"] = path
        if len(outputs) == 1:  # a view, not a copy (the usual single-output case)
            block = self._row_blocks.get(outputs[0])
            if block is None:
                block = self._row_blocks[outputs[0]] = self._rows[outputs[0]].unsqueeze(1)
            return block
        return torch.stack([self._rows[i] for i in outputs], dim=1)

    def projections(self, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
        r"""``(V, V^T J)``: ``samples`` output-sphere vectors per point ``(S, B, m)`` and their
        vector-Jacobian products ``(S, B, d)``; shared by every consumer on this batch."""
        if self._projections is None or self._projections[0].shape[0] < samples:
            v = sphere_vectors(
                samples, self.batch, self._fwd.n_outputs, self.outputs, self.generator
            )
            vj, path = batched_vjp(self._fwd, v, create_graph=self.create_graph, who="engine")
            self._projections = (v, vj.reshape(samples, self.batch, -1))
            self.paths["projections"] = "vjp_sphere_" + path
        v, vj = self._projections
        return v[:samples], vj[:samples]

    def fro_sq(self, estimator: str, samples: int) -> torch.Tensor:
        r"""Per-sample :math:`\|J_b\|_F^2` (exact or estimated), shape ``(B,)``."""
        key = (estimator, samples)
        if key not in self._fro:
            if estimator == "exact" and (self._jacobian is not None or self.needs.jacobian):
                self._fro[key] = self.jacobian().pow(2).sum(dim=(1, 2))
                self.paths[f"fro_{estimator}"] = self.paths["jacobian"]
            elif estimator == "vjp_sphere":
                _, vj = self.projections(samples)
                self._fro[key] = vj.pow(2).sum(-1).mean(0)
                self.paths[f"fro_{estimator}"] = self.paths["projections"]
            else:
                value, path = fro_sq_with_path(
                    self.f,
                    self._func_x,
                    estimator=estimator,
                    samples=samples,
                    generator=self.generator,
                    create_graph=self.create_graph,
                    fwd=self._fwd,
                )
                self._fro[key] = value
                self.paths[f"fro_{estimator}"] = path
        return self._fro[key]

    def second(self, inputs: Sequence[int]) -> torch.Tensor:
        """Curvatures ``(B, m, k)`` along flat input indices ``inputs``."""
        missing = [j for j in inputs if j not in self._second]
        if missing:
            wanted = sorted(set(missing) | (set(self.needs.second) - set(self._second)))
            sec, path = second_with_path(
                self.f, self._func_x, wanted, create_graph=self.create_graph, fwd=self._fwd
            )
            for k, j in enumerate(wanted):
                self._second[j] = sec[:, :, k]
            self.paths["second"] = path
        return torch.stack([self._second[j] for j in inputs], dim=-1)


def evaluate(
    f: Fn,
    x: torch.Tensor,
    needs: Needs,
    *,
    outputs: torch.Tensor | None = None,
    create_graph: bool = True,
    generator: torch.Generator | None = None,
    column_method: str = "auto",
    index: torch.Tensor | None = None,
    graph_in_x: bool = False,
    coupled: bool | None = None,
) -> DerivativeValues:
    """Prepare the shared derivative computation of ``f`` at ``x`` for ``needs``.

    Args:
        outputs: ``f(x)`` already computed from ``x`` (which must then require grad) —
            e.g. the forward pass of the loss; the engine reuses its graph.
        create_graph: keep derivatives differentiable w.r.t. parameters (training).
        generator: CPU generator for random projections (reproducible runs).
        index: stable ids of the points, passed through for pointwise constraints.
        graph_in_x: keep every derivative differentiable with respect to ``x`` itself
            (``x`` must then be the tensor ``outputs`` were computed from), as the
            adversarial search of :func:`constrained_grad.verify` needs.
        coupled: whether ``f`` couples the samples (train-mode BatchNorm) when ``outputs``
            are given; ``None`` scans the model (a caller that knows can skip the scan).
    """
    f = unwrap_compiled(f)
    if outputs is None:
        fwd = forward(f, x, "evaluate")
    else:
        if not x.requires_grad:
            raise EngineError(
                "evaluate: outputs were given but x does not require grad, so they "
                "cannot have been computed from it. Call x.requires_grad_() "
                "before the forward pass, or omit outputs."
            )
        if coupled is None:
            coupled = has_train_mode_batchnorm(f)
        fwd = wrap_forward(x, outputs, "evaluate", coupled=coupled)
    return DerivativeValues(
        f,
        fwd,
        needs,
        create_graph=create_graph,
        generator=generator,
        column_method=column_method,
        index=index,
        graph_in_x=graph_in_x,
    )


def prefetch(values: DerivativeValues) -> DerivativeValues:
    """Compute every quantity in ``values.needs`` now (useful to time or to free inputs)."""
    n = values.needs
    if n.jacobian:
        values.jacobian()
    if n.columns:
        values.columns(sorted(n.columns))
    if n.rows:
        values.rows(sorted(n.rows))
    if n.projections:
        values.projections(n.projections)
    for est, s in sorted(n.fro):
        values.fro_sq(est, s)
    if n.second:
        values.second(sorted(n.second))
    return values


ValuesFn = Callable[[DerivativeValues], torch.Tensor]


@contextlib.contextmanager
def frozen_eval(model: Any) -> Iterator[None]:
    """Eval mode and parameters without grad for the duration; both restored afterwards.

    What evaluating a constraint *on* a model (not for training it) wants: no dropout noise,
    running BatchNorm statistics, and no parameter graph built.
    """
    if not isinstance(model, torch.nn.Module):
        yield
        return
    modes = {m: m.training for m in model.modules()}
    grads = {p: p.requires_grad for p in model.parameters()}
    model.eval()
    for p in grads:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode
        for p, flag in grads.items():
            p.requires_grad_(flag)


def constraint_violations(
    f: Fn,
    constraint: Any,
    x: torch.Tensor,
    *,
    graph_in_x: bool = False,
    column_method: str = "auto",
) -> torch.Tensor:
    """``(B, C)`` violations of a resolved constraint for model ``f`` at points ``x``.

    With ``graph_in_x=True`` the result stays differentiable with respect to ``x`` (what a
    gradient search for counterexamples needs); otherwise it is detached and no parameter
    graph is built. Constraints whose targets come from a batch cannot be evaluated here.
    The model runs in eval mode with frozen parameters (:func:`frozen_eval`).
    """
    with frozen_eval(f):
        return _constraint_violations(f, constraint, x, graph_in_x, column_method)


def _constraint_violations(
    f: Fn, constraint: Any, x: torch.Tensor, graph_in_x: bool, column_method: str
) -> torch.Tensor:
    if graph_in_x:
        with torch.enable_grad():
            xr = x if x.requires_grad else x.detach().requires_grad_(True)
            values = evaluate(
                f,
                xr,
                constraint.needs,
                outputs=f(xr),
                create_graph=True,
                graph_in_x=True,
                column_method=column_method,
            )
            return constraint.violations(values, None)
    with torch.enable_grad():  # derivatives need autograd even when the caller is in no_grad
        values = evaluate(f, x, constraint.needs, create_graph=False, column_method=column_method)
        return constraint.violations(values, None).detach()
