"""The real-data benchmark's scikit-learn references: selection on validation only, the exact
linear monotonicity check, the monotone-by-construction wiring (synthetic data, no files)."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="scikit-learn is a dev/bench extra")

from bench_scripts import load

refs = load("reference_learners")
md = load("monotone_datasets")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Gradient boosting's OpenMP threads spin badly on a busy 2-core machine."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


def _data(n: int, slope: float, task: str, seed: int = 0) -> dict[str, np.ndarray]:
    """y depends on feature 0 with ``slope`` (plus feature 1), split 60/20/20."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    f = slope * x[:, 0] + 0.5 * x[:, 1] + 0.3 * rng.normal(size=n)
    y = f if task == "regression" else (f > 0).astype(np.float64)
    a, b = int(0.6 * n), int(0.8 * n)
    return {
        "x_train": x[:a],
        "y_train": y[:a],
        "x_val": x[a:b],
        "y_val": y[a:b],
        "x_test": x[b:],
        "y_test": y[b:],
    }


@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize(("slope", "violated"), [(-1.5, True), (1.5, False)])
def test_linear_violation_is_the_derivative_checked_by_finite_differences(
    task: str, slope: float, violated: bool
) -> None:
    data = _data(400, slope, task)
    got = refs.fit_reference("linear", task, [0], "increasing", data, seed=0)
    assert got is not None
    viol = refs.linear_violation(got.model, [0], "increasing")
    assert (viol > 0) is violated
    # oracle: the derivative of the decision function (logit / prediction) in feature 0
    x = data["x_test"][:5]
    h = 1e-4
    out = got.model.decision_function if task == "classification" else got.model.predict
    step = np.zeros(3)
    step[0] = h
    fd = (out(x + step) - out(x - step)) / (2 * h)
    np.testing.assert_allclose(-fd, viol, rtol=1e-6, atol=1e-9)
    # the same model read as "decreasing" is violated exactly when it was not
    assert (refs.linear_violation(got.model, [0], "decreasing") > 0) is (not violated)


def test_selection_never_reads_the_test_rows() -> None:
    data = _data(300, 1.0, "classification", seed=1)
    first = refs.fit_reference("linear", "classification", [0], "increasing", data, seed=0)
    shuffled = dict(data)
    rng = np.random.default_rng(7)
    shuffled["x_test"] = rng.normal(size=data["x_test"].shape)
    shuffled["y_test"] = rng.integers(0, 2, size=data["y_test"].shape).astype(np.float64)
    second = refs.fit_reference("linear", "classification", [0], "increasing", shuffled, seed=0)
    assert first is not None and second is not None
    assert first.label == second.label and first.val == second.val
    # and the kept candidate is the best on validation among the whole grid
    cands = refs.candidates("linear", "classification", [0], "increasing", 3, 0)
    scores = [
        refs.val_score(
            est.fit(data["x_train"], data["y_train"]),
            data["x_val"],
            data["y_val"],
            "classification",
        )
        for _, est in cands
    ]
    assert first.val == max(scores)


def _one_gbm(method: str, direction: str) -> object:
    """One grid point of ``method`` (the whole 36-point grid is the benchmark's job)."""
    cands = dict(refs.candidates(method, "regression", [0], direction, 3, 0))
    assert len(cands) == len(list(itertools.product(*refs.GBM_GRID.values())))
    return cands["gbm learning_rate=0.1 max_leaf_nodes=8 max_iter=50 l2_regularization=0"]


@pytest.mark.parametrize("direction", ["increasing", "decreasing"])
def test_gbm_monotone_is_monotone_in_the_declared_direction(direction: str) -> None:
    # the data say the opposite of the declaration: only the constraint keeps it monotone
    slope = -2.0 if direction == "increasing" else 2.0
    data = _data(400, slope, "regression", seed=2)
    model = _one_gbm("gbm_monotone", direction).fit(data["x_train"], data["y_train"])
    grid = np.linspace(-3, 3, 61)
    rng = np.random.default_rng(3)
    for _ in range(20):
        rows = np.tile(rng.normal(size=3), (len(grid), 1))
        rows[:, 0] = grid
        diffs = np.diff(model.predict(rows))
        assert (diffs >= 0).all() if direction == "increasing" else (diffs <= 0).all()
    free = _one_gbm("gbm", direction).fit(data["x_train"], data["y_train"])
    rows = np.zeros((len(grid), 3))
    rows[:, 0] = grid
    diffs = np.diff(free.predict(rows))  # unconstrained: follows the data's slope
    assert (diffs < 0).any() if direction == "increasing" else (diffs > 0).any()


def test_test_selected_is_the_best_threshold_accuracy_over_the_grid() -> None:
    data = _data(300, 1.0, "classification", seed=4)
    got = refs.fit_reference(
        "linear", "classification", [0], "increasing", data, seed=0, test_selected=True
    )
    assert got is not None and got.test_selected is not None
    best = 0.0
    for _, est in refs.candidates("linear", "classification", [0], "increasing", 3, 0):
        est.fit(data["x_train"], data["y_train"])
        logit = est.decision_function(data["x_test"])
        for t in refs.THRESHOLDS:
            best = max(best, float(np.mean((logit > t) == data["y_test"])))
    assert got.test_selected == best
    assert got.test_selected >= refs.score(
        got.model, data["x_test"], data["y_test"], "classification", 1.0
    )


def test_reference_row_records_one_selected_model() -> None:
    rng = np.random.default_rng(5)
    x = rng.uniform(0, 10, size=(120, 3))
    table = md.Table(x, 2.0 * x[:, 0] + x[:, 1], ["a", "b", "c"], [0], "increasing", "regression")
    split = md.make_split(table, None, seed=0)
    cfg = md.parse(["--test-selected"])
    row = md.reference_row("linear", table, split, 0, cfg)
    assert row is not None
    assert row["certified"] is True and row["max_violation"] < 0  # slope +2: monotone
    assert row["grid_size"] == len(refs.LINEAR_C)
    assert row["test"] == pytest.approx(row["test_selected"])  # regression: test MSE itself
    assert row["test"] < 0.5 and row["val"] < 0  # MSE in target units; val is −MSE


def test_missing_scikit_learn_gives_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn -> ImportError
    data = _data(50, 1.0, "classification")
    assert refs.fit_reference("linear", "classification", [0], "increasing", data, 0) is None


def test_unknown_method_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown reference method"):
        refs.candidates("forest", "classification", [0], "increasing", 3, 0)
