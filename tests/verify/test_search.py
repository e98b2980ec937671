"""Worst-case search: sampling and projected gradient ascent over a box."""

from __future__ import annotations

import math

import pytest
import torch

from constrained_grad.errors import GraphCutError, InputValidationError, NonFiniteError
from constrained_grad.verify.search import SearchResult, adversarial_search, sample_search

CENTER = torch.tensor([0.71, 0.23, 0.58, 0.87], dtype=torch.float64)
LOW4 = torch.zeros(4, dtype=torch.float64)
HIGH4 = torch.ones(4, dtype=torch.float64)
# exp(-r^2 / (2 * 0.3^2)) > 0.995  <=>  r < 0.3 * sqrt(-2 ln 0.995) ~= 0.030
BUMP_RADIUS = 0.3 * math.sqrt(-2 * math.log(0.995))


def narrow_bump(x: torch.Tensor) -> torch.Tensor:
    """Component 0 is violated only in a ball of radius ~0.03 (volume ~4e-6 of the box) but
    has a non-vanishing gradient everywhere; component 1 is never violated."""
    r2 = ((x - CENTER.to(x)) ** 2).sum(dim=1)
    bump = torch.exp(-r2 / (2 * 0.3**2)) - 0.995
    never = -1.0 - x.abs().sum(dim=1)
    return torch.stack([bump, never], dim=1)


def test_adversarial_finds_planted_violation_that_sampling_misses() -> None:
    budget = 16 * 128
    rnd = sample_search(narrow_bump, LOW4, HIGH4, n=budget, method="random", seed=0)
    sob = sample_search(narrow_bump, LOW4, HIGH4, n=budget, method="sobol", seed=0)
    adv = adversarial_search(narrow_bump, LOW4, HIGH4, starts=16, steps=127, seed=0)
    assert rnd.n_evaluations == sob.n_evaluations == adv.n_evaluations == budget
    assert not rnd.violated and rnd.max_violation < 0
    assert not sob.violated and sob.max_violation < 0
    assert adv.violated and adv.max_violation > 0
    x = adv.counterexample
    assert x is not None
    assert float((x - CENTER).norm()) < BUMP_RADIUS
    assert float(narrow_bump(x.unsqueeze(0))[0, 0]) == pytest.approx(adv.max_violation)
    assert adv.max_violation_per_component[1] < 0  # the other component is never violated
    assert adv.fraction_violating_per_component[1] == 0


def test_adversarial_differentiates_through_a_model_derivative() -> None:
    # f(x) = sin(3 x0) x1; claim df/dx0 >= 0, violation -3 cos(3 x0) x1 on [0, 1]^2,
    # maximised at the corner (1, 1) with value -3 cos(3).
    def violation(x: torch.Tensor) -> torch.Tensor:
        f = torch.sin(3 * x[:, 0]) * x[:, 1]
        (g,) = torch.autograd.grad(f.sum(), x, create_graph=True)
        return -g[:, :1]

    low = torch.zeros(2, dtype=torch.float64)
    high = torch.ones(2, dtype=torch.float64)
    adv = adversarial_search(violation, low, high, starts=4, steps=60, seed=1)
    assert adv.max_violation == pytest.approx(-3 * math.cos(3.0), abs=1e-12)
    torch.testing.assert_close(adv.worst_inputs[0], torch.ones(2, dtype=torch.float64))
    sob = sample_search(violation, low, high, n=1024, seed=1)
    assert sob.max_violation <= -3 * math.cos(3.0) + 1e-12
    # 1024 scrambled Sobol' points form a (0, 10, 2)-net: one of them lies in the corner
    # square [31/32, 1]^2, where the violation is at least -3 cos(3 * 31/32) * 31/32
    corner = 31 / 32
    assert sob.max_violation >= -3 * math.cos(3 * corner) * corner


def test_sobol_fraction_and_worst_points() -> None:
    def fn(x: torch.Tensor) -> torch.Tensor:
        return (x[:, 0] - 0.9).unsqueeze(1)

    res = sample_search(fn, [0.0, 0.0], [1.0, 1.0], n=1024, seed=3, top_k=5)
    assert isinstance(res, SearchResult)
    assert res.method == "sobol" and res.n_points == 1024
    assert res.fraction_violating == pytest.approx(0.1, abs=0.005)
    assert 0.09 < res.max_violation <= 0.1
    assert res.worst_inputs.shape == (5, 2) and res.worst_violations.shape == (5, 1)
    vals = res.worst_violations[:, 0]
    assert torch.all(vals[:-1] >= vals[1:])  # sorted, worst first
    torch.testing.assert_close(vals, res.worst_inputs[:, 0].double() - 0.9)
    rnd = sample_search(fn, [0.0, 0.0], [1.0, 1.0], n=1024, method="random", seed=3)
    assert rnd.fraction_violating == pytest.approx(0.1, abs=0.03)


def test_sampling_is_seeded_and_batch_size_invariant() -> None:
    a = sample_search(narrow_bump, LOW4, HIGH4, n=500, seed=7, batch_size=500)
    b = sample_search(narrow_bump, LOW4, HIGH4, n=500, seed=7, batch_size=64)
    c = sample_search(narrow_bump, LOW4, HIGH4, n=500, seed=8, batch_size=500)
    torch.testing.assert_close(a.worst_inputs, b.worst_inputs)
    assert a.max_violation == b.max_violation
    assert not torch.equal(a.worst_inputs, c.worst_inputs)
    g1 = torch.Generator().manual_seed(5)
    g2 = torch.Generator().manual_seed(5)
    r1 = sample_search(narrow_bump, LOW4, HIGH4, n=100, method="random", generator=g1)
    r2 = sample_search(narrow_bump, LOW4, HIGH4, n=100, method="random", generator=g2)
    torch.testing.assert_close(r1.worst_inputs, r2.worst_inputs)


class Recorder:
    """A violation function that records every batch it sees."""

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return ((x - 0.3) ** 2).sum(dim=1, keepdim=True) - 100.0


@pytest.mark.parametrize("search", ["sobol", "random", "adversarial"])
def test_fixed_and_categorical_features_are_respected(search: str) -> None:
    rec = Recorder()
    low, high = [-1.0, -1.0, -1.0, 0.0], [1.0, 1.0, 1.0, 2.0]
    kw = {"fixed": {1: 0.5}, "categorical": {2: [0.0, 1.0, -1.0]}, "seed": 0}
    if search == "adversarial":
        adversarial_search(rec, low, high, starts=8, steps=5, **kw)
    else:
        sample_search(rec, low, high, n=64, method=search, **kw)
    xs = torch.cat(rec.seen)
    assert torch.all(xs[:, 1] == 0.5)
    assert set(xs[:, 2].tolist()) <= {0.0, 1.0, -1.0}
    assert len(set(xs[:, 2].tolist())) > 1  # categories are sampled
    assert torch.all(xs[:, 0] >= -1) and torch.all(xs[:, 0] <= 1)
    assert torch.all(xs[:, 3] >= 0) and torch.all(xs[:, 3] <= 2)
    if search == "adversarial":
        for step in rec.seen[1:]:  # the ascent never moves a categorical feature
            torch.testing.assert_close(step[:, 2], rec.seen[0][:, 2])
        assert not torch.equal(rec.seen[-1][:, 0], rec.seen[0][:, 0])  # but moves the others


def test_zero_gradient_falls_back_to_a_random_walk_inside_the_box() -> None:
    seen: list[torch.Tensor] = []

    def flat(x: torch.Tensor) -> torch.Tensor:  # depends on x, zero gradient everywhere
        seen.append(x.detach().clone())
        return (0.0 * x).sum(dim=1, keepdim=True) - 1.0

    res = adversarial_search(flat, [0.0, 0.0], [1.0, 2.0], starts=4, steps=10, seed=0)
    assert res.max_violation == -1.0 and not res.violated
    assert not torch.equal(seen[-1], seen[0])
    xs = torch.cat(seen)
    assert torch.all(xs >= 0) and torch.all(xs[:, 0] <= 1) and torch.all(xs[:, 1] <= 2)


def test_init_points_are_used_and_projected() -> None:
    init = torch.tensor([[0.71, 0.23, 0.58, 0.87], [5.0, -3.0, 0.5, 0.5]], dtype=torch.float64)
    res = adversarial_search(narrow_bump, LOW4, HIGH4, starts=0, steps=0, init_points=init)
    assert res.n_points == 2 and res.n_evaluations == 2
    assert res.violated
    torch.testing.assert_close(res.worst_inputs[0], init[0])
    torch.testing.assert_close(res.worst_inputs[1], torch.tensor([1.0, 0.0, 0.5, 0.5]).double())


def test_dtype_follows_low_and_results_are_on_cpu() -> None:
    low = torch.zeros(4)
    res = sample_search(narrow_bump, low, torch.ones(4), n=16, seed=0)
    assert res.worst_inputs.dtype == torch.float32 and res.worst_inputs.device.type == "cpu"
    res64 = sample_search(narrow_bump, low, torch.ones(4), n=16, seed=0, dtype=torch.float64)
    assert res64.worst_inputs.dtype == torch.float64


def test_detached_violation_raises_graph_cut_error() -> None:
    def detached(x: torch.Tensor) -> torch.Tensor:
        return (x.detach() ** 2).sum(dim=1, keepdim=True)

    def recreated(x: torch.Tensor) -> torch.Tensor:
        y = x.detach().requires_grad_(True)
        return (y**2).sum(dim=1, keepdim=True)

    for fn in (detached, recreated):
        with pytest.raises(GraphCutError, match="differentiates the violations"):
            adversarial_search(fn, [0.0], [1.0], starts=2, steps=2, seed=0)
        # sampling needs no gradient, so the same functions are fine there
        res = sample_search(fn, [0.0], [1.0], n=8, seed=0)
        assert res.n_points == 8 and res.max_violation <= 1.0


@pytest.mark.parametrize(
    ("low", "high", "match"),
    [
        ([0.0, 1.0], [1.0, 0.0], "low > high"),
        ([0.0], [1.0, 2.0], "same shape"),
        ([0.0, float("inf")], [1.0, 2.0], "finite"),
        ([[0.0]], [[1.0]], "shape"),
    ],
)
def test_bad_boxes_raise(low: list, high: list, match: str) -> None:
    with pytest.raises(InputValidationError, match=match):
        sample_search(narrow_bump, low, high, n=4)
    with pytest.raises(InputValidationError, match=match):
        adversarial_search(narrow_bump, low, high, starts=2, steps=1)


def test_bad_arguments_raise() -> None:
    with pytest.raises(InputValidationError, match="n must be"):
        sample_search(narrow_bump, LOW4, HIGH4, n=0)
    with pytest.raises(InputValidationError, match="unknown method"):
        sample_search(narrow_bump, LOW4, HIGH4, n=4, method="grid")  # type: ignore[arg-type]
    with pytest.raises(InputValidationError, match="out of range"):
        sample_search(narrow_bump, LOW4, HIGH4, n=4, fixed={7: 0.0})
    with pytest.raises(InputValidationError, match="both fixed and categorical"):
        sample_search(narrow_bump, LOW4, HIGH4, n=4, fixed={0: 0.0}, categorical={0: [1.0]})
    with pytest.raises(InputValidationError, match="non-empty"):
        sample_search(narrow_bump, LOW4, HIGH4, n=4, categorical={0: []})
    with pytest.raises(InputValidationError, match="step_size"):
        adversarial_search(narrow_bump, LOW4, HIGH4, step_size=0.0)
    with pytest.raises(InputValidationError, match="no starting points"):
        adversarial_search(narrow_bump, LOW4, HIGH4, starts=0)
    with pytest.raises(InputValidationError, match="init_points"):
        adversarial_search(narrow_bump, LOW4, HIGH4, init_points=torch.zeros(3, 2))


def test_bad_violation_functions_raise() -> None:
    with pytest.raises(InputValidationError, match=r"shape \(B, C\)"):
        sample_search(lambda x: x.sum(), LOW4, HIGH4, n=4)
    with pytest.raises(InputValidationError, match="must return a tensor"):
        sample_search(lambda x: 1.0, LOW4, HIGH4, n=4)  # type: ignore[arg-type, return-value]

    def nan_fn(x: torch.Tensor) -> torch.Tensor:
        return torch.where(x[:, :1] > 0.5, torch.nan, 0.0)

    with pytest.raises(NonFiniteError, match="NaN"):
        sample_search(nan_fn, LOW4, HIGH4, n=64, seed=0)


def test_one_dimensional_output_is_one_component() -> None:
    res = sample_search(lambda x: x[:, 0] - 0.5, [0.0], [1.0], n=64, seed=0)
    assert res.max_violation_per_component.shape == (1,)
    assert res.violated and res.worst_violations.shape[1] == 1
    assert "VIOLATED" in res.summary()
