r"""Worst-case search of a violation function over an input box (falsification, not proof).

A *violation function* maps a batch ``x`` of shape ``(B, d)`` to ``(B, C)`` signed values,
one per constraint component; ``v > 0`` means component ``c`` is violated at ``x``. For a
monotonicity constraint :math:`\partial f_i/\partial x_j \ge 0` it is
:math:`v(x) = -\partial f_i(x)/\partial x_j`.

* :func:`sample_search` evaluates ``v`` on ``n`` scrambled Sobol' (quasi-random) or uniform
  random points of the box and keeps the worst ones.
* :func:`adversarial_search` runs multi-start projected gradient ascent on
  :math:`\max_c v(x)_c`: from each start, ``x \leftarrow \Pi_{box}(x + \eta_t\,(h - l) \odot
  \operatorname{sign} \nabla_x \max_c v(x)_c)`` with :math:`\eta_t` decaying linearly from
  ``step_size`` to ``final_step_fraction * step_size``. Since ``v`` is itself a derivative of
  a model, the ascent differentiates through that derivative: ``violation_fn`` must keep the
  graph from its input ``x`` to its output (e.g. build it with ``create_graph=True`` and do not
  detach ``x``). Where the gradient vanishes (piecewise-linear models have a piecewise-constant
  derivative) the step takes a random sign direction, so the ascent degrades to a random walk
  rather than stalling.

Neither search proves anything: a negative maximum only means no violation was found. For
ReLU networks, :mod:`constrained_grad.verify.milp` gives exact certificates.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch.quasirandom import SobolEngine

from constrained_grad.constraints.domain import BoundsLike, as_box
from constrained_grad.errors import GraphCutError, InputValidationError, NonFiniteError

ViolationFn = Callable[[torch.Tensor], torch.Tensor]
SampleMethod = Literal["sobol", "random"]


@dataclass
class SearchResult:
    r"""Outcome of a worst-case search.

    Attributes:
        method: ``"sobol"``, ``"random"`` or ``"adversarial"``.
        max_violation: :math:`\max_{x, c} v(x)_c` over every evaluated point.
        max_violation_per_component: ``(C,)`` maxima per component.
        fraction_violating: fraction of the ``n_points`` result points with
            :math:`\max_c v_c > tol` (samples for sampling, the best point of each start for
            adversarial search).
        fraction_violating_per_component: ``(C,)`` the same per component.
        worst_inputs: ``(k, d)`` the ``k = min(top_k, n_points)`` worst points (largest
            :math:`\max_c v_c` first), violating or not.
        worst_violations: ``(k, C)`` their violation values.
        n_points: number of samples, or of starts.
        n_evaluations: number of points ``violation_fn`` was evaluated on (rows of all calls).
        wall_time: seconds.
        tol: threshold above which a value counts as a violation.
    """

    method: str
    max_violation: float
    max_violation_per_component: torch.Tensor
    fraction_violating: float
    fraction_violating_per_component: torch.Tensor
    worst_inputs: torch.Tensor
    worst_violations: torch.Tensor
    n_points: int
    n_evaluations: int
    wall_time: float
    tol: float = 0.0

    @property
    def violated(self) -> bool:
        """True if some evaluated point violates a component by more than ``tol``."""
        return self.max_violation > self.tol

    @property
    def counterexample(self) -> torch.Tensor | None:
        """The worst point ``(d,)`` if it is a violation, else None."""
        return self.worst_inputs[0] if self.violated else None

    def summary(self) -> str:
        verdict = "VIOLATED" if self.violated else "no violation found"
        return (
            f"{self.method} search: {verdict}; max violation {self.max_violation:.6g} "
            f"(per component {[round(float(v), 6) for v in self.max_violation_per_component]}), "
            f"{100 * self.fraction_violating:.3g}% of {self.n_points} points violating, "
            f"{self.n_evaluations} evaluations in {self.wall_time:.3g} s"
        )


class _Tracker:
    """Running per-component maxima, violation counts and the top-k worst rows."""

    def __init__(self, top_k: int, tol: float) -> None:
        self.top_k = top_k
        self.tol = tol
        self.count = 0
        self.max_c: torch.Tensor | None = None
        self.viol_c: torch.Tensor | None = None
        self.viol_any = 0
        self.worst_x: torch.Tensor | None = None
        self.worst_v: torch.Tensor | None = None

    def update(self, x: torch.Tensor, v: torch.Tensor) -> None:
        x = x.detach().to("cpu")
        v = v.detach().to("cpu", torch.float64)
        if self.max_c is not None and v.shape[1] != self.max_c.shape[0]:
            raise InputValidationError(
                f"search: violation_fn changed its number of components between calls (got "
                f"{v.shape[1]} after {self.max_c.shape[0]}). Return a fixed (B, C) shape."
            )
        self.count += v.shape[0]
        bmax = v.max(dim=0).values
        bviol = (v > self.tol).sum(dim=0)
        self.max_c = bmax if self.max_c is None else torch.maximum(self.max_c, bmax)
        self.viol_c = bviol if self.viol_c is None else self.viol_c + bviol
        self.viol_any += int((v.max(dim=1).values > self.tol).sum())
        wx = x if self.worst_x is None else torch.cat([self.worst_x, x.to(self.worst_x.dtype)])
        wv = v if self.worst_v is None else torch.cat([self.worst_v, v])
        keep = torch.argsort(wv.max(dim=1).values, descending=True, stable=True)[: self.top_k]
        self.worst_x, self.worst_v = wx[keep], wv[keep]

    def result(self, method: str, n_evaluations: int, wall_time: float) -> SearchResult:
        assert self.max_c is not None and self.viol_c is not None
        assert self.worst_x is not None and self.worst_v is not None
        return SearchResult(
            method=method,
            max_violation=float(self.max_c.max()),
            max_violation_per_component=self.max_c,
            fraction_violating=self.viol_any / self.count,
            fraction_violating_per_component=self.viol_c.to(torch.float64) / self.count,
            worst_inputs=self.worst_x,
            worst_violations=self.worst_v,
            n_points=self.count,
            n_evaluations=n_evaluations,
            wall_time=wall_time,
            tol=self.tol,
        )


def _check_positive_int(value: object, name: str, who: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise InputValidationError(
            f"{who}: {name} must be an int >= {minimum} (got {value!r}). Pass e.g. {name}=256."
        )
    return int(value)


def _resolve_dtype_device(
    low: BoundsLike, dtype: torch.dtype | None, device: torch.device | str | None
) -> tuple[torch.dtype, torch.device]:
    if dtype is None:
        dtype = (
            low.dtype
            if isinstance(low, torch.Tensor) and low.is_floating_point()
            else torch.get_default_dtype()
        )
    if device is None:
        device = low.device if isinstance(low, torch.Tensor) else torch.device("cpu")
    return dtype, torch.device(device)


def _violations(fn: ViolationFn, x: torch.Tensor, who: str) -> torch.Tensor:
    """Call ``fn`` and check that it returned ``(B, C)`` (or ``(B,)``) non-NaN values."""
    v = fn(x)
    if not isinstance(v, torch.Tensor):
        raise InputValidationError(
            f"{who}: violation_fn must return a tensor (got {type(v).__name__}). Return the "
            "signed violations as a (B, C) tensor."
        )
    if v.dim() == 1:
        v = v.unsqueeze(1)
    if v.dim() != 2 or v.shape[0] != x.shape[0] or v.shape[1] == 0:
        raise InputValidationError(
            f"{who}: violation_fn must return shape (B, C) for B={x.shape[0]} inputs (got "
            f"{tuple(v.shape)}). Flatten the constraint components into one dimension."
        )
    if bool(torch.isnan(v).any()):
        row = int(torch.isnan(v).any(dim=1).nonzero()[0, 0])
        raise NonFiniteError(
            f"{who}: violation_fn returned NaN (first at input {x[row].detach().cpu().tolist()}). "
            "Check the model and the constraint for NaN-producing operations in the box."
        )
    return v


def _sobol_seed(seed: int | None, generator: torch.Generator | None) -> int | None:
    if seed is not None:
        return int(seed)
    if generator is not None:
        return int(torch.randint(0, 2**62, (1,), generator=generator))
    return None


def _make_sobol(d: int, seed: int | None) -> SobolEngine:
    if seed is None:
        # fresh entropy, never the global generator (sampling must not shift the user's stream)
        seed = torch.Generator().seed()
    return SobolEngine(d, scramble=True, seed=int(seed) % 2**63)


def _sobol_draw(sampler: SobolEngine, n: int) -> torch.Tensor:
    # prefixes of a scrambled Sobol' sequence are still low-discrepancy, only less balanced
    return sampler.draw(n, dtype=torch.float64)


class _UnitSampler:
    """Points of ``[0, 1)^k`` from a scrambled Sobol' sequence or a torch generator."""

    def __init__(self, k: int, method: str, seed: int | None, generator: torch.Generator | None):
        self.k = k
        self.method = method
        self.sobol = _make_sobol(k, _sobol_seed(seed, generator)) if method == "sobol" else None
        if generator is None:
            generator = torch.Generator()
            if seed is None:
                generator.seed()
            else:
                generator.manual_seed(int(seed))
        self.generator = generator

    def draw(self, n: int) -> torch.Tensor:
        if self.k == 0:
            return torch.zeros(n, 0, dtype=torch.float64)
        if self.sobol is not None:
            return _sobol_draw(self.sobol, n)
        return torch.rand(n, self.k, dtype=torch.float64, generator=self.generator)


def sample_search(
    violation_fn: ViolationFn,
    low: BoundsLike,
    high: BoundsLike,
    *,
    n: int,
    method: SampleMethod = "sobol",
    batch_size: int = 4096,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    fixed: Mapping[int, float] | None = None,
    categorical: Mapping[int, Sequence[float]] | None = None,
    one_hot: Sequence[Sequence[int]] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    top_k: int = 10,
    tol: float = 0.0,
    progress: bool = False,
) -> SearchResult:
    """Evaluate ``violation_fn`` on ``n`` points of the box and report the worst.

    Args:
        violation_fn: ``(B, d) -> (B, C)`` signed violations (``> 0`` is violated). It is
            called with inputs that require grad, under ``torch.enable_grad()``.
        low, high: ``(d,)`` bounds of the box.
        n: number of points.
        method: ``"sobol"`` (scrambled Sobol', best coverage; ``n`` a power of 2 keeps its
            balance properties) or ``"random"`` (uniform).
        batch_size: points per call of ``violation_fn``.
        seed, generator: reproducibility (``seed`` wins; a generator seeds the Sobol'
            scrambling too). Neither: a fresh random stream.
        fixed: ``{index: value}`` features pinned to a value.
        categorical: ``{index: [values]}`` features drawn among the listed values.
        one_hot: groups of features encoding one category (see
            :class:`~constrained_grad.Box`); the category is drawn.
        device, dtype: where and in which dtype points are evaluated (default: those of
            ``low`` if it is a floating tensor, else CPU and the default dtype).
        top_k: how many worst points to keep.
        tol: a value counts as a violation if it exceeds ``tol``.
        progress: show a tqdm progress bar.

    Returns:
        A :class:`SearchResult`; inputs and values are returned on the CPU.
    """
    who = "sample_search"
    if method not in ("sobol", "random"):
        raise InputValidationError(f"{who}: unknown method {method!r}. Choose 'sobol' or 'random'.")
    n = _check_positive_int(n, "n", who)
    batch_size = _check_positive_int(batch_size, "batch_size", who)
    top_k = _check_positive_int(top_k, "top_k", who)
    box = as_box(low, high, fixed=fixed, categorical=categorical, one_hot=one_hot, who=who)
    dtype, dev = _resolve_dtype_device(low, dtype, device)
    sampler = _UnitSampler(len(box.sampled), method, seed, generator)
    tracker = _Tracker(top_k, float(tol))
    start = time.perf_counter()
    from tqdm.auto import tqdm

    with tqdm(total=n, disable=not progress, desc=who, leave=False) as bar:
        done = 0
        while done < n:
            b = min(batch_size, n - done)
            x = box.from_unit(sampler.draw(b)).to(device=dev, dtype=dtype)
            x.requires_grad_(True)
            with torch.enable_grad():
                v = _violations(violation_fn, x, who).detach()
            tracker.update(x, v)
            done += b
            bar.update(b)
    return tracker.result(method, n, time.perf_counter() - start)


def _value_and_grad(
    fn: ViolationFn, x: torch.Tensor, need_grad: bool, who: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Violations at ``x`` and the gradient of ``sum_b max_c v_bc`` with respect to ``x``."""
    xr = x.detach().requires_grad_(True)
    with torch.enable_grad():
        v = _violations(fn, xr, who)
        if not need_grad:
            return v.detach(), None
        hint = (
            "adversarial search differentiates the violations with respect to the inputs: "
            "build violation_fn so its output keeps the graph to its input x (derivatives "
            "taken with create_graph=True, no x.detach()/.data/.numpy()). If the violation "
            "does not depend on x at all (e.g. a linear model), use sample_search instead."
        )
        if not v.requires_grad:
            raise GraphCutError(
                f"{who}: the violations carry no autograd graph (got requires_grad=False); " + hint
            )
        (g,) = torch.autograd.grad(v.max(dim=1).values.sum(), xr, allow_unused=True)
    if g is None:
        raise GraphCutError(f"{who}: the violations were not computed from the inputs x; " + hint)
    return v.detach(), torch.nan_to_num(g.detach(), nan=0.0, posinf=0.0, neginf=0.0)


def adversarial_search(
    violation_fn: ViolationFn,
    low: BoundsLike,
    high: BoundsLike,
    *,
    starts: int = 32,
    steps: int = 50,
    step_size: float = 0.05,
    final_step_fraction: float = 0.1,
    batch_size: int = 256,
    seed: int | None = None,
    fixed: Mapping[int, float] | None = None,
    categorical: Mapping[int, Sequence[float]] | None = None,
    one_hot: Sequence[Sequence[int]] | None = None,
    init_points: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    top_k: int = 10,
    tol: float = 0.0,
    progress: bool = False,
) -> SearchResult:
    r"""Multi-start projected signed-gradient ascent on :math:`\max_c v(x)_c` inside the box.

    Args:
        violation_fn: ``(B, d) -> (B, C)``, differentiable with respect to its input (see the
            module docstring).
        low, high: ``(d,)`` bounds of the box.
        starts: number of scrambled Sobol' starting points (in addition to ``init_points``).
        steps: ascent steps per start (each start is evaluated ``steps + 1`` times).
        step_size: first step per coordinate, as a fraction of the box width.
        final_step_fraction: the step decays linearly to ``final_step_fraction * step_size``.
        batch_size: starts advanced together.
        seed: seeds the starting points, categorical draws and random directions.
        fixed: ``{index: value}`` features pinned to a value.
        categorical: ``{index: [values]}`` features drawn among the values at each start
            and never moved by the ascent.
        one_hot: groups of features encoding one category (see
            :class:`~constrained_grad.Box`), drawn at each start and never moved.
        init_points: optional ``(k, d)`` extra starts (e.g. training points or the worst
            points of :func:`sample_search`); projected into the domain.
        device, dtype: as in :func:`sample_search`.
        top_k: how many of the per-start best points to keep.
        tol: a value counts as a violation if it exceeds ``tol``.
        progress: show a tqdm progress bar.

    Returns:
        A :class:`SearchResult` over the best point of each start.
    """
    who = "adversarial_search"
    starts = _check_positive_int(starts, "starts", who, minimum=0)
    steps = _check_positive_int(steps, "steps", who, minimum=0)
    batch_size = _check_positive_int(batch_size, "batch_size", who)
    top_k = _check_positive_int(top_k, "top_k", who)
    for name, value in (("step_size", step_size), ("final_step_fraction", final_step_fraction)):
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise InputValidationError(
                f"{who}: {name} must be a positive number (got {value!r}). Pass e.g. 0.05."
            )
    box = as_box(low, high, fixed=fixed, categorical=categorical, one_hot=one_hot, who=who)
    dtype, dev = _resolve_dtype_device(low, dtype, device)
    sampler = _UnitSampler(len(box.sampled), "sobol", seed, None)
    x0 = box.from_unit(sampler.draw(starts)) if starts else torch.zeros(0, box.dim)
    if init_points is not None:
        pts = torch.as_tensor(
            init_points.detach().cpu() if isinstance(init_points, torch.Tensor) else init_points,
            dtype=torch.float64,
        )
        if pts.dim() != 2 or pts.shape[1] != box.dim or not bool(torch.isfinite(pts).all()):
            raise InputValidationError(
                f"{who}: init_points must be a finite (k, {box.dim}) tensor (got shape "
                f"{tuple(pts.shape)}). Pass one row per starting point."
            )
        x0 = torch.cat([box.project(pts.clone()), x0])
    if x0.shape[0] == 0:
        raise InputValidationError(
            f"{who}: no starting points (got starts=0 and no init_points). Use starts >= 1."
        )
    mask = torch.zeros(box.dim, dtype=dtype, device=dev)
    mask[box.continuous_free] = 1
    width = (box.high - box.low).to(device=dev, dtype=dtype)
    tracker = _Tracker(top_k, float(tol))
    start = time.perf_counter()
    total = x0.shape[0]
    from tqdm.auto import tqdm

    with tqdm(total=total, disable=not progress, desc=who, leave=False) as bar:
        for lo in range(0, total, batch_size):
            x = box.project(x0[lo : lo + batch_size].to(device=dev, dtype=dtype))
            best_x = x.clone()
            best_v: torch.Tensor | None = None
            for t in range(steps + 1):
                v, g = _value_and_grad(violation_fn, x, need_grad=t < steps, who=who)
                if best_v is None:
                    best_v = v.clone()
                else:
                    better = v.max(dim=1).values > best_v.max(dim=1).values
                    best_v[better] = v[better]
                    best_x[better] = x[better]
                if g is None:
                    break
                direction = torch.sign(g) * mask
                stuck = direction.abs().sum(dim=1) == 0
                if bool(stuck.any()):
                    signs = torch.randint(
                        0, 2, (int(stuck.sum()), box.dim), generator=sampler.generator
                    )
                    direction[stuck] = (2 * signs - 1).to(device=dev, dtype=dtype) * mask
                frac = t / max(steps - 1, 1)
                eta = step_size * (1 - (1 - final_step_fraction) * frac)
                x = box.project(x + eta * width * direction)
            assert best_v is not None
            tracker.update(best_x, best_v)
            bar.update(x.shape[0])
    return tracker.result("adversarial", total * (steps + 1), time.perf_counter() - start)
