"""What verification found, per constraint: plain data, Markdown and JSON."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATUSES = ("certified", "violated", "no violation found", "unknown", "skipped", "not checked")


@dataclass
class MethodResult:
    """One verification method run on one constraint."""

    method: str  # "sobol", "random", "adversarial", "milp", "interval", "points"
    max_violation: float | None
    fraction_violating: float | None
    evaluations: int
    seconds: float
    detail: str = ""


@dataclass
class Counterexample:
    """A point where a constraint is violated, with what was measured there."""

    x: list[float]
    violation: float  # worst component
    component: str  # which component
    derivatives: dict[str, float] = field(default_factory=dict)
    found_by: str = ""


@dataclass
class ConstraintReport:
    """Verification of one constraint over the domain."""

    name: str
    kind: str
    status: str
    max_violation: float | None
    fraction_violating: float | None
    counterexamples: list[Counterexample] = field(default_factory=list)
    methods: list[MethodResult] = field(default_factory=list)
    certificate: str = ""
    note: str = ""

    @property
    def ok(self) -> bool:
        """True if certified, or if sampling/search ran and found no violation (``"not
        checked"``, ``"unknown"`` and ``"violated"`` are not ok)."""
        return self.status in ("certified", "no violation found")


@dataclass
class VerificationReport:
    """Per-constraint results of :func:`constrained_grad.verify`."""

    constraints: list[ConstraintReport]
    domain: dict[str, Any]
    tol: float
    seconds: float
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True if no constraint is violated, undecided or left unchecked (skipped ones
        excepted)."""
        return all(c.ok or c.status == "skipped" for c in self.constraints)

    @property
    def max_violation(self) -> float | None:
        vals = [c.max_violation for c in self.constraints if c.max_violation is not None]
        return max(vals) if vals else None

    def __getitem__(self, name: str) -> ConstraintReport:
        for c in self.constraints:
            if c.name == name:
                return c
        raise KeyError(
            f"VerificationReport: no constraint named {name!r} (got "
            f"{[c.name for c in self.constraints]})."
        )

    def to_dict(self) -> dict[str, Any]:
        return _finite(asdict(self))

    def save_json(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")

    def save_markdown(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_text(self.to_markdown())

    def to_markdown(self) -> str:
        lines = [
            "# Verification report",
            "",
            f"Domain: {self.domain.get('dim')} features, low {self.domain.get('low')}, "
            f"high {self.domain.get('high')}. A point violates a constraint when its "
            f"violation exceeds tol = {self.tol:g}. Total time {self.seconds:.3g} s.",
            "",
            "| constraint | kind | status | max violation | fraction violating | methods |",
            "|---|---|---|---|---|---|",
        ]
        for c in self.constraints:
            methods = ", ".join(m.method for m in c.methods) or "-"
            lines.append(
                f"| {c.name} | {c.kind} | **{c.status}** | {_fmt(c.max_violation)} | "
                f"{_fmt(c.fraction_violating)} | {methods} |"
            )
        for c in self.constraints:
            lines += ["", f"## {c.name} ({c.kind}): {c.status}", ""]
            if c.note:
                lines += [c.note, ""]
            if c.methods:
                lines += [
                    "| method | max violation | fraction violating | evaluations | seconds "
                    "| detail |",
                    "|---|---|---|---|---|---|",
                ]
                for m in c.methods:
                    lines.append(
                        f"| {m.method} | {_fmt(m.max_violation)} | "
                        f"{_fmt(m.fraction_violating)} | {m.evaluations} | "
                        f"{m.seconds:.3g} | {m.detail} |"
                    )
            if c.certificate:
                lines += ["", "Exact certificate:", "", "```", c.certificate, "```"]
            if c.counterexamples:
                lines += ["", "Worst counterexamples:", ""]
                for k, ce in enumerate(c.counterexamples):
                    xs = ", ".join(f"{v:.4g}" for v in ce.x)
                    ds = ", ".join(f"{key} = {v:.4g}" for key, v in ce.derivatives.items())
                    lines.append(
                        f"{k + 1}. x = [{xs}]: violation {ce.violation:.4g} at "
                        f"{ce.component} ({ce.found_by})" + (f"; {ds}" if ds else "")
                    )
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        rows = [
            f"{c.name}: {c.status} (max violation {_fmt(c.max_violation)})"
            for c in self.constraints
        ]
        return "VerificationReport(" + "; ".join(rows) + ")"


def _fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.4g}"


def _finite(obj: Any) -> Any:
    """Replace non-finite floats by strings so the JSON is strict."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return repr(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


@dataclass
class LocalCheck:
    """One line of a local certificate: ``d f[output] / d x[input]`` along feature
    ``input`` through one row, one side (``"lower"``: ``>= bound``, ``"upper"``: ``<=``)."""

    constraint: str
    input_index: int
    output_index: int
    side: str
    bound: float
    status: str  # "certified" | "violated" | "unknown"
    seconds: float
    counterexample: list[float] | None = None  # a point of the line, confirmed by autograd
    derivative: float | None = None  # float64 autograd derivative there
    violation: float | None = None
    note: str = ""


@dataclass
class RowVerdict:
    """Every line through one row: ``"certified"`` if all are proved, ``"violated"`` if one
    has a confirmed counterexample, else ``"unknown"``."""

    row: int
    x: list[float]
    status: str
    seconds: float
    checks: list[LocalCheck] = field(default_factory=list)

    @property
    def counterexamples(self) -> list[LocalCheck]:
        """The checks with a confirmed counterexample."""
        return [c for c in self.checks if c.counterexample is not None]


@dataclass
class LocalReport:
    """Per-row verdicts of :func:`constrained_grad.verify_local`.

    Only ``"certified"`` counts as proved: ``fraction_certified`` and ``ok`` never count an
    ``"unknown"`` row (a solve stopped by the time or box budget) as proved.
    """

    rows: list[RowVerdict]
    constraints: list[str]
    method: str  # "milp" or "interval"
    domain: dict[str, Any]
    tol: float
    time_limit: float | None
    seconds: float

    def _count(self, status: str) -> int:
        return sum(r.status == status for r in self.rows)

    @property
    def statuses(self) -> list[str]:
        """The verdict of each row, in order."""
        return [r.status for r in self.rows]

    @property
    def n_certified(self) -> int:
        return self._count("certified")

    @property
    def n_violated(self) -> int:
        return self._count("violated")

    @property
    def n_unknown(self) -> int:
        return self._count("unknown")

    @property
    def fraction_certified(self) -> float:
        """Rows proved over rows checked."""
        return self.n_certified / len(self.rows) if self.rows else 0.0

    @property
    def ok(self) -> bool:
        """True if every row is certified."""
        return bool(self.rows) and self.n_certified == len(self.rows)

    @property
    def seconds_per_row(self) -> dict[str, float]:
        """Median and maximum seconds per row."""
        times = sorted(r.seconds for r in self.rows)
        n = len(times)
        median = (times[(n - 1) // 2] + times[n // 2]) / 2 if n else math.nan
        return {"median": median, "max": times[-1] if n else math.nan}

    def summary(self) -> str:
        t = self.seconds_per_row
        return (
            f"local certificates ({self.method}) of {', '.join(self.constraints)}: "
            f"{self.n_certified}/{len(self.rows)} rows certified "
            f"({100 * self.fraction_certified:.1f} %), {self.n_violated} violated, "
            f"{self.n_unknown} unknown (no proof either way); {_fmt(t['median'])} s median, "
            f"{_fmt(t['max'])} s max per row, {self.seconds:.3g} s in all"
        )

    def __str__(self) -> str:
        return self.summary()

    def to_dict(self) -> dict[str, Any]:
        out = _finite(asdict(self))
        out.update(
            n_certified=self.n_certified,
            n_violated=self.n_violated,
            n_unknown=self.n_unknown,
            fraction_certified=self.fraction_certified,
            seconds_per_row=_finite(self.seconds_per_row),
        )
        return out

    def save_json(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")
