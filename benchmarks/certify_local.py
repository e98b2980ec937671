r"""Local certificates on trained 64-64 ReLU nets, and the cost of LP bound tightening.

1. Trains 7-64-64-1 ReLU nets on Auto-MPG (``cg.datasets.load_auto_mpg``, standardised,
   seeded split) with ``cg.Monotonic`` (decreasing in displacement, horsepower, weight) on the
   batches, then runs ``cg.verify_local`` on the test rows over the data box: fraction of
   rows certified and median / max seconds per row.
2. Times the LP tightening of the MILP encoding (``tighten="lp"``) of the same nets over the
   whole box, with HiGHS presolve on (the former setting) and off (the current one).

Run: ``OMP_NUM_THREADS=1 python benchmarks/certify_local.py [--seeds 2] [--epochs 150]
[--rows 10] [--time-limit 120] [--lp]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import constrained_grad as cg
from constrained_grad.datasets import AUTO_MPG_DECREASING, load_auto_mpg
from constrained_grad.verify import milp


def train(seed: int, epochs: int) -> tuple[nn.Module, object, list[int]]:
    data = load_auto_mpg(seed=seed)
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(7, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    mono = [data.feature_index(n) for n in AUTO_MPG_DECREASING]
    constraint = cg.Monotonic(inputs=mono, direction="decreasing", name="mpg")
    problem = cg.DerivativeProblem(
        net, loss=nn.functional.mse_loss, constraints=[constraint], example_input=data.x_train
    )
    loader = DataLoader(
        TensorDataset(data.x_train, data.y_train),
        batch_size=32,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    cg.fit(
        problem,
        loader,
        primal_optimizer=torch.optim.Adam(net.parameters(), 1e-3),
        dual_lr=1e-2,
        epochs=epochs,
        progress=False,
    )
    return net.eval(), data, mono


def lp_tightening_seconds(net: nn.Module, box: cg.Box, j: int, presolve: bool) -> float:
    layers = milp.parse_network(net, box.dim)
    saved = dict(milp._LP_OPTIONS)
    milp._LP_OPTIONS["presolve"] = presolve
    try:
        enc = milp._encode(layers, box, j, "lp")
    finally:
        milp._LP_OPTIONS.clear()
        milp._LP_OPTIONS.update(saved)
    return enc.tighten_time


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=150)
    p.add_argument("--rows", type=int, default=10, help="test rows certified per net")
    p.add_argument("--time-limit", type=float, default=120.0, help="seconds per net, shared")
    p.add_argument("--lp", action="store_true", help="also time LP tightening (slow)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out: list[dict[str, object]] = []
    for seed in range(args.seeds):
        t0 = time.perf_counter()
        net, data, mono = train(seed, args.epochs)
        train_s = time.perf_counter() - t0
        box = data.box  # type: ignore[attr-defined]
        spec = cg.Monotonic(inputs=mono, direction="decreasing", name="mpg")
        rows = data.x_test.double()[: args.rows]  # type: ignore[attr-defined]
        report = cg.verify_local(net, [spec], box, rows, time_limit=args.time_limit, progress=False)
        times = [r.seconds for r in report.rows]
        lp_on = lp_off = float("nan")
        if args.lp:
            lp_on = lp_tightening_seconds(net, box, mono[0], presolve=True)
            lp_off = lp_tightening_seconds(net, box, mono[0], presolve=False)
        row = {
            "seed": seed,
            "train_seconds": round(train_s, 1),
            "rows": len(report.rows),
            "certified": report.n_certified,
            "violated": report.n_violated,
            "unknown": report.n_unknown,
            "median_s_per_row": round(statistics.median(times), 3),
            "max_s_per_row": round(max(times), 3),
            "lp_tighten_presolve_on_s": round(lp_on, 2),
            "lp_tighten_presolve_off_s": round(lp_off, 2),
        }
        print(json.dumps(row), flush=True)
        out.append(row)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return out


if __name__ == "__main__":
    main()
