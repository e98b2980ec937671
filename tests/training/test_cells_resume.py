"""Exact resume of certified training: the cells' partition and the counterexample buffer
travel in the checkpoint, so an interrupted run ends where an uninterrupted one does."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import constrained_grad as cg


def _run(
    steps: int, ckdir: Path | None
) -> tuple[nn.Module, cg.DerivativeProblem, cg.Cells, cg.Counterexamples]:
    torch.manual_seed(0)
    x = torch.rand(128, 3) * 2 - 1
    y = x[:, :1] + 0.3 * torch.sin(3 * x[:, 1:2])
    model = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 1))
    box = cg.Box([-1] * 3, [1] * 3)
    cells = cg.Cells(box, max_cells=64, refine_every=5, refine=4)
    found = cg.Counterexamples(box, capacity=16, every=7, starts=8, steps=5)
    constraints = [
        cg.Monotonic([0], where=cells, name="proof", dual_lr=0.05),
        cg.Monotonic([0], where=found, reduction="pointwise", name="found"),
    ]
    problem = cg.DerivativeProblem(model, F.mse_loss, constraints)
    gen = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(x, y)
    loader = torch.utils.data.DataLoader(data, batch_size=32, shuffle=True, generator=gen)
    cg.fit(
        problem,
        loader,
        torch.optim.Adam(model.parameters(), 3e-3),
        dual_lr=0.5,
        epochs=10,
        steps=steps,
        progress=False,
        checkpoint_dir=ckdir,
        checkpoint_every=1 if ckdir is not None else None,
    )
    return model, problem, cells, found


def test_resume_restores_cells_and_counterexamples_exactly(tmp_path: Path) -> None:
    model, problem, cells, found = _run(40, None)
    _run(23, tmp_path)  # interrupted after 23 steps (refinements and searches under way)
    model2, problem2, cells2, found2 = _run(40, tmp_path)  # resumed to 40
    assert cells.splits_done > 0 and found.rounds > 1  # the state really changed
    for a, b in zip(model.state_dict().values(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    m1, m2 = problem.multiplier_values(), problem2.multiplier_values()
    assert all(torch.equal(m1[k], m2[k]) for k in m1)
    assert cells.n == cells2.n
    assert torch.equal(cells.lo[: cells.n], cells2.lo[: cells2.n])
    assert torch.equal(cells.hi[: cells.n], cells2.hi[: cells2.n])
    assert torch.equal(found.buffer, found2.buffer) and found.filled == found2.filled
