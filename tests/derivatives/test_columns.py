"""Jacobian columns ∂f/∂x_j: every method against float64 oracles and gradcheck in the weights."""

from __future__ import annotations

import pytest
import torch
from derivative_oracles import (
    batch,
    finite_difference_columns,
    mlp,
    oracle_jacobian,
    parameter_map,
)
from torch import nn
from torch.autograd import gradcheck, gradgradcheck

from constrained_grad.derivatives.columns import (
    choose_column_method,
    columns_with_path,
    jacobian_columns,
)

METHODS = ["double_backward", "forward", "reverse", "auto"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("inputs", [[1], [0, 3], [3, 0, 2], [-1]])
def test_columns_match_autograd_functional_jacobian(method: str, inputs: list[int]) -> None:
    net, x = mlp(4, 3), batch(5, 4)
    cols = jacobian_columns(net, x, inputs, method=method)
    expected = oracle_jacobian(net, x)[:, :, [j % 4 for j in inputs]]
    assert cols.shape == (5, 3, len(inputs))
    torch.testing.assert_close(cols, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_columns_match_finite_differences(method: str) -> None:
    net, x = mlp(3, 2, seed=4), batch(6, 3, seed=5)
    cols = jacobian_columns(net, x, [0, 2], method=method, create_graph=False)
    torch.testing.assert_close(
        cols, finite_difference_columns(net, x, [0, 2]), rtol=1e-6, atol=1e-8
    )


@pytest.mark.parametrize("method", METHODS)
def test_int_index_is_one_column(method: str) -> None:
    net, x = mlp(3, 2), batch(4, 3)
    one = jacobian_columns(net, x, 2, method=method)
    assert one.shape == (4, 2, 1)
    torch.testing.assert_close(one[:, :, 0], oracle_jacobian(net, x)[:, :, 2])


class ImageHead(nn.Module):
    """(B, 2, 3) inputs to (B, 2, 2) outputs: flat indexing in, flat indexing out."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.lin = nn.Linear(6, 4).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.lin(x.flatten(1))).reshape(-1, 2, 2)


@pytest.mark.parametrize("method", METHODS)
def test_multidimensional_inputs_and_outputs_use_flat_indices(method: str) -> None:
    net, x = ImageHead(), batch(3, 2, 3)
    cols = jacobian_columns(net, x, [1, 5], method=method)
    assert cols.shape == (3, 4, 2)
    torch.testing.assert_close(cols, oracle_jacobian(net, x)[:, :, [1, 5]])


def test_auto_rule_and_reported_paths() -> None:
    assert choose_column_method(1, 1) == "reverse"
    assert choose_column_method(2, 3) == "reverse"
    assert choose_column_method(4, 3) == "double_backward"
    x = batch(4, 3)
    _, path = columns_with_path(mlp(3, 1), x, [0, 1], method="auto")
    assert path == "reverse"  # one output: a single VJP
    _, path = columns_with_path(mlp(3, 5), x, [0, 1], method="auto")
    assert path == "double_backward_vmap"
    _, path = columns_with_path(mlp(3, 5), x, [0], method="double_backward")
    assert path == "double_backward"
    _, path = columns_with_path(mlp(3, 5), x, [0, 1], method="forward")
    assert path == "forward"
    _, path = columns_with_path(mlp(3, 5), x, [0, 1], method="reverse")
    assert path == "reverse_vmap"


@pytest.mark.parametrize("method", METHODS)
def test_create_graph_true_flows_gradients_to_parameters(method: str) -> None:
    net, x = mlp(3, 2), batch(4, 3)
    cols = jacobian_columns(net, x, [0, 2], method=method, create_graph=True)
    assert cols.requires_grad
    params = list(net.parameters())
    # the output bias has no effect on any derivative: its gradient is zero, not missing
    grads = torch.autograd.grad(cols.pow(2).sum(), params, materialize_grads=True)

    # oracle: the same penalty built on torch.autograd.functional.jacobian(create_graph=True)
    def penalty() -> torch.Tensor:
        jac = torch.autograd.functional.jacobian(net, x, create_graph=True)
        blocks = jac.diagonal(dim1=0, dim2=2).permute(2, 0, 1)
        return blocks[:, :, [0, 2]].pow(2).sum()

    expected = torch.autograd.grad(penalty(), params, materialize_grads=True)
    for g, e in zip(grads, expected, strict=True):
        torch.testing.assert_close(g, e)
    assert all(bool(g.abs().sum() > 0) for g in grads[:-1])


@pytest.mark.parametrize("method", METHODS)
def test_create_graph_false_has_no_graph(method: str) -> None:
    net, x = mlp(3, 2), batch(4, 3)
    cols = jacobian_columns(net, x, [0, 1], method=method, create_graph=False)
    assert not cols.requires_grad and cols.grad_fn is None
    torch.testing.assert_close(cols, oracle_jacobian(net, x)[:, :, :2])


def test_input_tensor_is_not_modified_and_needs_no_grad() -> None:
    net, x = mlp(3, 2), batch(4, 3)
    before = x.clone()
    jacobian_columns(net, x, [0], method="double_backward")
    assert torch.equal(x, before) and not x.requires_grad and x.grad is None


@pytest.mark.parametrize("method", METHODS)
def test_gradcheck_parameters_to_columns(method: str) -> None:
    net, x = mlp(2, 2, hidden=3, seed=11), batch(2, 2, seed=12)
    fn, params = parameter_map(net, lambda f: jacobian_columns(f, x, [0, 1], method=method))
    assert gradcheck(fn, params)


@pytest.mark.parametrize("method", ["double_backward", "forward", "reverse"])
def test_gradgradcheck_parameters_to_columns(method: str) -> None:
    net, x = mlp(2, 2, hidden=3, seed=13), batch(2, 2, seed=14)
    fn, params = parameter_map(net, lambda f: jacobian_columns(f, x, [1], method=method))
    assert gradgradcheck(fn, params)
