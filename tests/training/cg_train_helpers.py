"""Small seeded problems with known answers, shared by the training tests."""

from __future__ import annotations

import torch
from torch import nn

import constrained_grad as cg


def line_data(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 ``x ~ U[-1, 1]``, ``y = 2x + 0.5 + 0.1 noise`` (best unconstrained slope ~2)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=g, dtype=torch.float64) * 2 - 1
    y = 2 * x + 0.5 + 0.1 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    return x, y


def line_optimum(
    x: torch.Tensor, y: torch.Tensor, *, curvature: float = 0.0, linear: float = 0.0
) -> torch.Tensor:
    r"""``(w, b)`` minimising :math:`\mathrm{mean}((wx+b-y)^2) + \frac{c}{2}(w-1)^2 + r(w-1)`.

    Setting both partial derivatives to zero gives the 2x2 normal equations
    :math:`(2E[x^2] + c) w + 2E[x] b = 2E[xy] + c - r` and :math:`2E[x] w + 2b = 2E[y]`.
    """
    ex, exx, ey, exy = x.mean(), (x * x).mean(), y.mean(), (x * y).mean()
    a = torch.stack([torch.stack([2 * exx + curvature, 2 * ex]), torch.stack([2 * ex, 2 + 0 * ex])])
    rhs = torch.stack([2 * exy + curvature - linear, 2 * ey])
    return torch.linalg.solve(a, rhs)


def kkt_point(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, float]:
    r"""The KKT point of ``min mean((wx+b-y)^2)`` s.t. ``w <= 1`` when the free slope exceeds 1.

    The constraint is active, so :math:`w^*=1`; :math:`\partial_b = 0` gives
    :math:`b^* = \bar y - \bar x`; stationarity in ``w``,
    :math:`2\,\mathrm{mean}((w^*x+b^*-y)x) + \lambda^* = 0`, gives :math:`\lambda^*`.
    """
    b = y.mean() - x.mean()
    lam = -2 * ((x + b - y) * x).mean()
    return 1.0, float(b), float(lam)


def linear_model(seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(1, 1).double()


def slope_problem(model: nn.Module, *, reduction: str = "mean", **kwargs) -> cg.DerivativeProblem:
    """``w <= 1`` on ``f(x) = wx + b`` as a DerivativeBound named ``"slope"``."""
    bound = cg.DerivativeBound(inputs=[0], upper=1.0, reduction=reduction, name="slope", **kwargs)
    return cg.DerivativeProblem(model, nn.functional.mse_loss, [bound])


def mlp(
    d: int, m: int, hidden: int = 16, act: type[nn.Module] = nn.Tanh, seed: int = 0, depth: int = 1
) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(d, hidden), act()]
    for _ in range(depth - 1):
        layers += [nn.Linear(hidden, hidden), act()]
    layers.append(nn.Linear(hidden, m))
    return nn.Sequential(*layers)
