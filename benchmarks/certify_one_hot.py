r"""Certificates over the plain box versus the exact one-hot domain, on trained Heart nets.

Trains constrained one-hidden-layer ReLU nets on the Heart COMET split (nominal codes one-hot,
28 inputs; plain box in training, as ``monotone_datasets.py`` does by default), then certifies
"risk increasing in trestbps and chol" twice: over the box, where every one-hot column ranges
over its interval, and over ``cg.Box(one_hot=...)``, where exactly one column of each group is
on. A proof over the box implies one over the groups; the reverse does not hold, so the box
can report violations that only occur at impossible inputs.

Run: ``OMP_NUM_THREADS=1 python benchmarks/certify_one_hot.py``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch

import constrained_grad as cg
import monotone_datasets as md


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--hidden", type=int, nargs="+", default=[16, 32])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--time-limit", type=float, default=120.0, help="seconds per MILP")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = md.parse(["--epochs", str(args.epochs)])
    train, test = md.load_heart("train"), md.load_heart("test")
    rows: list[dict[str, object]] = []
    print("| hidden | seed | plain box | one-hot groups |")
    print("|---|---|---|---|")
    for width in args.hidden:
        for seed in range(args.seeds):
            split = md.make_split(train, test, seed)
            conf = md.Config((width,), 3e-3, 1e-4, margin=0.0, dual_lr=1.0)
            got = md.train("constrained", train, split, seed, conf, cfg)
            assert got is not None
            model = got.model.double()
            grouped = md.make_split(train, test, seed, one_hot_domain=True).box
            row: dict[str, object] = {"hidden": width, "seed": seed}
            for name, box in (("plain box", split.box), ("one-hot groups", grouped)):
                t0 = time.perf_counter()
                mono = cg.Monotonic(train.monotone, train.direction, name="m")
                rep = cg.verify(
                    model,
                    [mono],
                    box,
                    samples=0,
                    adversarial=False,
                    certify="auto",
                    time_limit=args.time_limit,
                )["m"]
                row[name] = (rep.status, time.perf_counter() - t0)
            rows.append(row)
            cells = [f"{row[k][0]} ({row[k][1]:.2f} s)" for k in ("plain box", "one-hot groups")]  # type: ignore[index]
            print(f"| {width} | {seed} | {cells[0]} | {cells[1]} |", flush=True)
    return rows


if __name__ == "__main__":
    main()
