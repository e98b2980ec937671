"""Signed violations of every constraint kind against float64 autograd oracles.

Convention under test (signs.py): ``g <= 0`` holds, ``g > 0`` is a violation of that size,
the tolerance is subtracted; components are ordered outputs-major (``for i in outputs for
j in inputs``) and DerivativeBound lists its lower bounds before its upper bounds.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.autograd.functional import jacobian

import constrained_grad as cg
from constrained_grad.constraints import reduce_violations
from constrained_grad.errors import ConstraintSpecError, InputValidationError

D, M, B = 4, 3, 6


def _model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, M)).double()


def _points() -> torch.Tensor:
    return torch.randn(B, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)


def _oracle_jacobian(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, M, D) by float64 torch.autograd.functional.jacobian, one sample at a time."""
    return torch.stack([jacobian(lambda v: model(v[None])[0], xb) for xb in x])


def _violations(constraint: cg.DerivativeConstraint, x: torch.Tensor, batch=None) -> torch.Tensor:
    model = _model()
    problem = cg.DerivativeProblem(model, nn.functional.mse_loss, [constraint])
    name = next(iter(problem.specs))
    return problem.violations(name, x, batch)


def test_monotonic_increasing_with_margin_and_component_order() -> None:
    x = _points()
    jac = _oracle_jacobian(_model(), x)
    c = cg.Monotonic(inputs=[3, 1], outputs=[2, 0], margin=0.1)
    g = _violations(c, x)
    expected = 0.1 - jac[:, [2, 0]][:, :, [3, 1]].reshape(B, -1)
    torch.testing.assert_close(g, expected, rtol=1e-10, atol=1e-12)
    assert c.component_names == [
        "Monotonic[out 2, in 3]",
        "Monotonic[out 2, in 1]",
        "Monotonic[out 0, in 3]",
        "Monotonic[out 0, in 1]",
    ]


def test_monotonic_decreasing_all_outputs_and_tolerance() -> None:
    x = _points()
    jac = _oracle_jacobian(_model(), x)
    g = _violations(cg.Monotonic(inputs=1, direction="decreasing", margin=0.2, tolerance=0.05), x)
    expected = jac[:, :, 1] + 0.2 - 0.05  # d <= -margin  <=>  d + margin <= 0
    torch.testing.assert_close(g, expected, rtol=1e-10, atol=1e-12)


def test_derivative_bound_lower_then_upper_with_tensor_and_function_bounds() -> None:
    x = _points()
    jac = _oracle_jacobian(_model(), x)
    upper = torch.tensor([[0.3], [0.1], [-0.2]], dtype=torch.float64)  # per output

    def lower(points: torch.Tensor) -> torch.Tensor:  # per point
        return -points[:, :1, None].abs()

    c = cg.DerivativeBound(inputs=[2], lower=lower, upper=upper)
    g = _violations(c, x)
    d = jac[:, :, 2]
    expected = torch.cat([lower(x)[:, :, 0] - d, d - upper[:, 0]], dim=1)
    assert g.shape == (B, 2 * M)
    torch.testing.assert_close(g, expected, rtol=1e-10, atol=1e-12)


def test_derivative_bound_with_unbroadcastable_bound_says_the_shapes() -> None:
    c = cg.DerivativeBound(inputs=[2], upper=torch.zeros(5))
    msg = r"upper bound of shape \(5,\) does not broadcast to the derivative block \(6, 3, 1\)"
    with pytest.raises(InputValidationError, match=msg):
        _violations(c, _points())


def test_lipschitz_is_squared_gradient_norm_minus_bound() -> None:
    x = _points()
    jac = _oracle_jacobian(_model(), x)
    g = _violations(cg.Lipschitz(0.5, outputs=[1, 2]), x)
    torch.testing.assert_close(g, jac[:, [1, 2]].pow(2).sum(-1) - 0.25, rtol=1e-10, atol=1e-12)


def test_jacobian_norm_bound_exact() -> None:
    x = _points()
    jac = _oracle_jacobian(_model(), x)
    g = _violations(cg.JacobianNormBound(0.7), x)
    expected = jac.pow(2).sum(dim=(1, 2)) - 0.49
    torch.testing.assert_close(g, expected[:, None], rtol=1e-10, atol=1e-12)


def test_jacobian_norm_bound_projected_estimate_is_unbiased() -> None:
    """Mean of the ``vjp_sphere`` estimate over many projections -> exact ||J||_F^2."""
    x = _points()
    jac = _oracle_jacobian(_model(), x)
    g = _violations(cg.JacobianNormBound(0.0, estimator="vjp_sphere", samples=4000), x)
    exact = jac.pow(2).sum(dim=(1, 2))
    torch.testing.assert_close(g[:, 0], exact, rtol=0.1, atol=0.0)


def test_gradient_match_exact_normalized_from_batch_field() -> None:
    x = _points()
    jac = _oracle_jacobian(_model(), x)
    s = torch.randn(B, M, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    c = cg.GradientMatch("targets", normalize=True, tolerance=0.01)
    g = _violations(c, x, batch=(x, s))
    mse = (jac - s).pow(2).mean(dim=(1, 2))
    torch.testing.assert_close(g[:, 0], mse / s.pow(2).mean() - 0.01, rtol=1e-10, atol=1e-12)


def test_gradient_match_normaliser_follows_targets_edited_in_place_or_replaced() -> None:
    """The normaliser mean(S**2) is cached per targets tensor: it must follow an in-place
    edit of the same tensor, a new tensor, and a view of other strides of the same memory."""
    x = _points()
    model = _model()
    jac = _oracle_jacobian(model, x)
    s = torch.randn(B, M, D, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    problem = cg.DerivativeProblem(model, None, [cg.GradientMatch("targets", normalize=True)])

    def check(targets: torch.Tensor) -> None:
        problem.compute_cmp_state((x, targets))
        got = problem.last_evals["gradientmatch_0"].violations[:, 0]
        mse = (jac - targets).pow(2).mean(dim=(1, 2))
        torch.testing.assert_close(got, mse / targets.pow(2).mean(), rtol=1e-12, atol=0.0)

    check(s)
    check(s)  # the cached normaliser
    s.mul_(3.0)  # same tensor, same memory, new values
    check(s)
    check(s.clone() + 1.0)  # another tensor
    # the same first address, shape and version, other strides: other entries
    wide = torch.randn(B, M, 2 * D, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    check(wide[:, :, :D])
    check(wide.reshape(-1)[: B * M * D].reshape(B, M, D))


def test_gradient_match_tensor_at_points_equals_batch_field() -> None:
    """Targets aligned with AtPoints ids give the same violations as a batch field."""
    x = _points()
    s = torch.randn(B, D, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    model = _model()
    field = cg.GradientMatch("targets", outputs=[1], name="field")
    points = cg.GradientMatch(s, outputs=[1], where=cg.AtPoints(x), name="points")
    problem = cg.DerivativeProblem(model, None, [field, points])
    problem.compute_cmp_state((x, s))
    jac = _oracle_jacobian(model, x)
    expected = (jac[:, 1] - s).pow(2).mean(-1, keepdim=True)
    torch.testing.assert_close(
        problem.last_evals["field"].violations, expected, rtol=1e-10, atol=1e-12
    )
    torch.testing.assert_close(
        problem.last_evals["points"].violations, expected, rtol=1e-10, atol=1e-12
    )
    assert torch.equal(problem.last_evals["points"].index, torch.arange(B))


def test_gradient_match_wrong_target_shape_is_named() -> None:
    x = _points()
    with pytest.raises(
        InputValidationError,
        match=r"targets of shape \(6, 5\) do not match the "
        r"derivatives \(batch, outputs, inputs\) = "
        r"\(6, 1, 4\)",
    ):
        _violations(cg.GradientMatch("targets", outputs=[0]), x, batch=(x, torch.zeros(6, 5)))


class _Quadratic(nn.Module):
    """f(x) = [x0^2 + x1, -x1^2, x0 x1]: known curvatures along x0 and x1."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones((), dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0, x1 = x[:, 0], x[:, 1]
        return self.scale * torch.stack([x0**2 + x1, -(x1**2), x0 * x1], dim=1)


@pytest.mark.parametrize(("kind", "sign"), [(cg.Convex, 1.0), (cg.Concave, -1.0)])
def test_convex_and_concave_read_second_derivatives(kind: type, sign: float) -> None:
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    problem = cg.DerivativeProblem(_Quadratic(), None, [kind(inputs=[0, 1])], input_shape=(2,))
    g = problem.violations(next(iter(problem.specs)), x)
    # d2f/dx0^2 = [2, 0, 0], d2f/dx1^2 = [0, -2, 0]; components (out, in) outputs-major
    curv = torch.tensor([2.0, 0.0, 0.0, -2.0, 0.0, 0.0], dtype=torch.float64).expand(5, 6)
    torch.testing.assert_close(g, -sign * curv, rtol=0, atol=1e-12)


def test_custom_equality_with_tolerance_becomes_abs_inequality() -> None:
    x = _points()
    jac = _oracle_jacobian(_model(), x)

    def fn(values) -> torch.Tensor:
        return values.columns([0])[:, :, 0] - 0.5  # (B, M)

    c = cg.Custom(
        fn, needs=cg.Needs(columns=frozenset({0})), n_components=M, kind="equality", tolerance=0.1
    )
    assert c.reduction == "mean"
    g = _violations(c, x)
    torch.testing.assert_close(g, (jac[:, :, 0] - 0.5).abs() - 0.1, rtol=1e-10, atol=1e-12)
    assert c.effective_kind == "inequality"
    exact = cg.Custom(fn, needs=cg.Needs(columns=frozenset({0})), n_components=M, kind="equality")
    assert exact.effective_kind == "equality"


def test_custom_wrong_output_shape_is_named() -> None:
    c = cg.Custom(lambda v: v.outputs, needs=cg.Needs(), n_components=2, name="mine")
    with pytest.raises(
        InputValidationError,
        match=r"mine: fn must return a \(6, 2\) tensor "
        r"\(got \(6, 3\)\)",
    ):
        _violations(c, _points())


def test_reductions_on_a_known_matrix() -> None:
    g = torch.tensor([[-1.0, 2.0], [3.0, -4.0], [-0.5, 0.5]], requires_grad=True)
    primal, dual = reduce_violations(g, "mean_hinge")
    torch.testing.assert_close(primal, torch.tensor([1.0, 2.5 / 3]))
    torch.testing.assert_close(dual, torch.tensor([3.0, 2.0]))
    assert primal.requires_grad and not dual.requires_grad
    for name, want in [
        ("max", [3.0, 2.0]),
        ("mean", [1.5 / 3, -1.5 / 3]),
        ("l2_hinge", [3.0 / 3**0.5, (4.25 / 3) ** 0.5]),
    ]:
        primal, dual = reduce_violations(g, name)
        torch.testing.assert_close(primal, torch.tensor(want))
        torch.testing.assert_close(dual, torch.tensor(want))
    # the mean hinge's primal gradient comes only from violating points
    primal, _ = reduce_violations(g, "mean_hinge")
    primal.sum().backward()
    torch.testing.assert_close(g.grad, torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]) / 3)
    with pytest.raises(ConstraintSpecError, match=r"reduction 'pointwise' is not an aggregate"):
        reduce_violations(g, "pointwise")
