r"""Forum seed 1: ``NN([x1, z])`` with ``x1`` in R^5 and 7 outputs, every output
non-decreasing in ``z`` (``∂f_i/∂z >= 0``), trained with ``cg.Monotonic(inputs=[5])``.

The synthetic targets are ``y = x1 A + 0.3 z - a_i sin(3z)`` with ``a = (0, .8, 0, 1.2, .5, 0,
1)``: outputs 1, 3, 4, 6 have ``∂y_i/∂z = 0.3 - 3 a_i cos(3z) < 0`` near ``z = 0``, so their
best fit is not monotone, while outputs 0, 2, 5 are (slope 0.3).
"""

from __future__ import annotations

import copy

import pytest
import torch
from cg_train_helpers import mlp
from torch import nn

import constrained_grad as cg

Z = 5
BOX = cg.Box([-1.0] * 6, [1.0] * 6)
BUMPS = torch.tensor([0.0, 0.8, 0.0, 1.2, 0.5, 0.0, 1.0])
MONOTONE_OUTPUTS = [0, 2, 5]


def _targets(x: torch.Tensor, bumps: torch.Tensor, slope: float) -> torch.Tensor:
    a = torch.linspace(-1.0, 1.0, 35).reshape(5, 7)
    z = x[:, Z:]
    return x[:, :Z] @ a + slope * z - bumps * torch.sin(3 * z)


def _loader(bumps: torch.Tensor, slope: float, n: int = 2048, seed: int = 0):
    x = BOX.sample(n, generator=torch.Generator().manual_seed(seed))
    y = _targets(x, bumps, slope)
    data = torch.utils.data.TensorDataset(x, y)
    return torch.utils.data.DataLoader(
        data, batch_size=256, shuffle=True, generator=torch.Generator().manual_seed(seed + 1)
    )


def _model() -> nn.Module:
    return mlp(6, 7, hidden=32, depth=2, seed=0)


def _dz(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``∂f_i/∂z`` at ``x``, shape (N, 7), by the package's column engine."""
    return cg.jacobian_columns(model, x, [Z], create_graph=False)[:, :, 0].detach()


def _central_differences(model: nn.Module, x: torch.Tensor, h: float = 1e-5) -> torch.Tensor:
    """Independent oracle: float64 central differences along z of a float64 copy."""
    m64 = copy.deepcopy(model).double()
    x64 = x.double()
    e = torch.zeros_like(x64)
    e[:, Z] = h
    with torch.no_grad():
        return ((m64(x64 + e) - m64(x64 - e)) / (2 * h)).float()


def test_monotonic_in_z_holds_on_fresh_points_where_unconstrained_fit_violates() -> None:
    loader = _loader(BUMPS, slope=0.3)
    fresh = BOX.sample(10_000, generator=torch.Generator().manual_seed(123))
    x_fit, y_fit = loader.dataset.tensors

    # baseline: the same model and optimiser, no constraint
    free = _model()
    problem = cg.DerivativeProblem(free, nn.functional.mse_loss, [])
    cg.fit(
        problem,
        loader,
        torch.optim.Adam(free.parameters(), lr=1e-2),
        steps=300,
        epochs=1000,
        progress=False,
    )
    dz_free = _dz(free, fresh)
    assert dz_free.min() < -1.0  # the best fit is far from monotone...
    assert bool((dz_free[:, MONOTONE_OUTPUTS].min(0).values > -0.2).all())  # ...only where it must

    model = _model()
    constraints = [
        cg.Monotonic(inputs=[Z], margin=0.05, name="z_batch"),
        cg.Monotonic(inputs=[Z], margin=0.05, where=cg.InBox(BOX, n=256), name="z_box"),
    ]
    problem = cg.DerivativeProblem(model, nn.functional.mse_loss, constraints, seed=0)
    result = cg.fit(
        problem,
        loader,
        torch.optim.Adam(model.parameters(), lr=1e-2),
        dual_lr=0.2,
        steps=300,
        epochs=1000,
        progress=False,
    )
    assert result.steps == 300

    dz = _dz(model, fresh)
    assert dz.shape == (10_000, 7)
    assert dz.min().item() >= -1e-4  # no violation above 1e-4 on 10,000 fresh points
    # cross-check the engine by finite differences on a subset
    subset = fresh[:500]
    torch.testing.assert_close(
        _dz(model, subset), _central_differences(model, subset), rtol=1e-4, atol=1e-4
    )
    # the constrained outputs carry the multipliers; the already-monotone ones fit as well
    lam = problem.multiplier_values()["z_box"] + problem.multiplier_values()["z_batch"]
    assert bool((lam[[1, 3, 4, 6]] > 0).all())
    with torch.no_grad():
        per_output = (model(x_fit) - y_fit).pow(2).mean(0)
        per_output_free = (free(x_fit) - y_fit).pow(2).mean(0)
    assert bool((per_output[MONOTONE_OUTPUTS] < 0.02).all())
    assert bool((per_output[[1, 3, 4, 6]] > 5 * per_output_free[[1, 3, 4, 6]]).all())


def test_multiplier_rises_while_violated_and_decays_to_zero_once_inactive() -> None:
    r"""A schedule: 150 steps on the non-monotone data (the constraint binds), then 250 on
    data with slope 1 in z (``∂y/∂z = 1 > margin``: inactive). Every step is checked
    against projected dual ascent on the worst point of the batch,
    :math:`\lambda_{t+1,c} = [\lambda_{t,c} + \eta \max_b g_{bc}(\theta_t)]_+`, and the
    history columns against the multipliers actually held."""
    model = _model()
    eta = 0.5
    problem = cg.DerivativeProblem(
        model, nn.functional.mse_loss, [cg.Monotonic(inputs=[Z], margin=0.1, name="z")]
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    worst: list[torch.Tensor] = []  # per step, per component: max over the batch of g
    after: list[torch.Tensor] = []  # multipliers after the step

    def record(info: cg.StepInfo) -> None:
        worst.append(info.problem.last_evals["z"].violations.amax(0).clone())
        after.append(info.problem.multiplier_values()["z"].clone())

    first = cg.fit(
        problem,
        _loader(BUMPS, 0.3),
        opt,
        dual_lr=eta,
        steps=150,
        epochs=1000,
        callbacks=[record],
        progress=False,
    )
    second = cg.fit(
        problem,
        _loader(torch.zeros(7), 1.0, seed=5),
        opt,
        dual_lr=eta,
        steps=400,
        epochs=1000,
        callbacks=[record],
        history=first.history,
        progress=False,
    )
    h = second.history
    assert h.steps == list(range(400))
    worst_t, after_t = torch.stack(worst), torch.stack(after)  # (400, 7)

    # exact projected ascent, step by step and component by component
    before_t = torch.cat([torch.zeros(1, 7), after_t[:-1]])
    torch.testing.assert_close(
        after_t, (before_t + eta * worst_t).clamp_min(0), rtol=1e-6, atol=1e-6
    )
    # the history logs, per step, the multipliers the step started from and its violations
    torch.testing.assert_close(
        torch.tensor(h.column("z/multiplier_max"), dtype=torch.float64),
        before_t.amax(1).double(),
        rtol=1e-6,
        atol=1e-7,
    )
    torch.testing.assert_close(
        torch.tensor(h.column("z/violation_max"), dtype=torch.float64),
        worst_t.amax(1).double(),
        rtol=1e-6,
        atol=1e-7,
    )
    assert min(h.column("z/multiplier_min")) >= 0.0

    # phase 1: violated -> the multiplier of every violated component rose
    rising = worst_t[:150] > 0
    assert bool((after_t[:150] > before_t[:150])[rising].all())
    assert max(h.column("z/multiplier_max")[:150]) > 0.2
    assert h.column("z/multiplier_max")[149] > 0.2  # still binding at the switch
    # phase 2: the constraint becomes inactive and every multiplier decays to exactly zero
    assert bool((worst_t[-100:] < 0).all())
    assert h.column("z/multiplier_max")[-100:] == [0.0] * 100
    assert after_t[-1].tolist() == [0.0] * 7
    slack = worst_t[150:] < 0
    assert bool((after_t[150:] <= before_t[150:])[slack].all())


@pytest.mark.slow
def test_monotonic_seed1_long_run_on_box_points_only() -> None:
    """Slow variant: only InBox points (no batch constraint), longer run, 100,000 checks."""
    loader = _loader(BUMPS, slope=0.3, n=4096)
    model = _model()
    problem = cg.DerivativeProblem(
        model,
        nn.functional.mse_loss,
        [cg.Monotonic(inputs=[Z], margin=0.05, where=cg.InBox(BOX, n=512), name="z")],
        seed=1,
    )
    cg.fit(
        problem,
        loader,
        torch.optim.Adam(model.parameters(), lr=1e-2),
        dual_lr=0.2,
        steps=1500,
        epochs=1000,
        progress=False,
    )
    fresh = BOX.sample(100_000, generator=torch.Generator().manual_seed(7))
    assert _dz(model, fresh).min().item() >= -1e-4
