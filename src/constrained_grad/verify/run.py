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

from constrained_grad.constraints import (
    AtPoints,
    Box,
    DerivativeBound,
    DerivativeConstraint,
    GradientMatch,
    Monotonic,
)
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
    _check_time_limit,
    _check_tol,
    certify_derivative_sign,
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


def _certify(
    model: Any,
    c: DerivativeConstraint,
    domain: Box,
    tol: float,
    time_limit: float | None,
    method: str = "milp",
    max_boxes: int = 100_000,
) -> tuple[str, str, list[Counterexample], float, int]:
    """MILP or interval certificates for every (input, output) pair of a sign/bound
    constraint: status, summary lines, counterexamples, seconds and interval boxes."""
    pairs = [(j, i) for i in c._outputs for j in c._inputs]  # type: ignore[attr-defined]
    lines, ces, statuses, seconds, boxes = [], [], [], 0.0, 0
    for j, i in pairs:
        lower = upper = None
        if isinstance(c, Monotonic):
            if c.direction == "increasing":
                lower = c.margin - c.tolerance - tol
            else:
                upper = -c.margin + c.tolerance + tol
        else:
            assert isinstance(c, DerivativeBound)
            lo, hi = c.lower, c.upper
            assert (lo is None or isinstance(lo, float)) and (hi is None or isinstance(hi, float))
            lower = None if lo is None else lo - c.tolerance - tol
            upper = None if hi is None else hi + c.tolerance + tol
        args = {
            "input_index": j,
            "output_index": i,
            "lower": lower,
            "upper": upper,
            "time_limit": time_limit,
            "fixed": domain.fixed or None,
            "categorical": domain.categorical or None,
            "one_hot": domain.one_hot or None,
        }
        if method == "interval":
            cert = certify_interval(model, domain.low, domain.high, max_boxes=max_boxes, **args)
            boxes += sum(check.nodes or 0 for check in cert.checks)
        else:
            cert = certify_derivative_sign(model, domain.low, domain.high, **args)
        seconds += cert.solve_time + cert.encode_time
        statuses.append(cert.status)
        lines.append(f"∂f[{i}]/∂x[{j}]: " + cert.summary())
        for check in cert.checks:
            if check.counterexample is not None and check.autograd_value is not None:
                bound = check.bound
                viol = (
                    bound - check.autograd_value
                    if check.side == "lower"
                    else check.autograd_value - bound
                ) + tol
                ces.append(
                    Counterexample(
                        x=check.counterexample.tolist(),
                        violation=float(viol),
                        component=f"out {i}, in {j}",
                        derivatives={f"df[{i}]/dx[{j}]": check.autograd_value},
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
    progress: bool = False,
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
        time_limit: seconds per MILP solve or interval branch and bound (one per
            input/output pair and side).
        max_boxes: sub-boxes per interval branch and bound (one per input/output pair and
            side) before it stops with ``"unknown"``.
        tol: a violation counts when it exceeds ``tol``.
        seed: seeds the samplers and the search.
        top_k: counterexamples kept per constraint.

    Returns:
        A :class:`~constrained_grad.verify.VerificationReport`.

    Example:
        >>> import torch, constrained_grad as cg
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.ReLU(),
        ...                           torch.nn.Linear(4, 1))
        >>> with torch.no_grad():
        ...     _ = net[0].weight.abs_(), net[2].weight.abs_()
        >>> report = cg.verify(net, [cg.Monotonic(inputs=[0])], cg.Box([0, 0], [1, 1]),
        ...                    samples=256, starts=4, steps=5)
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
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputValidationError(f"{who}: seed must be an int (got {seed!r}).")
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
    with frozen_eval(model):
        for c in constraints:
            base = type(c).__name__.lower()
            name = c.name or f"{base}_{counts.get(base, 0)}"
            if c.name is None:
                counts[base] = counts.get(base, 0) + 1
            c.resolve(n_in, n_out)
            reports.append(
                _verify_one(
                    model,
                    c,
                    name,
                    domain,
                    dtype,
                    device,
                    samples=samples,
                    sampler=sampler,
                    adversarial=adversarial,
                    starts=starts,
                    steps=steps,
                    step_size=step_size,
                    certify=certify,
                    time_limit=time_limit,
                    max_boxes=max_boxes,
                    tol=tol,
                    seed=seed,
                    top_k=top_k,
                    batch_size=batch_size,
                    progress=progress,
                )
            )
    return VerificationReport(
        reports,
        {
            "dim": domain.dim,
            "low": domain.low.tolist(),
            "high": domain.high.tolist(),
            "fixed": domain.fixed,
            "categorical": domain.categorical,
            "one_hot": [list(g) for g in domain.one_hot],
        },
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
    certifiable = isinstance(c, Monotonic) or (
        isinstance(c, DerivativeBound)
        and all(b is None or isinstance(b, float) for b in (c.lower, c.upper))
    )
    if kw["certify"] and certifiable and isinstance(model, torch.nn.Module):
        try:
            method = _certifier(model, domain.dim)
            cstatus, certificate, mces, secs, boxes = _certify(
                model, c, domain, tol, kw["time_limit"], method, kw["max_boxes"]
            )
        except CertificationError as err:
            if kw["certify"] is True:
                raise
            note = f"No exact certificate: {err}"
        else:
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
                    "The exact solver hit its time limit: no proof either way."
                    if method == "milp"
                    else "The interval branch and bound hit its box or time budget (worst "
                    "open bound in the certificate): no proof either way. Raise max_boxes "
                    "or time_limit, or narrow the box."
                )
    elif kw["certify"] is True:
        raise CertificationError(
            f"verify: {name} ({kind}) cannot be certified exactly: only "
            "Monotonic and constant-bound DerivativeBound constraints of "
            "Linear/ReLU (exact) or smooth (interval) networks can. Use certify='auto'."
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
