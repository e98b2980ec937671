r"""Reference learners (scikit-learn) for the real-data benchmark, on its own splits.

They answer one question: *how high can a model chosen on validation get on these splits?*
Each method's grid is fitted on the training rows, the candidate with the best validation score
is kept (classification: accuracy, ties broken by the log-loss, as for the nets), and the test
rows are scored once, after the selection.

``linear``        logistic regression (classification) or ridge regression (regression) on the
                  standardised features, L2 strength chosen on validation. Its derivative in
                  feature :math:`j` is the coefficient :math:`w_j` everywhere, so monotonicity
                  is decided exactly: the violation is :math:`\max_j (-s\,w_j)` over the
                  monotone features (:math:`s = +1` increasing, :math:`-1` decreasing), in the
                  nets' units (logit, or target standard deviations, per feature standard
                  deviation).
``gbm``           histogram gradient boosting (``HistGradientBoosting*``), unconstrained.
                  Piecewise constant, so there is no derivative to verify.
``gbm_monotone``  the same with ``monotonic_cst`` on the monotone features: monotone by
                  construction (every split is checked by the library).

scikit-learn is an optional benchmark dependency (``pip install -e ".[bench]"``);
:func:`fit_reference` returns None without it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

REFERENCES = ("linear", "gbm", "gbm_monotone")
LINEAR_C = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)  # inverse L2 strength (ridge: alpha = 1/C)
GBM_GRID: dict[str, tuple[float, ...]] = {
    "learning_rate": (0.03, 0.1),
    "max_leaf_nodes": (4, 8, 16),
    "max_iter": (50, 100, 200),
    "l2_regularization": (0.0, 1.0),
}
THRESHOLDS = np.linspace(-1.0, 1.0, 101)  # the --test-selected diagnostic, as for the nets


@dataclass
class Fitted:
    """The validation-selected candidate of one reference method."""

    label: str
    model: Any
    val: tuple[float, float]  # validation score, higher is better
    seconds: float
    test_selected: float | None  # DIAGNOSTIC: best test score over the grid (and thresholds)
    grid_size: int  # candidates fitted


def candidates(
    method: str, task: str, monotone: list[int], direction: str, d: int, seed: int
) -> list[tuple[str, Any]]:
    """The grid of ``method`` as (label, unfitted estimator) pairs."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.model_selection import ParameterGrid

    if method not in REFERENCES:
        raise ValueError(f"candidates: unknown reference method {method!r} (use {REFERENCES})")
    if method == "linear":
        if task == "regression":
            return [(f"ridge alpha={1 / c:g}", Ridge(alpha=1 / c)) for c in LINEAR_C]
        return [(f"logreg C={c:g}", LogisticRegression(C=c, max_iter=5000)) for c in LINEAR_C]
    cst = None
    if method == "gbm_monotone":
        sign = 1 if direction == "increasing" else -1
        cst = [sign if j in monotone else 0 for j in range(d)]
    gbm = HistGradientBoostingRegressor if task == "regression" else HistGradientBoostingClassifier
    out = []
    for kw in ParameterGrid({k: list(v) for k, v in GBM_GRID.items()}):
        label = "gbm " + " ".join(f"{k}={kw[k]:g}" for k in GBM_GRID)
        est = gbm(**kw, early_stopping=False, monotonic_cst=cst, random_state=seed)
        out.append((label, est))
    return out


def score(model: Any, x: np.ndarray, y: np.ndarray, task: str, y_scale: float) -> float:
    """MSE in target units² (regression, ``y`` standardised) or accuracy (classification)."""
    if task == "regression":
        return float(np.mean((model.predict(x) - y) ** 2)) * y_scale**2
    return float(np.mean(model.predict(x) == y))


def val_score(model: Any, x: np.ndarray, y: np.ndarray, task: str) -> tuple[float, float]:
    """(−MSE, 0) or (accuracy, −log-loss): the nets' validation score."""
    if task == "regression":
        return (-score(model, x, y, task, 1.0), 0.0)
    p = np.clip(model.predict_proba(x)[:, 1], 1e-12, 1 - 1e-12)
    bce = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    return (score(model, x, y, task, 1.0), -bce)


def test_selected_score(
    model: Any, x: np.ndarray, y: np.ndarray, task: str, y_scale: float
) -> float:
    """DIAGNOSTIC ONLY: test MSE, or the best test accuracy over thresholds on the logit in
    [−1, 1] (the published protocol). Never used for selection."""
    if task == "regression":
        return score(model, x, y, task, y_scale)
    logit = np.asarray(model.decision_function(x)).reshape(-1, 1)
    return float(((logit > THRESHOLDS) == y.reshape(-1, 1)).mean(0).max())


def fit_reference(
    method: str,
    task: str,
    monotone: list[int],
    direction: str,
    data: dict[str, np.ndarray],
    seed: int,
    y_scale: float = 1.0,
    test_selected: bool = False,
) -> Fitted | None:
    """Fit the grid of ``method`` on ``data["x_train"], data["y_train"]`` and keep the
    candidate with the best validation score (``x_val``, ``y_val``); with ``test_selected``
    also the best test score over the grid (``x_test``, ``y_test``; diagnostic only). None
    if scikit-learn is not installed."""
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return None
    t0 = time.perf_counter()
    d = data["x_train"].shape[1]
    best: tuple[tuple[float, float], str, Any] | None = None
    oracle: float | None = None
    grid = candidates(method, task, monotone, direction, d, seed)
    for label, est in grid:
        est.fit(data["x_train"], data["y_train"])
        got = val_score(est, data["x_val"], data["y_val"], task)
        if best is None or got > best[0]:
            best = (got, label, est)
        if test_selected:
            ts = test_selected_score(est, data["x_test"], data["y_test"], task, y_scale)
            better = min if task == "regression" else max
            oracle = ts if oracle is None else better(oracle, ts)
    assert best is not None
    return Fitted(best[1], best[2], best[0], time.perf_counter() - t0, oracle, len(grid))


def linear_violation(model: Any, monotone: list[int], direction: str) -> float:
    """Exact monotonicity check of a fitted linear model: the largest wrong-sign coefficient
    of a monotone feature (≤ 0: monotone everywhere; 0 is a flat direction, allowed)."""
    coef = np.asarray(model.coef_, dtype=np.float64).reshape(-1)
    sign = 1.0 if direction == "increasing" else -1.0
    return float(max(-sign * coef[j] for j in monotone))
