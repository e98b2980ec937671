"""The real-data benchmark's grid, architecture and counterexample feedback (no data read)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

import constrained_grad as cg

PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "monotone_datasets.py"
spec = importlib.util.spec_from_file_location("monotone_datasets", PATH)
assert spec is not None and spec.loader is not None
md = importlib.util.module_from_spec(spec)
sys.modules["monotone_datasets"] = md
spec.loader.exec_module(md)


def test_widths_parses_and_rejects() -> None:
    assert md.widths("128") == (128,)
    assert md.widths("32,16") == (32, 16)
    for bad in ("", "a", "32,0", "-4"):
        with pytest.raises(argparse.ArgumentTypeError):
            md.widths(bad)


def test_mlp_has_the_requested_layers() -> None:
    net = md.mlp(7, (32, 16))
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(7, 32), (32, 16), (16, 1)]
    assert net(torch.zeros(5, 7)).shape == (5, 1)


def test_grid_is_the_product_of_the_relevant_options() -> None:
    cfg = md.parse(["--tune", "--hidden", "16", "8,8", "--margin", "0.0", "0.1"])
    assert cfg.hidden == [(16,), (8, 8)] and cfg.lr == md.TUNE_GRID["lr"]
    n_common = len(cfg.lr) * len(cfg.weight_decay)
    assert len(md.grid("unconstrained", cfg)) == 2 * n_common
    assert len(md.grid("constrained", cfg)) == 2 * n_common * 2 * len(cfg.dual_lr)
    assert len(md.grid("lmn", cfg)) == n_common * len(cfg.lipschitz)
    single = md.parse([])
    assert [len(md.grid(m, single)) for m in md.METHODS] == [1, 1, 1]


def test_feed_fills_then_overwrites_the_buffer() -> None:
    source = cg.Counterexamples(cg.Box([0.0, 0.0], [1.0, 1.0]), capacity=2)
    md.feed(source, [[0.1, 0.2], [0.3, 0.4]])
    assert source.filled == 2
    md.feed(source, [[0.5, 0.6]])  # full: the oldest slot is overwritten
    assert source.filled == 2
    expected = torch.tensor([[0.5, 0.6], [0.3, 0.4]], dtype=torch.float64)
    assert torch.equal(source.buffer, expected)
