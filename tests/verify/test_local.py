"""Local certificates (cg.verify_local): per-row verdicts along each feature's line, checked
against analytic answers and float64 autograd on dense grids of each line."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import constrained_grad as cg
from constrained_grad.errors import CertificationError, InputValidationError


def line_min_derivative(model: nn.Module, row: list[float], j: int, lo: float, hi: float) -> float:
    """Oracle: min over a dense grid of the row's line along feature j of d f / d x_j,
    float64 autograd."""
    m = copy.deepcopy(model).to(torch.float64)
    x = torch.tensor(row, dtype=torch.float64).repeat(4001, 1)
    x[:, j] = torch.linspace(lo, hi, 4001, dtype=torch.float64)
    x.requires_grad_(True)
    (g,) = torch.autograd.grad(m(x).sum(), x)
    return float(g[:, j].min())


def derivative_at(model: nn.Module, point: list[float], j: int) -> float:
    m = copy.deepcopy(model).to(torch.float64)
    x = torch.tensor([point], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(m(x).sum(), x)
    return float(g[0, j])


def planted_relu() -> nn.Module:
    """f = (x0 + 2) - 2 relu(x0 + 10 x1 + 0.5 x2 - 9.25) - 2: d f / d x0 = -1 where
    x0 + 10 x1 + 0.5 x2 > 9.25, else 1. On [0, 1]^3 the line through (., a, b) along x0
    crosses that region iff 1 + 10 a + 0.5 b - 9.25 > 0."""
    net = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [1.0, 10.0, 0.5]]))
        net[0].bias.copy_(torch.tensor([2.0, -9.25]))
        net[2].weight.copy_(torch.tensor([[1.0, -2.0]]))
        net[2].bias.fill_(-2.0)
    return net


def rows_away_from(margin_fn, n: int, seed: int, gap: float = 0.05) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(4 * n, 3, generator=g, dtype=torch.float64)
    keep = [r for r in range(x.shape[0]) if abs(margin_fn(x[r])) > gap]
    return x[keep[:n]]


BOX = cg.Box([0.0, 0.0, 0.0], [1.0, 1.0, 1.0])


def test_monotone_relu_net_proves_every_row() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1))
    with torch.no_grad():  # nonnegative weights: increasing in every input (analytic)
        for k in (0, 2, 4):
            net[k].weight.abs_()
    rows = torch.rand(12, 3, generator=torch.Generator().manual_seed(1))
    report = cg.verify_local(net, [cg.Monotonic(inputs=[0, 2])], BOX, rows, progress=False)
    assert report.method == "milp"
    assert report.statuses == ["certified"] * 12
    assert report.fraction_certified == 1.0 and report.ok
    assert all(len(r.checks) == 2 for r in report.rows)  # one line per declared feature
    assert "12/12 rows certified" in report.summary()
    json.dumps(report.to_dict(), allow_nan=False)


def test_planted_region_violates_exactly_the_rows_whose_line_crosses_it() -> None:
    net = planted_relu()

    def crossing(x: torch.Tensor) -> float:
        return float(1 + 10 * x[1] + 0.5 * x[2] - 9.25)

    rows = rows_away_from(crossing, 40, seed=2)
    expected = ["violated" if crossing(r) > 0 else "certified" for r in rows]
    assert 3 <= expected.count("violated") <= 37  # both kinds present
    report = cg.verify_local(net, [cg.Monotonic(inputs=[0])], BOX, rows, progress=False)
    assert report.statuses == expected
    for verdict in report.rows:
        # independent oracle: dense float64 autograd along the row's line
        min_d = line_min_derivative(net, verdict.x, 0, 0.0, 1.0)
        assert (min_d < 0) == (verdict.status == "violated")
        for check in verdict.counterexamples:
            ce = check.counterexample
            assert ce[1:] == pytest.approx(verdict.x[1:], abs=1e-12)  # on the line
            assert 0.0 <= ce[0] <= 1.0
            assert derivative_at(net, ce, 0) < 0
            assert check.derivative == pytest.approx(derivative_at(net, ce, 0))
    assert report.n_violated == expected.count("violated")
    assert report.fraction_certified == pytest.approx(expected.count("certified") / len(rows))
    assert not report.ok


def planted_tanh() -> nn.Module:
    """f = 100 tanh(0.01 x0) - 0.6 tanh(5 (x0 + 10 x1 - 9)):
    d f / d x0 = sech^2(0.01 x0) - 3 sech^2(5 z), negative near z = 0."""
    net = nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 1))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[0.01, 0.0, 0.0], [5.0, 50.0, 0.0]]))
        net[0].bias.copy_(torch.tensor([0.0, -45.0]))
        net[2].weight.copy_(torch.tensor([[100.0, -0.6]]))
        net[2].bias.zero_()
    return net


def test_smooth_net_uses_the_interval_certificate_and_matches_autograd() -> None:
    net = planted_tanh()
    g = torch.Generator().manual_seed(3)
    rows = torch.rand(30, 3, generator=g, dtype=torch.float64)
    rows[:, 1] = torch.linspace(0.6, 1.0, 30, dtype=torch.float64)  # the region: 0.78-0.92
    mins = [line_min_derivative(net, r.tolist(), 0, 0.0, 1.0) for r in rows]
    keep = [k for k, m in enumerate(mins) if abs(m) > 0.02]
    rows = rows[keep]
    expected = ["violated" if mins[k] < 0 else "certified" for k in keep]
    assert "violated" in expected and "certified" in expected
    report = cg.verify_local(net, [cg.Monotonic(inputs=[0])], BOX, rows, progress=False)
    assert report.method == "interval"
    assert report.statuses == expected
    for verdict in report.rows:
        for check in verdict.counterexamples:
            assert check.counterexample[1:] == pytest.approx(verdict.x[1:], abs=1e-12)
            assert derivative_at(net, check.counterexample, 0) < 0


def test_unknown_never_reads_as_certified() -> None:
    net = planted_relu()
    rows = torch.tensor([[0.5, 0.1, 0.1], [0.5, 0.2, 0.3]])
    # a budget too small for any solve: every line is undecided
    report = cg.verify_local(
        net, [cg.Monotonic(inputs=[0])], BOX, rows, time_limit=1e-6, progress=False
    )
    assert report.statuses == ["unknown", "unknown"]
    assert report.n_certified == 0 and report.fraction_certified == 0.0 and not report.ok
    assert "0/2 rows certified" in report.summary() and "2 unknown" in report.summary()
    # interval: f = 2 tanh(x0) - tanh(x0 - 0.1) has d f / d x0 >= 0.35 on [0, 1], but the
    # interval bound of the root box, 2 [0.42, 1] - [0.49, 1], straddles 0: one box is not
    # enough, a few are
    net = nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 1))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))
        net[0].bias.copy_(torch.tensor([0.0, -0.1]))
        net[2].weight.copy_(torch.tensor([[2.0, -1.0]]))
    rows = torch.tensor([[0.5, 0.75, 0.0]])
    assert line_min_derivative(net, rows[0].tolist(), 0, 0.0, 1.0) > 0.35  # truly monotone
    mono = [cg.Monotonic(inputs=[0])]
    report = cg.verify_local(net, mono, BOX, rows, max_boxes=1, progress=False)
    assert report.statuses == ["unknown"] and report.fraction_certified == 0.0
    assert cg.verify_local(net, mono, BOX, rows, progress=False).statuses == ["certified"]


def test_one_hot_and_categorical_features_stay_on_their_values() -> None:
    """f = x0 - 2 relu(x0 + 5 x2 - 5.5) on a box whose x1, x2 are a one-hot group and x3 is
    categorical: the line along x0 crosses the region iff the row's x2 is on."""
    net = nn.Sequential(nn.Linear(4, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.1], [1.0, 0.0, 5.0, 0.0]]))
        net[0].bias.copy_(torch.tensor([0.0, -5.5]))
        net[2].weight.copy_(torch.tensor([[1.0, -2.0]]))
        net[2].bias.zero_()
    box = cg.Box([0, 0, 0, 0], [1, 1, 1, 2], one_hot=[[1, 2]], categorical={3: [0, 1, 2]})
    rows = torch.tensor(
        [[0.2, 1.0, 0.0, 0.0], [0.9, 0.0, 1.0, 2.0], [0.1, 0.0, 1.0, 1.0], [0.7, 1.0, 0.0, 2.0]]
    )
    report = cg.verify_local(net, [cg.Monotonic(inputs=[0])], box, rows, progress=False)
    assert report.statuses == ["certified", "violated", "violated", "certified"]
    for verdict in report.rows:
        for check in verdict.counterexamples:
            assert check.counterexample[1:] == verdict.x[1:]
            assert check.counterexample[0] > 0.5
    with pytest.raises(InputValidationError, match="outside the domain"):
        cg.verify_local(  # both one-hot columns on: not a point of the domain
            net, [cg.Monotonic(inputs=[0])], box, torch.tensor([[0.2, 1.0, 1.0, 0.0]])
        )


def test_bad_input_raises_clearly() -> None:
    net = planted_relu()
    mono = [cg.Monotonic(inputs=[0])]
    with pytest.raises(InputValidationError, match=r"shape \(n, 3\).*got \(4, 2\)"):
        cg.verify_local(net, mono, BOX, torch.zeros(4, 2))
    with pytest.raises(InputValidationError, match=r"shape \(n, 3\).*got \(3,\)"):
        cg.verify_local(net, mono, BOX, torch.zeros(3))
    with pytest.raises(InputValidationError, match=r"NaN or inf.*first row 1"):
        cg.verify_local(net, mono, BOX, torch.tensor([[0.1] * 3, [0.2, float("nan"), 0.3]]))
    with pytest.raises(InputValidationError, match=r"outside the domain \(first row 0: feature 2"):
        cg.verify_local(net, mono, BOX, torch.tensor([[0.1, 0.2, 1.5]]))
    with pytest.raises(InputValidationError, match="empty"):
        cg.verify_local(net, mono, BOX, torch.zeros(0, 3))
    with pytest.raises(InputValidationError, match=r"cg\.Box"):
        cg.verify_local(net, mono, ([0] * 3, [1] * 3), torch.zeros(1, 3))  # type: ignore[arg-type]
    with pytest.raises(CertificationError, match="JacobianNormBound"):
        cg.verify_local(net, [cg.JacobianNormBound(1.0)], BOX, torch.zeros(1, 3))
    with pytest.raises(CertificationError, match="GELU"):
        cg.verify_local(
            nn.Sequential(nn.Linear(3, 2), nn.GELU(), nn.Linear(2, 1)), mono, BOX, torch.zeros(1, 3)
        )
    with pytest.raises(InputValidationError, match="time_limit"):
        cg.verify_local(net, mono, BOX, torch.zeros(1, 3), time_limit=0)


def test_progress_bar_counts_rows(capsys: pytest.CaptureFixture[str]) -> None:
    net = planted_relu()
    rows = torch.tensor([[0.5, 0.1, 0.1], [0.5, 0.95, 0.3]])
    cg.verify_local(net, [cg.Monotonic(inputs=[0])], BOX, rows, progress=True)
    err = capsys.readouterr().err
    assert "verify_local (milp)" in err and "2/2" in err and "violated=1" in err
