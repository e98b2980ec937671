"""Squared Frobenius norms of per-sample Jacobians: exact values, estimator statistics, grads."""

from __future__ import annotations

import math

import pytest
import torch
from derivative_oracles import batch, mlp, oracle_jacobian, parameter_map
from torch.autograd import gradcheck, gradgradcheck

from constrained_grad.derivatives._common import forward
from constrained_grad.derivatives.norms import (
    fro_sq_with_path,
    input_gradient_norm,
    jacobian_fro_norm_sq,
    sphere_vectors,
)

ESTIMATORS = ["exact", "vjp_sphere", "jvp_gaussian"]


def test_exact_matches_oracle() -> None:
    net, x = mlp(3, 4), batch(5, 3)
    fro = jacobian_fro_norm_sq(net, x)
    assert fro.shape == (5,)
    torch.testing.assert_close(fro, oracle_jacobian(net, x).pow(2).sum(dim=(1, 2)))


@pytest.mark.parametrize("m", [1, 2, 12])
def test_exact_with_kept_forward_pass_both_branches(m: int) -> None:
    # m <= 4: rows from the kept forward pass; m = 12 > d: full Jacobian by jacfwd
    net, x = mlp(3, m), batch(4, 3)
    fwd = forward(net, x, "test")
    fro, path = fro_sq_with_path(
        net, x, estimator="exact", samples=1, generator=None, create_graph=True, fwd=fwd
    )
    assert path == ("reverse" if m == 1 else "reverse_vmap" if m <= 4 else "forward")
    torch.testing.assert_close(fro, oracle_jacobian(net, x).pow(2).sum(dim=(1, 2)))


def test_input_gradient_norm_matches_oracle() -> None:
    net, x = mlp(3, 2), batch(5, 3)
    norms = input_gradient_norm(net, x)
    assert norms.shape == (5, 2)
    torch.testing.assert_close(norms, oracle_jacobian(net, x).norm(dim=-1))


def test_input_gradient_norm_is_differentiable_at_zero_gradient() -> None:
    x = batch(3, 2).requires_grad_(False)
    w = torch.zeros(2, 1, dtype=torch.float64, requires_grad=True)
    norms = input_gradient_norm(lambda z: z @ w, x)
    torch.testing.assert_close(norms, torch.zeros(3, 1, dtype=torch.float64), atol=1e-100, rtol=0)
    (g,) = torch.autograd.grad(norms.sum(), w)
    assert torch.isfinite(g).all()


def test_sphere_vectors_have_radius_sqrt_m() -> None:
    v = sphere_vectors(
        3, 5, 7, torch.empty(0, dtype=torch.float64), torch.Generator().manual_seed(0)
    )
    assert v.shape == (3, 5, 7)
    torch.testing.assert_close(
        v.norm(dim=-1), torch.full((3, 5), math.sqrt(7), dtype=torch.float64)
    )


def _repeated_estimates(
    estimator: str, samples: int, n: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` independent estimates at one point (the point tiled ``n`` times), and ``J``."""
    net = mlp(3, 4, seed=3)
    x0 = batch(1, 3, seed=9)
    est = jacobian_fro_norm_sq(
        net,
        x0.expand(n, -1),
        estimator=estimator,
        samples=samples,
        generator=torch.Generator().manual_seed(seed),
        create_graph=False,
    )
    return est, oracle_jacobian(net, x0)[0]


def _analytic_variance(estimator: str, jac: torch.Tensor) -> float:
    a = jac @ jac.T  # (m, m); tr(a) = ||J||_F^2
    tr, tr2 = float(a.trace()), float((a @ a).trace())
    if estimator == "jvp_gaussian":  # t^T (J^T J) t, t ~ N(0, I): variance 2 tr(A^2)
        return 2 * tr2
    m = a.shape[0]  # v^T A v, v uniform on the sphere of radius sqrt(m)
    return 2 / (m + 2) * (m * tr2 - tr**2)


@pytest.mark.parametrize("estimator", ["vjp_sphere", "jvp_gaussian"])
def test_estimators_are_unbiased_with_the_predicted_variance(estimator: str) -> None:
    n = 20_000
    est, jac = _repeated_estimates(estimator, 1, n, seed=1)
    exact = float(jac.pow(2).sum())
    var = _analytic_variance(estimator, jac)
    assert var > 1e-3 * exact**2  # the test is not vacuous
    assert abs(float(est.mean()) - exact) < 4 * math.sqrt(var / n)
    assert float(est.var()) == pytest.approx(var, rel=0.15)


@pytest.mark.parametrize("estimator", ["vjp_sphere", "jvp_gaussian"])
def test_more_samples_divide_the_variance(estimator: str) -> None:
    n, k = 10_000, 8
    one, jac = _repeated_estimates(estimator, 1, n, seed=2)
    many, _ = _repeated_estimates(estimator, k, n, seed=3)
    exact = float(jac.pow(2).sum())
    var = _analytic_variance(estimator, jac)
    assert abs(float(many.mean()) - exact) < 4 * math.sqrt(var / (k * n))
    assert float(one.var() / many.var()) == pytest.approx(k, rel=0.2)
    assert float(many.var()) == pytest.approx(var / k, rel=0.2)


def test_sphere_estimator_is_exact_for_one_output() -> None:
    net, x = mlp(3, 1), batch(6, 3)
    est = jacobian_fro_norm_sq(
        net, x, estimator="vjp_sphere", generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(est, oracle_jacobian(net, x).pow(2).sum(dim=(1, 2)))


@pytest.mark.parametrize("estimator", ["vjp_sphere", "jvp_gaussian"])
def test_generator_makes_estimates_reproducible(estimator: str) -> None:
    net, x = mlp(3, 4), batch(5, 3)

    def run(seed: int) -> torch.Tensor:
        return jacobian_fro_norm_sq(
            net, x, estimator=estimator, samples=2, generator=torch.Generator().manual_seed(seed)
        )

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


@pytest.mark.parametrize(
    ("estimator", "path"),
    [
        ("exact", "reverse"),
        ("vjp_sphere", "vjp_sphere_reverse_vmap"),
        ("jvp_gaussian", "jvp_gaussian"),
    ],
)
def test_paths(estimator: str, path: str) -> None:
    _, ran = fro_sq_with_path(
        mlp(3, 2), batch(4, 3), estimator=estimator, samples=2, generator=None, create_graph=True
    )
    assert ran == path


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_create_graph_semantics(estimator: str) -> None:
    net, x = mlp(3, 2), batch(4, 3)
    fro = jacobian_fro_norm_sq(net, x, estimator=estimator)
    assert fro.requires_grad
    (g,) = torch.autograd.grad(fro.sum(), [net[0].weight])
    assert bool(g.abs().sum() > 0)
    fro = jacobian_fro_norm_sq(net, x, estimator=estimator, create_graph=False)
    assert not fro.requires_grad and fro.grad_fn is None


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_gradcheck_parameters_to_fro_norm(estimator: str) -> None:
    net, x = mlp(2, 2, hidden=3, seed=31), batch(2, 2, seed=32)

    def quantity(f):  # type: ignore[no-untyped-def]
        # a fresh generator each call: the projections are fixed, the map is deterministic
        return jacobian_fro_norm_sq(
            f, x, estimator=estimator, samples=2, generator=torch.Generator().manual_seed(0)
        )

    fn, params = parameter_map(net, quantity)
    assert gradcheck(fn, params)


def test_gradgradcheck_parameters_to_exact_fro_norm() -> None:
    net, x = mlp(2, 2, hidden=3, seed=33), batch(2, 2, seed=34)
    fn, params = parameter_map(net, lambda f: jacobian_fro_norm_sq(f, x))
    assert gradgradcheck(fn, params)


def test_gradcheck_parameters_to_input_gradient_norm() -> None:
    net, x = mlp(2, 2, hidden=3, seed=35), batch(2, 2, seed=36)
    fn, params = parameter_map(net, lambda f: input_gradient_norm(f, x))
    assert gradcheck(fn, params)
