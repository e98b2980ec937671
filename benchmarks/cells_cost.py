"""What a constraint over cells (certified training, cg.Cells) adds to a training step.

An 8-64-64-1 net (tanh and ReLU), batch 256, Monotonic in inputs 0 and 1 on the batch; then
the same plus the constraint over 16, 64 and 256 cells (one evaluation of every cell per
step, no refinement). Prints milliseconds per step (median of 3 runs of ``--steps`` steps,
one thread) and the extra time in forward passes of the batch.

    python benchmarks/cells_cost.py [--steps 40]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import constrained_grad as cg

D = 8


def _problem(n_cells: int, act: type[nn.Module]) -> tuple[cg.DerivativeProblem, DataLoader]:
    torch.manual_seed(0)
    x = torch.rand(4096, D) * 2 - 1
    y = x.sum(1, keepdim=True) + 0.1 * torch.sin(3 * x[:, :1])
    model = nn.Sequential(nn.Linear(D, 64), act(), nn.Linear(64, 64), act(), nn.Linear(64, 1))
    constraints = [cg.Monotonic(inputs=[0, 1], name="data")]
    if n_cells:
        box = cg.Box([-1] * D, [1] * D)
        cells = cg.Cells(box, splits=[n_cells] + [1] * (D - 1), max_cells=n_cells, refine_every=0)
        constraints.append(cg.Monotonic(inputs=[0, 1], where=cells, name="cells"))
    problem = cg.DerivativeProblem(model, nn.functional.mse_loss, constraints)
    return problem, DataLoader(TensorDataset(x, y), batch_size=256, shuffle=True)


def _ms_per_step(n_cells: int, act: type[nn.Module], steps: int) -> float:
    problem, loader = _problem(n_cells, act)
    opt = torch.optim.Adam(problem.model.parameters(), 1e-3)
    cg.fit(problem, loader, opt, steps=3, epochs=100, progress=False)  # warm-up
    times = []
    for _ in range(3):
        t = time.perf_counter()
        cg.fit(problem, loader, opt, steps=steps, epochs=100, progress=False)
        times.append((time.perf_counter() - t) / steps)
    return 1e3 * statistics.median(times)


def _forward_ms(act: type[nn.Module]) -> float:
    problem, loader = _problem(0, act)
    x = next(iter(loader))[0]
    with torch.no_grad():
        t = time.perf_counter()
        for _ in range(200):
            problem.model(x)
    return 1e3 * (time.perf_counter() - t) / 200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for act in (nn.Tanh, nn.ReLU):
        base, fwd = _ms_per_step(0, act, args.steps), _forward_ms(act)
        print(
            f"{act.__name__}: batch only {base:.1f} ms/step (one forward of the batch {fwd:.2f} ms)"
        )
        for n in (16, 64, 256):
            ms = _ms_per_step(n, act, args.steps)
            extra = ms - base
            print(
                f"  + {n:3d} cells: {ms:6.1f} ms/step (+{extra:.1f} ms, {extra / fwd:.0f} forwards)"
            )


if __name__ == "__main__":
    main()
