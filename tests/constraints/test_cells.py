"""cg.Cells, the partition behind certified training: the initial grid and every refinement
partition the box (volumes, overlaps, random points in exactly one cell); refinement splits
only the cells whose bound is violated, respects the cell budget, splits categorical
features and one-hot groups into their values, and hands each child its parent's
multiplier; state round trip. And the certificate over cells never certifies a planted
narrow violation: it finds it (confirmed by autograd) or ends "unknown"."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

import constrained_grad as cg
from constrained_grad.derivatives.bounds import column_bounds, network_layers
from constrained_grad.errors import InputValidationError
from constrained_grad.verify.interval import certify_interval


def _inside(lo: torch.Tensor, hi: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(P, N): point p lies in cell n."""
    return ((x[:, None] >= lo[None]) & (x[:, None] <= hi[None])).all(dim=2)


def _assert_partition(cells: cg.Cells, box: cg.Box, seed: int = 0) -> None:
    """The cells' union is the box and they do not overlap: continuous volumes sum to the
    box's, pairwise intersections have no volume, and sampled points of the domain lie in
    exactly one cell."""
    lo, hi = cells.lo[: cells.n], cells.hi[: cells.n]
    free = box.continuous_free
    assert (lo >= box.low).all() and (hi <= box.high).all()
    if not box.categorical and not box.one_hot:
        vol = (hi - lo)[:, free].prod(dim=1)
        box_vol = float((box.high - box.low)[free].prod())
        assert math.isclose(float(vol.sum()), box_vol, rel_tol=1e-12)
        ilo = torch.maximum(lo[:, None], lo[None])[..., free]
        ihi = torch.minimum(hi[:, None], hi[None])[..., free]
        overlap = (ihi - ilo).clamp_min(0).prod(dim=2)
        overlap.fill_diagonal_(0)
        assert float(overlap.max()) == 0.0
    x = box.sample(4000, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    counts = _inside(lo, hi, x).sum(dim=1)
    assert (counts == 1).all(), counts.unique()


def _tanh_net(d: int, m: int, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(d, 12), nn.Tanh(), nn.Linear(12, 12), nn.Tanh(), nn.Linear(12, m)
    )


def _mixed_net() -> nn.Sequential:
    """2 inputs, 2 outputs; on a 4 x 4 grid, 12 cells' bounds violate monotonicity in x0
    and 4 hold."""
    model = _tanh_net(2, 2, seed=4)
    with torch.no_grad():
        model[0].weight[:, 0] = model[0].weight[:, 0].abs()
        model[2].weight.abs_()
        model[4].weight.abs_()
        model[0].weight[:6, 0] *= -0.5
    return model


def _problem(
    model: nn.Module, cells: cg.Cells, inputs: list[int] | None = None
) -> cg.DerivativeProblem:
    return cg.DerivativeProblem(
        model,
        nn.functional.mse_loss,
        [cg.Monotonic(inputs=inputs or [0], where=cells, name="cells")],
    )


def _evaluate(problem: cg.DerivativeProblem, d: int, m: int) -> None:
    """One evaluation of the constraints (records each cell's worst bound)."""
    g = torch.Generator().manual_seed(1)
    problem.compute_cmp_state((torch.rand(8, d, generator=g), torch.rand(8, m, generator=g)))


def _worst_violation(model: nn.Module, lo: torch.Tensor, hi: torch.Tensor, j: int) -> torch.Tensor:
    """Oracle: worst over outputs of -(lower bound of d f_i / d x_j) on each cell."""
    b = column_bounds(network_layers(model, lo.shape[1], who="t"), lo.float(), hi.float(), [j])
    return (-b.lower).amax(dim=(1, 2)).detach().double()


# --------------------------------------------------------------------------- the partition


@pytest.mark.parametrize("splits", [1, 3, [2, 5, 3]])
def test_the_initial_grid_partitions_the_box(splits: int | list[int]) -> None:
    box = cg.Box([-1.0, 0.0, 2.0, 0.5], [1.0, 0.3, 7.0, 0.5])  # feature 3 fixed
    cells = cg.Cells(box, splits=splits)
    per = [splits] * 3 if isinstance(splits, int) else splits
    assert cells.n == math.prod(per)
    assert (cells.lo[: cells.n, 3] == 0.5).all() and (cells.hi[: cells.n, 3] == 0.5).all()
    for i, s in zip([0, 1, 2], per, strict=True):  # s equal parts along each free feature
        widths = (cells.hi - cells.lo)[: cells.n, i]
        torch.testing.assert_close(widths, torch.full_like(widths, float(box.width[i]) / s))
    _assert_partition(cells, box)


def test_refinement_splits_only_violated_cells_and_keeps_the_partition() -> None:
    box = cg.Box([-1.0, -1.0], [1.0, 1.0])
    model = _mixed_net()
    cells = cg.Cells(box, splits=4, refine_every=0, refine=100, max_cells=200)
    problem = _problem(model, cells)
    _evaluate(problem, 2, 2)
    old_lo, old_hi, n0 = cells.lo[:16].clone(), cells.hi[:16].clone(), cells.n
    violation = _worst_violation(model, old_lo, old_hi, 0)
    torch.testing.assert_close(cells.last[:n0], violation, rtol=0, atol=1e-6)
    violated = violation > 0
    assert 0 < int(violated.sum()) < n0  # the test needs both kinds
    assert cells.proved == int((~violated).sum())
    assert problem.refine_cells() == int(violated.sum())

    lo, hi = cells.lo[: cells.n], cells.hi[: cells.n]
    assert cells.n == n0 + int(violated.sum())  # continuous cells split in two
    parent = _inside(old_lo, old_hi, (lo + hi) / 2).double().argmax(dim=1)
    for k in range(n0):
        children = (parent == k).nonzero().flatten().tolist()
        if violated[k]:
            assert len(children) == 2 and k in children  # the first child keeps the id
            a, b = children
            axis = ((hi[a] - lo[a]) < (old_hi[k] - old_lo[k])).nonzero().flatten().tolist()
            assert len(axis) == 1  # halved along one axis
            torch.testing.assert_close(hi[a] - lo[a], hi[b] - lo[b])
        else:
            assert children == [k]
            assert torch.equal(lo[k], old_lo[k]) and torch.equal(hi[k], old_hi[k])
    _assert_partition(cells, box)
    # the children's recorded bounds are their own: the oracle on the new cells
    torch.testing.assert_close(
        cells.last[n0 : cells.n], _worst_violation(model, lo[n0:], hi[n0:], 0), rtol=0, atol=1e-6
    )


def test_with_a_slack_refinement_still_splits_only_cells_that_fail_the_property() -> None:
    """The slack pushes bounds in training; a cell whose bound holds but by less than the
    slack is not split (it needs a push, not a finer cell), nor counted as failing."""
    box = cg.Box([-1.0, -1.0], [1.0, 1.0])
    model = _mixed_net()
    violation = _worst_violation(model, *cg.Cells(box, splits=4).cells(None)[:2], 0)
    slack = float(-violation[violation <= 0].max()) + 0.5  # every holding cell within it
    cells = cg.Cells(box, splits=4, refine_every=0, refine=100, max_cells=200, slack=slack)
    problem = _problem(model, cells)
    _evaluate(problem, 2, 2)
    violated = violation > 0
    assert cells.proved == int((~violated).sum()) > 0
    assert problem.refine_cells() == int(violated.sum())


def test_repeated_refinement_respects_the_budget_and_says_so() -> None:
    box = cg.Box([-1.0, -1.0, -1.0], [1.0, 1.0, 1.0])
    model = _tanh_net(3, 1, seed=0)
    with torch.no_grad():  # decreasing in x0 everywhere: every cell stays violated
        model[0].weight[:, 0] = model[0].weight[:, 0].abs()
        model[2].weight.abs_()
        model[4].weight.abs_().neg_()
    cells = cg.Cells(box, splits=2, refine_every=0, refine=3, max_cells=21)
    problem = _problem(model, cells)
    _evaluate(problem, 3, 1)
    for _ in range(10):
        problem.refine_cells()
        _assert_partition(cells, box, seed=cells.n)
        assert cells.n <= 21
    assert cells.exhausted
    assert cells.n in (20, 21) and cells.proved == 0 and cells.worst > 0


def test_categorical_features_and_one_hot_groups_are_split_into_their_values() -> None:
    """No continuous feature: every split enumerates values, and once every cell is
    decided the cells are exactly the 3 x 3 points of the domain."""
    box = cg.Box(
        [0.0, 0.0, 0.0, 0.0], [2.0, 1.0, 1.0, 1.0], categorical={0: [0, 1, 2]}, one_hot=[[1, 2, 3]]
    )
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 1))
    with torch.no_grad():  # strictly decreasing in x0: every cell violated
        model[0].weight[:, 0] = model[0].weight[:, 0].abs() + 0.1
        model[2].weight.copy_(-model[2].weight.abs() - 0.1)
    cells = cg.Cells(box, refine_every=0, refine=100, max_cells=50)
    assert cells.n == 1
    problem = _problem(model, cells)
    _evaluate(problem, 4, 1)
    problem.refine_cells()
    assert cells.n == 3  # one child per value of the first discrete axis chosen
    _assert_partition(cells, box)
    for _ in range(3):
        problem.refine_cells()
        _assert_partition(cells, box)
    lo, hi = cells.lo[: cells.n], cells.hi[: cells.n]
    assert cells.n == 9 and torch.equal(lo, hi)
    points = {tuple(row.tolist()) for row in lo}
    expected = {(c, *oh) for c in (0.0, 1.0, 2.0) for oh in torch.eye(3).tolist()}
    assert points == expected
    assert cells.splits_done == 4  # the root, then the three children of its split


def test_children_inherit_their_parents_multipliers() -> None:
    box = cg.Box([-1.0, -1.0], [1.0, 1.0])
    model = _mixed_net()  # two outputs: two multiplier entries per cell
    cells = cg.Cells(box, splits=4, refine_every=0, refine=100, max_cells=64)
    problem = _problem(model, cells)
    _evaluate(problem, 2, 2)
    weight = problem._constraints["cells"].multiplier.weight
    with torch.no_grad():
        weight.copy_(torch.arange(weight.numel(), dtype=weight.dtype).reshape(weight.shape))
    before = weight.detach().clone().reshape(64, 2)
    old_lo, old_hi = cells.lo[:16].clone(), cells.hi[:16].clone()
    assert problem.refine_cells() > 0
    after = weight.detach().reshape(64, 2)
    lo, hi = cells.lo[: cells.n], cells.hi[: cells.n]
    parent = _inside(old_lo, old_hi, (lo + hi) / 2).double().argmax(dim=1)
    for child in range(cells.n):
        assert torch.equal(after[child], before[int(parent[child])]), child
    assert torch.equal(after[cells.n :], before[cells.n :])  # unused slots untouched


def test_state_dict_round_trip() -> None:
    box = cg.Box([-1.0, -1.0], [1.0, 1.0])
    model = _tanh_net(2, 1, seed=3)
    cells = cg.Cells(box, splits=2, refine_every=0, refine=2, max_cells=6)
    problem = _problem(model, cells)
    _evaluate(problem, 2, 1)
    for _ in range(3):
        problem.refine_cells()
    buf = io.BytesIO()
    torch.save(cells.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    again = cg.Cells(box, splits=2, refine_every=0, refine=2, max_cells=6)
    again.load_state_dict(state)
    assert again.n == cells.n > 4 and again.exhausted == cells.exhausted
    assert (again.steps, again.splits_done) == (cells.steps, cells.splits_done)
    assert torch.equal(again.lo, cells.lo) and torch.equal(again.hi, cells.hi)
    assert torch.equal(again.last.isnan(), cells.last.isnan())
    assert torch.equal(again.last.nan_to_num(), cells.last.nan_to_num())
    assert (again.proved, again.worst) == (cells.proved, cells.worst)
    with pytest.raises(InputValidationError, match="does not fit this Cells"):
        cg.Cells(box, max_cells=3).load_state_dict(state)


def test_covers_says_whether_the_cells_can_seed_a_certificate() -> None:
    cells = cg.Cells(cg.Box([-1.0, -1.0], [1.0, 1.0]))
    assert cells.covers(cg.Box([-1.0, -0.5], [0.5, 1.0]))
    assert not cells.covers(cg.Box([-1.0, -1.0], [1.0, 1.5]))
    assert not cells.covers(cg.Box([-1.0], [1.0]))


# ----------------------------------------------------------- planted narrow violations

A, W = 0.3137, 0.004  # the violation sits in x0 in (A + W, A + 2 W) (ReLU) or near A (tanh)


def _planted_relu() -> nn.Sequential:
    """f = x0 + x1 / 2 + 2 W tri(x0): slope 1 except 3 on (A, A + W) and -1 on
    (A + W, A + 2 W), tri the triangle of height 1 on [A, A + 2 W]; two hidden layers."""
    l1, l2, l3 = nn.Linear(2, 5), nn.Linear(5, 5), nn.Linear(5, 1)
    with torch.no_grad():
        l1.weight.copy_(torch.tensor([[1, 0], [0, 1], [1 / W, 0], [1 / W, 0], [1 / W, 0]]))
        l1.bias.copy_(torch.tensor([2, 2, -A / W, -A / W - 1, -A / W - 2]))
        l2.weight.copy_(torch.eye(5))
        l2.bias.zero_()
        l3.weight.copy_(torch.tensor([[1, 0.5, 2 * W, -4 * W, 2 * W]]))
        l3.bias.zero_()
    return nn.Sequential(l1, nn.ReLU(), l2, nn.ReLU(), l3).double()


def _planted_tanh() -> nn.Sequential:
    """f = 2 tanh(tanh(x0 / 2)) + x1 / 2 - 2 W tanh(tanh((x0 - A) / W)): slope about -1.1
    at x0 = A, positive outside |x0 - A| < 1.2 W."""
    l1, l2, l3 = nn.Linear(2, 3), nn.Linear(3, 3), nn.Linear(3, 1)
    with torch.no_grad():
        l1.weight.copy_(torch.tensor([[0.5, 0], [0, 1], [1 / W, 0]]))
        l1.bias.copy_(torch.tensor([0, 0, -A / W]))
        l2.weight.copy_(torch.eye(3))
        l2.bias.zero_()
        l3.weight.copy_(torch.tensor([[2, 0.5, -2 * W]]))
        l3.bias.zero_()
    return nn.Sequential(l1, nn.Tanh(), l2, nn.Tanh(), l3).double()


def _slope(model: nn.Module, x: list[float]) -> float:
    p = torch.tensor([x], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(model(p).sum(), p)
    return float(g[0, 0])


PLANTED = {"relu": _planted_relu, "tanh": _planted_tanh}
BOX = cg.Box([-1.0, -1.0], [1.0, 1.0])


@pytest.mark.parametrize("act", list(PLANTED))
def test_the_planted_nets_are_what_they_claim(act: str) -> None:
    net = PLANTED[act]()
    x = torch.linspace(-1, 1, 4001, dtype=torch.float64)
    p = torch.stack([x, torch.full_like(x, 0.3)], dim=1).requires_grad_(True)
    (slopes,) = torch.autograd.grad(net(p).sum(), p)
    slopes = slopes[:, 0]
    bad = x[slopes < 0]
    assert len(bad) > 0 and float(bad.min()) > A - 2 * W and float(bad.max()) < A + 3 * W
    assert _slope(net, [A + 1.5 * W if act == "relu" else A, -0.7]) < -0.9


@pytest.mark.parametrize("act", list(PLANTED))
def test_verify_over_cells_finds_a_planted_narrow_violation(act: str) -> None:
    net = PLANTED[act]()
    c = cg.Monotonic(inputs=[0], where=cg.Cells(BOX, splits=4), name="mono")
    report = cg.verify(net, [c], BOX, samples=0, adversarial=False, time_limit=20)
    assert report["mono"].status == "violated"  # never "certified"; here it is found
    for ce in report["mono"].counterexamples:
        assert _slope(net, ce.x) < 0  # confirmed by autograd


@pytest.mark.parametrize("act", list(PLANTED))
def test_certify_interval_from_cells_finds_it_and_a_small_budget_is_unknown(act: str) -> None:
    net = PLANTED[act]()
    cells = cg.Cells(BOX, splits=[3, 2])
    args = {"input_index": 0, "output_index": 0, "lower": 0.0, "time_limit": 20.0}
    cert = certify_interval(net, BOX.low, BOX.high, cells=(cells.lo[:6], cells.hi[:6]), **args)
    assert cert.status == "violated"
    (check,) = cert.checks
    assert check.counterexample is not None and _slope(net, check.counterexample.tolist()) < 0
    small = certify_interval(
        net, BOX.low, BOX.high, cells=(cells.lo[:6], cells.hi[:6]), max_boxes=8, **args
    )
    assert small.status == "unknown"


def _plant(model: nn.Sequential, height: float) -> nn.Sequential:
    """``model`` (tanh, two hidden layers, 2 inputs) plus -height tanh(tanh((x0 - A) / W))
    through one new unit per hidden layer; the other units are unchanged."""
    l1, l2, l3 = (m for m in model if isinstance(m, nn.Linear))
    h = l1.out_features
    n1, n2, n3 = nn.Linear(2, h + 1), nn.Linear(h + 1, h + 1), nn.Linear(h + 1, 1)
    with torch.no_grad():
        for new in (n1, n2, n3):
            new.weight.zero_()
            new.bias.zero_()
        n1.weight[:h], n1.bias[:h] = l1.weight, l1.bias
        n1.weight[h, 0], n1.bias[h] = 1 / W, -A / W
        n2.weight[:h, :h], n2.bias[:h] = l2.weight, l2.bias
        n2.weight[h, h] = 1.0
        n3.weight[0, :h], n3.bias[:] = l3.weight[0], l3.bias
        n3.weight[0, h] = -height
    return nn.Sequential(n1, nn.Tanh(), n2, nn.Tanh(), n3).double()


def test_a_certified_trained_net_with_a_planted_bump_is_not_certified() -> None:
    """Certified training proves every cell; a narrow bump planted afterwards must not ride
    on the training's record: the certificate recomputes and finds it."""
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    x = torch.rand(256, 2) * 2 - 1
    y = x[:, :1] + 0.3 * torch.sin(3 * x[:, 1:])
    model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1))
    cells = cg.Cells(BOX, splits=4, max_cells=64, refine_every=10)
    c = cg.Monotonic(inputs=[0], where=cells, name="mono")
    problem = cg.DerivativeProblem(model, nn.functional.mse_loss, [c])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)
    cg.fit(problem, loader, opt, dual_lr=0.1, epochs=15, progress=False)
    assert cells.proved == cells.n  # every cell's training bound holds
    assert cg.verify(model, [c], BOX, samples=0, adversarial=False)["mono"].status == "certified"

    slope = max(_slope(model.double(), [A, v]) for v in torch.linspace(-1, 1, 21).tolist())
    planted = _plant(model, (slope + 1.0) * W)
    assert _slope(planted, [A, 0.0]) < -0.5
    report = cg.verify(planted, [c], BOX, samples=0, adversarial=False, time_limit=20)
    assert report["mono"].status == "violated"
    assert all(_slope(planted, ce.x) < 0 for ce in report["mono"].counterexamples)
