r"""The Lagrangian of one step, lean where it can be.

For a constraint with Cooper's plain ``Lagrangian`` formulation the two quantities a
simultaneous step needs are simple:

* primal: :math:`\lambda^\top g_{\text{primal}}(\theta)` with :math:`\lambda` detached
  (Cooper's ``compute_primal_weighted_violation``);
* dual gradient: :math:`\partial_\lambda (\lambda^\top g_{\text{dual}}) = g_{\text{dual}}`,
  the (strict) violation itself — dense, or sparse at the observed point ids for an
  ``IndexedMultiplier``, exactly the gradient Cooper's embedding lookup produces.

So the dual gradient is written straight into ``multiplier.weight.grad`` instead of being
obtained from a second Lagrangian and a backward pass, and the primal term is one dot
product. Other formulations (augmented Lagrangian, quadratic penalty) go through Cooper's
own ``CMPState.compute_primal_lagrangian`` / ``compute_dual_lagrangian``.
"""

from __future__ import annotations

import cooper
import torch

from constrained_grad.problem import DerivativeProblem


class StepLagrangian:
    """Builds the primal objective and the dual gradients of one step for ``problem``."""

    def __init__(self, problem: DerivativeProblem) -> None:
        self.fast: list[tuple[cooper.Constraint, torch.nn.Parameter | None, bool]] = []
        self.generic: list[cooper.Constraint] = []
        #: pointwise constraints, whose primal terms hold this rank's points only
        self.pointwise: set[cooper.Constraint] = set()
        #: the part of the last primal objective summed over this rank's points only
        self.pointwise_value: torch.Tensor | None = None
        for _, cons in problem.named_constraints():
            indexed = isinstance(cons.multiplier, cooper.multipliers.IndexedMultiplier)
            if indexed:
                self.pointwise.add(cons)
            if cons.formulation_type is cooper.formulations.Lagrangian:
                weight = cons.multiplier.weight if cons.multiplier is not None else None
                assert weight is None or isinstance(weight, torch.nn.Parameter)
                self.fast.append((cons, weight, indexed))
            else:
                self.generic.append(cons)

    def __call__(
        self, state: cooper.CMPState, *, primal: bool = True, dual: bool = True
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Return ``(primal objective, dual Lagrangian of generic constraints)``.

        With ``dual=True`` the gradients of plain-Lagrangian multipliers are set in place
        (call after zeroing the dual gradients); the returned dual Lagrangian (or None)
        must be back-propagated for the others.
        """
        observed = state.observed_constraints
        terms: list[torch.Tensor] = []
        local: list[torch.Tensor] = []
        if primal and state.loss is not None:
            terms.append(state.loss)
        for cons, weight, indexed in self.fast:
            cs = observed.get(cons)
            if cs is None or weight is None:
                continue
            # no reshape of what is flat already: each op counts on small problems
            lam = weight.detach()
            if lam.dim() != 1:
                lam = lam.reshape(-1)
            if indexed:
                lam = lam[cs.constraint_features]
            if primal and cs.contributes_to_primal_update:
                violation = cs.violation
                if violation.dim() != 1:
                    violation = violation.reshape(-1)
                if violation.dtype != lam.dtype:
                    violation = violation.to(lam.dtype)
                term = torch.dot(lam, violation)
                terms.append(term)
                if indexed:
                    local.append(term.detach())
            if dual and cs.contributes_to_dual_update:
                _set_dual_grad(weight, cs, indexed)
        dual_total = None
        for generic in (
            [c for c in self.generic if c not in self.pointwise],
            [c for c in self.generic if c in self.pointwise],
        ):
            if not any(c in observed for c in generic):
                continue
            sub = cooper.CMPState(
                observed_constraints={c: observed[c] for c in generic if c in observed}
            )
            if primal:
                p = sub.compute_primal_lagrangian().lagrangian
                if isinstance(p, torch.Tensor):
                    terms.append(p)
                    if generic[0] in self.pointwise:
                        local.append(p.detach())
            if dual:
                d = sub.compute_dual_lagrangian().lagrangian
                if isinstance(d, torch.Tensor):
                    dual_total = d if dual_total is None else dual_total + d
        self.pointwise_value = torch.stack(local).sum() if local else None
        primal_total = None
        if terms:
            primal_total = terms[0]
            for t in terms[1:]:
                primal_total = primal_total + t
        return primal_total, dual_total


def _set_dual_grad(weight: torch.nn.Parameter, cs: cooper.ConstraintState, indexed: bool) -> None:
    strict = cs.strict_violation if cs.strict_violation is not None else cs.violation
    if strict.requires_grad:
        strict = strict.detach()
    if strict.dim() != 1:
        strict = strict.reshape(-1)
    if strict.dtype != weight.dtype:
        strict = strict.to(weight.dtype)
    if indexed:
        ids = (
            cs.strict_constraint_features
            if cs.strict_constraint_features is not None
            else cs.constraint_features
        )
        assert ids is not None, "pointwise constraint states carry point ids"
        # ids were range-checked when the points were drawn (AtPoints / check_batch_index);
        # opting out explicitly avoids torch's "invariant checks are implicitly disabled" warning
        grad = torch.sparse_coo_tensor(
            ids.reshape(1, -1), strict.reshape(-1, 1), weight.shape, check_invariants=False
        )
    else:
        grad = strict if strict.shape == weight.shape else strict.reshape(weight.shape)
    weight.grad = grad if weight.grad is None else weight.grad + grad
