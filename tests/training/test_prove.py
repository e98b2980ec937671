"""cg.Prover, "train until proved": proves a monotone net and logs it; restores the last (or
best-scoring) proved state when the final weights are not proved; feeds the counterexamples
of a failed check into a Counterexamples source through its public add(); says "not
proved" when nothing was proved, including when the budget runs out on a monotone net;
refuses bad arguments by name."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import constrained_grad as cg
from constrained_grad.errors import InputValidationError

BOX = cg.Box([-1.0, -1.0], [1.0, 1.0])
NOT_PROVED = {"status": "not proved", "proved_step": None, "checks": 3}


def _net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1))


def _positive_net() -> nn.Sequential:
    """All weights positive: increasing in both inputs everywhere, provably so by intervals."""
    net = _net()
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.Linear):
                m.weight.abs_().add_(0.05)
    return net


def _decreasing_net() -> nn.Sequential:
    net = _positive_net()
    with torch.no_grad():
        net[4].weight.neg_()
    return net


def _loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 2, generator=g) * 2 - 1
    return DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=16)


def _slopes(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Autograd d f / d x0 at the rows of ``x`` (float64 copy of the model)."""
    m = copy.deepcopy(model).double()
    x = x.to(torch.float64).clone().requires_grad_(True)
    (g,) = torch.autograd.grad(m(x).sum(), x)
    return g[:, 0]


def _fit(model: nn.Module, callbacks: list[Any], steps: int, where: Any = None, lr: float = 1e-3):
    c = cg.Monotonic(inputs=[0], name="mono", **({} if where is None else {"where": where}))
    problem = cg.DerivativeProblem(model, nn.functional.mse_loss, [c])
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    return cg.fit(
        problem, _loader(), opt, steps=steps, epochs=100, progress=False, callbacks=callbacks
    )


class _At:
    """A callback that runs ``fn(model)`` once, at ``step`` (after the callbacks before it)."""

    def __init__(self, step: int, fn: Any) -> None:
        self.step, self.fn, self.state = step, fn, None

    def __call__(self, info: Any) -> bool:
        if info.step == self.step:
            self.state = copy.deepcopy(info.problem.model.state_dict())
            with torch.no_grad():
                self.fn(info.problem.model)
        return False


def _negate_output(model: nn.Module) -> None:
    model[4].weight.neg_()


def _same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def grid() -> Iterator[torch.Tensor]:
    yield BOX.sample(4096, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


# ------------------------------------------------------------------------------ outcomes


def test_a_monotone_net_is_proved_and_the_proof_is_logged(grid: torch.Tensor) -> None:
    model = _positive_net()
    cells = cg.Cells(BOX, splits=2, refine_every=5)
    prover = cg.Prover(BOX, every=5, log_every=2, time_limit=10)
    result = _fit(model, [prover], steps=12, where=cells)
    assert prover.status == "proved" and prover.final_proved
    assert [c["step"] for c in prover.checks] == [5, 10, 12]
    assert all(c["proved"] and c["status"] == {"mono": "certified"} for c in prover.checks)
    assert prover.proved_step == 12
    steps, certified = result.history.eval_series("proof/certified")
    assert steps == [5, 10, 12] and certified == [1.0, 1.0, 1.0]
    proof = result.history.meta["proof"]
    assert {k: proof[k] for k in ("status", "proved_step", "checks")} == {
        "status": "proved",
        "proved_step": 12,
        "checks": 3,
    }
    assert proof["cells"]["mono"]["cells"] == cells.n
    assert proof["cells"]["mono"]["bound_holds"] == cells.n
    assert proof["cells"]["mono"]["budget_exhausted"] is False
    steps, n = result.history.eval_series("cells/mono/cells")
    assert n[-1] == cells.n and 2 in steps  # cell statistics every log_every steps
    _, proved = result.history.eval_series("cells/mono/proved")
    assert proved[-1] == cells.n
    assert (_slopes(model, grid) > 0).all()  # the oracle agrees


def test_the_last_proved_state_is_restored_when_the_final_weights_are_not_proved(
    grid: torch.Tensor,
) -> None:
    model = _positive_net()
    prover = cg.Prover(BOX, every=5, time_limit=10)
    flip = _At(5, _negate_output)  # after the proved check of step 5
    result = _fit(model, [prover, flip], steps=12)
    assert [c["proved"] for c in prover.checks] == [True, False, False]  # steps 5, 10, 12
    assert prover.status == "proved" and prover.proved_step == 5
    assert flip.state is not None and _same_state(model.state_dict(), flip.state)
    assert result.history.meta["proof_restored_step"] == 5
    assert result.history.meta["proof"]["status"] == "proved"
    assert (_slopes(model, grid) > 0).all()


def test_without_restore_the_unproved_final_weights_stay_and_say_so(grid: torch.Tensor) -> None:
    model = _positive_net()
    prover = cg.Prover(BOX, every=5, time_limit=10, restore=False)
    result = _fit(model, [prover, _At(5, _negate_output)], steps=12)
    assert prover.status == "not proved" and prover.proved_step == 5
    proof = result.history.meta["proof"]
    assert {k: proof[k] for k in ("status", "proved_step", "checks")} == {
        "status": "not proved",
        "proved_step": None,
        "checks": 3,
    }
    assert "proof_restored_step" not in result.history.meta
    assert (_slopes(model, grid) < 0).any()  # the oracle agrees


def test_the_best_scoring_proved_state_is_kept() -> None:
    model = _positive_net()
    scores = iter([3.0, 1.0, 2.0])  # the proved checks of steps 5, 10, 15
    prover = cg.Prover(BOX, every=5, time_limit=10, score=lambda m: next(scores))
    at10 = _At(10, lambda m: None)
    _fit(model, [prover, at10, _At(15, _negate_output)], steps=17)
    assert [c["proved"] for c in prover.checks] == [True, True, True, False]
    assert prover.proved_step == 10 and prover.proved_score == 1.0
    assert at10.state is not None and _same_state(model.state_dict(), at10.state)


def test_with_a_score_a_better_earlier_proved_state_beats_proved_final_weights() -> None:
    """The final weights are proved too, but scored worse: the best proved state wins."""
    model = _positive_net()
    scores = iter([3.0, 1.0, 2.0])  # the proved checks of steps 5, 10 and the final step 12
    prover = cg.Prover(BOX, every=5, time_limit=10, score=lambda m: next(scores))
    at10 = _At(10, lambda m: m[4].weight.mul_(2.0))  # still positive: still proved
    result = _fit(model, [prover, at10], steps=12)
    assert [c["proved"] for c in prover.checks] == [True, True, True]  # steps 5, 10, 12
    assert prover.proved_step == 10 and prover.status == "proved"
    assert at10.state is not None and _same_state(model.state_dict(), at10.state)
    assert result.history.meta["proof_restored_step"] == 10


def test_nothing_proved_is_not_proved_and_the_weights_are_left_alone() -> None:
    model = _decreasing_net()
    prover = cg.Prover(BOX, every=4, time_limit=10)
    end = _At(10, lambda m: None)
    result = _fit(model, [prover, end], steps=10)
    assert prover.status == "not proved" and prover.proved_step is None
    assert prover.final_proved is False
    assert all(r["status"] == {"mono": "violated"} for r in prover.checks)
    assert result.history.eval_series("proof/certified")[1] == [0.0, 0.0, 0.0]
    proof = result.history.meta["proof"]
    assert {k: proof[k] for k in ("status", "proved_step", "checks")} == {
        "status": "not proved",
        "proved_step": None,
        "checks": 3,
    }
    assert end.state is not None and _same_state(model.state_dict(), end.state)


def _monotone_but_hard() -> nn.Sequential:
    """Increasing in x0 (min slope ~0.058 on the box) but the root box's bound is not."""
    torch.manual_seed(24)
    m = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1))
    with torch.no_grad():
        m[0].weight[:, 0] = m[0].weight[:, 0].abs() * 3
        m[4].weight.abs_()
        m[2].weight.mul_(2)
    return m


def test_a_budget_too_small_is_not_proved_even_for_a_monotone_net(grid: torch.Tensor) -> None:
    model = _monotone_but_hard()
    assert (_slopes(model, grid) > 0.05).all()  # monotone indeed
    tight = cg.Prover(BOX, every=100, time_limit=1e-6, samples=0)
    history = cg.History(["mono"])
    problem = cg.DerivativeProblem(
        model, nn.functional.mse_loss, [cg.Monotonic(inputs=[0], name="mono")]
    )
    assert tight.check(problem, history, step=0) is False
    assert tight.checks[0]["status"] == {"mono": "unknown"} and tight.status == "not proved"
    roomy = cg.Prover(BOX, every=100, time_limit=30, samples=0)
    assert roomy.check(problem, history, step=1) is True  # the same net, given time


# ------------------------------------------------------------------------ counterexamples


def test_counterexamples_of_a_failed_check_are_fed_through_add() -> None:
    model = _net(seed=1)
    ce = cg.Counterexamples(BOX, capacity=8, every=10**6)
    problem = cg.DerivativeProblem(
        model,
        nn.functional.mse_loss,
        [cg.Monotonic(inputs=[0], name="mono"), cg.Monotonic(inputs=[0], where=ce, name="ce")],
    )
    prover = cg.Prover(BOX, every=100, constraints=["mono"], feed=ce, time_limit=10)
    assert ce.filled == 0  # no search has run: the source has not been asked for points
    assert prover.check(problem, cg.History(list(problem.specs)), step=0) is False
    fed = prover.checks[0]["fed"]
    assert fed > 0 and ce.filled == min(fed, 8) and ce.found == fed
    points = ce.buffer[: ce.filled]
    assert BOX.contains(points).all()
    assert (_slopes(model, points) < 0).all()  # each one a confirmed counterexample
    report = prover.last_report
    assert report is not None
    xs = torch.tensor([c.x for r in report.constraints for c in r.counterexamples])
    torch.testing.assert_close(points, BOX.project(xs.double())[: ce.filled])


def test_feeding_during_fit_fills_the_buffer() -> None:
    model = _decreasing_net()
    ce = cg.Counterexamples(BOX, capacity=16, every=10**6, starts=1, steps=1)
    mono = cg.Monotonic(inputs=[0], name="mono")
    problem = cg.DerivativeProblem(
        model, nn.functional.mse_loss, [mono, cg.Monotonic(inputs=[0], where=ce, name="ce")]
    )
    prover = cg.Prover(BOX, every=3, constraints=["mono"], feed=ce, samples=256)
    before = ce.found
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    cg.fit(problem, _loader(), opt, steps=6, epochs=100, progress=False, callbacks=[prover])
    assert [r["fed"] for r in prover.checks] == [5, 5]  # top_k counterexamples per check
    # the source's own first search (one start) found one point; the checks added 10
    assert ce.found == before + 11 and ce.filled == 11
    assert BOX.contains(ce.buffer).all()


# -------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"domain": [0, 1]}, r"Prover: domain must be a cg\.Box \(got list\)"),
        ({"every": 0}, r"Prover: every must be a positive int \(got 0\)"),
        ({"every": True}, r"Prover: every must be a positive int \(got True\)"),
        ({"log_every": 1.5}, r"Prover: log_every must be a positive int"),
        ({"time_limit": 0}, r"Prover: time_limit must be a positive number"),
        ({"time_limit": float("inf")}, r"Prover: time_limit must be a positive number"),
        ({"time_limit": float("nan")}, r"Prover: time_limit must be a positive number"),
        ({"samples": -1}, r"Prover: samples must be an int >= 0 \(got -1\)"),
        ({"feed": cg.InBox(BOX, n=4)}, r"Prover: feed must be a cg\.Counterexamples"),
        ({"score": 1.0}, r"Prover: score must be a function of the model"),
    ],
)
def test_bad_arguments_are_refused_naming_prover(kwargs: dict[str, Any], fragment: str) -> None:
    args: dict[str, Any] = {"domain": BOX, **kwargs}
    with pytest.raises(InputValidationError, match=fragment):
        cg.Prover(args.pop("domain"), **args)


def test_bad_constraint_choices_are_refused_at_the_first_check() -> None:
    problem = cg.DerivativeProblem(
        _net(), nn.functional.mse_loss, [cg.Monotonic(inputs=[0], name="mono")]
    )
    with pytest.raises(InputValidationError, match=r"Prover: no constraint named \['nope'\]"):
        cg.Prover(BOX, constraints=["nope"]).check(problem, cg.History(["mono"]), 0)
    norm_only = cg.DerivativeProblem(
        _net(), nn.functional.mse_loss, [cg.JacobianNormBound(1.0, name="jac")]
    )
    with pytest.raises(InputValidationError, match="Prover: the problem has no Monotonic"):
        cg.Prover(BOX).check(norm_only, cg.History(["jac"]), 0)


def test_by_default_the_constraint_over_cells_is_what_is_proved() -> None:
    """A batch constraint with a training margin is not the property: with a constraint over
    cells in the problem, the default prover proves that one only."""
    model = _positive_net()
    constraints = [
        cg.Monotonic(inputs=[0], margin=100.0, name="on_batch"),  # never holds over the box
        cg.Monotonic(inputs=[0], where=cg.Cells(BOX, splits=2), name="proved"),
    ]
    problem = cg.DerivativeProblem(model, nn.functional.mse_loss, constraints)
    prover = cg.Prover(BOX, every=5, time_limit=10)
    cg.fit(
        problem,
        _loader(),
        torch.optim.SGD(model.parameters(), lr=0.0),
        steps=5,
        epochs=10,
        progress=False,
        callbacks=[prover],
    )
    assert prover.checks[0]["status"] == {"proved": "certified"}
    assert prover.status == "proved"


def _unproved_over_cells(model: nn.Module, cells: cg.Cells) -> tuple[cg.Prover, Any]:
    problem = cg.DerivativeProblem(
        model, nn.functional.mse_loss, [cg.Monotonic(inputs=[0], where=cells, name="mono")]
    )
    prover = cg.Prover(BOX, every=100, time_limit=10, samples=0)
    with pytest.warns(UserWarning, match="Prover: not proved") as caught:
        result = cg.fit(
            problem,
            _loader(),
            torch.optim.SGD(model.parameters(), lr=0.0),
            steps=6,
            epochs=10,
            progress=False,
            callbacks=[prover],
        )
    assert prover.status == "not proved"
    assert result.history.meta["proof"]["advice"] in str(caught[0].message)
    return prover, result.history.meta["proof"]["advice"]


def test_a_cell_budget_spent_on_violated_cells_is_named_with_what_to_change() -> None:
    cells = cg.Cells(BOX, splits=2, max_cells=5, refine_every=1, refine=4)
    _, advice = _unproved_over_cells(_decreasing_net(), cells)
    assert cells.exhausted and "max_cells" in advice and "'mono'" in advice


def test_a_bound_a_hair_short_advises_a_slack() -> None:
    """Slope -5e-6 in x0: the bound misses by 5e-6, too little to grow a multiplier."""
    model = nn.Sequential(nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[-5e-6, 1.0]]))
    cells = cg.Cells(BOX, splits=2, refine_every=0)
    _, advice = _unproved_over_cells(model, cells)
    assert "slack" in advice and "5.0e-06" in advice
