r"""Analytic checks of the primal-dual loop on ``f(x) = wx + b`` with the slope bound ``w <= 1``.

Data have slope ~2, so the bound is active. With ``reduction="mean"`` (or ``"max"``: every
point has the same derivative ``w``) the constraint function is :math:`g(w, b) = w - 1` and

* Lagrangian: KKT point :math:`w^* = 1`, :math:`b^* = \bar y - \bar x` (from
  :math:`\partial_b\,\mathrm{mse} = 0`), and from stationarity
  :math:`\partial_w\,\mathrm{mse} + \lambda = 0` at :math:`(1, b^*)`:
  :math:`\lambda^* = -2\,\mathrm{mean}((x + b^* - y)x)`;
* augmented Lagrangian: the same KKT point;
* quadratic penalty :math:`\frac c2 [w-1]_+^2`: minimiser of mse :math:`+ \frac c2 (w-1)^2`;
* fixed penalty :math:`r\,(w-1)`: minimiser of mse :math:`+ r(w-1)`, multiplier constant ``r``.
"""

from __future__ import annotations

import cooper
import pytest
import torch
from cg_train_helpers import kkt_point, line_data, line_optimum, linear_model, slope_problem
from torch import nn

import constrained_grad as cg


def _set_state(problem: cg.DerivativeProblem, w: float, b: float, lam: float | None) -> None:
    model = problem.model
    with torch.no_grad():
        model.weight.fill_(w)
        model.bias.fill_(b)
        if lam is not None:
            dict(problem.named_multipliers())["slope"].weight.fill_(lam)


def _mse_grads(x: torch.Tensor, y: torch.Tensor, w: float, b: float) -> tuple[float, float]:
    r = w * x + b - y
    return float(2 * (r * x).mean()), float(2 * r.mean())


@pytest.mark.parametrize("reduction", ["mean", "max"])
def test_sgd_reaches_the_kkt_point(reduction: str) -> None:
    x, y = line_data()
    w_star, b_star, lam_star = kkt_point(x, y)
    assert lam_star > 0.3  # the bound is active with a clearly positive multiplier
    model = linear_model()
    problem = slope_problem(model, reduction=reduction)
    opt = torch.optim.SGD(model.parameters(), lr=0.9)
    result = cg.fit(problem, [(x, y)], opt, dual_lr=0.1, epochs=150, progress=False)
    assert result.steps == 150
    assert model.weight.item() == pytest.approx(w_star, abs=1e-9)
    assert model.bias.item() == pytest.approx(b_star, abs=1e-9)
    assert problem.multiplier_values()["slope"].item() == pytest.approx(lam_star, abs=1e-9)
    assert result.history.column("slope/multiplier_max")[-1] == pytest.approx(lam_star, abs=1e-9)


def test_augmented_lagrangian_reaches_the_kkt_point() -> None:
    x, y = line_data()
    w_star, b_star, lam_star = kkt_point(x, y)
    model = linear_model()
    problem = slope_problem(model, formulation=cg.AugmentedLagrangian(penalty=0.2))
    assert problem.dual_lr_of("slope", 123.0) == 0.2  # method of multipliers: eta = rho
    opt = torch.optim.SGD(model.parameters(), lr=0.8)
    cg.fit(problem, [(x, y)], opt, dual_lr=123.0, epochs=150, progress=False)
    assert model.weight.item() == pytest.approx(w_star, abs=1e-9)
    assert model.bias.item() == pytest.approx(b_star, abs=1e-9)
    assert problem.multiplier_values()["slope"].item() == pytest.approx(lam_star, abs=1e-9)


def test_quadratic_penalty_reaches_its_analytic_minimiser() -> None:
    x, y = line_data()
    c = 10.0
    w_pen, b_pen = line_optimum(x, y, curvature=c).tolist()
    assert w_pen > 1.0  # a penalty leaves the bound violated: the point of the comparison
    model = linear_model()
    problem = slope_problem(model, formulation=cg.QuadraticPenalty(c))
    assert problem.multiplier_values() == {}
    result = cg.fit(
        problem, [(x, y)], torch.optim.SGD(model.parameters(), lr=0.15), epochs=150, progress=False
    )
    assert model.weight.item() == pytest.approx(w_pen, abs=1e-9)
    assert model.bias.item() == pytest.approx(b_pen, abs=1e-9)
    assert result.dual_optimizer is None
    assert all(v != v for v in result.history.column("slope/multiplier_max"))  # NaN: none


def test_fixed_penalty_multiplier_never_changes() -> None:
    x, y = line_data()
    weight = 0.3
    w_fix, b_fix = line_optimum(x, y, linear=weight).tolist()
    model = linear_model()
    problem = slope_problem(model, formulation=cg.FixedPenalty(weight))
    result = cg.fit(
        problem,
        [(x, y)],
        torch.optim.SGD(model.parameters(), lr=0.75),
        dual_lr=1.0,
        epochs=100,
        progress=False,
    )
    assert model.weight.item() == pytest.approx(w_fix, abs=1e-9)
    assert model.bias.item() == pytest.approx(b_fix, abs=1e-9)
    assert result.dual_optimizer is None
    assert problem.multiplier_values()["slope"].tolist() == [weight]
    h = result.history
    # slack at the start (w ~ 0), violated at the end (w ~ 1.47): constant in both regimes
    assert h.column("slope/violation_max")[0] < 0 < h.column("slope/violation_max")[-1]
    for field in ("multiplier_max", "multiplier_min", "multiplier_mean"):
        assert set(h.column(f"slope/{field}")) == {weight}


@pytest.mark.parametrize("update", ["simultaneous", "alternating"])
def test_one_step_matches_a_manual_primal_dual_update(update: str) -> None:
    r"""From :math:`(w_0, b_0, \lambda_0)` with SGD steps :math:`\eta_p, \eta_d`:
    :math:`w_1 = w_0 - \eta_p(\partial_w\mathrm{mse} + \lambda_0)`,
    :math:`b_1 = b_0 - \eta_p\,\partial_b\mathrm{mse}`, and
    :math:`\lambda_1 = [\lambda_0 + \eta_d (w - 1)]_+` with :math:`w = w_0` (simultaneous) or
    :math:`w = w_1` (alternating: violation at the new weights)."""
    x, y = line_data()
    w0, b0, lam0, eta_p, eta_d = 1.05, 0.5, 2.0, 0.5, 0.7
    model = linear_model()
    problem = slope_problem(model)
    _set_state(problem, w0, b0, lam0)
    trainer = cg.Trainer(
        problem, torch.optim.SGD(model.parameters(), lr=eta_p), dual_lr=eta_d, update=update
    )
    row = trainer.step((x, y))
    gw, gb = _mse_grads(x, y, w0, b0)
    w1, b1 = w0 - eta_p * (gw + lam0), b0 - eta_p * gb
    assert w1 < 1.0 < w0  # the step crosses the bound: the two updates disagree in sign
    w_dual = w0 if update == "simultaneous" else w1
    lam1 = max(0.0, lam0 + eta_d * (w_dual - 1.0))
    assert model.weight.item() == pytest.approx(w1, abs=1e-12)
    assert model.bias.item() == pytest.approx(b1, abs=1e-12)
    assert problem.multiplier_values()["slope"].item() == pytest.approx(lam1, abs=1e-12)
    # the logged row is the state the step started from
    assert row[0] == pytest.approx(float(((w0 * x + b0 - y) ** 2).mean()), abs=1e-12)
    assert trainer.history.column("slope/violation_max") == [pytest.approx(w0 - 1.0, abs=1e-12)]
    assert trainer.history.column("slope/multiplier_max") == [pytest.approx(lam0, abs=1e-12)]


def test_alternating_fit_also_reaches_the_kkt_point() -> None:
    x, y = line_data()
    w_star, b_star, lam_star = kkt_point(x, y)
    model = linear_model()
    problem = slope_problem(model)
    cg.fit(
        problem,
        [(x, y)],
        torch.optim.SGD(model.parameters(), lr=0.9),
        dual_lr=0.1,
        epochs=150,
        update="alternating",
        progress=False,
    )
    assert model.weight.item() == pytest.approx(w_star, abs=1e-9)
    assert model.bias.item() == pytest.approx(b_star, abs=1e-9)
    assert problem.multiplier_values()["slope"].item() == pytest.approx(lam_star, abs=1e-9)


# -- the problem inside Cooper's own optimizers -------------------------------------------------


def _cooper_optimizer(kind: type, problem: cg.DerivativeProblem, eta_p: float, eta_d: float):
    primal = torch.optim.SGD(problem.model.parameters(), lr=eta_p)
    dual = torch.optim.SGD(problem.dual_parameters(), lr=eta_d, maximize=True)
    return kind(problem, primal_optimizers=primal, dual_optimizers=dual)


def test_compute_cmp_state_works_under_no_grad() -> None:
    """Cooper's alternating optimizer re-evaluates under ``torch.no_grad``: derivative
    constraints still need autograd, so the violations must be the same."""
    x, y = line_data()
    problem = slope_problem(linear_model())
    _set_state(problem, 1.25, 0.0, None)
    with torch.no_grad():
        state = problem.compute_cmp_state((x, y))
    violation = next(iter(state.observed_constraints.values())).violation
    assert violation.item() == pytest.approx(0.25, abs=1e-12)
    state = problem.compute_cmp_state((x, y))
    violation = next(iter(state.observed_constraints.values())).violation
    assert violation.item() == pytest.approx(0.25, abs=1e-12) and violation.requires_grad


@pytest.mark.parametrize(
    "kind", [cooper.optim.SimultaneousOptimizer, cooper.optim.AlternatingPrimalDualOptimizer]
)
def test_cooper_optimizer_one_roll_matches_manual_update(kind: type) -> None:
    x, y = line_data()
    w0, b0, lam0, eta_p, eta_d = 1.05, 0.5, 2.0, 0.5, 0.7
    problem = slope_problem(linear_model())
    _set_state(problem, w0, b0, lam0)
    optimizer = _cooper_optimizer(kind, problem, eta_p, eta_d)
    optimizer.roll(compute_cmp_state_kwargs={"batch": (x, y)})
    gw, gb = _mse_grads(x, y, w0, b0)
    w1, b1 = w0 - eta_p * (gw + lam0), b0 - eta_p * gb
    w_dual = w0 if kind is cooper.optim.SimultaneousOptimizer else w1
    lam1 = max(0.0, lam0 + eta_d * (w_dual - 1.0))
    assert problem.model.weight.item() == pytest.approx(w1, abs=1e-12)
    assert problem.model.bias.item() == pytest.approx(b1, abs=1e-12)
    assert problem.multiplier_values()["slope"].item() == pytest.approx(lam1, abs=1e-12)


@pytest.mark.parametrize(
    "kind", [cooper.optim.SimultaneousOptimizer, cooper.optim.AlternatingPrimalDualOptimizer]
)
def test_cooper_optimizer_user_loop_reaches_the_kkt_point(kind: type) -> None:
    x, y = line_data()
    w_star, b_star, lam_star = kkt_point(x, y)
    problem = slope_problem(linear_model())
    optimizer = _cooper_optimizer(kind, problem, 0.9, 0.1)
    for _ in range(150):
        optimizer.roll(compute_cmp_state_kwargs={"batch": (x, y)})
    assert problem.model.weight.item() == pytest.approx(w_star, abs=1e-9)
    assert problem.model.bias.item() == pytest.approx(b_star, abs=1e-9)
    assert problem.multiplier_values()["slope"].item() == pytest.approx(lam_star, abs=1e-9)


def test_float64_model_gets_float64_multipliers_and_history() -> None:
    x, y = line_data()
    points = x[:8].clone()
    model = linear_model()
    problem = cg.DerivativeProblem(
        model,
        nn.functional.mse_loss,
        [
            cg.DerivativeBound(inputs=[0], upper=1.0, name="dense"),
            cg.Monotonic(inputs=[0], reduction="pointwise", where=cg.AtPoints(points), name="pw"),
            cg.DerivativeBound(
                inputs=[0], upper=1.5, name="al", formulation=cg.AugmentedLagrangian(2.0)
            ),
        ],
    )
    for name, values in problem.multiplier_values().items():
        assert values.dtype == torch.float64, name
    for _, multiplier in problem.named_multipliers():
        assert all(p.dtype == torch.float64 for p in multiplier.parameters())
    result = cg.fit(
        problem, [(x, y)], torch.optim.SGD(model.parameters(), lr=0.1), epochs=3, progress=False
    )
    assert problem.last_evals["dense"].violations.dtype == torch.float64
    assert problem.multiplier_values()["pw"].shape == (8,)
    assert len(result.history) == 3


@pytest.mark.parametrize("target", [0.5, 3.0])
def test_equality_constraint_multiplier_takes_either_sign(target: float) -> None:
    r"""``w = t`` as a Custom equality: :math:`b^* = \bar y - t\bar x` and
    :math:`\mu^* = -2\,\mathrm{mean}((tx + b^* - y)x)`, positive below the data's slope ~2
    and negative above it (an equality multiplier is not projected)."""
    x, y = line_data()
    b_star = float(y.mean() - target * x.mean())
    mu_star = float(-2 * ((target * x + b_star - y) * x).mean())
    assert (mu_star > 0.3) if target < 2 else (mu_star < -0.3)
    model = linear_model()
    slope = cg.Custom(
        lambda v: v.columns([0])[:, :, 0] - target,
        needs=cg.Needs(columns=frozenset({0})),
        kind="equality",
        name="slope",
    )
    problem = cg.DerivativeProblem(model, nn.functional.mse_loss, [slope])
    cg.fit(
        problem,
        [(x, y)],
        torch.optim.SGD(model.parameters(), lr=0.9),
        dual_lr=0.1,
        epochs=200,
        progress=False,
    )
    assert model.weight.item() == pytest.approx(target, abs=1e-9)
    assert model.bias.item() == pytest.approx(b_star, abs=1e-9)
    assert problem.multiplier_values()["slope"].item() == pytest.approx(mu_star, abs=1e-9)
