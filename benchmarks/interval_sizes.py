"""How large a smooth network the interval certificate proves: time and boxes against input
dimension, width and depth (the table in docs/how-to/verify.md).

Each net is a seeded random tanh MLP ``d -> widths -> 1`` (PyTorch default initialisation);
the bound is ``d f / d x_0 >= m - gap * (M - m)`` with ``m``, ``M`` the smallest and largest
derivative over 100k uniform points of ``[-1, 1]^d``, so it holds (nearly) everywhere and the
certificate has to get within ``gap`` of the true minimum.

    python benchmarks/interval_sizes.py [--time-limit 60] [--gap 0.1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch
from torch import nn

import constrained_grad as cg


def net(d: int, widths: list[int], seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    prev = d
    for w in widths:
        layers += [nn.Linear(prev, w), nn.Tanh()]
        prev = w
    return nn.Sequential(*layers, nn.Linear(prev, 1)).double()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--time-limit", type=float, default=60.0)
    parser.add_argument("--gap", type=float, default=0.1)
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    cases = [(2, [16]), (4, [16]), (6, [16]), (6, [64]), (6, [256]), (8, [32]), (10, [32])]
    cases += [(6, [16, 16]), (6, [32, 32]), (6, [64, 64]), (4, [16, 16, 16])]
    print("| network | seed | result | boxes | seconds |")
    print("|---|---|---|---|---|")
    for d, widths in cases:
        for seed in range(args.seeds):
            model = net(d, widths, seed)
            x = torch.rand(100_000, d, generator=torch.Generator().manual_seed(seed)) * 2 - 1
            x = x.double().requires_grad_(True)
            (g,) = torch.autograd.grad(model(x).sum(), x)
            lo, hi = float(g[:, 0].min()), float(g[:, 0].max())
            t0 = time.perf_counter()
            cert = cg.certify_interval(
                model,
                [-1.0] * d,
                [1.0] * d,
                input_index=0,
                lower=lo - args.gap * (hi - lo),
                max_boxes=10**7,
                time_limit=args.time_limit,
            )
            name = "→".join(str(n) for n in [d, *widths, 1])
            print(
                f"| {name} | {seed} | {cert.status} | {cert.checks[0].nodes} | "
                f"{time.perf_counter() - t0:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
