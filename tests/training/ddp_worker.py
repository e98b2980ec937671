"""Run by ``torchrun`` from test_distributed.py: the distributed example on each rank.

Each rank records its multipliers after every step and its final weights and history into
``<records>/rank<r>.pt`` (a file of the test harness, not of the library). The example's own
outputs go to ``<outputs>/rank<r>``: only rank 0 may create its folder.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "distributed_training.py"


def load_example():
    spec = importlib.util.spec_from_file_location("distributed_training", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def all_reductions_problem(seed: int, device: torch.device):
    """Every reduction and formulation the sync must make global, on the example's model."""
    import constrained_grad as cg

    example = load_example()
    problem = example.make_problem(seed, device)
    box = cg.Box([-1.0] * 3, [1.0] * 3)
    mono = dict(inputs=[0], direction="increasing", margin=0.5)
    constraints = [
        cg.Monotonic(**mono, name="mean", reduction="mean"),
        cg.Monotonic(**mono, name="l2", reduction="l2_hinge"),
        cg.Monotonic(**mono, name="max_qp", reduction="max", formulation=cg.QuadraticPenalty(0.5)),
        cg.Monotonic(
            **mono,
            name="box_al",
            where=cg.InBox(box, n=33),  # odd: unequal shards (17 + 16 points)
            formulation=cg.AugmentedLagrangian(penalty=0.5),
        ),
        cg.Monotonic(
            **mono,
            name="pointwise_al",
            where=cg.OnBatch(num_points=example.N_POINTS),
            reduction="pointwise",
            formulation=cg.AugmentedLagrangian(penalty=0.5),
        ),
        cg.Monotonic(**mono, name="one_point", where=cg.InBox(box, n=1), reduction="max"),
    ]
    return cg.DerivativeProblem(problem.model, torch.nn.functional.mse_loss, constraints, seed=seed)


def nan_rank1_index(n: int, per_rank_batch: int, seed: int) -> int:
    """A sample that rank 1 (of 2) sees in the 4th batch of epoch 0 of the example's loader."""
    from torch.utils.data.distributed import DistributedSampler

    order = list(DistributedSampler(range(n), num_replicas=2, rank=1, shuffle=True, seed=seed))
    return order[3 * per_rank_batch]


def nan_data(seed: int, index: int):
    """The example's data with the target of sample ``index`` set to NaN."""
    from torch.utils.data import TensorDataset

    import constrained_grad as cg

    x, y = load_example().make_data(seed).dataset.tensors
    y = y.clone()
    y[index] = float("nan")
    return cg.with_indices(TensorDataset(x, y))


def nan_run(steps: int, rank: int, world: int, loader=None):
    """``on_nonfinite="skip"`` with a NaN target that only rank 1 holds (or, single process,
    the global batches of ``loader``): the multipliers after every step and the result."""
    example = load_example()
    problem = example.make_problem(0, torch.device("cpu"))
    if loader is None:
        data = nan_data(0, nan_rank1_index(example.N_POINTS, 8, 0))
        loader = example.make_loader(data, 8, 0, rank, world)
    record: list = []
    result = example.train(
        problem, loader, steps, record=record, progress=False, on_nonfinite="skip"
    )
    return {
        "record": record,
        "skipped": result.extras["skipped_steps"],
        "steps": result.history.steps,
        "weights": {k: v.clone() for k, v in problem.model.state_dict().items()},
    }


def run() -> None:
    records, outputs, steps, resume_at = (
        Path(sys.argv[1]),
        Path(sys.argv[2]),
        *map(int, sys.argv[3:5]),
    )
    torch.set_num_threads(1)
    example = load_example()
    dist.init_process_group(os.environ.get("CG_DDP_BACKEND", "gloo"))
    rank = dist.get_rank()
    record: list = []
    finals = {}

    def capture(tag: str) -> None:
        problem = captured["problem"]
        finals[tag] = {
            "weights": {k: v.clone() for k, v in problem.model.state_dict().items()},
            "multipliers": problem.multiplier_values(),
        }

    captured: dict = {}
    original = example.make_problem

    def make_problem(seed, device):
        captured["problem"] = original(seed, device)
        return captured["problem"]

    example.make_problem = make_problem
    metrics = example.main(steps, outputs / f"rank{rank}" / "full", 0, batch_size=8, record=record)
    capture("full")
    # interrupted after resume_at steps, then resumed from the checkpoint to `steps`
    example.main(resume_at, outputs / f"rank{rank}" / "resumed", 0, batch_size=8)
    resumed_metrics = example.main(steps, outputs / f"rank{rank}" / "resumed", 0, batch_size=8)
    capture("resumed")
    # every reduction and formulation, no files
    example.make_problem = lambda seed, device: all_reductions_problem(seed, device)
    reductions: list = []
    example.main(steps, None, 0, batch_size=8, record=reductions)
    nan = nan_run(steps, rank, dist.get_world_size())
    records.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "record": record,
            "finals": finals,
            "metrics": metrics,
            "resumed": resumed_metrics,
            "reductions": reductions,
            "nan": nan,
        },
        records / f"rank{rank}.pt",
    )
    dist.destroy_process_group()


if __name__ == "__main__":
    run()
