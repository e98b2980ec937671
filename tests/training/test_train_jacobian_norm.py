r"""A Jacobian-norm bound on a 1000-output network, enforced with random projections.

Data: :math:`y = \sin(3 x W)/3 + 0.02\,\epsilon`, ``x`` uniform in ``[-1, 1]^4``,
``W`` (4 x 1000) with entries of variance 1/1000, so :math:`E\|J^*\|_F^2 \approx 4`. The task
loss sums the squared error over outputs (mean over the batch), so that it and
:math:`\|J\|_F^2` (also a sum over outputs) share a scale and the multiplier is O(0.01-1).

The unconstrained fit (overfitting the noise a little) has mean :math:`\|J\|_F^2 \approx 3.9`;
the bound :math:`E\|J\|_F^2 \le r^2` with ``r = 1.8`` (3.24) is active but achievable.
Constraint: ``cg.JacobianNormBound(r, estimator="vjp_sphere")`` with the default ``"mean"``
reduction (an unbiased estimate of the batch mean). Check: the exact :math:`\|J\|_F^2` on
held-out points, mean :math:`\le (1.05 r)^2`, and the held-out task loss within 10 % of the
unconstrained run's.
"""

from __future__ import annotations

import copy

import torch
from cg_train_helpers import mlp
from torch import nn

import constrained_grad as cg

R = 1.8


def _data(n: int, g: torch.Generator, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(n, 4, generator=g) * 2 - 1
    return x, torch.sin(3 * x @ w) / 3 + 0.02 * torch.randn(n, 1000, generator=g)


def _sum_sq(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (out - y).pow(2).sum(1).mean()


def _exact_fro_sq(model: nn.Module, x: torch.Tensor, h: float = 1e-5) -> torch.Tensor:
    """Per-sample ||J||_F^2 = sum_j ||df/dx_j||^2, each column by float64 central differences
    of a float64 copy (an oracle independent of the engine; error ~h^2)."""
    m64 = copy.deepcopy(model).double()
    x64 = x.double()
    total = torch.zeros(x.shape[0], dtype=torch.float64)
    with torch.no_grad():
        for j in range(x.shape[1]):
            e = torch.zeros_like(x64)
            e[:, j] = h
            total += ((m64(x64 + e) - m64(x64 - e)) / (2 * h)).pow(2).sum(1)
    return total


def test_jacobian_norm_bound_with_1000_outputs_holds_at_small_cost() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 1000, generator=g) / 1000**0.5
    x, y = _data(512, g, w)
    x_test, y_test = _data(2000, g, w)
    data = torch.utils.data.TensorDataset(x, y)
    runs = {}
    for constrained in (False, True):
        model = mlp(4, 1000, hidden=32, seed=0)
        constraints = (
            [cg.JacobianNormBound(R, estimator="vjp_sphere", name="jac")] if constrained else []
        )
        problem = cg.DerivativeProblem(model, _sum_sq, constraints, seed=0)
        loader = torch.utils.data.DataLoader(
            data, batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(1)
        )
        result = cg.fit(
            problem,
            loader,
            torch.optim.Adam(model.parameters(), lr=1e-2),
            dual_lr=1e-3,
            steps=400,
            epochs=1000,
            progress=False,
        )
        with torch.no_grad():
            test_loss = _sum_sq(model(x_test), y_test).item()
        runs[constrained] = (_exact_fro_sq(model, x_test).mean().item(), test_loss, result)

    fro_free, loss_free, _ = runs[False]
    fro, loss, result = runs[True]
    assert fro_free > 1.15 * R**2  # the bound is active: the free fit exceeds it clearly
    assert fro <= (1.05 * R) ** 2  # holds within 5 % in norm on held-out points
    assert loss <= 1.10 * loss_free  # at a task cost below 10 %
    assert result.problem.multiplier_values()["jac"].item() > 0  # and binding at the end
    assert result.problem.last_evals["jac"].paths["projections"].startswith("vjp_sphere")
