"""Exact MILP certificates of derivative signs, checked against autograd on dense grids."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from constrained_grad.constraints.domain import as_box
from constrained_grad.errors import CertificationError, InputValidationError
from constrained_grad.verify.milp import (
    Certificate,
    _AutogradOracle,
    _encode,
    _interior_point,
    certify_derivative_sign,
    certify_monotonic,
    parse_network,
)


def grid_derivative(model: nn.Module, points: torch.Tensor, j: int, out: int = 0) -> torch.Tensor:
    """Oracle: d model_out / d x_j at each point, float64 autograd."""
    m = _float64_copy(model)
    x = points.to(torch.float64).requires_grad_(True)
    (g,) = torch.autograd.grad(m(x)[:, out].sum(), x)
    return g[:, j]


def _float64_copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).to(torch.float64)


def square_grid(n: int, lo: float = -1.0, hi: float = 1.0) -> torch.Tensor:
    g = torch.linspace(lo, hi, n, dtype=torch.float64)
    return torch.cartesian_prod(g, g)


def mlp(sizes: list[int], act: nn.Module, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), act]
    return nn.Sequential(*layers[:-1])


def hand_net() -> nn.Sequential:
    """f(x) = relu(x0 - 0.5) - 2 relu(x0 - 0.7) + 0.3 relu(x1) on [0, 1]^2.

    df/dx0 is 0 on x0 < 0.5, 1 on (0.5, 0.7) and -1 on x0 > 0.7.
    """
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
        net[0].bias.copy_(torch.tensor([-0.5, -0.7, 0.0]))
        net[2].weight.copy_(torch.tensor([[1.0, -2.0, 0.3]]))
        net[2].bias.zero_()
    return net


# ----------------------------------------------------------------------------- certified


@pytest.mark.parametrize("act", [nn.ReLU(), nn.LeakyReLU(0.05)])
def test_non_negative_weights_certify_increasing(act: nn.Module) -> None:
    net = mlp([3, 16, 16, 1], act, seed=0)
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() == 2:
                p.abs_()
    low, high = -torch.ones(3), torch.ones(3)
    res = certify_monotonic(net, low, high, inputs=[0, 1, 2], outputs=0)
    assert res.status == "certified" and res.certified
    assert len(res.certificates) == 3 and res.counterexamples == []
    dec = certify_monotonic(net, low, high, inputs=[0], direction="decreasing", mode="optimize")
    assert dec.status == "violated"  # strictly increasing somewhere, so not decreasing
    # the exact minimum is a lower bound of every sampled derivative, and is attained
    cert = certify_derivative_sign(net, low, high, input_index=1, lower=0.0, mode="optimize")
    x = torch.rand(4000, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    sampled = grid_derivative(net, x, 1)
    check = cert.checks[0]
    assert check.milp_value is not None and check.milp_bound is not None
    assert check.milp_value >= -1e-9
    assert check.milp_value <= float(sampled.min()) + 1e-9
    assert check.milp_bound <= check.milp_value + 1e-6


def test_hand_built_non_monotone_net_gives_confirmed_counterexample() -> None:
    net = hand_net()
    for mode in ("decide", "optimize"):
        cert = certify_derivative_sign(net, [0, 0], [1, 1], input_index=0, lower=0.0, mode=mode)
        assert isinstance(cert, Certificate)
        assert cert.status == "violated"
        x = cert.counterexample
        assert x is not None and x.shape == (2,)
        assert 0.7 < float(x[0]) <= 1.0 and 0.0 <= float(x[1]) <= 1.0
        confirmed = float(grid_derivative(net, x.unsqueeze(0), 0)[0])
        assert confirmed == pytest.approx(-1.0, abs=1e-12)
        assert cert.checks[0].autograd_value == pytest.approx(confirmed, abs=1e-12)
        assert cert.checks[0].milp_value == pytest.approx(-1.0, abs=1e-6)
    upper = certify_derivative_sign(net, [0, 0], [1, 1], input_index=0, upper=0.5)
    assert upper.status == "violated"
    xu = upper.counterexample
    assert xu is not None and 0.5 < float(xu[0]) < 0.7
    assert float(grid_derivative(net, xu.unsqueeze(0), 0)[0]) == pytest.approx(1.0)
    both = certify_derivative_sign(
        net, [0, 0], [1, 1], input_index=0, lower=-1.5, upper=1.2, mode="optimize"
    )
    assert both.status == "certified"
    assert [c.side for c in both.checks] == ["lower", "upper"]
    assert both.checks[0].milp_value == pytest.approx(-1.0, abs=1e-6)
    assert both.checks[1].milp_value == pytest.approx(1.0, abs=1e-6)
    # restricting the box to x0 <= 0.6 removes the decreasing part
    part = certify_derivative_sign(net, [0, 0], [0.6, 1], input_index=0, lower=0.0)
    assert part.status == "certified"
    assert "certified" in part.summary()


@pytest.mark.parametrize("seed", range(6))
def test_milp_matches_dense_grid_on_small_random_nets(seed: int) -> None:
    act = nn.ReLU() if seed % 2 == 0 else nn.LeakyReLU(0.1)
    net = mlp([2, 8, 8, 1], act, seed=seed)
    grid = grid_derivative(net, square_grid(401), 0)
    g_min, g_max = float(grid.min()), float(grid.max())
    cert = certify_derivative_sign(
        net, [-1, -1], [1, 1], input_index=0, lower=0.0, upper=0.0, mode="optimize"
    )
    lo, hi = cert.checks
    assert lo.milp_value is not None and hi.milp_value is not None
    # the MILP optimum is the exact extreme, the grid can only be less extreme
    assert lo.milp_value <= g_min + 1e-9 and hi.milp_value >= g_max - 1e-9
    assert lo.milp_value == pytest.approx(g_min, abs=1e-6)
    assert hi.milp_value == pytest.approx(g_max, abs=1e-6)
    assert (lo.status == "violated") == (g_min < 0)
    assert (hi.status == "violated") == (g_max > 0)
    for c in cert.checks:  # counterexamples reproduce the extreme under autograd
        if c.counterexample is not None:
            assert c.autograd_value == pytest.approx(c.milp_value, abs=1e-6)
            value = float(grid_derivative(net, c.counterexample.unsqueeze(0), 0)[0])
            assert value == pytest.approx(c.autograd_value, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_lp_tightening_and_decide_mode_agree_with_plain_optimisation(seed: int) -> None:
    net = mlp([2, 10, 10, 1], nn.ReLU(), seed=seed)
    plain = certify_derivative_sign(
        net, [-1, -1], [1, 1], input_index=1, lower=0.0, mode="optimize"
    )
    lp = certify_derivative_sign(
        net, [-1, -1], [1, 1], input_index=1, lower=0.0, mode="optimize", tighten="lp"
    )
    assert lp.n_binaries <= plain.n_binaries
    assert lp.checks[0].milp_value == pytest.approx(plain.checks[0].milp_value, abs=1e-6)
    assert plain.checks[0].milp_value is not None
    # a bound just below the minimum is certified, one just above it is violated
    m = plain.checks[0].milp_value
    for mode in ("decide", "optimize"):
        for tighten in ("ibp", "lp"):
            kw = {"input_index": 1, "mode": mode, "tighten": tighten}
            ok = certify_derivative_sign(net, [-1, -1], [1, 1], lower=m - 1e-3, **kw)
            bad = certify_derivative_sign(net, [-1, -1], [1, 1], lower=m + 1e-3, **kw)
            assert ok.status == "certified", (mode, tighten, ok.summary())
            assert bad.status == "violated", (mode, tighten, bad.summary())
            assert bad.checks[0].autograd_value == pytest.approx(m, abs=1e-6)


def test_fixed_feature_matches_one_dimensional_grid() -> None:
    net = mlp([2, 8, 8, 1], nn.ReLU(), seed=3)
    x0 = torch.linspace(-1, 1, 20001, dtype=torch.float64)
    pts = torch.stack([x0, torch.full_like(x0, 0.3)], dim=1)
    line = grid_derivative(net, pts, 0)
    cert = certify_derivative_sign(
        net, [-1, -1], [1, 1], input_index=0, lower=0.0, upper=0.0, fixed={1: 0.3}, mode="optimize"
    )
    assert cert.checks[0].milp_value == pytest.approx(float(line.min()), abs=1e-6)
    assert cert.checks[1].milp_value == pytest.approx(float(line.max()), abs=1e-6)
    for c in cert.checks:
        if c.counterexample is not None:
            assert float(c.counterexample[1]) == 0.3


def test_categorical_feature_matches_grids_per_value() -> None:
    net = mlp([2, 8, 8, 1], nn.LeakyReLU(0.2), seed=4)
    values = [-0.5, 0.0, 0.8]
    x0 = torch.linspace(-1, 1, 20001, dtype=torch.float64)
    per_value = [
        grid_derivative(net, torch.stack([x0, torch.full_like(x0, v)], dim=1), 0) for v in values
    ]
    g_min = min(float(g.min()) for g in per_value)
    g_max = max(float(g.max()) for g in per_value)
    cert = certify_derivative_sign(
        net,
        [-1, -1],
        [1, 1],
        input_index=0,
        lower=0.0,
        upper=0.0,
        categorical={1: values},
        mode="optimize",
    )
    assert cert.checks[0].milp_value == pytest.approx(g_min, abs=1e-6)
    assert cert.checks[1].milp_value == pytest.approx(g_max, abs=1e-6)
    assert cert.n_binaries >= len(values)
    for c in cert.checks:
        if c.counterexample is not None:
            assert float(c.counterexample[1]) in values


def test_monotonic_aggregates_pairs_and_directions() -> None:
    # out0 = relu(x0) + x1 (increasing in both), out1 = -x0 (decreasing in x0)
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
        net[0].bias.copy_(torch.tensor([0.0, 2.0, 2.0]))
        net[2].weight.copy_(torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
        net[2].bias.zero_()
    low, high = [-1.0, -1.0], [1.0, 1.0]
    inc = certify_monotonic(net, low, high, inputs=[0, 1], outputs=[0, 1])
    assert inc.status == "violated"
    statuses = {(c.input_index, c.output_index): c.status for c in inc.certificates}
    assert statuses == {
        (0, 0): "certified",
        (0, 1): "violated",
        (1, 0): "certified",
        (1, 1): "certified",  # out1 does not depend on x1: derivative 0 >= 0
    }
    assert [(i, o) for i, o, _ in inc.counterexamples] == [(0, 1)]
    mixed = certify_monotonic(
        net, low, high, inputs=[0], outputs=[1], direction=["decreasing"], margin=0.5
    )
    assert mixed.status == "certified"
    assert "certified" in mixed.summary()
    too_much = certify_monotonic(
        net, low, high, inputs=[0], outputs=[1], direction="decreasing", margin=1.5
    )
    assert too_much.status == "violated"


def test_model_is_left_untouched_and_dtype_does_not_matter() -> None:
    net32 = mlp([2, 6, 6, 1], nn.ReLU(), seed=5)
    before = [p.detach().clone() for p in net32.parameters()]
    net64 = _float64_copy(net32)
    c32 = certify_derivative_sign(
        net32, [-1, -1], [1, 1], input_index=0, lower=0.0, mode="optimize"
    )
    c64 = certify_derivative_sign(
        net64, [-1, -1], [1, 1], input_index=0, lower=0.0, mode="optimize"
    )
    assert c32.checks[0].milp_value == pytest.approx(c64.checks[0].milp_value, abs=1e-6)
    for p, q in zip(net32.parameters(), before, strict=True):
        assert p.dtype == torch.float32 and torch.equal(p, q)


def test_wrapper_layers_are_allowed() -> None:
    inner = hand_net()
    net = nn.Sequential(
        nn.Flatten(), nn.Identity(), nn.Sequential(inner[0], nn.ReLU(), nn.Dropout(0.3)), inner[2]
    ).eval()
    cert = certify_derivative_sign(net, [0, 0], [1, 1], input_index=0, lower=0.0)
    assert cert.status == "violated"
    assert len(parse_network(net, 2)) == 3


def test_interior_point_moves_off_a_kink() -> None:
    # f = -relu(x0): the MILP may return x0 = 0 with the unit "on" (derivative -1), where
    # autograd says 0. The interior-point LP must move into x0 > 0 and confirm -1.
    net = nn.Sequential(nn.Linear(2, 1), nn.ReLU(), nn.Linear(1, 1))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0]]))
        net[0].bias.zero_()
        net[2].weight.fill_(-1.0)
        net[2].bias.zero_()
    box = as_box([-1.0, -1.0], [1.0, 1.0], who="test")
    layers = parse_network(net, 2)
    enc = _encode(layers, box, 0, "ibp")
    ((kind, var, _),) = enc.units
    assert kind == 2  # the only unit has a binary
    sol = np.zeros(enc.builder.n_vars)
    sol[var] = 1.0  # pattern "on" at the kink x = (0, 0)
    x_kink = np.zeros(2)
    oracle = _AutogradOracle(net)
    assert oracle(x_kink, 0, 0) == 0.0  # torch's relu'(0) = 0
    found = _interior_point(layers, box, x_kink, enc, sol)
    assert found is not None
    x_in, radius = found
    assert radius > 0.1 and x_in[0] >= radius
    assert oracle(x_in, 0, 0) == pytest.approx(-1.0)
    # end to end: the certificate always reports the true extreme, on or off the kink
    cert = certify_derivative_sign(net, [-1, -1], [1, 1], input_index=0, lower=0.0)
    assert cert.status == "violated" and cert.checks[0].autograd_value == pytest.approx(-1.0)


def test_violation_only_on_a_kink_is_reported_honestly() -> None:
    # f = -relu(x0) + relu(-x0) = -x0: derivative -1 everywhere (a.e.). The pattern with both
    # units on exists only at x0 = 0, where the MILP tangent is -1 + (-1) = -2; it has no
    # interior, so a bound between -2 and -1 must come out "unknown", never "violated".
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
        net[0].bias.zero_()
        net[2].weight.copy_(torch.tensor([[-1.0, 1.0]]))
        net[2].bias.zero_()
    grid = grid_derivative(net, square_grid(101), 0)
    assert torch.allclose(grid[square_grid(101)[:, 0] != 0], torch.tensor(-1.0).double())
    cert = certify_derivative_sign(net, [-1, -1], [1, 1], input_index=0, lower=-1.5)
    assert cert.status == "unknown"
    check = cert.checks[0]
    assert check.milp_value == pytest.approx(-2.0)
    assert check.autograd_value is not None and check.autograd_value > -1.5
    assert "no interior point" in check.note
    assert certify_derivative_sign(net, [-1, -1], [1, 1], input_index=0, lower=-2.5).certified
    truly = certify_derivative_sign(net, [-1, -1], [1, 1], input_index=0, lower=-0.5)
    assert truly.status == "violated"
    assert truly.checks[0].autograd_value == pytest.approx(-1.0)


# ----------------------------------------------------------------------------- errors


def test_unsupported_layer_is_named() -> None:
    net = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1))
    with pytest.raises(CertificationError, match=r"layer 1 \(Tanh\)"):
        certify_derivative_sign(net, [0, 0], [1, 1], input_index=0, lower=0.0)
    nested = nn.Sequential(nn.Linear(2, 4), nn.Sequential(nn.ReLU(), nn.Sigmoid()), nn.Linear(4, 1))
    with pytest.raises(CertificationError, match=r"layer 1\.1 \(Sigmoid\)"):
        certify_monotonic(nested, [0, 0], [1, 1], inputs=0)

    class Custom(nn.Sequential):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) * 2

    with pytest.raises(CertificationError, match=r"Custom"):
        certify_derivative_sign(Custom(nn.Linear(2, 1)), [0, 0], [1, 1], input_index=0, lower=0.0)
    with pytest.raises(CertificationError, match="training mode"):
        certify_derivative_sign(
            nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5), nn.Linear(2, 1)).train(),
            [0, 0],
            [1, 1],
            input_index=0,
            lower=0.0,
        )
    with pytest.raises(CertificationError, match="expects 3 inputs but receives 2"):
        certify_derivative_sign(
            nn.Sequential(nn.Linear(3, 1)), [0, 0], [1, 1], input_index=0, lower=0.0
        )


def test_bad_arguments_raise() -> None:
    net = hand_net()
    with pytest.raises(InputValidationError, match="low > high"):
        certify_derivative_sign(net, [0, 1], [1, 0], input_index=0, lower=0.0)
    with pytest.raises(InputValidationError, match="no bound"):
        certify_derivative_sign(net, [0, 0], [1, 1], input_index=0)
    with pytest.raises(InputValidationError, match="lower > upper"):
        certify_derivative_sign(net, [0, 0], [1, 1], input_index=0, lower=1.0, upper=0.0)
    with pytest.raises(InputValidationError, match="out of range"):
        certify_derivative_sign(net, [0, 0], [1, 1], input_index=0, output_index=3, lower=0.0)
    with pytest.raises(InputValidationError, match="out of range"):
        certify_derivative_sign(net, [0, 0], [1, 1], input_index=5, lower=0.0)
    with pytest.raises(InputValidationError, match="time_limit"):
        certify_derivative_sign(net, [0, 0], [1, 1], input_index=0, lower=0.0, time_limit=0)
    with pytest.raises(InputValidationError, match="direction"):
        certify_monotonic(net, [0, 0], [1, 1], inputs=[0, 1], direction=["increasing"])
    with pytest.raises(InputValidationError, match="mode"):
        certify_derivative_sign(net, [0, 0], [1, 1], input_index=0, lower=0.0, mode="fast")  # type: ignore[arg-type]


def test_tiny_time_limit_gives_unknown_never_certified() -> None:
    net = mlp([8, 64, 64, 1], nn.ReLU(), seed=0)
    # lower = -1000 holds everywhere, but proving the exact minimum takes minutes
    cert = certify_derivative_sign(
        net,
        -torch.ones(8),
        torch.ones(8),
        input_index=0,
        lower=-1000.0,
        time_limit=0.05,
        mode="optimize",
    )
    assert cert.status == "unknown"
    assert cert.counterexample is None
    assert "limit" in cert.checks[0].note
