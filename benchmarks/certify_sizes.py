r"""Global and local certificates at the sizes people train, with and without certified training.

For each task and activation, three 64-64 MLPs are trained with the same optimiser, steps and
seed, and differ only in how monotonicity is asked for:

``certified``    ``cg.Monotonic`` with a margin on every batch (tanh nets: alone for the first
                 30 % of the steps, ``--warm``), then also ``cg.Monotonic`` over
                 ``cg.Cells(box)`` (a sound bound of the derivative on each cell of an
                 adaptive partition of the box, one multiplier per cell, ``dual_lr`` 0.01
                 for tanh and 0.05 for ReLU nets (``RECIPES``), ``slack=1e-4``) and a
                 ``cg.Prover`` that certifies during the rest, keeps the best proved state
                 by validation MSE and restores it at the end;
``constrained``  points only: ``cg.Monotonic`` with a margin on every batch and at uniform
                 points of the box (``cg.InBox``), as the docs recommended before cells;
``none``         the loss alone.

Each net is then certified **globally** over the box with ``cg.verify(certify=True,
time_limit=T)`` (the certified nets through their constraint over cells, whose partition seeds
the certificate; the others by the exact MILP for ReLU and interval branch and bound for tanh),
and **locally** at test rows with ``cg.verify_local`` (each monotone feature over its whole
range, the others held at the row). One JSON record per net and scope::

    {task, arch, activation, training, scope, status, seconds, cells, test_mse, ...}

Tasks: Auto-MPG 7-64-64-1 (``cg.datasets.load_auto_mpg``, mpg decreasing in displacement,
horsepower, weight; test MSE in mpg²), a synthetic 8-D task 8-64-64-1 on ``[-1, 1]^8``
(``y = x0 + 0.5 tanh(2 x1) + sin(3 x2) x3 + noise``, increasing in x0 and x1) and a 6-64-64-7
tanh net whose 7 outputs all increase in input 5 (``constrained_grad.demo.every_output_data``).

Run: ``OMP_NUM_THREADS=1 python benchmarks/certify_sizes.py [--quick] --json PATH
[--only auto-mpg/relu ...] [--trainings certified none] [--warm 0.3] [--cells-dual-lr 0.01]
[--cells-slack 1e-4]`` (``--warm 0 --cells-dual-lr 0.05 --cells-slack 0`` is the recipe
before the warm start).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch
import torch.nn.functional as F
from torch import nn

import constrained_grad as cg
from _cells import add_cell_options, cells_from
from constrained_grad.datasets import AUTO_MPG_DECREASING, load_auto_mpg
from constrained_grad.demo import _cosine, _epochs_for, _loader, _mlp, every_output_data

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}
RUNS = (
    "auto-mpg/relu",
    "auto-mpg/tanh",
    "synthetic-8d/relu",
    "synthetic-8d/tanh",
    "every-output/tanh",
)
TRAININGS = ("certified", "constrained", "none")


@dataclass
class Task:
    """Standardised tensors of one task, its box and monotone declaration."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    box: cg.Box
    inputs: list[int]
    direction: str
    margin: float  # margin at the batch / box points (units of the standardised target)
    mse_scale: float = 1.0  # test MSE in target units²

    @property
    def sizes(self) -> list[int]:
        return [self.x_train.shape[1], 64, 64, self.y_train.shape[1]]


def synthetic_8d(n: int, gen: torch.Generator, noise: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``y = x0 + 0.5 tanh(2 x1) + sin(3 x2) x3 + noise`` on ``[-1, 1]^8``: increasing in x0
    and x1, not monotone in x2 and x3, x4..x7 irrelevant."""
    x = torch.rand(n, 8, generator=gen) * 2 - 1
    y = x[:, 0] + 0.5 * torch.tanh(2 * x[:, 1]) + torch.sin(3 * x[:, 2]) * x[:, 3]
    return x, (y + noise * torch.randn(n, generator=gen)).unsqueeze(1)


def make_task(name: str, seed: int) -> Task:
    if name == "auto-mpg":
        d = load_auto_mpg(seed=seed)
        mono = [d.feature_index(f) for f in AUTO_MPG_DECREASING]
        return Task(
            name, d.x_train, d.y_train, d.x_val, d.y_val, d.x_test, d.y_test, d.box, mono,
            "decreasing", 0.1, d.mse_scale,
        )  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    if name == "synthetic-8d":
        parts = [synthetic_8d(n, gen, nz) for n, nz in ((1024, 0.1), (256, 0.1), (1024, 0.0))]
        box = cg.Box([-1.0] * 8, [1.0] * 8)
        return Task(name, *parts[0], *parts[1], *parts[2], box, [0, 1], "increasing", 0.05)
    if name == "every-output":
        parts = [every_output_data(n, gen, nz) for n, nz in ((1024, 0.2), (256, 0.2), (1024, 0.0))]
        box = cg.Box([-1.0] * 6, [1.0] * 6)
        return Task(name, *parts[0], *parts[1], *parts[2], box, [5], "increasing", 0.05)
    raise ValueError(f"make_task: unknown task {name!r} (choose from {RUNS})")


def mse(model: nn.Module, x: torch.Tensor, y: torch.Tensor, scale: float = 1.0) -> float:
    was = model.training
    model.eval()
    with torch.no_grad():
        out = float(F.mse_loss(model(x), y)) * scale
    model.train(was)
    return out


#: certified recipe per activation when --warm / --cells-dual-lr are not given: smooth nets
#: fit the points first (30 % of the steps) and push the cells gently (the coarse cells'
#: loose bounds otherwise derail the start); ReLU nets start with the cells at once
RECIPES = {
    "relu": {"warm": 0.0, "cells_dual_lr": 0.05},
    "tanh": {"warm": 0.3, "cells_dual_lr": 0.01},
}


def _recipe(cfg: argparse.Namespace, activation: str) -> dict[str, float]:
    base = RECIPES[activation]
    return {
        "warm": base["warm"] if cfg.warm is None else cfg.warm,
        "cells_dual_lr": base["cells_dual_lr"] if cfg.cells_dual_lr is None else cfg.cells_dual_lr,
    }


def train(
    task: Task, activation: str, training: str, cfg: argparse.Namespace
) -> tuple[nn.Module, dict[str, Any], Any]:
    """One net; returns it (eval mode), training facts and the constraint to certify."""
    torch.manual_seed(cfg.seed)
    model = _mlp(task.sizes, ACTIVATIONS[activation])
    inputs, direction = task.inputs, task.direction
    constraints: list[cg.Monotonic] = []
    callbacks: list[Any] = []
    prover = proved = None
    # certified: the first `warm` steps fit the points only (the same optimiser and
    # schedule carry on); the cells are switched on once the net fits the data roughly
    recipe = _recipe(cfg, activation)
    warm = round(recipe["warm"] * cfg.steps) if training == "certified" else 0
    if training != "none":
        constraints.append(cg.Monotonic(inputs, direction, margin=task.margin, name="on_data"))
    if training == "constrained":
        where = cg.InBox(task.box, n=cfg.box_points)
        constraints.append(
            cg.Monotonic(inputs, direction, margin=task.margin, where=where, name="in_box")
        )
    if training == "certified":
        cells = cells_from(task.box, cfg)
        proved = cg.Monotonic(
            inputs, direction, where=cells, dual_lr=recipe["cells_dual_lr"], name="proved"
        )
        constraints.append(proved)
        prover = cg.Prover(
            task.box,
            every=max(1, (cfg.steps - warm) // cfg.checks),
            constraints=["proved"],
            time_limit=cfg.prover_time_limit,
            samples=1024,
            score=lambda m: mse(m, task.x_val, task.y_val),
            restore=True,
        )
        callbacks.append(prover)
    loader = _loader(task.x_train, task.y_train, 64, cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    schedule = _cosine(opt, cfg.steps)
    phases = [(constraints[:1], warm, [])] if warm else []
    phases.append((constraints, cfg.steps - warm, callbacks))
    t0 = time.perf_counter()
    for active, steps, cbs in phases:
        cg.fit(
            cg.DerivativeProblem(model, F.mse_loss, active, seed=cfg.seed),
            loader,
            opt,
            dual_lr=2.0,
            epochs=_epochs_for(steps, loader),
            steps=steps,
            callbacks=[lambda _: schedule.step(), *cbs],
            progress=False,
        )
    facts: dict[str, Any] = {"train_seconds": round(time.perf_counter() - t0, 1)}
    model.eval()
    facts["test_mse"] = round(mse(model, task.x_test, task.y_test, task.mse_scale), 4)
    if prover is not None:
        facts["prover"] = prover.status
        facts["proved_step"] = prover.proved_step
        facts["prover_checks"] = len(prover.checks)
        facts["warm_steps"] = warm
        facts["cells_dual_lr"] = recipe["cells_dual_lr"]
        facts["cells_slack"] = cfg.cells_slack
    return model, facts, proved


def certify_global(
    model: nn.Module, task: Task, spec: Any, time_limit: float, seed: int
) -> dict[str, Any]:
    """``cg.verify(certify=True)`` over the box: a short search first (finds violations of
    uncertified nets in a second; a violation it finds is confirmed by autograd and ends the
    check), then search and certificates again in what is left of ``time_limit``."""
    spec = spec or cg.Monotonic(task.inputs, task.direction, name="monotone")
    t0 = time.perf_counter()
    search = {"samples": 4096, "starts": 16, "steps": 30, "seed": seed, "progress": False}
    r = cg.verify(model, [spec], task.box, certify=False, **search).constraints[0]
    if r.status != "violated":  # a violation confirmed by autograd needs no certificate
        left = max(time_limit - (time.perf_counter() - t0), 1e-3)
        r = cg.verify(model, [spec], task.box, certify=True, time_limit=left, **search).constraints[
            0
        ]
    return {
        "status": r.status,
        "seconds": round(time.perf_counter() - t0, 2),
        "max_violation": None if r.max_violation is None else round(r.max_violation, 4),
        "cells": spec.where.n if isinstance(spec.where, cg.Cells) else None,
    }


def certify_local(model: nn.Module, task: Task, rows: int, time_limit: float) -> dict[str, Any]:
    """``cg.verify_local`` at the first ``rows`` test rows (clipped into the box)."""
    x = task.box.project(task.x_test[:rows].double())
    spec = cg.Monotonic(task.inputs, task.direction, name="monotone")
    t0 = time.perf_counter()
    rep = cg.verify_local(model, [spec], task.box, x, time_limit=time_limit, progress=False)
    secs = [r.seconds for r in rep.rows]
    status = "certified" if rep.n_certified == len(rep.rows) else (
        "violated" if rep.n_violated else "unknown"
    )  # fmt: skip
    return {
        "status": status,
        "seconds": round(time.perf_counter() - t0, 2),
        "rows": len(rep.rows),
        "rows_certified": rep.n_certified,
        "rows_violated": rep.n_violated,
        "fraction_certified": round(rep.fraction_certified, 3),
        "median_s_per_row": round(statistics.median(secs), 3),
        "max_s_per_row": round(max(secs), 3),
        "cells": None,
    }


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--quick", action="store_true", help="500 steps, 10 local rows")
    p.add_argument("--only", nargs="+", choices=RUNS, default=list(RUNS), metavar="TASK/ACT")
    p.add_argument("--trainings", nargs="+", choices=TRAININGS, default=list(TRAININGS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="default 1500 (500 with --quick)")
    p.add_argument("--box-points", type=int, default=2048, help="constrained: InBox points")
    add_cell_options(p)
    p.add_argument(
        "--cells-dual-lr",
        type=float,
        default=None,
        help="certified: cells' dual_lr (default per activation, RECIPES: tanh 0.01, relu 0.05)",
    )
    p.add_argument(
        "--warm",
        type=float,
        default=None,
        help="certified: fraction of the steps trained on the points only before the cells "
        "(default per activation, RECIPES: tanh 0.3, relu 0)",
    )
    p.add_argument("--checks", type=int, default=6, help="certified: Prover checks per fit")
    p.add_argument("--prover-time-limit", type=float, default=5.0)
    p.add_argument("--time-limit", type=float, default=10.0, help="global: certified nets")
    p.add_argument(
        "--time-limit-other", type=float, default=60.0, help="global: constrained and none nets"
    )
    p.add_argument("--rows", type=int, default=None, help="local: test rows (default 40; 10)")
    p.add_argument("--local-time-limit", type=float, default=None, help="local: whole call")
    p.add_argument("--json", type=Path, default=None)
    cfg = p.parse_args(argv)
    cfg.steps = cfg.steps or (500 if cfg.quick else 1500)
    cfg.rows = cfg.rows or (10 if cfg.quick else 40)
    cfg.local_time_limit = cfg.local_time_limit or max(30.0, 3.0 * cfg.rows)
    return cfg


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    cfg = parse(argv)
    torch.set_num_threads(1)
    out: list[dict[str, Any]] = []
    for run in cfg.only:
        name, act = run.split("/")
        task = make_task(name, cfg.seed)
        arch = "-".join(map(str, task.sizes))
        for training in cfg.trainings:
            model, facts, spec = train(task, act, training, cfg)
            limit = cfg.time_limit if training == "certified" else cfg.time_limit_other
            base = {"task": name, "arch": arch, "activation": act, "training": training}
            scopes = {
                "global": certify_global(model, task, spec, limit, cfg.seed),
                "local": certify_local(model, task, cfg.rows, cfg.local_time_limit),
            }
            for scope, got in scopes.items():
                rec = {**base, "scope": scope, **got, **facts, "steps": cfg.steps}
                print(json.dumps(rec), flush=True)
                out.append(rec)
            if cfg.json is not None:  # after each net, so that a long run leaves results
                cfg.json.write_text(json.dumps(out, indent=2, allow_nan=False) + "\n")
    print_table(out)
    return out


def print_table(records: list[dict[str, Any]]) -> None:
    print("| task | arch | act | training | test MSE | global | s | cells | local proved | "
          "median / max s per row |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    by = {}
    for r in records:
        by.setdefault((r["task"], r["activation"], r["training"]), {})[r["scope"]] = r
    for (task, act, training), s in by.items():
        g, loc = s["global"], s["local"]
        print(
            f"| {task} | {g['arch']} | {act} | {training} | {g['test_mse']:.4g} | {g['status']} | "
            f"{g['seconds']:.3g} | {g['cells'] if g['cells'] is not None else '—'} | "
            f"{loc['rows_certified']}/{loc['rows']} | {loc['median_s_per_row']:.3g} / "
            f"{loc['max_s_per_row']:.3g} |"
        )


if __name__ == "__main__":
    main()
