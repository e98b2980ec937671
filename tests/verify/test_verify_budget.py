"""cg.verify: one time budget for all certificates, honest statuses when nothing ran or time
ran out, progress bars, seeds of any size it accepts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import constrained_grad as cg
from constrained_grad.errors import InputValidationError
from constrained_grad.verify import run
from constrained_grad.verify.run import _Budget


def monotone_net(outputs: int = 1, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, outputs))
    with torch.no_grad():  # nonnegative weights: increasing in every input
        net[0].weight.abs_()
        net[2].weight.abs_()
    return net


BOX = cg.Box([0.0, 0.0, 0.0], [1.0, 1.0, 1.0])


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_budget_splits_what_is_left_fairly() -> None:
    clock = FakeClock()
    budget = _Budget(12.0, 4, clock=clock)
    assert budget.share() == pytest.approx(3.0)  # 12 s over 4 solves
    clock.t += 1.0  # the first solve used 1 s of its 3
    budget.spent()
    assert budget.share() == pytest.approx(11.0 / 3)  # its unused 2 s pass on
    clock.t += 11.0 / 3
    budget.spent()
    assert budget.share() == pytest.approx((12 - 1 - 11 / 3) / 2)
    clock.t += 20.0  # overran: nothing left
    budget.spent()
    assert budget.share() == 0.0
    assert _Budget(None, 3, clock=clock).share() is None


def test_time_limit_is_one_budget_for_every_output_input_and_side(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    offered: list[float] = []
    real = run._certify_pair

    def spy(*args: object, **kw: object) -> object:
        offered.append(kw["time_limit"])  # type: ignore[arg-type]
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(run, "_certify_pair", spy)
    net = monotone_net(outputs=3)
    limit = 30.0
    report = cg.verify(
        net,
        [cg.Monotonic(inputs=[0, 1]), cg.DerivativeBound(inputs=[2], lower=-100.0, upper=100.0)],
        BOX,
        samples=0,
        adversarial=False,
        time_limit=limit,
        progress=False,
    )
    assert [c.status for c in report.constraints] == ["certified", "certified"]
    assert len(offered) == 3 * 2 + 3 * 2  # outputs x inputs (x sides)
    assert offered[0] <= limit / 12  # a fair share, not the whole budget per solve
    assert sum(offered) <= limit * 1.0001 * sum(1 / k for k in range(1, 13))
    assert offered[-1] > offered[0]  # unused time passed on: the last gets the most


def test_time_out_is_unknown_never_certified() -> None:
    net = monotone_net()
    report = cg.verify(
        net,
        [cg.Monotonic(inputs=[0])],
        BOX,
        samples=0,
        adversarial=False,
        certify=True,
        time_limit=1e-4,
        progress=False,
    )
    c = report.constraints[0]
    assert c.status == "unknown" and not c.ok and not report.ok
    assert "not started" in c.certificate and "time_limit" in c.note
    # the same model with time to spare is certified
    again = cg.verify(net, [cg.Monotonic(inputs=[0])], BOX, samples=0, adversarial=False)
    assert again.constraints[0].status == "certified"


def test_nothing_checked_is_not_a_pass() -> None:
    net = monotone_net()
    report = cg.verify(
        net, [cg.Monotonic(inputs=[0])], BOX, samples=0, adversarial=False, certify=False
    )
    c = report.constraints[0]
    assert c.status == "not checked" and c.max_violation is None
    assert not c.ok and not report.ok
    assert "Nothing was checked" in c.note and "certify=False" in c.note
    assert "**not checked**" in report.to_markdown()
    # a constraint no certificate decides, with search off, is not checked either
    report = cg.verify(
        net,
        [cg.JacobianNormBound(10.0, estimator="exact")],
        BOX,
        samples=0,
        adversarial=False,
        progress=False,
    )
    assert report.constraints[0].status == "not checked" and not report.ok


def test_huge_seed_is_refused_by_name_and_large_valid_seed_works() -> None:
    net = monotone_net()
    kw = {"samples": 64, "starts": 2, "steps": 2, "certify": False, "progress": False}
    msg = r"verify: seed must be an int in \[0, 2\*\*64\)"
    with pytest.raises(InputValidationError, match=msg):
        cg.verify(net, [cg.Monotonic(inputs=[0])], BOX, seed=2**70, **kw)
    with pytest.raises(InputValidationError, match="seed"):
        cg.verify(net, [cg.Monotonic(inputs=[0])], BOX, seed=-1, **kw)
    report = cg.verify(net, [cg.Monotonic(inputs=[0])], BOX, seed=2**64 - 1, **kw)
    assert report.constraints[0].status == "no violation found"


def test_certificates_show_a_progress_bar(capsys: pytest.CaptureFixture[str]) -> None:
    net = monotone_net(outputs=2)
    cg.verify(net, [cg.Monotonic(inputs=[0, 1])], BOX, samples=0, adversarial=False)
    err = capsys.readouterr().err
    assert "verify: certificates (milp)" in err and "/4 " in err  # 4 solves
    cg.verify(net, [cg.Monotonic(inputs=[0])], BOX, samples=0, adversarial=False, progress=False)
    assert capsys.readouterr().err == ""
