"""Diagonal second derivatives ∂²f_i/∂x_j²: both methods against Hessians and gradcheck."""

from __future__ import annotations

import pytest
import torch
from derivative_oracles import batch, mlp, oracle_hessian_diagonal, parameter_map
from torch import nn
from torch.autograd import gradcheck, gradgradcheck

from constrained_grad.derivatives.second import second_derivatives, second_with_path
from constrained_grad.errors import EngineError

METHODS = ["forward", "autograd", "auto"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("inputs", [[0], [2, 0], 1, [-1]])
def test_second_derivatives_match_hessian_diagonal(method: str, inputs: list[int] | int) -> None:
    net, x = mlp(3, 2), batch(4, 3)
    sec = second_derivatives(net, x, inputs, method=method)
    idx = [inputs] if isinstance(inputs, int) else [j % 3 for j in inputs]
    assert sec.shape == (4, 2, len(idx))
    torch.testing.assert_close(
        sec, oracle_hessian_diagonal(net, x)[:, :, idx], rtol=1e-9, atol=1e-12
    )


@pytest.mark.parametrize("method", METHODS)
def test_analytic_cubic(method: str) -> None:
    # f(x) = (x_0^3 + x_0 x_1^2, x_1^3): ∂²/∂x_0² = (6 x_0, 0), ∂²/∂x_1² = (2 x_0, 6 x_1)
    def f(z: torch.Tensor) -> torch.Tensor:
        return torch.stack([z[:, 0] ** 3 + z[:, 0] * z[:, 1] ** 2, z[:, 1] ** 3], dim=1)

    x = batch(5, 2)
    sec = second_derivatives(f, x, [0, 1], method=method)
    expected = torch.stack(
        [
            torch.stack([6 * x[:, 0], torch.zeros(5, dtype=x.dtype)], 1),
            torch.stack([2 * x[:, 0], 6 * x[:, 1]], 1),
        ],
        dim=-1,
    )
    torch.testing.assert_close(sec, expected)


def test_paths() -> None:
    net, x = mlp(3, 2), batch(4, 3)
    assert second_with_path(net, x, [0, 1])[1] == "forward_over_forward"
    assert second_with_path(net, x, [0, 1], method="autograd")[1] == "autograd_double_backward"


class ImageHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.lin = nn.Linear(4, 3).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 2, 2) -> (B, 3)
        return torch.sin(self.lin(x.flatten(1)))


@pytest.mark.parametrize("method", METHODS)
def test_multidimensional_inputs(method: str) -> None:
    net, x = ImageHead(), batch(3, 2, 2)
    sec = second_derivatives(net, x, [1, 3], method=method)
    expected = oracle_hessian_diagonal(net, x)[:, :, [1, 3]]
    torch.testing.assert_close(sec, expected)


def test_piecewise_linear_model_has_zero_curvature() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)).double()
    for method in METHODS:
        sec = second_derivatives(net, batch(4, 3), [0, 2], method=method)
        assert torch.equal(sec, torch.zeros_like(sec))


@pytest.mark.parametrize("method", METHODS)
def test_create_graph_semantics(method: str) -> None:
    net, x = mlp(3, 2), batch(4, 3)
    sec = second_derivatives(net, x, [0, 1], method=method)
    assert sec.requires_grad
    (g,) = torch.autograd.grad(sec.pow(2).sum(), [net[0].weight])
    assert bool(g.abs().sum() > 0)
    sec = second_derivatives(net, x, [0, 1], method=method, create_graph=False)
    assert not sec.requires_grad and sec.grad_fn is None


@pytest.mark.parametrize("method", METHODS)
def test_gradcheck_parameters_to_second_derivatives(method: str) -> None:
    net, x = mlp(2, 2, hidden=3, seed=41), batch(2, 2, seed=42)
    fn, params = parameter_map(net, lambda f: second_derivatives(f, x, [0, 1], method=method))
    assert gradcheck(fn, params)


@pytest.mark.parametrize("method", ["forward", "autograd"])
def test_gradgradcheck_parameters_to_second_derivatives(method: str) -> None:
    net, x = mlp(2, 1, hidden=3, seed=43), batch(2, 2, seed=44)
    fn, params = parameter_map(net, lambda f: second_derivatives(f, x, [1], method=method))
    assert gradgradcheck(fn, params)


class RBF(nn.Module):
    """Distances by torch.cdist: no forward AD and no double backward in torch 2.13."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.centres = nn.Parameter(torch.randn(4, 3, dtype=torch.float64))
        self.out = nn.Linear(4, 2).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.exp(-(torch.cdist(x, self.centres) ** 2)))


def test_model_that_cannot_be_differentiated_twice_raises_engine_error() -> None:
    with (
        pytest.warns(Warning, match="forward-over-forward AD is not available"),
        pytest.raises(EngineError, match=r"differentiate this model twice.*cdist"),
    ):
        second_derivatives(RBF(), batch(3, 3), [0])
