r"""What the multipliers did: a per-constraint reading of the end of a :class:`History`.

Dual ascent moves a multiplier by the violation its dual sees, :math:`\lambda \leftarrow
[\lambda + \eta\, g]_+`. So a multiplier that keeps rising while the largest violation does
not fall is paying more and more for nothing: the constraint cannot be met where it is
enforced (a margin at points where a ReLU net is flat, points outside the data, constraints
that contradict each other) or the primal step is too small to follow. Such a run still
looks fine in the loss, and the growing weight slowly pulls the fit away from the data.

:func:`diagnose` reads the last ``window`` fraction of the logged steps of each constraint
and names what happened there. ``start``/``end`` values are medians over the first/last fifth
of the window (so single noisy steps do not decide).

Statuses (:math:`v`: largest violation, :math:`m`: largest multiplier):

* ``inactive``: :math:`v \le` tol at every step and :math:`m = 0`, met without its multiplier;
* ``satisfied``: :math:`v_{end} \le` tol, and :math:`v >` tol in at most 10 % of the steps
  of the last fifth;
* ``boundary``: :math:`v_{end} \le` tol but :math:`v >` tol in more than 10 % of them, an
  active constraint held at the boundary by its multiplier;
* ``converging``: :math:`v_{end} >` tol but falling (:math:`v_{end} < v_{start}/2`);
* ``runaway``: :math:`v_{end} >` tol, not falling, and :math:`m` rose by at least ``growth``
  of its end value;
* ``violated``: :math:`v_{end} >` tol, not falling, :math:`m` steady (a fixed penalty, loss
  and multiplier in balance with the constraint still broken, or a zero multiplier whose
  dual sees a mean that is met);
* ``non-finite``: NaN or infinity among the window's violations or multipliers;
* ``too-short``: fewer than ``min_steps`` steps in the window.

Constraints whose ``reduction`` is ``"mean"`` (``history.meta["constraint_reductions"]``,
written by the training loop) bound a mean over points, and their multiplier sees that mean:
:math:`v` is then the mean violation, not the largest. The advice never proposes a reduction
the constraint refuses (random estimates allow ``"mean"`` and ``"pointwise"`` only), and a
``runaway`` says whether the violation did not move at all, fell too slowly, or did not fall.

Exact equalities (``kind="equality"`` with tolerance 0) have a signed violation :math:`h`;
they are read through :math:`|\,\mathrm{mean}\ h|` and :math:`\max|\lambda|`. The kinds
come from ``history.meta["constraint_kinds"]`` (written by the training loop, kept by
``save_json`` and ``save_csv``) or ``kinds=``; without either, every constraint is read as
an inequality.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass

from constrained_grad.errors import InputValidationError
from constrained_grad.history.record import History

__all__ = ["STATUSES", "ConstraintHealth", "diagnose"]

#: ``satisfied`` allows at most this share of violated steps in the last fifth of the window
BOUNDARY_SHARE = 0.1

STATUSES = (
    "inactive",
    "satisfied",
    "boundary",
    "converging",
    "runaway",
    "violated",
    "non-finite",
    "too-short",
)
_KINDS = ("inequality", "equality")


@dataclass(frozen=True)
class ConstraintHealth:
    """The reading of one constraint over the last steps of a run (see :func:`diagnose`)."""

    name: str
    status: str
    message: str
    first_step: int | None  # first and last logged step of the window
    last_step: int | None
    violation_start: float  # medians over the first / last fifth of the window
    violation_end: float
    multiplier_start: float
    multiplier_end: float

    def __str__(self) -> str:
        return f"{self.name}: {self.status}: {self.message}"


def _fraction(value: float, what: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputValidationError(f"diagnose: {what} must be a number (got {value!r}).")
    if not (low < value <= high):
        raise InputValidationError(
            f"diagnose: {what} must be in ({low:g}, {high:g}] (got {value!r}). "
            f"Pass e.g. {what}=0.5."
        )
    return float(value)


def _kinds(history: History, kinds: Mapping[str, str] | None) -> dict[str, str]:
    given = kinds if kinds is not None else history.meta.get("constraint_kinds", {})
    if not isinstance(given, Mapping):
        raise InputValidationError(
            f"diagnose: kinds must map constraint names to 'inequality'/'equality' "
            f"(got {type(given).__name__})."
        )
    unknown = sorted(set(given) - set(history.constraint_names))
    bad = {n: k for n, k in given.items() if k not in _KINDS}
    if kinds is not None and unknown:
        raise InputValidationError(
            f"diagnose: kinds names constraints the history does not have (got {unknown}; "
            f"the history has {history.constraint_names})."
        )
    if bad:
        raise InputValidationError(
            f"diagnose: a constraint kind must be 'inequality' or 'equality' (got {bad})."
        )
    return {n: str(given.get(n, "inequality")) for n in history.constraint_names}


def _reductions(history: History) -> dict[str, str]:
    """``{name: reduction}`` recorded by the training loop (``"mean/estimated"`` for a mean
    of random estimates); constraints of histories without it are absent."""
    given = history.meta.get("constraint_reductions", {})
    if not isinstance(given, Mapping):
        return {}
    return {str(n): str(r) for n, r in given.items() if n in history.constraint_names}


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def diagnose(
    history: History,
    *,
    window: float = 0.5,
    growth: float = 0.2,
    tolerance: float = 0.0,
    min_steps: int = 10,
    kinds: Mapping[str, str] | None = None,
) -> dict[str, ConstraintHealth]:
    """Name what each constraint and its multiplier did over the last steps of a run.

    Args:
        history: the run's :class:`History` (e.g. ``fit(...).history``).
        window: fraction of the logged steps, counted from the end, that is read.
        growth: smallest rise of the largest multiplier over the window, relative to its end
            value, that counts as "still growing" (``runaway``).
        tolerance: violations up to this size count as met.
        min_steps: fewer logged steps in the window give ``too-short``.
        kinds: ``{name: "inequality" | "equality"}``; default
            ``history.meta["constraint_kinds"]``, else all inequalities.

    Returns:
        ``{name: ConstraintHealth}`` in the history's constraint order; ``str()`` of an entry
        is a one-line explanation with the numbers and what to try.

    Example:
        >>> h = History(["box"])
        >>> for k in range(40):  # the violation stays at 0.05, the multiplier climbs
        ...     lam = 0.1 * k
        ...     h.log_step(k, 0, 0.0, [1.0, 1.0, 0.0, 0.05, 0.01] + [lam] * 5)
        >>> diagnose(h)["box"].status
        'runaway'
    """
    if not isinstance(history, History):
        raise InputValidationError(
            f"diagnose: expected a History (got {type(history).__name__}). "
            "Pass fit(...).history or History.load_json(path)."
        )
    window = _fraction(window, "window", 0.0, 1.0)
    growth = _fraction(growth, "growth", 0.0, 1.0)
    if (
        isinstance(tolerance, bool)
        or not isinstance(tolerance, (int, float))
        or not math.isfinite(tolerance)
        or tolerance < 0
    ):
        raise InputValidationError(
            f"diagnose: tolerance must be a finite number >= 0 (got {tolerance!r}). "
            "Pass e.g. tolerance=1e-3."
        )
    if isinstance(min_steps, bool) or not isinstance(min_steps, int) or min_steps < 2:
        raise InputValidationError(f"diagnose: min_steps must be an int >= 2 (got {min_steps!r}).")
    kind_of = _kinds(history, kinds)
    reduction_of = _reductions(history)
    n = len(history)
    first = n - max(1, math.ceil(window * n)) if n else 0
    steps = history.steps[first:]
    return {
        name: _read_one(
            name,
            kind_of[name],
            reduction_of.get(name, ""),
            history.constraint(name),
            first,
            steps,
            growth,
            float(tolerance),
            min_steps,
        )
        for name in history.constraint_names
    }


def _read_one(
    name: str,
    kind: str,
    reduction: str,
    stats: dict[str, list[float]],
    first: int,
    steps: list[int],
    growth: float,
    tol: float,
    min_steps: int,
) -> ConstraintHealth:
    equality = kind == "equality"
    if equality:
        viol = [abs(v) for v in stats["violation_mean"][first:]]
        mult = [
            max(abs(a), abs(b))
            for a, b in zip(
                stats["multiplier_max"][first:], stats["multiplier_min"][first:], strict=True
            )
        ]
    elif reduction.split("/")[0] == "mean":  # the multiplier sees (and the bound is on)
        viol = stats["violation_mean"][first:]  # the mean over points, not the worst one
        mult = stats["multiplier_max"][first:]
    else:
        viol = stats["violation_max"][first:]
        mult = stats["multiplier_max"][first:]
    mean_read = not equality and reduction.split("/")[0] == "mean"
    estimated = reduction.endswith("/estimated")
    # constraints without a multiplier (fixed penalties) log NaN multipliers on every step
    has_multiplier = not all(math.isnan(m) for m in mult)
    fifth = max(1, len(viol) // 5)
    v0, v1 = _median(viol[:fifth]), _median(viol[-fifth:])
    m0, m1 = (_median(mult[:fifth]), _median(mult[-fifth:])) if has_multiplier else (0.0, 0.0)
    span = (steps[0], steps[-1]) if steps else (None, None)

    def health(status: str, message: str) -> ConstraintHealth:
        return ConstraintHealth(name, status, message, span[0], span[1], v0, v1, m0, m1)

    where = f"steps {span[0]}-{span[1]}" if steps else "no steps"
    measure = (
        "|mean violation|" if equality else "mean violation" if mean_read else "largest violation"
    )
    if len(viol) < min_steps:
        return health(
            "too-short",
            f"only {len(viol)} logged steps in the window (need {min_steps}); train longer or "
            "pass a larger window.",
        )
    numbers = viol + (mult if has_multiplier else [])
    if not all(math.isfinite(v) for v in numbers):
        return health(
            "non-finite",
            f"NaN or infinity among the violations or multipliers ({where}). Look for the "
            "first bad step in the history; fit(on_nonfinite='raise') stops there.",
        )
    numbers_text = f"{measure} {v0:.3g} -> {v1:.3g}, multiplier {m0:.3g} -> {m1:.3g} ({where})"
    if not equality and all(v <= tol for v in viol) and all(m == 0 for m in mult):
        return health(
            "inactive",
            f"met at every step with a zero multiplier ({where}): it did not shape the fit there.",
        )
    late = sum(v > tol for v in viol[-fifth:])
    if v1 <= tol and late <= BOUNDARY_SHARE * fifth:
        return health("satisfied", f"met at the end; {numbers_text}.")
    if v1 <= tol:
        return health(
            "boundary",
            f"active, hovering at the boundary: violated in {late} of the last {fifth} steps "
            f"(median met); {numbers_text}. The multiplier holds it there; whether the final "
            "model meets it everywhere is for verification (cg.verify).",
        )
    if v0 > tol and v1 < 0.5 * v0:
        return health(
            "converging",
            f"still violated but falling; {numbers_text}. Train longer to let it settle.",
        )
    if has_multiplier and m1 - m0 >= growth * abs(m1) and m1 > m0:
        return health("runaway", _runaway_advice(viol, v0, v1, numbers_text, estimated))
    if has_multiplier and m1 == 0:
        if mean_read or equality:
            advice = (
                "The dual sees this positive violation yet the multiplier never moved: its "
                "dual step size is zero (dual_lr=0 for it) or the multiplier is not stepped. "
                "Give it a positive dual_lr."
            )
        else:
            options = (
                "reduction='pointwise' (one multiplier per point)"
                if estimated
                else "the default reduction='mean_hinge' or 'max' (whose dual sees the worst "
                "point) or 'pointwise' to enforce every point"
            )
            advice = (
                "The dual sees an aggregate that is met (e.g. the mean over points for "
                f"reduction='mean') while the worst point is not: use {options}, or bound the "
                "mean if the mean is what you meant."
            )
        return health(
            "violated",
            f"still violated at the end with a zero multiplier; {numbers_text}. {advice}",
        )
    return health(
        "violated",
        f"still violated at the end and its multiplier is steady; {numbers_text}. A fixed "
        "penalty or a multiplier in balance with the loss does not guarantee the "
        "constraint: raise dual_lr, or verify the model and train on its counterexamples.",
    )


def _runaway_advice(
    viol: list[float], v0: float, v1: float, numbers_text: str, estimated: bool
) -> str:
    """What a rising multiplier means, from how the violation behaved meanwhile."""
    spread = max(viol) - min(viol)
    if spread <= 1e-9 * max(1.0, abs(v1)):
        return (
            f"the multiplier keeps rising while the violation does not move at all; "
            f"{numbers_text}. The weights cannot change this constraint: check that the "
            "primal optimizer holds the model's parameters with a learning rate above zero "
            "and that none is frozen, and that the constraint is computed from the model "
            "(not detached)."
        )
    if v1 < v0:
        return (
            f"the multiplier keeps rising while the violation falls too slowly; "
            f"{numbers_text}. The primal step is too small to follow the dual: raise the "
            "primal learning rate or lower dual_lr, or train longer."
        )
    noise = (
        " The values are random estimates: more samples= make each step less noisy."
        if estimated
        else ""
    )
    return (
        f"the multiplier keeps rising while the violation does not fall; {numbers_text}. "
        "The constraint is likely unreachable where it is enforced (a margin at points where "
        "a ReLU net is flat, points far from the data, constraints that contradict each "
        "other): relax the margin or bound, enforce it nearer the data, or drop one of the "
        f"conflicting constraints; the growing weight pulls the fit away from the data.{noise}"
    )
