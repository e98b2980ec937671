"""Training a torch.compile'd model: the problem trains the module it compiles (same
parameters), step for step equal to training the uncompiled module, with no warning;
compiled code it cannot unwrap ends in a CompiledModelError naming the fix, not in torch's
"donated buffers" / "double backward" errors. Warnings are errors in this suite."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import constrained_grad as cg
from constrained_grad.errors import CompiledModelError


def _data(m: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(32, 3, generator=g)
    y = torch.randn(32, m, generator=g) - x[:, :1]  # decreasing in x_0: the constraint binds
    return x, y


def _fit(model: nn.Module, params: nn.Module, batches: list, steps: int = 6) -> cg.FitResult:
    problem = cg.DerivativeProblem(
        model,
        nn.functional.mse_loss,
        [cg.Monotonic(inputs=[0], name="mono")],
        example_input=batches[0][0][:2],
    )
    return cg.fit(
        problem,
        batches,
        torch.optim.Adam(params.parameters(), lr=1e-2),
        dual_lr=0.5,
        epochs=steps,
        progress=False,
    )


def test_compiled_model_trains_exactly_like_the_module_itself():
    torch.manual_seed(0)
    eager = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 2))
    twin = copy.deepcopy(eager)
    compiled = torch.compile(twin, backend="aot_eager")
    batches = [_data()]
    expected = _fit(eager, eager, batches)
    got = _fit(compiled, compiled, batches)  # optimizer on the compiled module's parameters
    for a, b in zip(eager.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)
    assert got.history.column("mono/multiplier_max") == expected.history.column(
        "mono/multiplier_max"
    )
    assert expected.history.column("mono/multiplier_max")[-1] > 0  # the constraint was active
    # the compiled module serves the trained weights
    x = batches[0][0]
    torch.testing.assert_close(compiled(x), eager(x))


@pytest.mark.parametrize("outputs", [1, 2])
def test_compiled_code_inside_the_model_is_refused_with_the_fix(outputs):
    # after earlier tests compiled the same code objects, dynamo may hit its recompile limit
    # and run this module eagerly (no error to see): start from a clean compile cache
    torch._dynamo.reset()
    torch.manual_seed(0)
    inner = torch.compile(nn.Sequential(nn.Linear(3, 16), nn.Tanh()), backend="aot_eager")
    model = nn.Sequential(inner, nn.Linear(16, outputs))
    with pytest.raises(CompiledModelError, match=r"torch\.compile'd code.*Pass the uncompiled"):
        _fit(model, model, [_data(outputs)], steps=1)
