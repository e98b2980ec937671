"""certify_sizes.py's certified recipe: the warm start fits the points only, then adds the
constraint over cells and the Prover for the rest of the steps, with one optimiser."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from bench_scripts import load

import constrained_grad as cg

cs = load("certify_sizes")


def test_defaults_are_the_recipe_of_each_activation() -> None:
    cfg = cs.parse([])
    assert cs._recipe(cfg, "tanh") == {"warm": 0.3, "cells_dual_lr": 0.01}
    assert cs._recipe(cfg, "relu") == {"warm": 0.0, "cells_dual_lr": 0.05}
    given = cs.parse(["--warm", "0.5", "--cells-dual-lr", "0.2"])
    assert cs._recipe(given, "relu") == {"warm": 0.5, "cells_dual_lr": 0.2}


@pytest.mark.parametrize("warm", [0.0, 0.5])
def test_warm_start_fits_the_points_first_then_the_cells(
    warm: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[list[str], int, int]] = []
    real_fit = cs.cg.fit

    def fit(problem: cg.DerivativeProblem, *args: Any, **kw: Any) -> Any:
        out = real_fit(problem, *args, **kw)
        calls.append((list(problem.specs), kw["steps"], out.steps))
        return out

    monkeypatch.setattr(cs.cg, "fit", fit)
    cfg = cs.parse(
        ["--steps", "24", "--warm", str(warm), "--checks", "2", "--prover-time-limit", "1"]
    )
    task = cs.make_task("every-output", 0)
    opt_ids = set()
    real_adamw = torch.optim.AdamW

    def adamw(*a: Any, **k: Any) -> torch.optim.Optimizer:
        opt = real_adamw(*a, **k)
        opt_ids.add(id(opt))
        return opt

    monkeypatch.setattr(cs.torch.optim, "AdamW", adamw)
    _, facts, spec = cs.train(task, "tanh", "certified", cfg)
    if warm:
        assert calls == [(["on_data"], 12, 12), (["on_data", "proved"], 12, 12)]
    else:
        assert calls == [(["on_data", "proved"], 24, 24)]
    assert len(opt_ids) == 1  # one optimiser (and schedule) across the phases
    assert facts["warm_steps"] == round(24 * warm) and facts["cells_dual_lr"] == 0.01
    assert isinstance(spec.where, cg.Cells)
    assert facts["prover_checks"] >= 2  # the Prover ran in the cells' phase
