"""Jacobian rows ∇_x f_i and input gradients against float64 oracles and gradcheck."""

from __future__ import annotations

import pytest
import torch
from derivative_oracles import batch, mlp, oracle_jacobian, parameter_map
from torch.autograd import gradcheck, gradgradcheck

from constrained_grad.derivatives._common import forward
from constrained_grad.derivatives.rows import input_gradient, jacobian_rows, rows_with_path
from constrained_grad.errors import InputValidationError


@pytest.mark.parametrize(
    ("outputs", "expected_idx"), [(None, [0, 1, 2]), (1, [1]), ([2, 0], [2, 0]), ([-1], [2])]
)
def test_rows_match_oracle(outputs: list[int] | int | None, expected_idx: list[int]) -> None:
    net, x = mlp(4, 3), batch(5, 4)
    rows = jacobian_rows(net, x, outputs)
    assert rows.shape == (5, len(expected_idx), 4)
    torch.testing.assert_close(
        rows, oracle_jacobian(net, x)[:, expected_idx, :], rtol=1e-10, atol=1e-12
    )


def test_rows_paths() -> None:
    net, x = mlp(3, 3), batch(4, 3)
    fwd = forward(net, x, "test")
    assert rows_with_path(fwd, [0], create_graph=False)[1] == "reverse"
    assert rows_with_path(fwd, None, create_graph=False)[1] == "reverse_vmap"


def test_input_gradient_of_scalar_model() -> None:
    net, x = mlp(3, 1), batch(6, 3)
    g = input_gradient(net, x)
    assert g.shape == x.shape
    torch.testing.assert_close(g, oracle_jacobian(net, x)[:, 0, :])


def test_input_gradient_keeps_input_shape() -> None:
    torch.manual_seed(0)
    lin = torch.nn.Linear(6, 1).double()
    x = batch(3, 2, 3)
    g = input_gradient(lambda z: torch.tanh(lin(z.flatten(1))), x)
    assert g.shape == (3, 2, 3)
    expected = (1 - torch.tanh(lin(x.flatten(1))) ** 2) * lin.weight  # (B, 6) analytic
    torch.testing.assert_close(g.flatten(1), expected)


def test_input_gradient_refuses_vector_outputs() -> None:
    with pytest.raises(InputValidationError, match=r"3 outputs per sample.*jacobian_rows"):
        input_gradient(mlp(2, 3), batch(2, 2))


def test_create_graph_semantics() -> None:
    net, x = mlp(3, 2), batch(4, 3)
    rows = jacobian_rows(net, x, create_graph=True)
    assert rows.requires_grad
    (g,) = torch.autograd.grad(rows.sum(), [net[0].weight])
    assert bool(g.abs().sum() > 0)
    rows = jacobian_rows(net, x, create_graph=False)
    assert not rows.requires_grad and rows.grad_fn is None
    g = input_gradient(mlp(3, 1), x, create_graph=False)
    assert not g.requires_grad


def test_gradcheck_parameters_to_rows() -> None:
    net, x = mlp(2, 2, hidden=3, seed=3), batch(2, 2, seed=4)
    fn, params = parameter_map(net, lambda f: jacobian_rows(f, x))
    assert gradcheck(fn, params)
    assert gradgradcheck(fn, params)


def test_gradcheck_parameters_to_input_gradient() -> None:
    net, x = mlp(2, 1, hidden=3, seed=5), batch(3, 2, seed=6)
    fn, params = parameter_map(net, lambda f: input_gradient(f, x))
    assert gradcheck(fn, params)
