"""diagnose(): what each constraint and its multiplier did at the end of a run."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import constrained_grad as cg
from constrained_grad.errors import InputValidationError


def _history(violation_max, multiplier, *, violation_mean=None, name="c", kinds=None):
    """A one-constraint history with the given per-step series (other stats plausible)."""
    h = cg.History([name], meta=None if kinds is None else {"constraint_kinds": kinds})
    vmean = violation_mean if violation_mean is not None else [v - 0.1 for v in violation_max]
    for k, (v, vm, m) in enumerate(zip(violation_max, vmean, multiplier, strict=True)):
        frac = 1.0 if v > 0 else 0.0
        h.log_step(k, 0, float(k), [1.0, 1.0, vm, v, frac, m, m, m, m, m])
    return h


def _status(h, **kw):
    return cg.diagnose(h, **kw)["c"].status


# ------------------------------------------------------------------ synthetic series
def test_each_status_from_its_defining_series():
    n = 50
    rising = [0.1 * k for k in range(n)]
    assert _status(_history([-0.2] * n, [0.0] * n)) == "inactive"
    # met at the end after being violated, with a positive multiplier: satisfied, not inactive
    assert _status(_history([0.3] * 25 + [-0.01] * 25, [1.0] * n)) == "satisfied"
    # met by the median of the last fifth but violated in 2 of its 5 steps: at the boundary
    hover = cg.diagnose(_history([0.3] * 45 + [-0.01, 0.02, -0.01, 0.03, -0.01], [1.0] * n))
    assert hover["c"].status == "boundary"
    assert "violated in 2 of the last 5 steps" in hover["c"].message
    # one straggler in 10 final steps (window 100 -> fifth 10) is still "satisfied"
    one = [0.3] * 90 + [-0.01] * 9 + [0.02]
    assert cg.diagnose(_history(one, [1.0] * 100))["c"].status == "satisfied"
    # violation halves and more over the window while the multiplier rises: converging
    falling = [0.4 * (0.95**k) for k in range(n)]
    assert _status(_history(falling, rising)) == "converging"
    # flat positive violation, rising multiplier: runaway
    assert _status(_history([0.05] * n, rising)) == "runaway"
    # flat positive violation, steady multiplier (e.g. a fixed penalty): violated
    assert _status(_history([0.05] * n, [2.0] * n)) == "violated"
    # ... and with a zero multiplier the message points at the reduction the dual sees
    zero = cg.diagnose(_history([0.05] * n, [0.0] * n))["c"]
    assert zero.status == "violated" and "worst point" in zero.message
    nan_step = [0.05] * n
    nan_step[-3] = math.nan
    assert _status(_history(nan_step, [2.0] * n)) == "non-finite"
    assert _status(_history([0.05] * 6, [1.0] * 6)) == "too-short"


def test_window_reads_only_the_end_of_the_run():
    # runaway in the first half, settled in the second: the default window (last half)
    # sees the settled part; the whole run (window=1) sees the climb from 0
    n = 100
    viol = [0.05] * 50 + [-0.01] * 50
    mult = [0.1 * k for k in range(50)] + [5.0] * 50
    h = _history(viol, mult)
    assert _status(h) == "satisfied"
    assert _status(h, window=1.0) == "satisfied"  # end of the whole run is still met
    h2 = _history([-0.01] * 50 + [0.05] * 50, [0.0] * 50 + [0.1 * k for k in range(50)])
    assert _status(h2) == "runaway"
    assert _status(h2, window=0.3) == "runaway"
    # the last 10 steps alone: 4.0 -> 4.9 is below the default 20 % growth
    assert _status(h2, window=0.1, min_steps=5) == "violated"
    assert len(h2) == n


def test_growth_threshold_and_tolerance():
    n = 40
    slow = [10.0 + 0.01 * k for k in range(n)]  # +4 % over the run
    h = _history([0.05] * n, slow)
    assert _status(h) == "violated"
    assert _status(h, growth=0.01) == "runaway"
    assert _status(h, tolerance=0.1) == "satisfied"


def test_numbers_are_medians_of_the_window_ends():
    n = 50
    mult = [float(k) for k in range(n)]
    r = cg.diagnose(_history([0.05] * n, mult))["c"]
    # window = steps 25..49; fifths of 25 steps = 5 steps: medians 27 and 47
    assert (r.first_step, r.last_step) == (25, 49)
    assert r.multiplier_start == 27.0 and r.multiplier_end == 47.0
    assert r.violation_start == r.violation_end == 0.05
    assert str(r).startswith("c: runaway: ") and "27 -> 47" in str(r)


def test_equality_is_read_through_the_size_of_its_mean():
    n = 40
    # signed h alternates in sign with shrinking size; its max is always >= 0 so, read as
    # an inequality, the largest "violation" would look stuck
    h_mean = [(-1) ** k * 0.5 * 0.9**k for k in range(n)]
    h_max = [abs(v) + 0.3 for v in h_mean]
    mult = [-1.0 - 0.01 * k for k in range(n)]
    hist = _history(h_max, mult, violation_mean=h_mean, kinds={"c": "equality"})
    assert _status(hist) == "converging"
    assert _status(hist, kinds={"c": "inequality"}) != "converging"


def test_constraints_without_multipliers_are_judged_on_violations():
    n = 40
    assert _status(_history([0.05] * n, [math.nan] * n)) == "violated"
    assert _status(_history([-0.05] * n, [math.nan] * n)) == "satisfied"


# ------------------------------------------------------------------ real training runs
def _linear_problem(constraints, seed=0):
    torch.manual_seed(seed)
    model = nn.Linear(1, 1).double()
    return cg.DerivativeProblem(model, F.mse_loss, constraints, seed=seed)


def _data(slope, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(64, 1, generator=g, dtype=torch.float64) * 2 - 1
    return [(x, slope * x)]


def test_contradictory_margins_run_away_in_a_real_fit():
    # slope >= 0.5 and slope <= -0.5 cannot both hold: one is violated at every step and
    # dual ascent keeps raising the multipliers
    up = cg.Monotonic([0], "increasing", margin=0.5, name="up")
    down = cg.Monotonic([0], "decreasing", margin=0.5, name="down")
    problem = _linear_problem([up, down])
    opt = torch.optim.SGD(problem.model.parameters(), lr=0.05)
    res = cg.fit(problem, _data(0.0), opt, dual_lr=0.5, epochs=200, progress=False)
    report = cg.diagnose(res.history)
    assert {r.status for r in report.values()} == {"runaway"}, report
    assert res.history.meta["constraint_kinds"] == {"up": "inequality", "down": "inequality"}


def test_inactive_and_boundary_constraints_in_a_real_fit():
    # data increasing: the constraint never binds (inactive); data decreasing: the optimum
    # sits on the boundary slope 0 and the multiplier holds it there (boundary)
    inactive = _linear_problem([cg.Monotonic([0], "increasing", name="c")])
    opt = torch.optim.SGD(inactive.model.parameters(), lr=0.1)
    # a head start at a positive slope so the constraint never binds
    with torch.no_grad():
        inactive.model.weight.fill_(1.0)
    res = cg.fit(inactive, _data(2.0), opt, dual_lr=0.5, epochs=150, progress=False)
    assert cg.diagnose(res.history)["c"].status == "inactive"

    bound = _linear_problem([cg.Monotonic([0], "increasing", name="c")])
    opt = torch.optim.SGD(bound.model.parameters(), lr=0.1)
    res = cg.fit(bound, _data(-1.0), opt, dual_lr=0.5, epochs=300, progress=False)
    # the slope hovers around 0, worst point on either side of it from step to step
    r = cg.diagnose(res.history, tolerance=1e-3)["c"]
    assert r.status == "boundary", r
    # the constraint is active: the slope sits near the boundary 0 (the unconstrained fit
    # is -1), held there by a positive multiplier
    assert abs(float(bound.model.weight.detach())) < 0.05
    assert r.multiplier_end > 0.1


def _equality_run():
    eq = cg.Custom(
        lambda values: values.columns([0])[:, 0, :] - 1.0,
        needs=cg.Needs(columns=frozenset({0})),
        kind="equality",
        name="slope_is_one",
    )
    problem = _linear_problem([eq])
    opt = torch.optim.SGD(problem.model.parameters(), lr=0.05)
    return cg.fit(problem, _data(0.0), opt, dual_lr=0.2, epochs=30, progress=False)


def test_kinds_survive_a_json_round_trip(tmp_path):
    res = _equality_run()
    path = tmp_path / "h.json"
    res.history.save_json(path)
    loaded = cg.History.load_json(path)
    assert loaded.meta["constraint_kinds"] == {"slope_is_one": "equality"}
    assert cg.diagnose(loaded) == cg.diagnose(res.history)


def test_equality_reads_the_same_after_a_csv_round_trip_as_after_json(tmp_path):
    res = _equality_run()
    res.history.save_json(tmp_path / "h.json")
    res.history.save_csv(tmp_path / "h.csv")
    from_json = cg.History.load_json(tmp_path / "h.json")
    from_csv = cg.History.load_csv(tmp_path / "h.csv")
    assert from_csv.meta == from_json.meta == res.history.meta
    assert cg.diagnose(from_csv) == cg.diagnose(from_json) == cg.diagnose(res.history)
    # the reading depends on the kind: as an inequality the run reads otherwise
    inequality = cg.diagnose(from_json, kinds={"slope_is_one": "inequality"})
    assert inequality != cg.diagnose(from_json)


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"window": 0.0}, "window must be in"),
        ({"window": 1.5}, "window must be in"),
        ({"window": "half"}, "window must be a number"),
        ({"growth": -0.1}, "growth must be in"),
        ({"tolerance": -1.0}, "tolerance must be a finite number >= 0"),
        ({"min_steps": 1}, "min_steps must be an int >= 2"),
        ({"kinds": {"other": "equality"}}, "does not have"),
        ({"kinds": {"c": "eq"}}, "'inequality' or 'equality'"),
        ({"kinds": ["c"]}, "must map constraint names"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(kwargs, match):
    h = _history([0.05] * 20, [1.0] * 20)
    with pytest.raises(InputValidationError, match=match):
        cg.diagnose(h, **kwargs)


def test_not_a_history_is_refused():
    with pytest.raises(InputValidationError, match="expected a History"):
        cg.diagnose({"c": [1.0]})  # type: ignore[arg-type]


def test_empty_history_is_too_short():
    r = cg.diagnose(cg.History(["c"]))["c"]
    assert r.status == "too-short" and r.first_step is None
