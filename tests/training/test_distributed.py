"""Data-parallel training over 2 processes (gloo, CPU), launched with torchrun.

Checks the must-haves of distributed constraint training: multipliers identical on every
rank after every step; the run equals a single-process run over the same global batches
(float64, to rounding); only rank 0 writes files; a run resumed from rank 0's checkpoint
equals the uninterrupted run. Plus the single-process pieces: the reductions over ranks
(RankSync arithmetic) checked against the global reductions they replace.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

import constrained_grad as cg
from constrained_grad.errors import InputValidationError
from constrained_grad.training import checkpoint

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parents[1] / "examples" / "distributed_training.py"
STEPS, RESUME_AT, PER_RANK_BATCH = 24, 10, 8

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is missing")


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_example() -> ModuleType:
    return _load("distributed_training_example", EXAMPLE)


def load_worker() -> ModuleType:
    """The torchrun worker's helpers (the problems and runs the ranks trained)."""
    return _load("ddp_worker", HERE / "ddp_worker.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class GlobalBatches:
    """The union of both ranks' DistributedSampler batches: the single-process oracle."""

    def __init__(self, n: int, world: int, batch: int, seed: int) -> None:
        self.samplers = [
            DistributedSampler(range(n), num_replicas=world, rank=r, shuffle=True, seed=seed)
            for r in range(world)
        ]
        self.batch = batch

    def set_epoch(self, epoch: int) -> None:
        for s in self.samplers:
            s.set_epoch(epoch)

    def __iter__(self):
        shards = [list(s) for s in self.samplers]
        for k in range(0, len(shards[0]), self.batch):
            yield [i for shard in shards for i in shard[k : k + self.batch]]

    def __len__(self) -> int:
        return -(-len(self.samplers[0]) // self.batch)


def launch(base: Path, backend: str) -> tuple[list[dict], Path]:
    """torchrun the worker on 2 processes; every rank's records and the outputs folder."""
    records, outputs = base / "records", base / "outputs"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", CG_DDP_BACKEND=backend)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        str(HERE / "ddp_worker.py"),
        str(records),
        str(outputs),
        str(STEPS),
        str(RESUME_AT),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return [
        torch.load(records / f"rank{r}.pt", weights_only=False, map_location="cpu")
        for r in range(2)
    ], outputs


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], Path]:
    return launch(tmp_path_factory.mktemp("ddp"), "gloo")


def test_multipliers_identical_on_both_ranks_after_every_step(ranks) -> None:
    (r0, r1), _ = ranks
    assert len(r0["record"]) == len(r1["record"]) == STEPS
    for step, (m0, m1) in enumerate(zip(r0["record"], r1["record"], strict=True)):
        for name in m0:
            assert torch.equal(m0[name], m1[name]), (step, name)
    # the constraints were active: some multiplier was positive during the run
    assert max(float(m[n].max()) for m in r0["record"] for n in m) > 0.01
    for key, w in r0["finals"]["full"]["weights"].items():
        assert torch.equal(w, r1["finals"]["full"]["weights"][key]), key


def test_equals_single_process_run_over_the_global_batches(ranks) -> None:
    (r0, _), _ = ranks
    example = load_example()
    torch.set_num_threads(1)
    data = example.make_data(0)
    problem = example.make_problem(0, torch.device("cpu"))
    loader = DataLoader(data, batch_sampler=GlobalBatches(len(data), 2, PER_RANK_BATCH, 0))
    record: list[dict[str, torch.Tensor]] = []
    result = example.train(problem, loader, STEPS, record=record, progress=False)
    assert result.steps == STEPS
    for step, (single, ddp) in enumerate(zip(record, r0["record"], strict=True)):
        for name in single:
            torch.testing.assert_close(
                single[name], ddp[name], rtol=1e-9, atol=1e-10, msg=f"{name} at step {step}"
            )
    weights = r0["finals"]["full"]["weights"]
    for key, w in problem.model.state_dict().items():
        torch.testing.assert_close(w, weights[key], rtol=1e-9, atol=1e-10)
    # the history rank 0 logged is the global batch's (loss of the global batch, not a shard)
    assert r0["metrics"]["loss"] == pytest.approx(result.history.column("loss")[-1], rel=1e-9)


def test_every_reduction_and_formulation_equals_the_single_process_run(ranks) -> None:
    """mean, l2_hinge, max with a quadratic penalty, an augmented Lagrangian on unequal box
    shards, pointwise AL multipliers, and a 1-point source evaluated whole on both ranks."""
    (r0, r1), _ = ranks
    all_reductions_problem = load_worker().all_reductions_problem
    example = load_example()
    torch.set_num_threads(1)
    data = example.make_data(0)
    problem = all_reductions_problem(0, torch.device("cpu"))
    loader = DataLoader(data, batch_sampler=GlobalBatches(len(data), 2, PER_RANK_BATCH, 0))
    record: list[dict[str, torch.Tensor]] = []
    example.train(problem, loader, STEPS, record=record, progress=False)
    assert len(r0["reductions"]) == STEPS
    active = set()
    for step, (single, m0, m1) in enumerate(
        zip(record, r0["reductions"], r1["reductions"], strict=True)
    ):
        for name in single:
            assert torch.equal(m0[name], m1[name]), (step, name)
            torch.testing.assert_close(
                single[name], m0[name], rtol=1e-9, atol=1e-10, msg=f"{name} at step {step}"
            )
            if float(single[name].max()) > 0:
                active.add(name)
    # every constraint with a multiplier was active at some step (so its sync was exercised)
    assert active == {"mean", "l2", "box_al", "pointwise_al", "one_point"}


def test_a_nan_on_one_rank_is_skipped_by_every_rank_like_the_single_process_run(ranks) -> None:
    """on_nonfinite="skip" with a NaN target held by rank 1 only: the global loss is NaN on
    both ranks, so both skip the same steps (no rank waits in a collective the other never
    joins), and the run equals the single-process run over the same global batches."""
    (r0, r1), _ = ranks
    worker = load_worker()
    nan_data, nan_rank1_index, nan_run = worker.nan_data, worker.nan_rank1_index, worker.nan_run
    example = load_example()
    torch.set_num_threads(1)
    n0, n1 = r0["nan"], r1["nan"]
    assert n0["skipped"] == n1["skipped"] >= 1
    assert n0["steps"] == n1["steps"] and len(n0["steps"]) == len(n0["record"])
    for m0, m1 in zip(n0["record"], n1["record"], strict=True):
        for name in m0:
            assert torch.equal(m0[name], m1[name]), name
    data = nan_data(0, nan_rank1_index(example.N_POINTS, PER_RANK_BATCH, 0))
    loader = DataLoader(data, batch_sampler=GlobalBatches(len(data), 2, PER_RANK_BATCH, 0))
    single = nan_run(STEPS, 0, 1, loader=loader)
    assert single["skipped"] == n0["skipped"] and single["steps"] == n0["steps"]
    for key, w in single["weights"].items():
        assert torch.isfinite(w).all(), key
        torch.testing.assert_close(w, n0["weights"][key], rtol=1e-9, atol=1e-10)


def test_only_rank_0_writes_files(ranks) -> None:
    _, outputs = ranks
    assert not (outputs / "rank1").exists()
    full = outputs / "rank0" / "full"
    assert (full / "checkpoint" / "checkpoint.pt").is_file()
    assert (full / "history.json").is_file() and (full / "history.png").is_file()
    saved = checkpoint.load(full / "checkpoint" / "checkpoint.pt")
    assert saved["world_size"] == 2 and len(saved["ranks"]) == 2


def test_resume_from_rank_0_checkpoint_equals_uninterrupted_run(ranks) -> None:
    (r0, r1), _ = ranks
    for r in (r0, r1):
        full, resumed = r["finals"]["full"], r["finals"]["resumed"]
        for key, w in full["weights"].items():
            assert torch.equal(w, resumed["weights"][key]), key
        for name, m in full["multipliers"].items():
            assert torch.equal(m, resumed["multipliers"][name]), name
    assert r0["resumed"] == r0["metrics"]


def test_distributed_true_without_a_process_group_is_a_clear_error() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    problem = cg.DerivativeProblem(model, torch.nn.functional.mse_loss, [cg.Monotonic([0])])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(InputValidationError, match="init_process_group"):
        cg.Trainer(problem, opt, distributed=True)
    with pytest.raises(InputValidationError, match="distributed must be"):
        cg.Trainer(problem, opt, distributed="yes")  # type: ignore[arg-type]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices (NCCL)")
def test_nccl_on_two_gpus_matches_the_cpu_single_process_run(tmp_path: Path) -> None:
    """The same run on 2 GPUs with NCCL: identical multipliers on both ranks, and the
    single-process CPU run over the same global batches to float64 rounding."""
    (r0, r1), _ = launch(tmp_path, "nccl")
    for m0, m1 in zip(r0["record"], r1["record"], strict=True):
        for name in m0:
            assert torch.equal(m0[name], m1[name]), name
    example = load_example()
    data = example.make_data(0)
    problem = example.make_problem(0, torch.device("cpu"))
    loader = DataLoader(data, batch_sampler=GlobalBatches(len(data), 2, PER_RANK_BATCH, 0))
    record: list[dict[str, torch.Tensor]] = []
    example.train(problem, loader, STEPS, record=record, progress=False)
    for single, ddp in zip(record, r0["record"], strict=True):
        for name in single:
            torch.testing.assert_close(single[name], ddp[name].cpu(), rtol=1e-7, atol=1e-9)
