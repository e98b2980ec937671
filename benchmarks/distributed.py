"""Cost of data-parallel constraint training: 2 ranks (gloo, CPU, 1 thread each).

Scenario: MLP 7→64→64→1 (tanh), MSE, Adam, per-rank batch ``--batch`` (global batch twice
that), two monotonicity constraints: ``∂f/∂x_6 ≥ 0`` on the batch (mean hinge) and at 256
uniform box points split across the ranks (max). Methods, timed per step on each rank in
interleaved blocks (median over blocks, the slower rank's figure):

``plain_ddp``   unconstrained DDP step: ``DistributedDataParallel`` forward, MSE, backward
                (DDP's bucketed all-reduce), Adam.
``ours``        ``cg.Trainer(...).step(shard)`` with data-parallel sync (one all-gather of
                constraint summaries, one all-reduce of gradients), history included.
``ours_local``  the same Trainer step with ``distributed=False`` on the shard: what the
                constraint step costs without any communication.

Also reported: the time spent in the two sync phases per step (``exchange``,
``reduce_gradients``) and, within them, inside the collective calls themselves (waiting for
the other rank included), and (in the parent process,
1 thread) the single-process ``cg.Trainer`` step on the global batch.

Run: ``python benchmarks/distributed.py [--quick] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import constrained_grad as cg

Z = 6


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(7, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1)
    )


def make_problem(model: nn.Module) -> cg.DerivativeProblem:
    box = cg.Box([-2.0] * 7, [2.0] * 7)
    return cg.DerivativeProblem(
        model,
        F.mse_loss,
        [
            cg.Monotonic([Z], name="batch"),
            cg.Monotonic([Z], name="box", where=cg.InBox(box, n=256), reduction="max"),
        ],
    )


def data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 7, generator=gen)
    y = torch.sin(x.sum(1, keepdim=True)) + 0.1 * x[:, Z:]
    return x, y


def timed_blocks(steps: dict[str, Any], rounds: int, per_block: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            if dist.is_initialized():
                dist.barrier()
            t0 = time.perf_counter()
            for _ in range(per_block):
                step()
            out[name].append((time.perf_counter() - t0) / per_block * 1e3)
    return out


def worker(rank: int, world: int, port: int, args: argparse.Namespace, queue: Any) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    x, y = data(args.batch, seed=rank + 1)

    plain_model = make_model()
    ddp = nn.parallel.DistributedDataParallel(plain_model)
    plain_opt = torch.optim.Adam(ddp.parameters(), lr=1e-3)

    def plain_step() -> None:
        plain_opt.zero_grad(set_to_none=True)
        F.mse_loss(ddp(x), y).backward()
        plain_opt.step()

    ours_model = make_model()
    ours = cg.Trainer(
        make_problem(ours_model), torch.optim.Adam(ours_model.parameters(), lr=1e-3), dual_lr=0.1
    )
    local_model = make_model()
    local = cg.Trainer(
        make_problem(local_model),
        torch.optim.Adam(local_model.parameters(), lr=1e-3),
        dual_lr=0.1,
        distributed=False,
    )
    sync = ours.sync
    assert sync is not None
    comm = {"exchange": 0.0, "reduce_gradients": 0.0}
    for method in comm:
        original = getattr(sync, method)

        def timed(*a: Any, _f: Any = original, _m: str = method, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return _f(*a, **k)
            finally:
                comm[_m] += time.perf_counter() - t0

        setattr(sync, method, timed)
    # time inside the collectives themselves (waiting for the other rank included)
    from constrained_grad.problem import sync as sync_module

    wire = [0.0]

    class TimedDist:
        def __getattr__(self, name: str) -> Any:
            f = getattr(dist, name)
            if name not in ("all_gather", "all_reduce"):
                return f

            def timed(*a: Any, **k: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return f(*a, **k)
                finally:
                    wire[0] += time.perf_counter() - t0

            return timed

    sync_module.dist = TimedDist()  # type: ignore[assignment]

    batch = (x, y)
    steps = {
        "plain_ddp": plain_step,
        "ours": lambda: ours.step(batch),
        "ours_local": lambda: local.step(batch),
    }
    timed_blocks(steps, 1, args.warmup)
    comm.update(exchange=0.0, reduce_gradients=0.0)
    wire[0] = 0.0
    times = timed_blocks(steps, args.rounds, args.steps)
    n_ours = args.rounds * args.steps
    result = {k: statistics.median(v) for k, v in times.items()}
    for method, seconds in comm.items():
        result[f"{method}_ms_per_step"] = seconds / n_ours * 1e3
    result["comm_ms_per_step"] = sum(comm.values()) / n_ours * 1e3
    result["in_collectives_ms_per_step"] = wire[0] / n_ours * 1e3
    queue.put((rank, result))
    dist.destroy_process_group()


def single_process(args: argparse.Namespace) -> float:
    torch.set_num_threads(1)
    xs, ys = zip(*(data(args.batch, seed=r + 1) for r in range(2)), strict=True)
    batch = (torch.cat(xs), torch.cat(ys))
    model = make_model()
    trainer = cg.Trainer(
        make_problem(model), torch.optim.Adam(model.parameters(), lr=1e-3), dual_lr=0.1
    )
    times = timed_blocks({"single": lambda: trainer.step(batch)}, 1, args.warmup)
    times = timed_blocks({"single": lambda: trainer.step(batch)}, args.rounds, args.steps)
    return statistics.median(times["single"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64, help="per rank")
    p.add_argument("--steps", type=int, default=100, help="steps per timed block")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--quick", action="store_true", help="fewer, shorter blocks")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    if args.quick:
        args.steps, args.rounds, args.warmup = 30, 3, 10
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.spawn(worker, args=(2, port, args, queue), nprocs=2, join=True)
    per_rank = dict(queue.get() for _ in range(2))
    worst = {k: max(per_rank[r][k] for r in per_rank) for k in per_rank[0]}
    worst["single_process_global_batch"] = single_process(copy.copy(args))
    ratios = {
        "ours / plain_ddp": worst["ours"] / worst["plain_ddp"],
        "ours / ours_local (cost of the sync)": worst["ours"] / worst["ours_local"],
        "comm share of ours": worst["comm_ms_per_step"] / worst["ours"],
        "ours (2 ranks) / single process, global batch": worst["ours"]
        / worst["single_process_global_batch"],
    }
    print(f"per step, ms (slower rank; per-rank batch {args.batch}, 2 ranks, gloo, 1 thread):")
    for k, v in worst.items():
        print(f"  {k:32s} {v:8.3f}")
    for k, v in ratios.items():
        print(f"  {k:48s} {v:6.2f}")
    if args.json is not None:
        args.json.write_text(
            json.dumps({"ms": worst, "ratios": ratios, "args": vars(args)}, indent=2, default=str)
        )


if __name__ == "__main__":
    main()
