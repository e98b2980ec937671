"""A small seeded constrained training run, killed and resumed by the reliability tests.

Run as a script (``python resume_child.py --ckpt DIR --out FILE ...``) in a subprocess, or
call :func:`run` in-process for the uninterrupted reference. Every source of randomness a
resumed run must reproduce is present: a shuffled ``DataLoader`` with its own generator,
dropout (torch's global generator), numpy and Python noise drawn while loading items,
random box points (``InBox``) and random output projections (``vjp_sphere``) drawn from the
problem's generator, and Adam's moment estimates.

Hooks for the tests:

* ``--progress FILE``: after every step the step count is written to ``FILE``;
* ``--forward-sleep S``: every forward pass of the model pauses ``S`` seconds;
* ``--hang-at-save K``: the ``K``-th checkpoint save of this process writes and fsyncs its
  temporary file completely, then writes ``FILE.hang`` (the signal) and sleeps instead of
  renaming it over ``checkpoint.pt`` (``os.replace`` is patched) — the parent kills the
  process at that moment;
* ``--buffer-mb M``: a persistent ``M`` MB buffer in the model makes every checkpoint
  write slow, so a kill at a random moment can land inside one;
* ``--wait-for FILE``: import everything, then wait until ``FILE`` exists before training
  (the parent starts the resuming process early, so its slow start-up overlaps the run it
  replaces, and lets it go once that run is dead).
"""

from __future__ import annotations

import argparse
import importlib
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import constrained_grad as cg

N_POINTS, N_FEATURES, N_OUTPUTS, BATCH = 40, 3, 2, 8  # 5 batches per epoch


class NoisyData(Dataset):
    """Fixed inputs/targets plus numpy and Python noise drawn when an item is read."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(123)
        self.x = torch.rand(N_POINTS, N_FEATURES, generator=g) * 2 - 1
        w = torch.tensor([[1.0, -0.5], [0.3, 0.8], [-0.7, 0.2]])
        self.y = torch.sin(self.x @ w) + 0.05 * torch.randn(N_POINTS, N_OUTPUTS, generator=g)

    def __len__(self) -> int:
        return N_POINTS

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        # the legacy global numpy generator on purpose: checkpoints must capture it
        jitter = float(np.random.normal(0.0, 0.01)) + random.uniform(-0.01, 0.01)  # noqa: NPY002
        return self.x[i] + jitter, self.y[i]


class Net(nn.Module):
    """MLP with dropout; an optional large persistent buffer bloats the checkpoint, and an
    optional pause in every forward pass makes a kill likely to land inside a step (after
    some of its random draws, between its forward passes)."""

    def __init__(self, buffer_mb: float = 0.0, forward_sleep: float = 0.0) -> None:
        super().__init__()
        self.forward_sleep = forward_sleep
        self.body = nn.Sequential(
            nn.Linear(N_FEATURES, 16), nn.Tanh(), nn.Dropout(0.2), nn.Linear(16, N_OUTPUTS)
        )
        n = int(buffer_mb * 2**20 / 4)
        self.register_buffer("ballast", torch.arange(n, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.forward_sleep:
            time.sleep(self.forward_sleep)
        return self.body(x)


def run(
    ckpt: str | None,
    *,
    steps: int,
    every: int | None,
    epochs: int = 100,
    update: str = "simultaneous",
    buffer_mb: float = 0.0,
    forward_sleep: float = 0.0,
    callbacks: tuple[Any, ...] = (),
    first_steps: int = 0,
) -> dict[str, Any]:
    """Train from scratch (or resume from ``ckpt``); return the final state as plain data.

    ``first_steps``: first train that many steps without checkpoints, then continue their
    history (``fit(history=...)``) in the checkpointed run.
    """
    torch.set_num_threads(1)
    torch.manual_seed(0)
    np.random.seed(0)  # noqa: NPY002
    random.seed(0)
    model = Net(buffer_mb, forward_sleep)
    box = cg.Box([-1.0] * N_FEATURES, [1.0] * N_FEATURES)
    constraints = [
        cg.Monotonic(inputs=[0], outputs=[0], where=cg.InBox(box, n=16), name="mono"),
        cg.JacobianNormBound(0.35, estimator="vjp_sphere", samples=2, name="jac"),
    ]
    problem = cg.DerivativeProblem(model, nn.functional.mse_loss, constraints, seed=7)
    loader = DataLoader(
        NoisyData(), batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(5)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    history = None
    if first_steps:
        first = cg.fit(
            problem, loader, opt, dual_lr=0.5, steps=first_steps, update=update, progress=False
        )
        history = first.history
    result = cg.fit(
        problem,
        loader,
        opt,
        dual_lr=0.5,
        epochs=epochs,
        steps=steps,
        update=update,
        progress=False,
        checkpoint_dir=ckpt,
        checkpoint_every=every,
        callbacks=callbacks,
        history=history,
    )
    return {
        "steps": result.steps,
        "params": {k: v.clone() for k, v in model.state_dict().items() if k != "ballast"},
        "multipliers": {k: v.clone() for k, v in problem.multiplier_values().items()},
        "history": result.history.to_dict(),
    }


def _hang_in_save(k: int, signal: Path) -> None:
    """Make the ``k``-th checkpoint write finish and fsync its temporary file, signal, then
    sleep instead of renaming it over ``checkpoint.pt``."""
    real_replace = os.replace
    count = [0]

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if Path(dst).name == "checkpoint.pt":
            count[0] += 1
            if count[0] == k:
                signal.write_text(str(k))
                time.sleep(600)  # the parent kills us here: temp file written, not renamed
        real_replace(src, dst, *args, **kwargs)

    os.replace = replace  # type: ignore[assignment]


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--ckpt", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--every", type=int, default=1)
    p.add_argument("--update", default="simultaneous")
    p.add_argument("--buffer-mb", type=float, default=0.0)
    p.add_argument("--progress", default=None)
    p.add_argument("--hang-at-save", type=int, default=0)
    p.add_argument("--forward-sleep", type=float, default=0.0)
    p.add_argument("--wait-for", default=None)
    a = p.parse_args(argv)
    if a.wait_for:
        # what the first derivative computation would import lazily (torch.func pulls in
        # dynamo and sympy, seconds on a loaded machine): load it while waiting
        for module in ("torch.func", "torch._dynamo", "sympy"):
            importlib.import_module(module)
        deadline = time.monotonic() + 600
        while not Path(a.wait_for).exists():
            if time.monotonic() > deadline:
                sys.exit("resume_child: never told to start")
            time.sleep(0.01)
    callbacks = []
    if a.progress:
        progress = Path(a.progress)

        def report(info: cg.StepInfo) -> None:
            tmp = progress.with_suffix(".tmp")
            tmp.write_text(str(info.step))
            os.replace(tmp, progress)

        callbacks.append(report)
    if a.hang_at_save:
        _hang_in_save(a.hang_at_save, Path(a.out + ".hang"))
    out = run(
        a.ckpt,
        steps=a.steps,
        every=a.every,
        update=a.update,
        buffer_mb=a.buffer_mb,
        forward_sleep=a.forward_sleep,
        callbacks=tuple(callbacks),
    )
    torch.save(out, a.out)


if __name__ == "__main__":
    main(sys.argv[1:])
