"""One-hot groups in the domain: sampled, searched and certified over real categories only."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

import constrained_grad as cg
from constrained_grad.constraints.domain import as_box
from constrained_grad.errors import InputValidationError
from constrained_grad.verify.milp import certify_derivative_sign
from constrained_grad.verify.search import adversarial_search, sample_search


def two_category_net() -> nn.Sequential:
    """f(a, b, t) = t - 2 relu(t + a + b - 2.5) on [0, 1]^3, (a, b) one category.

    df/dt = 1 - 2 [t + a + b > 2.5]: negative only where a + b > 1.5, i.e. never when exactly
    one of a, b is on, but at a = b = 1 (two categories at once) for t > 0.5.
    """
    net = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[0.0, 0.0, 1.0], [1.0, 1.0, 1.0]]))
        net[0].bias.copy_(torch.tensor([0.0, -2.5]))
        net[2].weight.copy_(torch.tensor([[1.0, -2.0]]))
        net[2].bias.zero_()
    return net.double()


def slope_t(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Oracle: df/dt by float64 autograd."""
    x = x.double().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(net(x).sum(), x)
    return g[:, -1]


def assert_one_hot(x: torch.Tensor, cols: list[int], off: float, on: float) -> None:
    block = x[:, cols].double()
    assert bool(((block == off) | (block == on)).all())
    assert bool(((block == on).sum(dim=1) == 1).all())


# ------------------------------------------------------------------ the exact certificate
def test_milp_certifies_over_categories_where_the_plain_box_has_a_counterexample() -> None:
    net = two_category_net()
    low, high = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    plain = certify_derivative_sign(net, low, high, input_index=2, lower=0.0)
    assert plain.status == "violated"
    x = plain.counterexample
    assert x is not None and float(x[0]) + float(x[1]) > 1.5  # not a real category
    both_bits = certify_derivative_sign(
        net, low, high, input_index=2, lower=0.0, categorical={0: [0, 1], 1: [0, 1]}
    )
    assert both_bits.status == "violated"  # a = b = 1 is allowed bit by bit
    exact = certify_derivative_sign(net, low, high, input_index=2, lower=0.0, one_hot=[[0, 1]])
    assert exact.status == "certified"
    assert exact.n_binaries >= 2
    # dense oracle over the real categories: the slope is 1 everywhere
    t = torch.linspace(0.001, 1, 2000, dtype=torch.float64)  # t = 0: relu(t)'s kink
    for a, b in ((1.0, 0.0), (0.0, 1.0)):
        pts = torch.stack([torch.full_like(t, a), torch.full_like(t, b), t], dim=1)
        assert float(slope_t(net, pts).min()) == pytest.approx(1.0)


def test_milp_counterexample_is_a_real_category_with_general_off_on_values() -> None:
    """Three standardised columns (off -0.5, on 2.0): the slope in t is -1 only when the
    third category is on and t > 0.25; the MILP must find exactly that category."""
    net = nn.Sequential(nn.Linear(4, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 1.0]]))
        net[0].bias.copy_(torch.tensor([0.0, -2.25]))
        net[2].weight.copy_(torch.tensor([[1.0, -2.0]]))
        net[2].bias.zero_()
    net = net.double()
    low, high = [-0.5, -0.5, -0.5, 0.0], [2.0, 2.0, 2.0, 1.0]
    for mode in ("decide", "optimize"):
        cert = certify_derivative_sign(
            net, low, high, input_index=3, lower=0.0, one_hot=[[0, 1, 2]], mode=mode
        )
        assert cert.status == "violated"
        x = cert.counterexample
        assert x is not None
        assert x[:3].tolist() == [-0.5, -0.5, 2.0]
        assert float(x[3]) > 0.25
        assert float(slope_t(net, x.unsqueeze(0))[0]) == pytest.approx(-1.0)
    # with that category left out of the group's reach (first two only), nothing is wrong
    safe = certify_derivative_sign(
        net, low, [2.0, 2.0, -0.5, 1.0], input_index=3, lower=0.0, one_hot=[[0, 1]]
    )
    assert safe.status == "certified"


def test_verify_certifies_and_reports_the_groups() -> None:
    net = two_category_net()
    box = cg.Box([0.0, 0.0, 0.0], [1.0, 1.0, 1.0], one_hot=[[0, 1]])
    mono = cg.Monotonic([2], "increasing", name="t")
    report = cg.verify(net, [mono], box, samples=1024, starts=16, steps=20, seed=0)
    assert report["t"].status == "certified"
    assert report.domain["one_hot"] == [[0, 1]]
    plain = cg.verify(net, [mono], cg.Box([0.0] * 3, [1.0] * 3), samples=1024, seed=0)
    assert plain["t"].status == "violated"


# ------------------------------------------------------------------ sampling and search
def test_box_sample_draws_real_categories_uniformly() -> None:
    box = cg.Box([-1.0, -0.5, -0.5, -0.5, 0.0], [1.0, 2.0, 2.0, 2.0, 1.0], one_hot=[[1, 2, 3]])
    x = box.sample(3000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert_one_hot(x, [1, 2, 3], -0.5, 2.0)
    counts = (x[:, 1:4] == 2.0).sum(dim=0)
    assert int(counts.min()) > 900  # each of 3 categories about 1000 times
    assert float(x[:, 0].min()) >= -1.0 and float(x[:, 4].max()) <= 1.0
    assert "one_hot=[[1, 2, 3]]" in repr(box)
    # numpy integers (e.g. from np.where) are indices too, as for fixed= and categorical=
    assert cg.Box([0.0] * 3, [1.0] * 3, one_hot=[list(np.arange(3))]).one_hot == ((0, 1, 2),)


def test_sampling_and_adversarial_search_stay_on_categories() -> None:
    net = two_category_net()
    seen: list[torch.Tensor] = []

    def violation(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.detach().clone())
        return -slope_t_graph(net, x).unsqueeze(1)

    low, high = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    f64 = {"dtype": torch.float64}
    sampled = sample_search(violation, low, high, n=512, seed=0, one_hot=[[0, 1]], **f64)
    found = adversarial_search(
        violation,
        low,
        high,
        starts=16,
        steps=20,
        seed=0,
        one_hot=[[0, 1]],
        init_points=torch.tensor([[0.9, 0.8, 0.9]]),  # projected onto a category first
        **f64,
    )
    for x in seen:
        assert_one_hot(x, [0, 1], 0.0, 1.0)
    assert sampled.max_violation <= 0 and found.max_violation <= 0
    # without the group, the same sampling finds the two-categories-at-once corner
    free = sample_search(violation, low, high, n=512, seed=0, **f64)
    assert free.max_violation == pytest.approx(1.0)


def slope_t_graph(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """df/dt keeping the graph in x (for the adversarial search's ascent)."""
    if not x.requires_grad:
        x = x.requires_grad_(True)
    (g,) = torch.autograd.grad(net(x).sum(), x, create_graph=True)
    return g[:, -1]


def test_project_snaps_each_group_to_its_most_switched_on_feature() -> None:
    box = as_box([-0.5, -0.5, -0.5, 0.0], [2.0, 2.0, 2.0, 1.0], one_hot=[[0, 1, 2]], who="test")
    x = torch.tensor([[0.1, 1.5, 0.3, 1.7], [3.0, -1.0, 0.0, -0.2]], dtype=torch.float64)
    p = box.project(x)
    assert p.tolist() == [[-0.5, 2.0, -0.5, 1.0], [2.0, -0.5, -0.5, 0.0]]
    assert box.continuous_free == [3]
    u = torch.tensor(list(itertools.product([0.5], [0.1, 0.5, 0.9])), dtype=torch.float64)
    drawn = box.from_unit(u)  # columns: the continuous feature, then the group
    assert drawn[:, 3].tolist() == [0.5, 0.5, 0.5]
    assert (drawn[:, :3] == 2.0).float().argmax(dim=1).tolist() == [0, 1, 2]


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("one_hot", "kwargs", "match"),
    [
        ([[0]], {}, "at least 2 distinct"),
        ([[0, 0]], {}, "at least 2 distinct"),
        ([[0, 5]], {}, "not a feature index"),
        ([[0, 1], [1, 2]], {}, "in two one_hot groups"),
        ([[0, 1]], {"categorical": {1: [0.0, 1.0]}}, "fixed/categorical"),
        ([[0, 2]], {"fixed": {2: 0.5}}, "fixed/categorical"),
        ([[0, 3]], {}, "low < high"),
        ("01", {}, "list of index lists"),
        ([0, 1], {}, "each one_hot group must be a list"),
    ],
)
def test_bad_groups_are_refused_by_box_and_as_box(one_hot, kwargs, match) -> None:
    low, high = [0.0, 0.0, 0.0, 0.5], [1.0, 1.0, 1.0, 0.5]
    with pytest.raises(InputValidationError, match=match):
        cg.Box(low, high, one_hot=one_hot, **kwargs)
    with pytest.raises(InputValidationError, match=match):
        as_box(low, high, one_hot=one_hot, who="verify", **kwargs)
