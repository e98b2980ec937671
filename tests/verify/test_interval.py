"""Interval certificates for smooth networks: soundness against autograd, verdicts with
oracles (hand-built nets whose derivative is known), budgets, discrete features, verify()."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import constrained_grad as cg
from constrained_grad.derivatives.bounds import _forward, _Ops
from constrained_grad.errors import CertificationError, InputValidationError
from constrained_grad.verify.interval import (
    SMOOTH_LAYERS,
    _smooth_layer,
    column_bounds,
    interval_derivative_bounds,
    torch_layers,
)
from constrained_grad.verify.milp import _AutogradOracle, parse_network

ACTS = {
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "softplus": lambda: nn.Softplus(beta=2.0, threshold=3.0),
    "mixed": None,
}


def _mlp(d: int, widths: list[int], m: int, act: str, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    prev = d
    for k, w in enumerate(widths):
        layers.append(nn.Linear(prev, w))
        if act == "mixed":
            layers.append(nn.Tanh() if k % 2 == 0 else nn.LeakyReLU(0.1))
        else:
            layers.append(ACTS[act]())  # type: ignore[misc]
        prev = w
    layers.append(nn.Linear(prev, m))
    net = nn.Sequential(*layers).double()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(2.0)  # larger pre-activations: the activations' tails are exercised too
    return net


def _derivative(net: nn.Module, x: torch.Tensor, j: int, i: int) -> np.ndarray:
    return _AutogradOracle(net).batch(x.numpy(), j, i)


# ----------------------------------------------------------------------------- (a) soundness


@pytest.mark.parametrize("act", list(ACTS))
def test_interval_contains_the_autograd_derivative_on_random_sub_boxes(act: str) -> None:
    g = torch.Generator().manual_seed(1)
    for seed in range(3):
        d, m = 3, 2
        net = _mlp(d, [6, 5], m, act, seed)
        layers = parse_network(net, d, extra=_smooth_layer, supported=SMOOTH_LAYERS)
        for _ in range(4):
            a = torch.rand(d, generator=g, dtype=torch.float64) * 4 - 2
            w = torch.rand(d, generator=g, dtype=torch.float64) * 1.5
            x = a + torch.rand(2000, d, generator=g, dtype=torch.float64) * w
            jac = torch.autograd.functional.jacobian(lambda z, f=net: f(z).sum(0), x)  # (m,N,d)
            for j in range(d):
                lo, hi = column_bounds(layers, a[None].numpy(), (a + w)[None].numpy(), j)
                pl, ph = column_bounds(
                    layers, a[None].numpy(), (a + w)[None].numpy(), j, centred=False
                )
                assert (lo >= pl - 1e-12).all() and (hi <= ph + 1e-12).all()  # within the plain one
                for i in range(m):
                    oracle = _derivative(net, x, j, i)
                    np.testing.assert_allclose(jac[i, :, j].numpy(), oracle, rtol=1e-12, atol=1e-14)
                    assert lo[0, i] <= oracle.min() and oracle.max() <= hi[0, i], (act, seed, j, i)


@pytest.mark.parametrize("act", ["tanh", "sigmoid", "softplus"])
def test_hessian_column_interval_contains_autograd_second_derivatives(act: str) -> None:
    """The mean-value form rests on the interval Hessian column: check it against double
    backward at dense points of random sub-boxes."""
    g = torch.Generator().manual_seed(3)
    net = _mlp(3, [6, 5], 1, act, 7)
    if act == "softplus":  # the default threshold (20): no unit crosses it on these boxes
        net[1], net[3] = nn.Softplus(beta=2.0), nn.Softplus(beta=2.0)
    layers = torch_layers(parse_network(net, 3, extra=_smooth_layer, supported=SMOOTH_LAYERS))
    checked = 0
    for _ in range(6):
        a = torch.rand(3, generator=g, dtype=torch.float64) * 4 - 2
        w = torch.rand(3, generator=g, dtype=torch.float64) * 1.5
        x = (a + torch.rand(2000, 3, generator=g, dtype=torch.float64) * w).requires_grad_(True)
        (grad,) = torch.autograd.grad(net(x).sum(), x, create_graph=True)
        for j in range(3):
            (hess,) = torch.autograd.grad(grad[:, j].sum(), x, retain_graph=True)  # (N, d)
            fwd = _forward(_Ops(True), layers, a[None], (a + w)[None], [j], second=True)
            assert fwd.hess is not None
            hl, hh = (t[:, 0].numpy() for t in fwd.hess)  # (1, d, n_out)
            if not fwd.ok.all():  # a softplus unit crosses its threshold: no mean-value form
                continue
            checked += 1
            h = hess.detach().numpy()
            assert (hl[0, :, 0] <= h.min(0)).all() and (h.max(0) <= hh[0, :, 0]).all()
    assert checked >= 12


def test_bounds_are_tight_on_a_point_and_public_function_agrees() -> None:
    net = _mlp(2, [4], 1, "tanh", 0)
    x = torch.tensor([0.3, -0.7], dtype=torch.float64)
    lo, hi = interval_derivative_bounds(net, x.tolist(), x.tolist(), input_index=1)
    value = _derivative(net, x[None], 1, 0)[0]
    assert float(lo[0]) <= value <= float(hi[0])
    assert float(hi[0] - lo[0]) < 1e-12


def test_certified_verdicts_hold_at_dense_samples() -> None:
    """Whatever the random net and bound, a 'certified' is never contradicted by sampling."""
    g = torch.Generator().manual_seed(2)
    certified = 0
    for seed in range(8):
        net = _mlp(2, [6], 1, "tanh" if seed % 2 else "sigmoid", seed)
        x = torch.rand(2000, 2, generator=g, dtype=torch.float64) * 2 - 1
        vals = _derivative(net, x, 0, 0)
        lower = float(vals.min()) - 0.05 * float(vals.max() - vals.min())
        cert = cg.certify_interval(net, [-1, -1], [1, 1], input_index=0, lower=lower)
        assert cert.status in ("certified", "violated")
        if cert.certified:
            certified += 1
            assert vals.min() >= lower - cert.tol
            assert cert.checks[0].milp_bound is not None
            assert cert.checks[0].milp_bound >= lower - cert.tol
        else:
            ce = cert.counterexample
            assert ce is not None and _derivative(net, ce[None], 0, 0)[0] < lower - cert.tol
    assert certified >= 4


# ----------------------------------------------------------------------------- (b), (c) verdicts


def test_non_negative_tanh_net_certifies_monotone_increasing() -> None:
    net = _mlp(3, [8, 8], 2, "tanh", 3)
    with torch.no_grad():
        for lin in (net[0], net[2], net[4]):
            lin.weight.abs_()
    cert = cg.certify_interval(net, [-1] * 3, [1] * 3, input_index=1, output_index=1, lower=0.0)
    assert cert.status == "certified" and cert.method == "interval"
    assert cert.checks[0].milp_bound is not None and cert.checks[0].milp_bound > 0
    assert "interval" in cert.summary()


def _bump_net(dip: float, centre: float = 0.37, eps: float = 0.01) -> nn.Sequential:
    """f(x) = 10 tanh(0.1 x0) - dip * eps * tanh((x0 - centre) / eps) + 0.3 tanh(x1):
    df/dx0 = (1 - tanh(0.1 x0)^2) - dip * sech^2((x0 - centre) / eps), lowest (about
    1 - dip) in a strip of width ~eps around x0 = centre."""
    net = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[0.1, 0.0], [1 / eps, 0.0], [0.0, 1.0]]))
        net[0].bias.copy_(torch.tensor([0.0, -centre / eps, 0.0]))
        net[2].weight.copy_(torch.tensor([[10.0, -dip * eps, 0.3]]))
        net[2].bias.zero_()
    return net


def test_non_monotone_tanh_net_is_violated_with_a_confirmed_counterexample() -> None:
    # f = tanh(2x) - 2 tanh(x / 4): f' = 2 sech^2(2x) - 0.5 sech^2(x / 4) < 0 for |x| >= 1
    net = nn.Sequential(nn.Linear(1, 2), nn.Tanh(), nn.Linear(2, 1)).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[2.0], [0.25]]))
        net[0].bias.zero_()
        net[2].weight.copy_(torch.tensor([[1.0, -2.0]]))
        net[2].bias.zero_()
    cert = cg.certify_interval(net, [-2.0], [2.0], input_index=0, lower=0.0)
    assert cert.status == "violated"
    ce = cert.counterexample
    assert ce is not None and -2.0 <= float(ce[0]) <= 2.0
    value = _derivative(net, ce[None], 0, 0)[0]
    assert value < -cert.tol
    assert cert.checks[0].autograd_value == pytest.approx(value)
    # the increasing side of the same net holds near 0
    assert cg.certify_interval(net, [-0.2], [0.2], input_index=0, lower=0.0).certified


# ----------------------------------------------------------------------------- (d), (e) budgets


def test_tiny_budget_gives_unknown_with_the_bound_reached() -> None:
    net = _mlp(6, [32], 1, "tanh", 4)
    x = torch.rand(4000, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    vals = _derivative(net, 2 * x - 1, 0, 0)
    lower = float(vals.min()) - 0.01  # true (nearly), hard: the bound must get within 0.01
    for budget in (1, 20, 200):
        cert = cg.certify_interval(
            net, [-1] * 6, [1] * 6, input_index=0, lower=lower, max_boxes=budget
        )
        check = cert.checks[0]
        assert cert.status == "unknown", budget
        assert check.milp_bound is not None and check.milp_bound < lower
        assert check.nodes is not None and check.nodes <= budget + 64 * 12
        assert "budget" in check.note
    timed = cg.certify_interval(net, [-1] * 6, [1] * 6, input_index=0, lower=lower, time_limit=0.05)
    assert timed.status == "unknown"


@pytest.mark.parametrize("split", ["best", "widest"])
def test_planted_narrow_violation_is_found_never_certified(split: str) -> None:
    bad = _bump_net(dip=1.05)  # min slope about -0.06, only for |x0 - 0.37| < ~0.002
    grid = torch.stack(
        [torch.linspace(-1, 1, 64, dtype=torch.float64), torch.zeros(64, dtype=torch.float64)], 1
    )
    assert _derivative(bad, grid, 0, 0).min() > 0  # a coarse grid misses the strip
    for budget in (5, 50, 20000):
        cert = cg.certify_interval(
            bad, [-1, -1], [1, 1], input_index=0, lower=0.0, max_boxes=budget, split=split
        )
        assert cert.status in ("violated", "unknown"), budget
    assert cert.status == "violated"
    ce = cert.counterexample
    assert ce is not None and abs(float(ce[0]) - 0.37) < 0.01
    assert _derivative(bad, ce[None], 0, 0)[0] < 0
    good = _bump_net(dip=0.9)  # min slope about +0.09: holds everywhere
    cert = cg.certify_interval(good, [-1, -1], [1, 1], input_index=0, lower=0.0, split=split)
    assert cert.status == "certified"
    # the margin it proves is the true one (up to the bound's slack), not more
    tight = cg.certify_interval(good, [-1, -1], [1, 1], input_index=0, lower=0.2)
    assert tight.status == "violated"


# ----------------------------------------------------------------------------- (f) discrete


def _one_hot_trap() -> nn.Sequential:
    """df/dx0 = sech^2(x0) - 2 sech^2(0.5 x0 + 10 (x1 + x2) - 20): negative only when
    x1 = x2 = 1, which a one-hot group [1, 2] forbids."""
    net = nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 1)).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.5, 10.0, 10.0]]))
        net[0].bias.copy_(torch.tensor([0.0, -20.0]))
        net[2].weight.copy_(torch.tensor([[1.0, -4.0]]))
        net[2].bias.zero_()
    return net


def test_one_hot_group_is_respected() -> None:
    net = _one_hot_trap()
    lo, hi = [-1.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    plain = cg.certify_interval(net, lo, hi, input_index=0, lower=0.0)
    assert plain.status == "violated"
    ce = plain.counterexample
    assert ce is not None and ce[1] > 0.5 and ce[2] > 0.5  # the impossible corner
    cert = cg.certify_interval(net, lo, hi, input_index=0, lower=0.0, one_hot=[[1, 2]])
    assert cert.status == "certified"
    cats = cg.certify_interval(
        net, lo, hi, input_index=0, lower=0.0, categorical={1: [0.0, 0.5], 2: [0.0, 0.5]}
    )
    assert cats.status == "certified"
    both = cg.certify_interval(
        net, lo, hi, input_index=0, lower=0.0, categorical={1: [0.0, 1.0], 2: [0.0, 1.0]}
    )
    assert both.status == "violated"
    assert both.counterexample is not None and both.counterexample[1:].tolist() == [1.0, 1.0]


def test_fixed_features_are_never_moved() -> None:
    net = _one_hot_trap()
    lo, hi = [-1.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    ok = cg.certify_interval(net, lo, hi, input_index=0, lower=0.0, fixed={1: 1.0, 2: 0.0})
    assert ok.status == "certified"
    bad = cg.certify_interval(net, lo, hi, input_index=0, lower=0.0, fixed={1: 1.0, 2: 1.0})
    assert bad.status == "violated"
    assert bad.counterexample is not None and bad.counterexample[1:].tolist() == [1.0, 1.0]


# ----------------------------------------------------------------------------- errors, ensembles


def test_unboundable_activation_is_refused_by_name() -> None:
    net = nn.Sequential(nn.Linear(2, 4), nn.SiLU(), nn.Linear(4, 1))
    with pytest.raises(CertificationError, match=r"layer 1 \(SiLU\) is not a supported layer"):
        cg.certify_interval(net, [0, 0], [1, 1], input_index=0, lower=0.0)
    nested = nn.Sequential(nn.Linear(2, 4), nn.Sequential(nn.Tanh(), nn.GELU()), nn.Linear(4, 1))
    with pytest.raises(CertificationError, match=r"layer 1\.1 \(GELU\)"):
        interval_derivative_bounds(nested, [0, 0], [1, 1], input_index=0)
    with pytest.raises(InputValidationError, match=r"max_boxes must be an int >= 1 \(got 0\)"):
        cg.certify_interval(_bump_net(0.5), [0, 0], [1, 1], input_index=0, lower=0.0, max_boxes=0)
    with pytest.raises(InputValidationError, match="no bound to check"):
        cg.certify_interval(_bump_net(0.5), [0, 0], [1, 1], input_index=0)


def test_ensemble_of_tanh_nets_certifies() -> None:
    members = [_mlp(2, [5], 1, "tanh", s) for s in range(3)]
    for net in members:
        with torch.no_grad():
            net[0].weight.abs_()
            net[2].weight.abs_()
    ens = cg.Ensemble(members, weights=[0.2, 0.3, 0.5])
    assert cg.certify_interval(ens, [-1, -1], [1, 1], input_index=1, lower=0.0).certified


# ----------------------------------------------------------------------------- (g) verify


def test_verify_auto_certifies_the_readme_tanh_shape_by_interval() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 64), nn.Tanh(), nn.Linear(64, 7))
    with torch.no_grad():
        model[0].weight[:, 5].abs_()
        model[2].weight.abs_()
    box = cg.Box(low=[-1] * 6, high=[1] * 6)
    report = cg.verify(model, [cg.Monotonic(inputs=[5])], box, samples=256, starts=4, steps=5)
    rep = report["monotonic_0"]
    assert rep.status == "certified"
    interval = [m for m in rep.methods if m.method == "interval"]
    assert len(interval) == 1 and interval[0].evaluations >= 7
    assert "boxes" in interval[0].detail and "interval" in rep.certificate
    assert "interval" in report.to_markdown()


def test_verify_auto_reports_interval_violation_and_unknown() -> None:
    bad = _bump_net(dip=1.05).float()
    box = cg.Box([-1, -1], [1, 1])
    report = cg.verify(bad, [cg.Monotonic(inputs=[0])], box, samples=0, adversarial=False)
    rep = report["monotonic_0"]
    assert rep.status == "violated"
    assert rep.counterexamples and rep.counterexamples[0].found_by == "interval"
    hard = _mlp(6, [32], 1, "tanh", 4)
    report = cg.verify(
        hard,
        [cg.DerivativeBound(inputs=[0], lower=-10.0, upper=10.0)],
        cg.Box([-1] * 6, [1] * 6),
        samples=64,
        adversarial=False,
        max_boxes=1,
    )
    assert report["derivativebound_0"].status in ("unknown", "certified")
    # certify=True takes the interval certificate too: a proof either way, or an error
    strict = cg.verify(
        bad, [cg.Monotonic(inputs=[0])], box, samples=0, adversarial=False, certify=True
    )["monotonic_0"]
    assert strict.status == "violated" and strict.counterexamples[0].found_by == "interval"
    silu = nn.Sequential(nn.Linear(2, 3), nn.SiLU(), nn.Linear(3, 1))
    note = cg.verify(silu, [cg.Monotonic(inputs=[0])], box, samples=8, adversarial=False)
    assert "layer 1 (SiLU)" in note["monotonic_0"].note
    with pytest.raises(CertificationError, match=r"layer 1 \(SiLU\)"):
        cg.verify(silu, [cg.Monotonic(inputs=[0])], box, samples=8, adversarial=False, certify=True)


def test_huge_box_ends_in_a_verdict_not_a_crash() -> None:
    """A ±1e20 box (reported to crash the branch and bound) ends in a verdict, and a monotone
    net is never reported violated; heap ties are broken by a unique counter, never by
    comparing nodes."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))
    with torch.no_grad():
        net[0].weight.abs_()
        net[2].weight.abs_()
    big = 1e20
    cert = cg.certify_interval(
        net, [-big, -big], [big, big], input_index=0, lower=0.0, time_limit=2.0
    )
    assert cert.status in ("certified", "unknown")
    bumpy = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))
    cert = cg.certify_interval(
        bumpy, [-big, -big], [big, big], input_index=0, lower=0.0, max_boxes=2000
    )
    assert cert.status in ("certified", "violated", "unknown")
    if cert.status == "violated":
        assert cert.counterexample is not None
