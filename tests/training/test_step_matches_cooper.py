"""``Trainer.step`` against Cooper's own ``SimultaneousOptimizer.roll()``, bit for bit.

The library's step takes shortcuts for speed (dual gradients written straight into the
multipliers, in-place dual ascent and projection, cached constants of the constraints,
``zero_grad`` without the optimizer's profiler hook). Each must leave the arithmetic of a
step exactly as Cooper does it: the same problem stepped both ways, with plain SGD on both
sides, keeps bit-identical weights and multipliers over many steps.
"""

from __future__ import annotations

import cooper
import torch
from torch import nn

import constrained_grad as cg


def _batch(n: int = 40, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=g, dtype=torch.float64) * 4 - 2
    y = (x[:, :1] ** 2 - x[:, 1:]).clone()
    s = torch.cat([2 * x[:, :1], -torch.ones(n, 1, dtype=torch.float64)], dim=1)
    return {"x": x, "y": y, "s": s}


def _problem(equality_target: float | None = None) -> cg.DerivativeProblem:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(2, 16), nn.Softplus(), nn.Linear(16, 1)).double()
    constraints: list[cg.DerivativeConstraint] = [
        cg.GradientMatch(targets="s", normalize=True, tolerance=1e-3, name="match"),
        cg.Monotonic(inputs=[0], name="mono"),
        cg.DerivativeBound(inputs=[1], upper=-0.8, reduction="max", name="bound"),
    ]
    if equality_target is not None:
        constraints.append(
            cg.Custom(
                lambda v: v.columns([0])[:, :, 0] - equality_target,
                needs=cg.Needs(columns=frozenset({0})),
                kind="equality",
                reduction="mean",
                name="eq",
            )
        )
    return cg.DerivativeProblem(model, nn.functional.mse_loss, constraints)


def _weights(problem: cg.DerivativeProblem) -> list[torch.Tensor]:
    params = [p.detach().clone() for p in problem.model.parameters()]
    return params + [v.clone() for v in problem.multiplier_values().values()]


def _run_both(equality_target: float | None, steps: int) -> cg.DerivativeProblem:
    batch = _batch()
    problem, theirs = _problem(equality_target), _problem(equality_target)
    primal_lr, dual_lr = 0.05, 0.7
    trainer = cg.Trainer(
        problem, torch.optim.SGD(problem.model.parameters(), lr=primal_lr), dual_lr=dual_lr
    )
    roll = cooper.optim.SimultaneousOptimizer(
        cmp=theirs,
        primal_optimizers=torch.optim.SGD(theirs.model.parameters(), lr=primal_lr),
        dual_optimizers=torch.optim.SGD(theirs.dual_parameters(), lr=dual_lr, maximize=True),
    )
    moved = False
    start = _weights(problem)
    for step in range(steps):
        trainer.step(batch)
        roll.roll(compute_cmp_state_kwargs={"batch": batch})
        ours, cooper_ = _weights(problem), _weights(theirs)
        for k, (a, b) in enumerate(zip(ours, cooper_, strict=True)):
            assert torch.equal(a, b), f"step {step}, tensor {k}: {a} != {b}"
        moved = moved or any(not torch.equal(a, b) for a, b in zip(ours, start, strict=True))
    assert moved
    lam = problem.multiplier_values()
    # the comparison covered both active multipliers and ones projected back to zero
    assert any(float(v.max()) > 0 for v in lam.values())
    assert any(float(v.max()) == 0 for v in lam.values())
    return problem


def test_step_is_bit_identical_to_cooper_roll() -> None:
    _run_both(None, steps=25)


def test_step_with_an_equality_multiplier_is_bit_identical_to_cooper_roll() -> None:
    problem = _run_both(0.3, steps=25)
    # the equality multiplier is not projected: it went negative here
    assert float(problem.multiplier_values()["eq"].min()) < 0
