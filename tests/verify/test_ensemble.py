"""cg.Ensemble: the model, and its exact encoding as one block-diagonal network."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
from torch import nn

import constrained_grad as cg
from constrained_grad.errors import CertificationError, InputValidationError
from constrained_grad.verify.milp import _forward_numpy, parse_network


def relu_mlp(sizes: list[int], seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1]).double()


def monotone_mlp(sizes: list[int], seed: int) -> nn.Sequential:
    """Non-negative weights and ReLU: non-decreasing in every input."""
    net = relu_mlp(sizes, seed)
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.Linear):
                m.weight.abs_()
    return net


def test_forward_is_the_weighted_sum() -> None:
    members = [relu_mlp([3, 5, 2], s) for s in range(3)]
    ens = cg.Ensemble(members, weights=[0.5, 2.0, 0.25], bias=-1.5)
    x = torch.randn(7, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = -1.5 + 0.5 * members[0](x) + 2.0 * members[1](x) + 0.25 * members[2](x)
    torch.testing.assert_close(ens(x), expected)
    mean = cg.Ensemble(members)
    torch.testing.assert_close(mean(x), sum(m(x) for m in members) / 3)


@pytest.mark.parametrize(
    ("sizes", "seed"), [([3, 4, 1], 0), ([3, 6, 5, 2], 1), ([3, 1], 2), ([3, 8, 8, 8, 1], 3)]
)
@pytest.mark.parametrize("trailing_relu", [False, True])
def test_block_diagonal_encoding_computes_the_ensemble(
    sizes: list[int], seed: int, trailing_relu: bool
) -> None:
    # members of equal depth but different widths: the encoding must be the same function
    members = [relu_mlp(sizes, seed)]
    wider = [sizes[0]] + [w + 3 for w in sizes[1:-1]] + [sizes[-1]]
    members.append(relu_mlp(wider, seed + 10))
    if trailing_relu:  # the sum comes after each member's own last activation
        members = [nn.Sequential(m, nn.ReLU()) for m in members]
    ens = cg.Ensemble(members, weights=[0.3, 1.7], bias=0.4)
    layers = parse_network(ens, 3)
    x = torch.rand(50, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    got = _forward_numpy(layers, x.numpy() * 4 - 2)
    with torch.no_grad():
        expected = ens(x * 4 - 2).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_monotone_members_certify_jointly_and_a_bad_member_is_caught() -> None:
    good = [monotone_mlp([2, 6, 1], s) for s in range(3)]
    cert = cg.certify_monotonic(cg.Ensemble(good), [-1.0, -1.0], [1.0, 1.0], inputs=[0, 1])
    assert cert.certified, cert.summary()
    # f = x0 (kept monotone by a heavy member) - relu(x0 - 0.5) (a light non-monotone one):
    # slope 1 - w_bad/w_good on x0 > 0.5; it flips sign when the bad member's weight grows.
    lin = nn.Sequential(nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 1)).double()
    bad = copy.deepcopy(lin)
    with torch.no_grad():
        lin[0].weight.fill_(1.0), lin[0].bias.fill_(2.0)  # relu(x + 2) = x + 2 on the box
        lin[2].weight.fill_(1.0), lin[2].bias.fill_(0.0)
        bad[0].weight.fill_(1.0), bad[0].bias.fill_(-0.5)
        bad[2].weight.fill_(-1.0), bad[2].bias.fill_(0.0)
    for w_bad, expect in ((0.5, "certified"), (2.0, "violated")):
        ens = cg.Ensemble([lin, bad], weights=[1.0, w_bad])
        cert = cg.certify_monotonic(ens, [-1.0], [1.0], inputs=0)
        assert cert.status == expect, cert.summary()
        if expect == "violated":
            ((_, _, x),) = cert.counterexamples
            assert float(x[0]) > 0.5  # only there does the bad member's kink act
            xg = x.reshape(1, 1).requires_grad_(True)
            (g,) = torch.autograd.grad(ens(xg).sum(), xg)
            assert float(g) == pytest.approx(1.0 - w_bad)


def test_verify_certifies_an_ensemble_with_auto() -> None:
    ens = cg.Ensemble([monotone_mlp([2, 5, 1], s) for s in range(2)])
    report = cg.verify(
        ens, [cg.Monotonic([0, 1], "increasing", name="m")], cg.Box([-1, -1], [1, 1]), seed=0
    )
    assert report["m"].status == "certified"


def test_bad_ensembles_are_named() -> None:
    a = relu_mlp([2, 3, 1], 0)
    with pytest.raises(InputValidationError, match=r"Ensemble: members must be a non-empty"):
        cg.Ensemble([])
    with pytest.raises(InputValidationError, match=r"Ensemble: weights must be one positive"):
        cg.Ensemble([a, a], weights=[1.0, -1.0])
    with pytest.raises(InputValidationError, match=r"Ensemble: weights must be one positive"):
        cg.Ensemble([a, a], weights=[1.0])
    with pytest.raises(InputValidationError, match=r"Ensemble: bias must be finite"):
        cg.Ensemble([a], bias=float("nan"))
    deeper = relu_mlp([2, 3, 3, 1], 1)
    with pytest.raises(CertificationError, match=r"ensemble member 1 has layers .* but member 0"):
        cg.certify_monotonic(cg.Ensemble([a, deeper]), [-1, -1], [1, 1], inputs=0)
    with pytest.raises(CertificationError, match=r"ensemble member 1: layer 1 \(Tanh\)"):
        odd = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)).double()
        cg.certify_monotonic(cg.Ensemble([a, odd]), [-1, -1], [1, 1], inputs=0)
    wide = relu_mlp([2, 3, 2], 2)
    x = torch.zeros(4, 2, dtype=torch.float64)
    shapes = r"outputs of different shapes .*\(4, 1\), \(4, 2\)"
    with pytest.raises(InputValidationError, match=shapes):
        cg.Ensemble([a, wide])(x)
    with pytest.raises(CertificationError, match=r"different numbers of outputs \(got \[1, 2\]\)"):
        cg.certify_monotonic(cg.Ensemble([a, wide]), [-1, -1], [1, 1], inputs=0)
