r"""Seed 2: learn :math:`V(x) = x^\top P x` from samples of :math:`\nabla V = 2Px` only.

No loss (``loss=None``): the only objective is ``cg.GradientMatch`` on the batch field
``"targets"`` with ``normalize=True`` (squared error divided by the mean squared target, so
the number reads as a relative error whatever the scale of ``P``). Training data are the
seed's 10x10 grid on ``[-3, 3]^2``; held-out points are uniform in the same square.

Error measure (stated once): the **RMS ratio**
:math:`\sqrt{\mathrm{mean}\,\|\nabla V_\theta - 2Px\|^2} / \sqrt{\mathrm{mean}\,\|2Px\|^2}`
over held-out points. The model uses smooth ``tanh`` units (a ReLU net has a piecewise-
constant gradient and cannot match the linear field ``2Px``) and a fixed output scale of
100, since ``V`` reaches ~10^3 on the square.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import constrained_grad as cg

P = torch.tensor([[20.1892, -26.6218], [-26.6218, 38.0375]])


class _Scaled(nn.Module):
    def __init__(self, hidden: int, scale: float, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(
            nn.Linear(2, hidden),
            nn.Tanh(),
            nn.Linear(hidden, hidden),
            nn.Tanh(),
            nn.Linear(hidden, 1),
        )
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.net(x)


def _grid() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.linspace(-3.0, 3.0, 10)
    x = torch.cartesian_prod(g, g)
    return x, 2 * x @ P  # (100, 2) points and gradient samples


def _rms_ratio(model: nn.Module, n: int = 4000) -> float:
    x = torch.rand(n, 2, generator=torch.Generator().manual_seed(99)) * 6 - 3
    true = 2 * x @ P
    got = cg.input_gradient(model, x).reshape(true.shape).detach()
    return math.sqrt((got - true).pow(2).sum(1).mean() / true.pow(2).sum(1).mean())


def _train(
    constraint: cg.GradientMatch, loader, steps: int, seed: int = 0
) -> tuple[nn.Module, cg.FitResult]:
    model = _Scaled(64, 100.0, seed)
    problem = cg.DerivativeProblem(model, None, [constraint])
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    result = cg.fit(
        problem,
        loader,
        opt,
        dual_lr=1.0,
        steps=steps,
        epochs=10**6,
        callbacks=[lambda info: schedule.step()],
        progress=False,
    )
    return model, result


def test_quadratic_learned_from_gradient_samples_only() -> None:
    x, s = _grid()
    untrained = _rms_ratio(_Scaled(64, 100.0, 0))
    model, result = _train(cg.GradientMatch("targets", normalize=True, name="grad"), [(x, s)], 500)
    ratio = _rms_ratio(model)
    assert untrained > 0.5
    assert ratio < 0.01  # < 1 % RMS relative gradient error on held-out points
    h = result.history
    assert all(math.isnan(v) for v in h.column("loss"))  # no loss was given
    # the normalised training error fell by orders of magnitude
    assert h.column("grad/violation_mean")[-1] < 1e-3 * h.column("grad/violation_mean")[0]
    # V itself is determined up to a constant: check the curvature too (Hessian = 2P)
    hess = torch.autograd.functional.hessian(lambda v: model(v[None])[0, 0], torch.zeros(2))
    torch.testing.assert_close(hess, 2 * P, rtol=0.03, atol=0.5)


@pytest.mark.slow
def test_quadratic_learned_from_targets_at_fixed_points() -> None:
    """Slow variant: the same targets as a tensor aligned with ``AtPoints`` points."""
    x, s = _grid()
    constraint = cg.GradientMatch(s, where=cg.AtPoints(x), normalize=True, name="grad")
    model, _ = _train(constraint, [(x[:1], s[:1])], 800, seed=1)
    assert _rms_ratio(model) < 0.01
