"""Graph mistakes turn into GraphCutError naming the cause, never into silent zeros."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from derivative_oracles import DTYPE, batch, mlp, oracle_jacobian
from torch import nn

from constrained_grad.derivatives import diagnostics
from constrained_grad.derivatives.columns import jacobian_columns
from constrained_grad.derivatives.jacobian import batch_jacobian
from constrained_grad.derivatives.norms import input_gradient_norm, jacobian_fro_norm_sq
from constrained_grad.derivatives.rows import input_gradient, jacobian_rows
from constrained_grad.derivatives.second import second_derivatives
from constrained_grad.errors import GraphCutError

Quantity = Callable[[Callable[[torch.Tensor], torch.Tensor], torch.Tensor], torch.Tensor]

QUANTITIES: dict[str, Quantity] = {
    **{
        f"columns-{m}": (lambda f, x, m=m: jacobian_columns(f, x, [0, 1], method=m))
        for m in ("double_backward", "forward", "reverse", "auto")
    },
    "rows": lambda f, x: jacobian_rows(f, x),
    "input_gradient": lambda f, x: input_gradient(lambda z: f(z)[:, :1], x),
    **{
        f"jacobian-{m}": (lambda f, x, m=m: batch_jacobian(f, x, mode=m))
        for m in ("forward", "reverse", "autograd", "auto")
    },
    **{
        f"fro-{e}": (lambda f, x, e=e: jacobian_fro_norm_sq(f, x, estimator=e, samples=2))
        for e in ("exact", "vjp_sphere", "jvp_gaussian")
    },
    "gradient_norm": lambda f, x: input_gradient_norm(f, x),
    **{
        f"second-{m}": (lambda f, x, m=m: second_derivatives(f, x, [0], method=m))
        for m in ("forward", "autograd", "auto")
    },
}


class DetachesInput(nn.Module):
    def __init__(self, use_data: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(3, 2).double()
        self.use_data = use_data

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.data if self.use_data else x.detach()
        return torch.tanh(self.lin(z))


@pytest.mark.parametrize("use_data", [False, True], ids=["detach", "data"])
@pytest.mark.parametrize("name", list(QUANTITIES))
def test_detached_input_raises_naming_the_cause(name: str, use_data: bool) -> None:
    with pytest.raises(GraphCutError, match=r"not computed from these input.*`\.detach\(\)`"):
        QUANTITIES[name](DetachesInput(use_data), batch(4, 3))


@pytest.mark.parametrize("name", list(QUANTITIES))
def test_model_run_under_no_grad_raises(name: str) -> None:
    net = mlp(3, 2)

    def f(z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return net(z)

    with pytest.raises(GraphCutError, match=r"no autograd graph.*torch\.no_grad\(\)"):
        QUANTITIES[name](f, batch(4, 3))


@pytest.mark.parametrize("name", list(QUANTITIES))
def test_healthy_model_passes_the_parameter_checks(name: str) -> None:
    net = mlp(3, 2)
    value = QUANTITIES[name](net, batch(4, 3))
    diagnostics.check_depends_on_parameters(value, net.parameters(), name)
    diagnostics.check_independent_of_parameters_numerically(value, list(net.parameters()), name)


class DetachesWeights(nn.Module):
    """Uses its weights through ``.detach()``: derivatives exist but cannot train anything."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.lin = nn.Linear(3, 2).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(F.linear(x, self.lin.weight.detach(), self.lin.bias.data))


@pytest.mark.parametrize("name", list(QUANTITIES))
def test_detached_weights_are_caught_by_the_parameter_check(name: str) -> None:
    net, x = DetachesWeights(), batch(4, 3)
    value = QUANTITIES[name](net, x)  # the values themselves are fine ...
    if name.startswith("columns"):
        torch.testing.assert_close(value, oracle_jacobian(net, x)[:, :, :2])
    # ... but a penalty on them would never move the weights
    with pytest.raises(GraphCutError, match=r"no path to the 2 trainable.*`\.detach\(\)`"):
        diagnostics.check_depends_on_parameters(value, net.parameters(), name)
    with pytest.raises(GraphCutError, match=r"no path|every parameter is zero"):
        diagnostics.check_independent_of_parameters_numerically(value, list(net.parameters()), name)


def test_create_graph_false_is_caught_by_the_parameter_check() -> None:
    net = mlp(3, 2)
    cols = jacobian_columns(net, batch(4, 3), [0], create_graph=False)
    with pytest.raises(GraphCutError, match=r"requires_grad=False.*create_graph=False"):
        diagnostics.check_depends_on_parameters(cols, net.parameters(), "test")


def test_frozen_parameters_do_not_count() -> None:
    net = DetachesWeights()
    for p in net.parameters():
        p.requires_grad_(False)
    value = jacobian_columns(net, batch(4, 3), [0])
    diagnostics.check_depends_on_parameters(value, net.parameters(), "test")
    diagnostics.check_independent_of_parameters_numerically(value, list(net.parameters()), "t")


def test_numeric_check_catches_a_zero_gradient() -> None:
    # the derivative reaches the weight only through a factor that is zero at these points
    w = nn.Parameter(torch.zeros(1, dtype=DTYPE))
    value = jacobian_columns(lambda z: z * (1 + w**2), batch(4, 1), [0])
    diagnostics.check_depends_on_parameters(value, [w], "test")  # structurally connected
    with pytest.raises(GraphCutError, match="every parameter is zero"):
        diagnostics.check_independent_of_parameters_numerically(value, [w], "test")


def test_inputs_tiled_after_the_forward_pass() -> None:
    # the forum's seed-4 bug: differentiate w.r.t. a tiled copy of the input the model saw
    net = mlp(3, 1)
    x = batch(4, 3).requires_grad_(True)
    y = net(x)
    x_tiled = x.repeat(2, 1)
    with pytest.raises(GraphCutError, match=r"tiled/repeated/concatenated \*after\* the forward"):
        diagnostics.grad(y, x_tiled, torch.ones_like(y), create_graph=True, who="seed 4")
    # tiling first, then running the model, is the fix
    x_first = x.detach().repeat(2, 1).requires_grad_(True)
    y_first = net(x_first)
    g = diagnostics.grad(y_first, x_first, torch.ones_like(y_first), create_graph=True)
    torch.testing.assert_close(g[:4], oracle_jacobian(net, x.detach())[:, 0])


def test_grad_on_outputs_without_graph() -> None:
    net = mlp(3, 1)
    x = batch(4, 3).requires_grad_(True)
    with torch.no_grad():
        y = net(x)
    with pytest.raises(GraphCutError, match=r"seed: outputs carry no autograd graph"):
        diagnostics.grad(y, x, torch.ones_like(y), create_graph=False, who="seed")


@pytest.mark.parametrize("method", ["double_backward", "forward", "reverse"])
def test_dead_relu_gives_zeros_not_an_error(method: str) -> None:
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    with torch.no_grad():
        net[0].bias.fill_(-100.0)  # every unit dead: the Jacobian is exactly zero
    cols = jacobian_columns(net, batch(4, 3), [0, 2], method=method)
    assert torch.equal(cols, torch.zeros_like(cols))
    jac = batch_jacobian(net, batch(4, 3), mode="forward" if method == "forward" else "reverse")
    assert torch.equal(jac, torch.zeros_like(jac))


def test_engine_never_accumulates_into_grad() -> None:
    net, x = mlp(3, 2), batch(4, 3)
    for quantity in QUANTITIES.values():
        quantity(net, x)
    assert all(p.grad is None for p in net.parameters())
