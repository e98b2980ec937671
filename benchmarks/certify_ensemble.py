r"""Exact certificate of an ensemble: one joint MILP versus one MILP per member.

Trains ``--members`` constrained one-hidden-layer ReLU nets on Auto-MPG, one per fold of the
train part of split 0 (exactly as ``monotone_datasets.py --ensemble`` does), then certifies
"mpg decreasing in displacement, horsepower and weight" on the data box for each member and
for their mean, :class:`constrained_grad.Ensemble`, encoded as one block-diagonal network.
A positive combination of monotone members is monotone, so member certificates suffice; the
joint MILP is also complete (it can certify an ensemble whose members are not all monotone).

Run: ``python benchmarks/certify_ensemble.py --hidden 16 32``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch

import constrained_grad as cg
import monotone_datasets as md
from constrained_grad.verify import CertificateSet


def run(width: int, members: int, epochs: int, time_limit: float) -> dict:
    cfg = md.parse(["--hidden", str(width), "--epochs", str(epochs)])
    table = md.load_auto_mpg()
    conf = md.grid("constrained", cfg)[0]
    nets, splits, eligible = [], [], []
    for fold in range(members):
        split = md.make_split(table, None, 0, fold=fold)
        got = md.train("constrained", table, split, 1000 * fold, conf, cfg)
        assert got is not None
        nets.append(got.model)
        splits.append(split)
        eligible.append(got.eligible)
    box = splits[0].box

    def certify(model: torch.nn.Module) -> CertificateSet:
        return cg.certify_monotonic(
            model,
            box.low,
            box.high,
            inputs=table.monotone,
            direction="decreasing",
            time_limit=time_limit,
        )

    rows: list[dict[str, Any]] = []
    for k, net in enumerate(nets):
        t0 = time.perf_counter()
        cert = certify(net)
        rows.append({"member": k, "status": cert.status, "seconds": time.perf_counter() - t0})
    ens = md.mean_ensemble(nets, splits, units=splits[0])
    t0 = time.perf_counter()
    cert = certify(ens)
    joint = {
        "status": cert.status,
        "seconds": time.perf_counter() - t0,
        "binaries": max(c.n_binaries for c in cert.certificates),
    }
    out = {
        "network": f"7→{width}→1",
        "members": members,
        "epochs": epochs,
        "eligible_members": sum(eligible),
        "member_certificates": rows,
        "member_seconds_total": sum(r["seconds"] for r in rows),
        "joint": joint,
    }
    statuses = ", ".join(r["status"] for r in rows)
    print(
        f"7→{width}→1 x {members}: members [{statuses}] in {out['member_seconds_total']:.2f} s; "
        f"joint {joint['status']} in {joint['seconds']:.2f} s ({joint['binaries']} binaries)",
        flush=True,
    )
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--hidden", type=int, nargs="+", default=[16, 32])
    p.add_argument("--members", type=int, default=5, choices=range(2, md.FOLDS + 1))
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--time-limit", type=float, default=120.0, help="seconds per MILP")
    p.add_argument("--json", type=Path, default=None)
    cfg = p.parse_args(argv)
    torch.set_num_threads(1)
    results = [run(w, cfg.members, cfg.epochs, cfg.time_limit) for w in cfg.hidden]
    if cfg.json is not None:
        cfg.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
