"""Per-sample Jacobians over a batch: every mode, with and without chunking."""

from __future__ import annotations

import pytest
import torch
from derivative_oracles import batch, full_jacobian, mlp, oracle_jacobian, parameter_map
from torch import nn
from torch.autograd import gradcheck, gradgradcheck

from constrained_grad.derivatives.jacobian import (
    batch_jacobian,
    choose_jacobian_mode,
    jacobian_with_path,
)

MODES = ["forward", "reverse", "autograd", "auto"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("chunk_size", [None, 1, 2])
@pytest.mark.parametrize(("d", "m"), [(2, 5), (5, 2), (3, 3)])
def test_jacobian_matches_oracle(mode: str, chunk_size: int | None, d: int, m: int) -> None:
    net, x = mlp(d, m, seed=d + m), batch(4, d)
    jac = batch_jacobian(net, x, mode=mode, chunk_size=chunk_size)
    assert jac.shape == (4, m, d)
    torch.testing.assert_close(jac, oracle_jacobian(net, x), rtol=1e-10, atol=1e-12)


def test_off_diagonal_blocks_are_zero_for_the_test_model() -> None:
    # guards the oracle: the per-sample blocks are the whole story for an MLP
    net, x = mlp(3, 2), batch(4, 3)
    full = full_jacobian(net, x)
    mask = ~torch.eye(4, dtype=torch.bool)
    assert torch.all(full.permute(0, 2, 1, 3)[mask] == 0)


class Conv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.conv = nn.Conv1d(2, 3, kernel_size=2).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 2, 4) -> (B, 3, 3)
        return torch.tanh(self.conv(x))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("chunk_size", [None, 4])
def test_structured_shapes(mode: str, chunk_size: int | None) -> None:
    net, x = Conv(), batch(3, 2, 4)
    jac = batch_jacobian(net, x, mode=mode, chunk_size=chunk_size)
    assert jac.shape == (3, 3, 3, 2, 4)
    torch.testing.assert_close(jac.reshape(3, 9, 8), oracle_jacobian(net, x))


def test_auto_mode_choice_and_paths() -> None:
    assert choose_jacobian_mode(2, 5) == "forward"
    assert choose_jacobian_mode(5, 2) == "reverse"
    assert choose_jacobian_mode(3, 3) == "reverse"
    assert jacobian_with_path(mlp(2, 5), batch(3, 2))[1] == "forward"
    assert jacobian_with_path(mlp(5, 2), batch(3, 5))[1] == "reverse"
    assert jacobian_with_path(mlp(5, 2), batch(3, 5), mode="autograd")[1] == "autograd_reverse_vmap"
    assert jacobian_with_path(mlp(5, 1), batch(3, 5), mode="autograd")[1] == "autograd_reverse"


@pytest.mark.parametrize("mode", MODES)
def test_create_graph_semantics(mode: str) -> None:
    net, x = mlp(3, 2), batch(4, 3)
    jac = batch_jacobian(net, x, mode=mode, create_graph=True)
    assert jac.requires_grad
    (g,) = torch.autograd.grad(jac.pow(2).sum(), [net[0].weight])
    assert bool(g.abs().sum() > 0)
    jac = batch_jacobian(net, x, mode=mode, create_graph=False)
    assert not jac.requires_grad and jac.grad_fn is None


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("chunk_size", [None, 1])
def test_gradcheck_parameters_to_jacobian(mode: str, chunk_size: int | None) -> None:
    net, x = mlp(2, 2, hidden=3, seed=21), batch(2, 2, seed=22)
    fn, params = parameter_map(
        net, lambda f: batch_jacobian(f, x, mode=mode, chunk_size=chunk_size)
    )
    assert gradcheck(fn, params)


@pytest.mark.parametrize("mode", ["forward", "reverse", "autograd"])
def test_gradgradcheck_parameters_to_jacobian(mode: str) -> None:
    net, x = mlp(2, 2, hidden=3, seed=23), batch(2, 2, seed=24)
    fn, params = parameter_map(net, lambda f: batch_jacobian(f, x, mode=mode))
    assert gradgradcheck(fn, params)
