r"""Drive a constrained_grad problem with Cooper's own optimizer, in your own training loop.

:class:`constrained_grad.DerivativeProblem` *is* a ``cooper.ConstrainedMinimizationProblem``:
``compute_cmp_state(batch)`` returns the loss and one ``cooper.ConstraintState`` per declared
constraint. So any Cooper optimizer runs it, for users who want their own loop (logging,
schedulers, several models) instead of :func:`constrained_grad.fit`.

One rule matters: build the dual optimizer from ``problem.named_multipliers()``, in
registration order, one parameter group per constraint, named. Cooper 1.0.1's
``cmp.dual_parameters()`` iterates a ``set``, whose order changes between processes, so a
dual optimizer state saved in one run can be loaded onto the wrong multipliers in the next.

The script trains a monotone regression with ``cooper.optim.SimultaneousOptimizer``, then
checks the loop against :func:`constrained_grad.fit`, which runs the same simultaneous
primal-dual update: from the same initial weights and data order both end at the same
weights and multipliers.

Run: ``python examples/cooper_own_loop.py``.
"""

from __future__ import annotations

import math
from pathlib import Path

import cooper
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import constrained_grad as cg

DUAL_LR = 0.5


def make_data(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """y = sin(3 x0) + x1^3 / 2 + noise, x in [-1, 1]^2: increasing in x1, slopes up to 3."""
    x = torch.rand(n, 2, generator=generator) * 2 - 1
    y = torch.sin(3 * x[:, :1]) + 0.5 * x[:, 1:] ** 3
    return x, y + 0.2 * torch.randn(n, 1, generator=generator)


def build(seed: int) -> tuple[nn.Module, cg.DerivativeProblem]:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1)
    )
    box = cg.Box([-1.0, -1.0], [1.0, 1.0])
    constraints = [
        cg.Monotonic(inputs=[1], direction="increasing", margin=0.02, name="x1_on_data"),
        cg.Monotonic(inputs=[1], margin=0.02, where=cg.InBox(box, n=256), name="x1_in_box"),
        cg.Lipschitz(max_norm=2.5, where=cg.InBox(box, n=256), name="slope_at_most_2.5"),
    ]
    return model, cg.DerivativeProblem(model, F.mse_loss, constraints, seed=seed)


def dual_optimizer(problem: cg.DerivativeProblem, lr: float) -> torch.optim.Optimizer:
    """One named group per constraint, in registration order (not cmp.dual_parameters())."""
    groups = [
        {"params": list(m.parameters()), "name": name} for name, m in problem.named_multipliers()
    ]
    return torch.optim.SGD(groups, lr=lr, maximize=True)


def loader_for(x: torch.Tensor, y: torch.Tensor, seed: int) -> DataLoader:
    return DataLoader(
        TensorDataset(x, y),
        batch_size=64,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )


def main(steps: int = 300, out_dir: str | Path | None = None, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    x, y = make_data(512, gen)
    x_test, y_test = make_data(512, gen)

    # --- your own loop, Cooper's optimizer --------------------------------------------------
    model, problem = build(seed)
    primal = torch.optim.Adam(model.parameters(), lr=3e-3)
    dual = dual_optimizer(problem, DUAL_LR)
    optimizer = cooper.optim.SimultaneousOptimizer(problem, primal, dual)
    loader = loader_for(x, y, seed)
    step = 0
    while step < steps:
        for batch in loader:
            rollout = optimizer.roll(compute_cmp_state_kwargs={"batch": batch})
            worst = {n: float(e.violations.max()) for n, e in problem.last_evals.items()}
            if step % 50 == 0 or step == steps - 1:
                print(
                    f"step {step:4d} loss {float(rollout.loss.detach()):.4f} worst violation "
                    + ", ".join(f"{n} {v:+.3f}" for n, v in worst.items())
                )
            step += 1
            if step == steps:
                break
    group_names = [g["name"] for g in dual.param_groups]
    registration = [n for n, _ in problem.named_multipliers()]

    # --- the same run through cg.fit --------------------------------------------------------
    ref_model, ref_problem = build(seed)
    result = cg.fit(
        ref_problem,
        loader_for(x, y, seed),
        torch.optim.Adam(ref_model.parameters(), lr=3e-3),
        dual_lr=DUAL_LR,
        epochs=math.ceil(steps / math.ceil(len(x) / 64)),
        steps=steps,
        progress=False,
    )
    with torch.no_grad():
        param_diff = max(
            float((a - b).abs().max())
            for a, b in zip(model.parameters(), ref_model.parameters(), strict=True)
        )
    mult, ref_mult = problem.multiplier_values(), ref_problem.multiplier_values()
    mult_diff = max(float((mult[n] - ref_mult[n]).abs().max()) for n in mult)

    model.eval()
    with torch.no_grad():
        test_mse = float(F.mse_loss(model(x_test), y_test))
    held = problem.violations("x1_on_data", x_test)
    metrics = {
        "test_mse": test_mse,
        "heldout_max_violation_x1": float(held.max()),
        "dual_groups_in_registration_order": float(group_names == registration),
        "max_param_diff_vs_fit": param_diff,
        "max_multiplier_diff_vs_fit": mult_diff,
        **{f"multiplier/{n}": float(v.max()) for n, v in mult.items()},
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        torch.save(
            {"model": model.state_dict(), "dual": dual.state_dict(), "dual_names": group_names},
            out / "cooper_own_loop.pt",
        )
        result.history.save_json(out / "cooper_own_loop_fit_history.json")
    print(
        f"test MSE {test_mse:.4f}; own loop vs cg.fit: max |weight diff| {param_diff:.2e}, "
        f"max |multiplier diff| {mult_diff:.2e}"
    )
    return metrics


if __name__ == "__main__":
    main()
