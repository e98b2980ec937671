r"""Verify declared constraints on a trained model over a whole input domain.

Training enforces constraints at the points it sees; :func:`verify` asks whether they hold
everywhere in a box. For each constraint it runs, in order of cost:

1. **dense sampling** — scrambled Sobol' (or uniform) points of the box;
2. **adversarial search** — multi-start projected gradient ascent on the violation,
   started from Sobol' points and the worst samples (it differentiates through the
   derivative, so it finds narrow violations that sampling misses);
3. **exact certificate** for piecewise-linear networks (``Linear`` + ``ReLU``/``LeakyReLU``)
   and sign/bound constraints on derivatives (``Monotonic``, ``DerivativeBound`` with
   constant bounds): a mixed-integer linear program (HiGHS via ``scipy.optimize.milp``)
   that either proves the bound on the whole box or returns a counterexample, confirmed
   by autograd. A time-out gives ``"unknown"``, never ``"certified"``;
4. **interval certificate** for smooth networks (``Tanh``, ``Sigmoid``, ``Softplus``, mixed
   with ``ReLU``) that the MILP cannot encode, with ``certify="auto"``: interval bounds of the
   Jacobian column refined by branch and bound over the box
   (:func:`~constrained_grad.certify_interval`). Sound but incomplete: a box budget gives
   ``"unknown"``, never ``"certified"``.

Sampling and search can only *fail to find* a violation (``"no violation found"``); only
the certificate proves (``"certified"``).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from constrained_grad.constraints import (
    AtPoints,
    Box,
    DerivativeBound,
    DerivativeConstraint,
    GradientMatch,
    Monotonic,
)
from constrained_grad.constraints.cells import Cells
from constrained_grad.derivatives import evaluate
from constrained_grad.derivatives.engine import constraint_violations, frozen_eval
from constrained_grad.derivatives.model_info import (
    dtype_and_device,
    output_shape,
    piecewise_linear_layers,
)
from constrained_grad.errors import CertificationError, InputValidationError
from constrained_grad.verify.interval import certify_interval, parse_smooth
from constrained_grad.verify.milp import (
    BoundCheck,
    Certificate,
    _certify_pair,
    _check_time_limit,
    _check_tol,
    _encode,
    _Encoding,
    _prepare,
    _Prepared,
    parse_network,
)
from constrained_grad.verify.report import (
    ConstraintReport,
    Counterexample,
    MethodResult,
    VerificationReport,
)
from constrained_grad.verify.search import (
    SearchResult,
    _check_positive_int,
    adversarial_search,
    sample_search,
)


def _check_seed(seed: object, who: str) -> int:
    """``seed`` as an int the samplers accept: ``[0, 2**64)``."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise InputValidationError(
            f"{who}: seed must be an int in [0, 2**64) (got {seed!r}). Pass e.g. seed=0, "
            "or reduce a large seed with seed % 2**64."
        )
    return seed


def violation_function(model: Any, constraint: DerivativeConstraint, *, graph_in_x: bool) -> Any:
    """``x -> (B, C)`` violations of a resolved ``constraint`` for ``model`` at points ``x``."""
    return functools.partial(constraint_violations, model, constraint, graph_in_x=graph_in_x)


def _model_dims(model: Any, dim: int) -> tuple[int, int, torch.dtype, torch.device]:
    dtype, device = dtype_and_device(model)
    example = torch.zeros(1, dim, dtype=dtype, device=device)
    out = output_shape(model, example, "verify", "Give the Box one bound per model input.")
    return dim, math.prod(out), dtype, device


def _certifier(model: torch.nn.Module, dim: int) -> str:
    """``"milp"`` for piecewise-linear networks, else ``"interval"`` for smooth ones; raises
    :class:`CertificationError` naming the layer that neither encodes."""
    try:
        parse_network(model, dim, who="verify")
    except CertificationError:
        parse_smooth(model, dim, who="verify")
        return "interval"
    return "milp"


_MIN_SOLVE = 1e-3  # seconds: a solve offered less than this is not started ("unknown")


class _Budget:
    """One time budget shared by a sequence of solves.

    Each solve is offered the time left before the deadline divided by the solves left
    (itself included), so the time a solve does not use passes to the ones after it, and the
    last solve gets whatever is left. ``total=None`` means no limit (every share is None).
    """

    def __init__(
        self,
        total: float | None,
        solves: int,
        *,
        start: float | None = None,
        clock: Any = time.perf_counter,
    ) -> None:
        self.clock = clock
        self.left = solves
        origin = clock() if start is None else start
        self.deadline = None if total is None else origin + float(total)

    def share(self) -> float | None:
        """Seconds offered to the next solve (None: no limit)."""
        if self.deadline is None:
            return None
        return max(self.deadline - self.clock(), 0.0) / max(self.left, 1)

    def spent(self) -> None:
        """One solve is done (whatever it used)."""
        self.left = max(self.left - 1, 0)


def _certifiable(c: DerivativeConstraint) -> bool:
    """Sign/bound constraints with constant bounds: what the certificates decide."""
    return isinstance(c, Monotonic) or (
        isinstance(c, DerivativeBound)
        and all(b is None or isinstance(b, float) for b in (c.lower, c.upper))
    )


def _sides(c: DerivativeConstraint, tol: float) -> list[tuple[str, float]]:
    """``(side, bound)`` pairs a certificate must prove for a resolved sign/bound constraint:
    ``derivative >= bound`` for ``"lower"``, ``<= bound`` for ``"upper"`` (the constraint's
    margin, tolerance and ``tol`` folded in)."""
    if isinstance(c, Monotonic):
        if c.direction == "increasing":
            return [("lower", c.margin - c.tolerance - tol)]
        return [("upper", -c.margin + c.tolerance + tol)]
    assert isinstance(c, DerivativeBound)
    lo, hi = c.lower, c.upper
    assert (lo is None or isinstance(lo, float)) and (hi is None or isinstance(hi, float))
    out = []
    if lo is not None:
        out.append(("lower", lo - c.tolerance - tol))
    if hi is not None:
        out.append(("upper", hi + c.tolerance + tol))
    return out


def _out_of_time(j: int, i: int, side: str, bound: float, method: str) -> Certificate:
    """An ``"unknown"`` certificate for a solve that was not started: no time was left."""
    lower, upper = (bound, None) if side == "lower" else (None, bound)
    check = BoundCheck(
        side,  # type: ignore[arg-type]
        bound,
        "unknown",
        None,
        None,
        None,
        None,
        solver_status="not started",
        solve_time=0.0,
        nodes=0,
        note="not started: the time budget (time_limit) was spent by earlier work",
    )
    return Certificate(
        status="unknown",
        input_index=j,
        output_index=i,
        lower=lower,
        upper=upper,
        checks=[check],
        n_binaries=0,
        n_variables=0,
        n_constraints=0,
        encode_time=0.0,
        solve_time=0.0,
        tol=1e-6,
        method=method,
    )


class _Certifier:
    """One side of one (input, output) pair at a time, by the MILP (encoding shared by the
    outputs and sides of an input) or by interval branch and bound."""

    def __init__(
        self,
        model: torch.nn.Module,
        box: Box,
        method: str,
        max_boxes: int,
        cells: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        self.model, self.box, self.method, self.max_boxes = model, box, method, max_boxes
        self.cells = cells  # a partition of the box to start branch and bound from
        self.prep: _Prepared | None = None
        if method == "milp":
            self.prep = _prepare(
                model,
                box.low,
                box.high,
                box.fixed or None,
                box.categorical or None,
                box.one_hot or None,
                "verify",
            )
        self.encodings: dict[int, _Encoding] = {}

    def check(
        self, j: int, i: int, side: str, bound: float, time_limit: float | None
    ) -> Certificate:
        if time_limit is not None and time_limit < _MIN_SOLVE:
            return _out_of_time(j, i, side, bound, self.method)
        lower, upper = (bound, None) if side == "lower" else (None, bound)
        if self.prep is None:
            return _interval_on(
                self.model, self.box, j, i, lower, upper, time_limit, self.max_boxes, self.cells
            )
        prep = self.prep

        def encoding() -> _Encoding:
            if j not in self.encodings:
                self.encodings[j] = _encode(prep.layers, prep.box, j, "ibp")
            return self.encodings[j]

        return _milp_on(prep, encoding, j, i, side, bound, time_limit)


def _interval_on(
    model: torch.nn.Module,
    box: Box,
    j: int,
    i: int,
    lower: float | None,
    upper: float | None,
    time_limit: float | None,
    max_boxes: int,
    cells: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Certificate:
    """Interval branch and bound of one (input, output) pair over ``box``."""
    return certify_interval(
        model,
        box.low,
        box.high,
        input_index=j,
        output_index=i,
        lower=lower,
        upper=upper,
        time_limit=time_limit,
        max_boxes=max_boxes,
        fixed=box.fixed or None,
        categorical=box.categorical or None,
        one_hot=box.one_hot or None,
        cells=cells,
    )


def _milp_on(
    prep: _Prepared,
    encoding: Any,
    j: int,
    i: int,
    side: str,
    bound: float,
    time_limit: float | None,
) -> Certificate:
    """The exact MILP of one side of one pair over ``prep.box``; ``encoding()`` builds (or
    reuses) the encoding, whose time counts against ``time_limit``."""
    lower, upper = (bound, None) if side == "lower" else (None, bound)
    start = time.perf_counter()
    enc = encoding()
    encode_time = time.perf_counter() - start
    if time_limit is not None:
        time_limit -= encode_time
        if time_limit < _MIN_SOLVE:
            return _out_of_time(j, i, side, bound, "milp")
    cert = _certify_pair(
        prep,
        j,
        i,
        lower,
        upper,
        tol=1e-6,
        tighten="ibp",
        time_limit=time_limit,
        mip_rel_gap=1e-6,
        mode="decide",
        enc=enc,
    )
    cert.encode_time = encode_time
    return cert


def _certify(
    certifier: _Certifier,
    c: DerivativeConstraint,
    tol: float,
    budget: _Budget,
    bar: Any,
) -> tuple[str, str, list[Counterexample], float, int]:
    """Certificates of every (input, output) pair and side of a sign/bound constraint, each
    solve offered its share of ``budget``: status, summary lines, counterexamples, seconds
    and interval boxes."""
    method = certifier.method
    lines, ces, statuses, seconds, boxes = [], [], [], 0.0, 0
    for i in c._outputs:  # type: ignore[attr-defined]
        for j in c._inputs:  # type: ignore[attr-defined]
            for side, bound in _sides(c, tol):
                cert = certifier.check(j, i, side, bound, budget.share())
                budget.spent()
                bar.update(1)
                if method == "interval":
                    boxes += sum(check.nodes or 0 for check in cert.checks)
                seconds += cert.solve_time + cert.encode_time
                statuses.append(cert.status)
                lines.append(f"∂f[{i}]/∂x[{j}]: " + cert.summary())
                for check in cert.checks:
                    if check.counterexample is None or check.autograd_value is None:
                        continue
                    value = check.autograd_value
                    viol = (bound - value if check.side == "lower" else value - bound) + tol
                    ces.append(
                        Counterexample(
                            x=check.counterexample.tolist(),
                            violation=float(viol),
                            component=f"out {i}, in {j}",
                            derivatives={f"df[{i}]/dx[{j}]": value},
                            found_by=method,
                        )
                    )
    status = (
        "violated"
        if "violated" in statuses
        else "unknown"
        if "unknown" in statuses
        else "certified"
    )
    return status, "\n".join(lines), ces, seconds, boxes


def _counterexamples(
    result: SearchResult, c: DerivativeConstraint, model: Any, top_k: int, tol: float
) -> list[Counterexample]:
    """The violating points among the worst of a search, with their derivatives."""
    names = c.component_names
    worst = result.worst_violations[:top_k]
    keep = [r for r in range(worst.shape[0]) if float(worst[r].max()) > tol]
    if not keep:
        return []
    blocks = None
    if hasattr(c, "_inputs") and not isinstance(c, GradientMatch):
        dtype, device = dtype_and_device(model)
        xs = result.worst_inputs[keep].to(dtype=dtype, device=device)
        blocks = evaluate(model, xs, c.needs, create_graph=False).columns(c._inputs)  # (n, m, k)
    out = []
    for n, r in enumerate(keep):
        v = worst[r]
        k = int(torch.argmax(v))
        derivs: dict[str, float] = {}
        if blocks is not None:
            for i in c._outputs:  # type: ignore[attr-defined]
                for kk, j in enumerate(c._inputs):  # type: ignore[attr-defined]
                    derivs[f"df[{i}]/dx[{j}]"] = float(blocks[n, i, kk])
        out.append(
            Counterexample(
                x=result.worst_inputs[r].tolist(),
                violation=float(v[k]),
                component=names[k] if k < len(names) else str(k),
                derivatives=derivs,
                found_by=result.method,
            )
        )
    return out


def verify(
    model: Any,
    constraints: Sequence[DerivativeConstraint],
    domain: Box,
    *,
    samples: int = 16384,
    sampler: str = "sobol",
    adversarial: bool = True,
    starts: int = 64,
    steps: int = 100,
    step_size: float = 0.05,
    certify: bool | str = "auto",
    time_limit: float | None = 60.0,
    max_boxes: int = 100_000,
    tol: float = 0.0,
    seed: int = 0,
    top_k: int = 5,
    batch_size: int = 4096,
    progress: bool = True,
) -> VerificationReport:
    """Check each constraint on the whole ``domain``, not only where training looked.

    Args:
        model: the trained model (evaluated in eval mode; its state is restored).
        constraints: the declarations used in training (or new ones).
        domain: a :class:`~constrained_grad.Box` of per-sample inputs (fixed and categorical
            features and one-hot groups are respected).
        samples / sampler: number of ``"sobol"`` or ``"random"`` points (0 to skip).
        adversarial / starts / steps / step_size: the gradient-ascent search.
        certify: ``"auto"`` (certify sign/bound constraints: by the exact MILP for
            piecewise-linear nets, by interval branch and bound for smooth ones — tanh,
            sigmoid, softplus), ``True`` (the same, but raise when neither certificate
            applies to the model, naming the layer) or ``False``.
        time_limit: ONE budget in seconds for the whole call (None: no limit), counted
            from its start. Sampling and search run first and are not interrupted (their
            work is fixed by ``samples``, ``starts`` and ``steps``); the certificates then
            share what is left: there is one solve per constraint, output, input and side,
            each offered the time left divided by the solves left, so the time a solve does
            not use passes to the next. A solve stopped by its share (or not started because
            nothing was left) gives ``"unknown"``, never ``"certified"``.
        max_boxes: sub-boxes per interval branch and bound (one per input/output pair and
            side) before it stops with ``"unknown"``.
        tol: a violation counts when it exceeds ``tol``.
        seed: seeds the samplers and the search (an int in ``[0, 2**64)``).
        top_k: counterexamples kept per constraint.
        progress: progress bars for sampling, search and the certificates (on stderr).

    Returns:
        A :class:`~constrained_grad.verify.VerificationReport`. A constraint on which
        nothing ran (``samples=0``, ``adversarial=False`` and no certificate) has status
        ``"not checked"`` and makes ``report.ok`` False: nothing checked is not a pass.

    Example:
        >>> import torch, constrained_grad as cg
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.ReLU(),
        ...                           torch.nn.Linear(4, 1))
        >>> with torch.no_grad():
        ...     _ = net[0].weight.abs_(), net[2].weight.abs_()
        >>> report = cg.verify(net, [cg.Monotonic(inputs=[0])], cg.Box([0, 0], [1, 1]),
        ...                    samples=256, starts=4, steps=5, progress=False)
        >>> report["monotonic_0"].status
        'certified'
    """
    who = "verify"
    if not isinstance(domain, Box):
        raise InputValidationError(
            f"{who}: domain must be a cg.Box (got {type(domain).__name__}). "
            "Build one with cg.Box(low, high)."
        )
    if certify not in (True, False, "auto"):
        raise InputValidationError(
            f"{who}: certify must be True, False or 'auto' (got {certify!r})."
        )
    _check_tol(tol, who)
    _check_time_limit(time_limit, who)
    _check_positive_int(max_boxes, "max_boxes", who)
    _check_seed(seed, who)
    constraints = list(constraints)
    for c in constraints:
        if not isinstance(c, DerivativeConstraint):
            raise InputValidationError(
                f"{who}: constraints must be declared constraints (got {type(c).__name__})."
            )
    t0 = time.perf_counter()
    n_in, n_out, dtype, device = _model_dims(model, domain.dim)
    reports = []
    counts: dict[str, int] = {}
    names = []
    for c in constraints:
        base = type(c).__name__.lower()
        names.append(c.name or f"{base}_{counts.get(base, 0)}")
        if c.name is None:
            counts[base] = counts.get(base, 0) + 1
        c.resolve(n_in, n_out)
    # what the certificates will decide, settled before any work
    todo = [
        c
        for c in constraints
        if not isinstance(c.where, AtPoints)
        and not (isinstance(c, GradientMatch) and not isinstance(c.targets, torch.Tensor))
    ]
    if certify is True:
        for c, name in zip(constraints, names, strict=True):
            exact = _certifiable(c) and isinstance(model, torch.nn.Module)
            if id(c) in {id(t) for t in todo} and not exact:
                raise CertificationError(
                    f"{who}: {name} ({type(c).__name__}) cannot be certified exactly: only "
                    "Monotonic and constant-bound DerivativeBound constraints of "
                    "Linear/ReLU (exact) or smooth (interval) networks can. Use "
                    "certify='auto'."
                )
    todo = [c for c in todo if _certifiable(c)]
    certifier, no_certificate = None, ""
    if certify and todo and isinstance(model, torch.nn.Module):
        try:
            with frozen_eval(model):
                certifier = _Certifier(model, domain, _certifier(model, domain.dim), max_boxes)
        except CertificationError as err:
            if certify is True:
                raise
            no_certificate = f"No exact certificate: {err}"
    certifiers: dict[int, _Certifier] = {}
    for c in todo:
        if certifier is not None:
            certifiers[id(c)] = certifier
        if certify and isinstance(c.where, Cells) and c.where.covers(domain):
            # certified training: its cells' bounds, recomputed in float64, are the proof
            cells = (c.where.lo[: c.where.n], c.where.hi[: c.where.n])
            certifiers[id(c)] = _Certifier(model, domain, "interval", max_boxes, cells)
    solves = 0
    for c in todo:
        if id(c) in certifiers:
            pairs = len(c._outputs) * len(c._inputs)  # type: ignore[attr-defined]
            solves += pairs * len(_sides(c, tol))
    budget = _Budget(time_limit, solves, start=t0)
    with (
        frozen_eval(model),
        tqdm(
            total=solves,
            disable=not progress or solves == 0,
            desc=f"{who}: certificates ({certifier.method if certifier else '-'})",
            unit="solve",
            leave=False,
        ) as bar,
    ):
        for c, name in zip(constraints, names, strict=True):
            reports.append(
                _verify_one(
                    model,
                    c,
                    name,
                    domain,
                    dtype,
                    device,
                    certifier=certifiers.get(id(c)),
                    no_certificate=no_certificate,
                    budget=budget,
                    bar=bar,
                    samples=samples,
                    sampler=sampler,
                    adversarial=adversarial,
                    starts=starts,
                    steps=steps,
                    step_size=step_size,
                    tol=tol,
                    seed=seed,
                    top_k=top_k,
                    batch_size=batch_size,
                    progress=progress,
                )
            )
    return VerificationReport(
        reports,
        domain.to_dict(),
        float(tol),
        time.perf_counter() - t0,
    )


def _verify_one(
    model: Any,
    c: DerivativeConstraint,
    name: str,
    domain: Box,
    dtype: torch.dtype,
    device: torch.device,
    **kw: Any,
) -> ConstraintReport:
    kind = type(c).__name__
    tol = kw["tol"]
    if isinstance(c, GradientMatch) and not isinstance(c.targets, torch.Tensor):
        return ConstraintReport(
            name,
            kind,
            "skipped",
            None,
            None,
            note="Gradient targets come from the training batches, so the "
            "constraint has no meaning away from the data.",
        )
    if isinstance(c.where, AtPoints):
        return _verify_at_points(model, c, name, dtype, device, tol, kw["top_k"])
    methods: list[MethodResult] = []
    ces: list[Counterexample] = []
    worst, frac = -math.inf, None
    init = None
    common = {
        "fixed": domain.fixed or None,
        "categorical": domain.categorical or None,
        "one_hot": domain.one_hot or None,
        "device": device,
        "dtype": dtype,
        "top_k": kw["top_k"],
        "tol": tol,
        "progress": kw["progress"],
        "seed": kw["seed"],
    }
    if kw["samples"]:
        res = sample_search(
            violation_function(model, c, graph_in_x=False),
            domain.low,
            domain.high,
            n=kw["samples"],
            method=kw["sampler"],
            batch_size=kw["batch_size"],
            **common,
        )
        methods.append(
            MethodResult(
                res.method,
                res.max_violation,
                res.fraction_violating,
                res.n_evaluations,
                res.wall_time,
            )
        )
        worst, frac = max(worst, res.max_violation), res.fraction_violating
        ces += _counterexamples(res, c, model, kw["top_k"], tol)
        init = res.worst_inputs
    if kw["adversarial"]:
        res = adversarial_search(
            violation_function(model, c, graph_in_x=True),
            domain.low,
            domain.high,
            starts=kw["starts"],
            steps=kw["steps"],
            step_size=kw["step_size"],
            init_points=init,
            batch_size=min(kw["batch_size"], 1024),
            **common,
        )
        methods.append(
            MethodResult(
                "adversarial",
                res.max_violation,
                res.fraction_violating,
                res.n_evaluations,
                res.wall_time,
                f"{res.n_points} starts x {kw['steps']} steps",
            )
        )
        worst = max(worst, res.max_violation)
        ces += _counterexamples(res, c, model, kw["top_k"], tol)
    status = "violated" if worst > tol else "no violation found"
    certificate, note = "", ""
    kinks = piecewise_linear_layers(model) if c.needs.second else []
    if kinks and status != "violated":  # zero curvature a.e.: sampling cannot see the kinks
        status = "unknown"
        note = (
            f"The model is piecewise linear ({', '.join(kinks[:3])}): its second derivatives "
            "are zero almost everywhere and undefined at the kinks, so no sample can show a "
            "curvature violation. Whether it is convex/concave is not decided here."
        )
    certifier = kw["certifier"]
    if certifier is None and _certifiable(c):
        note = kw["no_certificate"]
    if certifier is not None:
        method = certifier.method
        cstatus, certificate, mces, secs, boxes = _certify(
            certifier, c, tol, kw["budget"], kw["bar"]
        )
        methods.append(
            MethodResult(
                method,
                max((x.violation for x in mces), default=None),
                None,
                boxes,
                secs,
                cstatus if method == "milp" else f"{cstatus}, {boxes} boxes",
            )
        )
        ces += mces
        if cstatus == "violated":
            status = "violated"
            worst = max(worst, max(x.violation for x in mces))
        elif cstatus == "certified" and status != "violated":
            status = "certified"
        elif cstatus == "unknown" and status != "violated":
            status = "unknown"
            note = (
                "The exact solver hit its share of the time budget (time_limit): no proof "
                "either way. Raise time_limit."
                if method == "milp"
                else "The interval branch and bound hit its box budget or its share of the "
                "time budget (worst open bound in the certificate): no proof either way. "
                "Raise max_boxes or time_limit, or narrow the box."
            )
    if not methods:
        status = "not checked"
        why = note or (
            "certify=False" if _certifiable(c) else f"no certificate applies to {kind} constraints"
        )
        note = (
            f"Nothing was checked (samples=0, adversarial=False; {why}), so this is not a "
            "pass. Pass samples > 0, adversarial=True or certify='auto'."
        )
    ces.sort(key=lambda ce: -ce.violation)
    return ConstraintReport(
        name,
        kind,
        status,
        None if worst == -math.inf else worst,
        frac,
        ces[: kw["top_k"]],
        methods,
        certificate,
        note,
    )


def _verify_at_points(
    model: Any,
    c: DerivativeConstraint,
    name: str,
    dtype: torch.dtype,
    device: torch.device,
    tol: float,
    top_k: int,
) -> ConstraintReport:
    assert isinstance(c.where, AtPoints)
    t0 = time.perf_counter()
    x = c.where.data.to(dtype=dtype, device=device)
    idx = torch.arange(x.shape[0], device=device)
    values = evaluate(model, x, c.needs, create_graph=False, index=idx)
    g = c.violations(values, None).detach()
    worst = g.max(dim=1).values
    order = torch.argsort(worst, descending=True)[:top_k]
    ces = [
        Counterexample(
            x=x[k].tolist(),
            violation=float(worst[k]),
            component=c.component_names[int(torch.argmax(g[k]))],
            found_by="points",
        )
        for k in order
        if float(worst[k]) > tol
    ]
    mx = float(worst.max())
    frac = float((worst > tol).double().mean())
    return ConstraintReport(
        name,
        type(c).__name__,
        "violated" if mx > tol else "no violation found",
        mx,
        frac,
        ces,
        [MethodResult("points", mx, frac, x.shape[0], time.perf_counter() - t0)],
        note="Enforced at fixed points: checked at those points only.",
    )
