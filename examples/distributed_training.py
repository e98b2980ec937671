r"""The same constrained training on one process or many (``torchrun``, data parallel).

A small regression net must be non-decreasing in its first input: on every batch (mean hinge,
one multiplier), at uniform points of the input box (worst point, augmented Lagrangian), and
per training sample (pointwise multipliers, one per sample). Under ``torchrun`` each rank
sees its shard of every batch (a ``DistributedSampler``); :func:`constrained_grad.fit`
exchanges the constraint values so that every rank takes the step of the *global* batch and
the multipliers stay identical, and only rank 0 writes the checkpoint, the history and the
plot. Nothing in the user code changes between the two launches.

Run on one process: ``python examples/distributed_training.py``
Run on two (CPU, gloo): ``torchrun --nproc-per-node 2 examples/distributed_training.py``
(on GPUs, NCCL is chosen and each rank uses ``cuda:<local rank>``). ``main(out_dir=...)``
also writes the checkpoint, ``history.json`` and ``history.png`` (rank 0 only).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

import constrained_grad as cg

N_POINTS = 256
N_INPUTS = 3


def make_data(seed: int) -> TensorDataset:
    """y = x0 - 0.5 sin(4 x0) + 0.5 sin(3 x1) x2 + noise: decreasing in x0 near x0 = 0."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(N_POINTS, N_INPUTS, generator=gen, dtype=torch.float64) * 2 - 1
    y = x[:, :1] - 0.5 * torch.sin(4 * x[:, :1]) + 0.5 * torch.sin(3 * x[:, 1:2]) * x[:, 2:3]
    y = y + 0.1 * torch.randn(N_POINTS, 1, generator=gen, dtype=torch.float64)
    return cg.with_indices(TensorDataset(x, y))


def make_problem(seed: int, device: torch.device) -> cg.DerivativeProblem:
    """MLP 3-32-32-1 (float64); the slope in input 0 must be >= 0.5, three ways."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(N_INPUTS, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1)
    ).to(device=device, dtype=torch.float64)
    box = cg.Box([-1.0] * N_INPUTS, [1.0] * N_INPUTS)
    constraints = [
        cg.Monotonic([0], "increasing", name="on_batch", margin=0.5),
        cg.Monotonic(
            [0],
            "increasing",
            name="in_box",
            margin=0.5,
            where=cg.InBox(box, n=64),
            reduction="max",
            formulation=cg.AugmentedLagrangian(penalty=1.0),
        ),
        cg.Monotonic(
            [0],
            "increasing",
            name="per_sample",
            where=cg.OnBatch(num_points=N_POINTS),
            margin=0.5,
            reduction="pointwise",
        ),
    ]
    return cg.DerivativeProblem(model, F.mse_loss, constraints, seed=seed)


def make_loader(
    data: TensorDataset, batch_size: int, seed: int, rank: int, world: int
) -> DataLoader:
    """Each rank's shard of every global batch of ``batch_size * world`` samples."""
    if world == 1:
        gen = torch.Generator().manual_seed(seed)
        return DataLoader(data, batch_size=batch_size, shuffle=True, generator=gen)
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    return DataLoader(data, batch_size=batch_size, sampler=sampler)


def setup() -> tuple[int, int, torch.device]:
    """Join the process group when launched by torchrun; ``(rank, world, device)``.

    NCCL (one GPU per rank) when CUDA is available, gloo on CPUs otherwise; a group that is
    already initialised is used as it is.
    """
    if "RANK" not in os.environ:
        return 0, 1, torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device = torch.device("cpu")
    if dist.get_backend() == "nccl":
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
        torch.cuda.set_device(device)
    return dist.get_rank(), dist.get_world_size(), device


def train(
    problem: cg.DerivativeProblem,
    loader: DataLoader,
    steps: int,
    out: Path | None = None,
    record: list[dict[str, torch.Tensor]] | None = None,
    progress: bool = True,
    on_nonfinite: str = "raise",
) -> cg.FitResult:
    """``steps`` primal-dual steps (Adam on the weights, dual ascent on the multipliers);
    ``on_nonfinite="skip"`` skips steps with a NaN/inf loss or violation."""
    optimizer = torch.optim.Adam(problem.model.parameters(), lr=1e-2)

    def keep(info: cg.StepInfo) -> None:
        if record is not None:
            record.append({n: v.clone() for n, v in problem.multiplier_values().items()})

    return cg.fit(
        problem,
        loader,
        optimizer,
        dual_lr=0.5,
        epochs=math.ceil(steps / len(loader)),
        steps=steps,
        callbacks=[keep],
        progress=progress,
        checkpoint_dir=None if out is None else out / "checkpoint",
        checkpoint_every=None if out is None else 20,
        on_nonfinite=on_nonfinite,
    )


def main(
    steps: int = 120,
    out_dir: str | Path | None = None,
    seed: int = 0,
    *,
    batch_size: int = 16,
    record: list[dict[str, torch.Tensor]] | None = None,
) -> dict[str, float]:
    """Train ``steps`` steps; return the loss, the worst violations and the multipliers.

    ``batch_size`` is per rank. ``record`` (if given) receives every step's multipliers.
    """
    rank, world, device = setup()
    problem = make_problem(seed, device)
    loader = make_loader(make_data(seed), batch_size, seed, rank, world)
    out = Path(out_dir) if out_dir is not None else None
    result = train(problem, loader, steps, out, record)
    if out is not None:  # only rank 0 writes; on the other ranks these return at once
        result.history.save_json(out / "history.json")
        cg.plot_history(result.history, path=out / "history.png")
    last = result.history.last()
    assert last is not None, "fit ran at least one step"
    metrics = {
        "loss": float(last["loss"]),
        "world_size": float(world),
        "steps": float(result.steps),
    }
    for name in problem.specs:
        metrics[f"{name}_violation_max"] = float(last[f"{name}/violation_max"])
        metrics[f"{name}_multiplier_max"] = float(last[f"{name}/multiplier_max"])
    if rank == 0:
        print(f"{world} process(es), {result.steps} steps: global-batch loss {metrics['loss']:.4f}")
        for name in problem.specs:
            print(
                f"  {name}: worst slope deficit {metrics[f'{name}_violation_max']:+.3f}, "
                f"largest multiplier {metrics[f'{name}_multiplier_max']:.3f}"
            )
    return metrics


if __name__ == "__main__":
    main()
    if dist.is_initialized():
        dist.destroy_process_group()
