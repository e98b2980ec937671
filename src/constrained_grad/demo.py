r"""The demo job behind ``constrained-grad demo``: train, plot, save and verify, end to end.

Each *scenario* answers one user question with the public API and writes the same set of
artefacts into an output folder:

``history.json``, ``history.csv``
    the per-step :class:`~constrained_grad.History` (loss, violations, multipliers).
``history.png``
    :func:`~constrained_grad.plot_history`: loss, multipliers and violations over the steps.
``partial_dependence_<feature>.png``
    :func:`~constrained_grad.plot_partial_dependence` along each constrained input (scenarios
    with a monotonicity constraint).
``proof.png``
    :func:`~constrained_grad.plot_proof` (``auto-mpg``): cells, cells whose bound holds and
    the worst bound during certified training, with the prover's checks.
``model.pt``
    the trained ``state_dict`` (load with ``torch.load(path, weights_only=True)``).
``report.md``, ``report.json``
    what was trained, each constraint's final and held-out violation, and the verification
    by :func:`constrained_grad.verify`: the plain property (margin 0) searched over the
    whole input box (Sobol' sampling plus adversarial gradient ascent) and a certificate:
    ``auto-mpg`` always proves it from the cells of its certified training (interval
    bounds in float64; ``certify_seconds`` is the budget, 20 s by default); the
    ``monotone-every-output`` scenario runs interval branch and bound on request
    (``certify_seconds > 0``).

Scenarios (:data:`SCENARIOS`):

``auto-mpg`` (default)
    MLP 7→64→64→1 (ReLU) on the Auto MPG data shipped in the package, with mpg decreasing in
    displacement, horsepower and weight: :math:`\partial f/\partial x_j \le -m` on the batch
    (a training device) and :math:`\le 0` on every cell of the data's box through sound
    bounds (:class:`~constrained_grad.Cells`, certified training), with a
    :class:`~constrained_grad.Prover` checking every 100 steps; the report ends with the
    proof.
``monotone-every-output``
    6 inputs, 7 outputs, every output non-decreasing in the last input ``z``: one
    Jacobian column per step, whatever the number of outputs.
``gradient-matching``
    learn :math:`V(x) = x^\top P x` from samples of :math:`\nabla V` only.
``jacobian-norm``
    a 1000-class classifier under :math:`E\|\partial f/\partial x\|_F^2 \le r^2`, estimated
    with one random output projection per sample instead of 1000 backward passes.

>>> sorted(SCENARIOS)
['auto-mpg', 'gradient-matching', 'jacobian-norm', 'monotone-every-output']
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import constrained_grad as cg
from constrained_grad.datasets import AUTO_MPG_DECREASING, RegressionData, load_auto_mpg
from constrained_grad.errors import InputValidationError
from constrained_grad.history.record import atomic_writer
from constrained_grad.parallel import check_threads, torch_threads

__all__ = ["SCENARIOS", "DemoResult", "Scenario", "check_device", "prepare_out_dir", "run_demo"]

DEFAULT_OUT_DIR = "constrained_grad_demo"
Log = Callable[[str], None]


# ----------------------------------------------------------------------------- plumbing
@dataclass(frozen=True)
class Scenario:
    """One demo: a name, the question it answers, its default step budget and its runner."""

    name: str
    title: str
    question: str
    default_steps: int
    run: Callable[[_Context], _Outcome]


@dataclass
class DemoResult:
    """What :func:`run_demo` produced.

    Attributes:
        scenario: the scenario's name.
        out_dir: absolute path of the output folder.
        files: artefact name -> path (``"history.json"``, ``"report.md"``, ...).
        metrics: headline numbers (test error, max violation found, wall time, ...).
        report: the content of ``report.json``.
        summary: the lines printed at the end of the run.
    """

    scenario: str
    out_dir: Path
    files: dict[str, Path]
    metrics: dict[str, float]
    report: dict[str, Any]
    summary: list[str]


@dataclass
class _Context:
    steps: int
    seed: int
    device: torch.device
    progress: bool
    out_dir: Path
    certify_seconds: float
    search_points: int
    log: Log


@dataclass
class _Outcome:
    model: nn.Module
    fit: cg.FitResult
    setup: dict[str, Any]
    metrics: dict[str, float]
    heldout: tuple[torch.Tensor, Any]  # (x, batch for problem.violations) off the training set
    verification: dict[str, Any]
    summary: list[str]
    notes: list[str] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)


def check_device(device: str | torch.device) -> torch.device:
    """Parse ``device`` and check that a tensor can live there (raises InputValidationError)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as err:
        raise InputValidationError(
            f"demo: invalid device {str(device)!r} ({err}). Use e.g. 'cpu', 'cuda' or 'cuda:0'."
        ) from None
    if dev.type == "meta":
        raise InputValidationError(
            "demo: device 'meta' holds shapes but no values, so nothing can be trained there "
            "(got 'meta'). Use 'cpu' or an accelerator such as 'cuda'."
        )
    try:
        torch.empty(1, device=dev)
    except Exception as err:  # any backend failure means the device is unusable here
        raise InputValidationError(
            f"demo: device {str(device)!r} is not available on this machine "
            f"({type(err).__name__}: {str(err).strip().splitlines()[0] if str(err) else ''}). "
            "Use --device cpu."
        ) from None
    return dev


#: the files every scenario writes into ``--out`` (plus ``partial_dependence_*.png``)
OUTPUT_NAMES = (
    "history.json",
    "history.csv",
    "history.png",
    "model.pt",
    "report.md",
    "report.json",
)


def prepare_out_dir(out_dir: str | os.PathLike[str]) -> Path:
    """Create ``out_dir`` if needed and check that files can be written there."""
    path = Path(out_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise InputValidationError(
            f"demo: output path {os.fspath(path)!r} exists and is not a folder. Pass --out with "
            "a folder name."
        )
    if path.is_dir():  # a folder where the demo writes a file fails after training
        names = [*OUTPUT_NAMES, *(p.name for p in path.glob("partial_dependence_*.png"))]
        for name in names:
            target = path / name
            if (target.exists() or target.is_symlink()) and not target.is_file():
                what = "a folder" if target.is_dir() else "not a regular file"
                raise InputValidationError(
                    f"demo: {os.fspath(target)!r} is {what}, where the demo writes its {name}. "
                    "Remove it or pass another --out folder."
                )
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".constrained_grad_write_test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise InputValidationError(
            f"demo: cannot write into output folder {os.fspath(path)!r} ({err.strerror or err}). "
            "Pass --out with a writable folder."
        ) from None
    return path.resolve()


def _finite(v: Any) -> Any:
    """JSON-safe copy: tensors to lists, non-finite floats to None."""
    if isinstance(v, torch.Tensor):
        return _finite(v.detach().cpu().tolist())
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, Mapping):
        return {str(k): _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    return v


def _loader(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True, generator=gen)


def _epochs_for(steps: int, loader: DataLoader) -> int:
    return max(1, math.ceil(steps / len(loader)))


def _cosine(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Learning rate ``lr0 * (1 + cos(pi t / steps)) / 2``, stepped once per training step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda t: 0.5 * (1.0 + math.cos(math.pi * min(t, steps) / steps))
    )


def _mlp(sizes: Sequence[int], activation: type[nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), activation()]
    return nn.Sequential(*layers[:-1])


# ----------------------------------------------------------------------- verification
VERDICTS = {
    "certified": "certified ({cert} proof over the whole box)",
    "no violation found": "no violation found (search, not a proof)",
    "violated": "violated",
    "unknown": "unknown (the {cert} hit its budget; searches found no violation)",
    "skipped": "skipped",
}
CERTIFICATES = {"milp": "exact MILP", "interval": "interval branch-and-bound"}


def verify_monotone(
    model: nn.Module,
    box: cg.Box,
    inputs: Sequence[int],
    direction: str,
    *,
    name: str,
    seed: int,
    samples: int = 2**14,
    starts: int = 128,
    search_steps: int = 40,
    certify_seconds: float = 0.0,
    log: Log | None = None,
    proved: cg.Monotonic | None = None,
) -> dict[str, Any]:
    r"""Verify monotonicity (margin 0) of every output over ``box`` with :func:`cg.verify`.

    The property checked is the plain one, :math:`\pm\partial f_i/\partial x_j \ge 0`,
    not the margin used in training. ``proved``: the trained constraint over
    :class:`~constrained_grad.Cells` (margin 0) whose partition seeds the certificate, which
    then always runs (``certify_seconds`` or 20 s). Returns the verification section of the
    report.
    """
    say = log or (lambda _: None)
    spec = cg.Monotonic(list(inputs), direction, name=name) if proved is None else proved
    if proved is not None:
        name = proved.name or name
        certify_seconds = certify_seconds if certify_seconds > 0 else 20.0
    say(
        f"  cg.verify: {samples} Sobol' points, adversarial search from {starts} starts x "
        f"{search_steps} steps"
        + (f", certificate (budget {certify_seconds:g} s)" if certify_seconds > 0 else "")
        + " ..."
    )
    report = cg.verify(
        model,
        [spec],
        box,
        samples=samples,
        starts=starts,
        steps=search_steps,
        certify="auto" if certify_seconds > 0 else False,
        time_limit=certify_seconds if certify_seconds > 0 else None,
        seed=seed,
        progress=False,
    )
    result = report[name]
    certificate = next(
        (CERTIFICATES[m.method] for m in result.methods if m.method in CERTIFICATES), "MILP"
    )
    checks = [
        {
            "method": m.method,
            "max_violation": m.max_violation,
            "fraction_violating": m.fraction_violating,
            "evaluations": m.evaluations,
            "seconds": m.seconds,
            "detail": m.detail,
        }
        for m in result.methods
    ]
    if certify_seconds <= 0:
        checks.append(
            {
                "method": "milp",
                "max_violation": None,
                "fraction_violating": None,
                "evaluations": 0,
                "seconds": 0.0,
                "detail": "skipped: pass --certify-seconds S for a certificate (exact MILP "
                "for ReLU networks, interval branch and bound for tanh ones; a 64-64 network "
                "over a wide box may need minutes per input, or end 'unknown')",
            }
        )
    return {
        "property": f"{spec!r} over the whole box: every output "
        f"{'non-decreasing' if direction == 'increasing' else 'non-increasing'} in inputs "
        f"{list(inputs)} (violation > 0 where it fails)",
        "domain": {"low": box.low.tolist(), "high": box.high.tolist()},
        "status": result.status,
        "verdict": VERDICTS.get(result.status, result.status).format(cert=certificate),
        "max_violation": result.max_violation,
        "fraction_violating": result.fraction_violating,
        "checks": checks,
        "counterexamples": [dataclasses.asdict(ce) for ce in result.counterexamples],
        "certificate": result.certificate,
        "note": result.note,
        "api": "constrained_grad.verify (cg.verify)",
    }


def _constraint_rows(
    problem: cg.DerivativeProblem, history: cg.History, heldout: tuple[torch.Tensor, Any], seed: int
) -> list[dict[str, Any]]:
    """Per constraint: declaration, last training step, and violations off the training set."""
    last = history.last() or {}
    rows = []
    gen = torch.Generator().manual_seed(seed + 12345)
    x_held, batch_held = heldout
    for name, spec in problem.specs.items():
        if isinstance(spec.where, cg.InBox):
            pts = spec.where.box.sample(4096, generator=gen, dtype=problem.dtype)
            batch, where = None, "4096 fresh uniform points of its box"
        else:
            pts, batch, where = x_held, batch_held, f"{x_held.shape[0]} held-out points"
        v = problem.violations(name, pts.to(problem.device), batch).detach().cpu()
        aggregate = spec.reduction == "mean"
        rows.append(
            {
                "name": name,
                "declaration": repr(spec),
                "where": repr(spec.where),
                "reduction": spec.reduction,
                "tolerance": spec.tolerance,
                "components": spec.n_components,
                "last_step": {
                    "violation_max": last.get(f"{name}/violation_max"),
                    "violation_mean": last.get(f"{name}/violation_mean"),
                    "fraction_violated": last.get(f"{name}/fraction_violated"),
                    "multiplier_max": last.get(f"{name}/multiplier_max"),
                },
                "heldout": {
                    "points": where,
                    "violation_max": float(v.max()),
                    "violation_mean": float(v.mean()),
                    "fraction_violated": float((v > 0).any(dim=1).float().mean()),
                    "holds": bool(v.mean() <= 0) if aggregate else bool(v.max() <= 0),
                    "judged_by": "mean over points" if aggregate else "every point",
                },
            }
        )
    return rows


# ---------------------------------------------------------------------------- reports
def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _report_markdown(report: Mapping[str, Any]) -> str:
    lines = [f"# constrained-grad demo: {report['title']}", ""]
    lines += [f"**Question.** {report['question']}", ""]
    lines += [
        f"Scenario `{report['scenario']}`, seed {report['seed']}, {report['steps']} steps on "
        f"`{report['device']}`, {report['wall_time_s']:.1f} s in total "
        f"(torch {report['versions']['torch']}, constrained_grad "
        f"{report['versions']['constrained_grad']}).",
        "",
        "## Setup",
        "",
    ]
    lines += [f"- **{k}**: {v}" for k, v in report["setup"].items()]
    lines += ["", "## Results", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in report["metrics"].items()]
    lines += ["", "## Constraints", ""]
    lines += [
        "Violations are signed: `> 0` means the constraint is violated by that much, `<= 0` "
        "that it holds (with slack). *Last step* is what training saw on its final batch; "
        "*held-out* re-evaluates the declared constraint (with its margin and tolerance) off "
        "the training data. The verification below checks the plain property instead.",
        "",
        "| constraint | declaration | last step: max violation / multiplier | held-out: "
        "max / mean violation, fraction violated | holds held-out | training |",
        "|---|---|---|---|---|---|",
    ]
    for c in report["constraints"]:
        ls, ho = c["last_step"], c["heldout"]
        lines.append(
            f"| `{c['name']}` | `{c['declaration']}` | {_fmt(ls['violation_max'])} / "
            f"{_fmt(ls['multiplier_max'])} | {_fmt(ho['violation_max'])} / "
            f"{_fmt(ho['violation_mean'])}, {_fmt(ho['fraction_violated'])} "
            f"({ho['points']}) | {_fmt(ho['holds'])} ({ho['judged_by']}) | "
            f"{c['training']['status']} |"
        )
    lines += [
        "",
        "What each constraint and its multiplier did over the last half of the steps "
        "(`cg.diagnose(history)`):",
        "",
    ]
    lines += [
        f"- `{c['name']}`: **{c['training']['status']}**: {c['training']['message']}"
        for c in report["constraints"]
    ]
    ver = report["verification"]
    lines += ["", "## Verification", "", f"**Property.** {ver['property']}", ""]
    lines += [
        f"**Verdict: {ver['verdict']}** (largest violation found: {_fmt(ver['max_violation'])}).",
        "",
    ]
    lines += [
        "| method | max violation | fraction violating | evaluations | seconds | detail |",
        "|---|---|---|---|---|---|",
    ]
    for chk in ver["checks"]:
        lines.append(
            f"| {chk['method']} | {_fmt(chk['max_violation'])} | "
            f"{_fmt(chk['fraction_violating'])} | {chk['evaluations']} | "
            f"{_fmt(chk['seconds'], 3)} | {chk.get('detail', '')} |"
        )
    if ver.get("counterexamples"):
        lines += ["", "Worst counterexamples (inputs in the model's units):", ""]
        for k, ce in enumerate(ver["counterexamples"]):
            xs = ", ".join(f"{v:.4g}" for v in ce["x"])
            lines.append(
                f"{k + 1}. x = [{xs}]: violation {_fmt(ce['violation'])} at {ce['component']} "
                f"(found by {ce['found_by']})"
            )
    if ver.get("certificate"):
        lines += ["", "Certificate:", "", "```", ver["certificate"], "```"]
    for key in ("note", "extra"):
        if ver.get(key):
            lines += ["", str(ver[key])]
    if ver.get("api"):
        lines += ["", f"Checked with {ver['api']}."]
    if report["notes"]:
        lines += ["", "## Notes", ""]
        lines += [f"- {n}" for n in report["notes"]]
    lines += ["", "## Files", ""]
    lines += [f"- `{name}`" for name in report["files"]]
    return "\n".join(lines) + "\n"


def _write_json(path: Path, data: Any) -> None:
    with atomic_writer(path) as fh:
        fh.write(json.dumps(_finite(data), indent=2, allow_nan=False) + "\n")


# ------------------------------------------------------------------------- scenarios
AUTO_MPG_MARGIN = 0.1
AUTO_MPG_CELLS = 32
AUTO_MPG_CELL_DUAL_LR = 0.05


class RawUnits(nn.Module):
    """``model`` seen in the data's original units: ``y = s_y f((x - m_x)/s_x) + m_y``."""

    x_mean: torch.Tensor
    x_std: torch.Tensor

    def __init__(self, model: nn.Module, data: RegressionData) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("x_mean", data.x_mean.clone())
        self.register_buffer("x_std", data.x_std.clone())
        self.y_mean, self.y_std = data.y_mean, data.y_std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.x_mean) / self.x_std) * self.y_std + self.y_mean


def _auto_mpg(ctx: _Context) -> _Outcome:
    data = load_auto_mpg(seed=ctx.seed)
    dev = ctx.device
    torch.manual_seed(ctx.seed)
    model = _mlp([7, 64, 64, 1], nn.ReLU)
    mono = [data.feature_index(n) for n in AUTO_MPG_DECREASING]
    box = data.box
    cells = cg.Cells(box, max_cells=AUTO_MPG_CELLS, refine_every=25, refine=4)
    proved = cg.Monotonic(
        mono, "decreasing", where=cells, dual_lr=AUTO_MPG_CELL_DUAL_LR, name="mpg_decreasing_proved"
    )
    constraints = [
        cg.Monotonic(mono, "decreasing", margin=AUTO_MPG_MARGIN, name="mpg_decreasing_on_data"),
        proved,
    ]
    problem = cg.DerivativeProblem(model, F.mse_loss, constraints, seed=ctx.seed)
    prover = cg.Prover(box, every=100, constraints=[proved.name or ""], time_limit=10.0)
    loader = _loader(data.x_train, data.y_train, 64, ctx.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    # cosine decay to 0: the weights settle at the end, so the constraints the multipliers
    # enforced in the last steps still hold for the final model
    schedule = _cosine(optimizer, ctx.steps)

    def mse(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
        with torch.no_grad():
            return float(F.mse_loss(m(x.to(dev)), y.to(dev))) * data.mse_scale

    def evaluate(m: nn.Module) -> dict[str, float]:
        return {"val_mse_mpg2": mse(m, data.x_val, data.y_val)}

    ctx.log(
        f"Training MLP 7-64-64-1 on {len(data.x_train)} Auto-MPG rows for {ctx.steps} steps "
        f"(mpg decreasing in {', '.join(AUTO_MPG_DECREASING)}) ..."
    )
    result = cg.fit(
        problem,
        loader,
        optimizer,
        dual_lr=2.0,
        epochs=_epochs_for(ctx.steps, loader),
        steps=ctx.steps,
        eval_fn=evaluate,
        eval_every=max(1, ctx.steps // 20),
        callbacks=[lambda _: schedule.step(), prover],
        progress=ctx.progress,
        device=dev,
    )
    model.eval()
    test_mse, val_mse = mse(model, data.x_test, data.y_test), mse(model, data.x_val, data.y_val)

    ctx.log(
        f"Certified training: {cells.n} cells; proof during training: {prover.status}"
        + (f" (step {prover.proved_step})" if prover.proved_step is not None else "")
    )
    ctx.log("Verifying monotonicity over the whole data box ...")
    ver = verify_monotone(
        model,
        box,
        mono,
        "decreasing",
        name="mpg_decreasing",
        seed=ctx.seed,
        samples=ctx.search_points,
        starts=max(8, ctx.search_points // 128),
        certify_seconds=ctx.certify_seconds,
        log=ctx.log,
        proved=proved,
    )
    # slopes in the data's units: d mpg / d x_raw = (d f / d z) * s_y / s_x
    per_unit = {
        n: data.y_std / float(data.x_std[j]) for n, j in zip(AUTO_MPG_DECREASING, mono, strict=True)
    }
    ver["extra"] = (
        "Violations are slopes in standardised units (d mpg_std / d x_std); multiply by "
        + ", ".join(f"{v:.4g} for {n}" for n, v in per_unit.items())
        + " to get mpg per unit of the raw feature (lb of weight, cubic inch, hp)."
    )
    files: dict[str, Path] = {}
    raw_model = RawUnits(model, data).to(dev)
    x_ref = data.x_to_raw(data.x_train).to(dev)
    for name, j in zip(AUTO_MPG_DECREASING, mono, strict=True):
        path = ctx.out_dir / f"partial_dependence_{name}.png"
        cg.plot_partial_dependence(
            raw_model, x_ref, j, path=path, feature_name=name, direction="decreasing"
        )
        files[path.name] = path
    cg.plot_proof(result.history, path=ctx.out_dir / "proof.png")
    files["proof.png"] = ctx.out_dir / "proof.png"
    found = ver["max_violation"]
    setup = {
        "data": f"Auto MPG shipped in the package (UCI, CC BY 4.0), 392 rows, seeded split "
        f"{len(data.x_train)}/{len(data.x_val)}/{len(data.x_test)} (train/val/test), "
        "features and target standardised with training statistics",
        "model": "MLP 7-64-64-1, ReLU",
        "constraints": f"Monotonic(inputs={mono} ({', '.join(AUTO_MPG_DECREASING)}), "
        f"direction='decreasing', margin={AUTO_MPG_MARGIN}) on each batch (a training device: "
        "it keeps the data strictly inside the property), and the property itself, the same "
        f"Monotonic with margin 0 over cg.Cells(box, max_cells={AUTO_MPG_CELLS}): a sound "
        "interval bound of each derivative over every whole cell, one multiplier per cell "
        f"(dual_lr={AUTO_MPG_CELL_DUAL_LR}), cells refined where the bound is violated",
        "optimisation": "AdamW(lr=3e-3, weight_decay=1e-2) with cosine decay to 0, batch 64; "
        "dual ascent (SGD) with dual_lr=2.0 on the Lagrange multipliers (mean-hinge primal, "
        "worst-point dual); cg.Prover certifies every 100 steps and at the end (the last "
        "proved weights are restored if the final ones were not proved)",
        "box": "per-feature [min, max] over all 392 rows (features only), standardised",
    }
    metrics = {
        "test_mse_mpg2": test_mse,
        "val_mse_mpg2": val_mse,
        "test_rows": float(len(data.x_test)),
        "max_violation_found": found,
        "cells": float(cells.n),
    }
    cert_detail = next(
        (c["detail"] for c in ver["checks"] if c["method"] in CERTIFICATES), "not run"
    )
    summary = [
        f"test MSE            {test_mse:.3f} mpg^2 (validation {val_mse:.3f}; "
        f"{len(data.x_test)} test rows)",
        f"monotonicity        {ver['verdict']}",
        f"certificate         {cert_detail}; {cells.n} training cells, proof during "
        f"training: {prover.status}",
        f"search              max violation found {found:+.4g} (largest d mpg/d x over the "
        "box, standardised; <= 0: none found)",
    ]
    notes = [
        "What is proved: over the whole data box (not only the rows), every partial "
        "derivative of predicted mpg by weight, displacement and horsepower is <= 0, within "
        "the certificate's tolerance of 1e-6 (each check above prints the bound it reached, "
        "a float64 rounding-size number when it proves the property). The proof recomputes, "
        "in float64 with rounding slack, interval bounds of each derivative "
        "over the cells training used, and splits further where a bound falls short; see "
        "docs/how-to/certified-training.md.",
        "The margin of 0.1 on the batch is a training device, not the property: it keeps "
        "the slopes at the data strictly negative, so the cell bounds have room.",
        "No model selection: the model after the last step is evaluated once on the test "
        "rows; the validation MSE is logged in history.json under evals.",
    ]
    return _Outcome(
        model=model,
        fit=result,
        setup=setup,
        metrics=metrics,
        heldout=(data.x_test, (data.x_test, data.y_test)),
        verification=ver,
        summary=summary,
        notes=notes,
        files=files,
    )


def every_output_data(
    n: int, generator: torch.Generator, noise: float = 0.2
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``x = [x_1..x_5, z]`` uniform in :math:`[-1, 1]^6`, 7 targets non-decreasing in ``z``.

    :math:`y_i = \tfrac12 \sin(\pi a_i^\top x_{1:5}/\sqrt5) + c_i z^3 + \varepsilon`, with
    fixed :math:`a_i` (seed 1), :math:`c_i` from 0.2 to 1 and Gaussian noise; the flat
    :math:`z^3` near 0 invites an unconstrained fit to bend the wrong way.
    """
    task = torch.Generator().manual_seed(1)
    a = torch.randn(7, 5, generator=task)
    c = torch.linspace(0.2, 1.0, 7)
    x = torch.rand(n, 6, generator=generator) * 2 - 1
    y = 0.5 * torch.sin(math.pi * x[:, :5] @ a.T / math.sqrt(5)) + c * x[:, 5:6] ** 3
    return x, y + noise * torch.randn(n, 7, generator=generator)


def _every_output(ctx: _Context) -> _Outcome:
    gen = torch.Generator().manual_seed(ctx.seed)
    x_train, y_train = every_output_data(1024, gen)
    x_test, y_test = every_output_data(1024, gen, noise=0.0)
    torch.manual_seed(ctx.seed)
    model = _mlp([6, 64, 64, 7], nn.Tanh)
    box = cg.Box([-1.0] * 6, [1.0] * 6)
    constraints = [
        cg.Monotonic(inputs=[5], direction="increasing", margin=0.05, name="z_on_data"),
        cg.Monotonic(inputs=[5], margin=0.05, where=cg.InBox(box, n=2048), name="z_in_box"),
    ]
    problem = cg.DerivativeProblem(model, F.mse_loss, constraints, seed=ctx.seed)
    loader = _loader(x_train, y_train, 128, ctx.seed)
    ctx.log(f"Training MLP 6-64-64-7, every output non-decreasing in z, {ctx.steps} steps ...")
    result = cg.fit(
        problem,
        loader,
        torch.optim.Adam(model.parameters(), lr=3e-3),
        dual_lr=1.0,
        epochs=_epochs_for(ctx.steps, loader),
        steps=ctx.steps,
        progress=ctx.progress,
        device=ctx.device,
    )
    model.eval()
    with torch.no_grad():
        test_mse = float(F.mse_loss(model(x_test.to(ctx.device)), y_test.to(ctx.device)))
    ctx.log("Verifying over [-1, 1]^6 ...")
    ver = verify_monotone(
        model,
        box,
        [5],
        "increasing",
        name="every_output_nondecreasing_in_z",
        seed=ctx.seed,
        samples=ctx.search_points,
        starts=max(8, ctx.search_points // 128),
        certify_seconds=ctx.certify_seconds,
        log=ctx.log,
    )
    path = ctx.out_dir / "partial_dependence_z.png"
    cg.plot_partial_dependence(
        model, x_test.to(ctx.device), 5, output_index=None, path=path, feature_name="z"
    )
    found = ver["max_violation"]
    return _Outcome(
        model=model,
        fit=result,
        setup={
            "data": "1024 noisy training samples, 1024 noise-free test samples; targets "
            "0.5 sin(pi a_i.x/sqrt5) + c_i z^3 (non-decreasing in z)",
            "model": "MLP 6-64-64-7, tanh",
            "constraints": "Monotonic(inputs=[5], direction='increasing', margin=0.05) for all "
            "7 outputs, on each batch and at 2048 uniform points of [-1, 1]^6 per step; one "
            "Jacobian column (not 7 rows) per point",
            "optimisation": "Adam(lr=3e-3), batch 128, dual_lr=1.0",
        },
        metrics={"test_mse": test_mse, "max_violation_found": found},
        heldout=(x_test, (x_test, y_test)),
        verification=ver,
        summary=[
            f"test MSE            {test_mse:.4f} (against the noise-free targets)",
            f"max violation found {found:+.4g} (largest -d out_i/dz over [-1,1]^6) -> "
            f"{ver['verdict']}",
            "interval proof      "
            + (
                next(c["detail"] for c in ver["checks"] if c["method"] == "interval")
                if ctx.certify_seconds > 0
                else "skipped (--certify-seconds S runs it)"
            ),
        ],
        files={path.name: path},
    )


QUADRATIC_P = ((20.1892, -26.6218), (-26.6218, 38.0375))


def quadratic_samples(points_per_axis: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Grid on :math:`[-3, 3]^2`, :math:`V(x) = x^\top P x` and :math:`\nabla V = 2 P x`."""
    p = torch.tensor(QUADRATIC_P)
    g = torch.linspace(-3.0, 3.0, points_per_axis)
    x = torch.cartesian_prod(g, g)
    return x, ((x @ p) * x).sum(dim=1), 2 * x @ p


def _gradient_matching(ctx: _Context) -> _Outcome:
    x, _, s = quadratic_samples(10)
    scale = float(s.pow(2).mean().sqrt())  # make V of order one: learn V / scale
    x_test, v_test, s_test = quadratic_samples(41)
    torch.manual_seed(ctx.seed)
    model = _mlp([2, 64, 64, 1], nn.Tanh)
    match = cg.GradientMatch(targets="y", normalize=True, tolerance=1e-4, name="grad_match")
    problem = cg.DerivativeProblem(model, None, [match], seed=ctx.seed)
    loader = _loader(x, s / scale, 100, ctx.seed)  # the 100 samples, full batch
    ctx.log(f"Learning V from its gradient samples only ({ctx.steps} steps) ...")
    result = cg.fit(
        problem,
        loader,
        torch.optim.Adam(model.parameters(), lr=1e-2),
        dual_lr=1.0,
        epochs=ctx.steps,
        steps=ctx.steps,
        progress=ctx.progress,
        device=ctx.device,
    )
    model.eval()
    xt = x_test.to(ctx.device)
    grad = cg.input_gradient(model, xt, create_graph=False).detach().cpu() * scale
    grad_err = float((grad - s_test).norm() / s_test.norm())
    with torch.no_grad():
        v = (model(xt) - model(torch.zeros(1, 2, device=ctx.device))).squeeze(1).cpu() * scale
    v_err = float((v - v_test).norm() / v_test.norm())
    held = problem.violations("grad_match", xt, (xt, (s_test / scale).to(ctx.device)))
    found = float(held.mean())
    return _Outcome(
        model=model,
        fit=result,
        setup={
            "data": "grad V at a 10 x 10 grid of [-3, 3]^2 for V(x) = x^T P x, "
            f"P = {[list(r) for r in QUADRATIC_P]}; no values of V",
            "model": "MLP 2-64-64-1, tanh (smooth: its gradient is what is fitted)",
            "constraints": "GradientMatch(targets='y', normalize=True, tolerance=1e-4): mean "
            "||grad f - S||^2 / mean ||S||^2 <= 1e-4 (1% relative RMS), no other loss",
            "scaling": f"targets divided by their RMS ({scale:.4g}); predictions multiplied back",
            "optimisation": "Adam(lr=1e-2), full batch, dual_lr=1.0",
        },
        metrics={
            "heldout_gradient_rel_error": grad_err,
            "heldout_value_rel_error": v_err,
            "max_violation_found": found,
        },
        heldout=(xt, (xt, (s_test / scale).to(ctx.device))),
        verification={
            "property": "relative gradient error on a 41 x 41 held-out grid of [-3, 3]^2 within "
            "the tolerance (V is determined up to a constant: compared as V(x) - V(0))",
            "domain": {"low": [-3.0, -3.0], "high": [3.0, 3.0]},
            "checks": [
                {
                    "method": "exact gradients, held-out grid",
                    "max_violation": found,
                    "fraction_violating": None,
                    "evaluations": int(xt.shape[0]),
                    "seconds": None,
                    "detail": f"relative gradient error {grad_err:.4g}, relative error of "
                    f"V(x) - V(0) {v_err:.4g}",
                }
            ],
            "status": "holds" if found <= 0 else "violated",
            "max_violation": found,
            "verdict": "holds on the held-out grid" if found <= 0 else "violated",
            "note": "cg.verify does not apply: the gradient targets exist only at sample points "
            "and the constraint bounds the mean error, so it is checked on held-out points.",
        },
        summary=[
            f"held-out gradient   {100 * grad_err:.3g}% relative error (41 x 41 grid)",
            f"recovered V         {100 * v_err:.3g}% relative error of V(x) - V(0)",
            f"max violation found {found:+.4g} (held-out relative MSE minus tolerance)",
        ],
    )


def cluster_classification(
    n_per_class: int, generator: torch.Generator, classes: int = 1000, dim: int = 32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian clusters around fixed random centres (seed 3), one per class."""
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(3))
    y = torch.arange(classes).repeat_interleave(n_per_class)
    return centres[y] + 0.7 * torch.randn(len(y), dim, generator=generator), y


def _jacobian_norm(ctx: _Context) -> _Outcome:
    gen = torch.Generator().manual_seed(ctx.seed)
    x_train, y_train = cluster_classification(8, gen)
    x_test, y_test = cluster_classification(1, gen)
    max_norm = 40.0
    torch.manual_seed(ctx.seed)
    model = _mlp([32, 256, 1000], nn.ReLU)
    bound = cg.JacobianNormBound(max_norm, estimator="vjp_sphere", samples=1, name="jacobian_fro")
    problem = cg.DerivativeProblem(model, F.cross_entropy, [bound], seed=ctx.seed)
    loader = _loader(x_train, y_train, 256, ctx.seed)
    ctx.log(f"Training a 1000-class classifier under E||J||_F^2 <= {max_norm:g}^2 ...")
    result = cg.fit(
        problem,
        loader,
        torch.optim.Adam(model.parameters(), lr=1e-3),
        dual_lr=1e-3,
        epochs=_epochs_for(ctx.steps, loader),
        steps=ctx.steps,
        progress=ctx.progress,
        device=ctx.device,
    )
    model.eval()
    xt = x_test.to(ctx.device)
    with torch.no_grad():
        acc = float((model(xt).argmax(1).cpu() == y_test).float().mean())
    fro = cg.jacobian_fro_norm_sq(model, xt[:500], estimator="exact", create_graph=False)
    rms = float(fro.mean().sqrt())
    found = float(fro.mean()) - max_norm**2
    timings = {}
    for est in ("exact", "vjp_sphere"):
        start = time.perf_counter()
        val = cg.jacobian_fro_norm_sq(model, xt[:256], estimator=est)
        val.mean().backward()
        timings[est] = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return _Outcome(
        model=model,
        fit=result,
        setup={
            "data": "1000 classes of Gaussian clusters in R^32; 8 training and 1 test "
            "sample per class",
            "model": "MLP 32-256-1000, ReLU (logits)",
            "constraints": f"JacobianNormBound(max_norm={max_norm:g}, estimator='vjp_sphere', "
            "samples=1): batch mean of ||v^T J||^2 with v uniform on the sphere of radius "
            "sqrt(1000), an unbiased estimate of E||J||_F^2, one backward pass per sample",
            "optimisation": "cross-entropy, Adam(lr=1e-3), batch 256, dual_lr=1e-3",
        },
        metrics={
            "test_accuracy": acc,
            "heldout_rms_jacobian_fro": rms,
            "max_norm": max_norm,
            "max_violation_found": found,
            "seconds_exact_fro_256": timings["exact"],
            "seconds_projected_fro_256": timings["vjp_sphere"],
        },
        heldout=(xt, (xt, y_test.to(ctx.device))),
        verification={
            "property": f"exact mean ||J||_F^2 on held-out points <= {max_norm:g}^2 (the "
            "constraint bounds the mean; training only ever saw random projections)",
            "domain": {"points": "500 held-out samples"},
            "checks": [
                {
                    "method": "exact Jacobians, held-out points",
                    "max_violation": found,
                    "fraction_violating": float((fro > max_norm**2).float().mean()),
                    "evaluations": int(fro.shape[0]),
                    "seconds": None,
                    "detail": f"sqrt(mean ||J||_F^2) {rms:.4g}; largest per-sample ||J||_F "
                    f"{float(fro.max().sqrt()):.4g} (the bound is on the mean)",
                }
            ],
            "status": "holds" if found <= 0 else "violated",
            "max_violation": found,
            "verdict": "holds on held-out points" if found <= 0 else "violated",
            "extra": f"Cost of one estimate + backward on 256 points: exact "
            f"{timings['exact']:.3g} s, one projection {timings['vjp_sphere']:.3g} s.",
            "note": "cg.verify judges every point; this constraint bounds the mean of "
            "||J||_F^2, so it is checked as a mean over held-out points.",
        },
        summary=[
            f"test accuracy       {100 * acc:.1f}% (1000 classes)",
            f"held-out ||J||_F    {rms:.3g} RMS (bound {max_norm:g})",
            f"max violation found {found:+.4g} (exact mean ||J||_F^2 minus bound^2)",
            f"cost per estimate   exact {timings['exact']:.3g} s vs one projection "
            f"{timings['vjp_sphere']:.3g} s (256 points)",
        ],
    )


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "auto-mpg",
            "Auto-MPG regression, mpg decreasing in weight, displacement and horsepower",
            "Can a plain MLP be trained to be monotone in chosen features, and how do I know "
            "it is monotone everywhere, not only on the training rows?",
            600,
            _auto_mpg,
        ),
        Scenario(
            "monotone-every-output",
            "6 inputs, 7 outputs, every output non-decreasing in z",
            "How do I make NN(x1..x5, z)[i] non-decreasing in z for every output i without a "
            "loop over the outputs?",
            400,
            _every_output,
        ),
        Scenario(
            "gradient-matching",
            "Learn V(x) = x^T P x from samples of its gradient",
            "How do I put the input derivative of the network into the loss without losing "
            "its dependence on the weights?",
            1000,
            _gradient_matching,
        ),
        Scenario(
            "jacobian-norm",
            "Bound the Frobenius norm of the Jacobian of a 1000-output classifier",
            "How do I penalise the end-to-end Jacobian norm when the network has about 1000 "
            "outputs, without 1000 backward passes per step?",
            300,
            _jacobian_norm,
        ),
    )
}


# ------------------------------------------------------------------------- the job
def run_demo(
    scenario: str = "auto-mpg",
    *,
    steps: int | None = None,
    out_dir: str | os.PathLike[str] = DEFAULT_OUT_DIR,
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: bool = True,
    certify_seconds: float = 0.0,
    threads: int | None = None,
    search_points: int = 2**14,
    log: Log | None = print,
) -> DemoResult:
    """Run one scenario and write its artefacts into ``out_dir`` (see the module docstring).

    Args:
        scenario: a key of :data:`SCENARIOS`.
        steps: training steps (default: the scenario's, under a minute on a laptop CPU).
        out_dir: output folder, created if missing.
        device: torch device string.
        seed: seeds the data split or sample, the model initialisation, the data order and
            the constraint points.
        progress: show the training progress bar.
        certify_seconds: the certificate's total time budget. ``auto-mpg`` always proves its
            constraint from the cells of its certified training (20 s when this is 0);
            ``monotone-every-output`` runs interval branch and bound only when it is ``> 0``.
        threads: CPU threads for torch during the run (restored afterwards); None keeps
            torch's setting. The demo's small models run fastest on one thread, and far
            faster than multi-threaded when other processes compete for the cores.
        search_points: Sobol' points for the verification search (monotonicity
            scenarios); the adversarial search starts from ``search_points // 128`` (at least
            8) points.
        log: receives progress messages (None: silent).

    Raises:
        InputValidationError: unknown scenario, bad step count, unusable device or folder.
    """
    say: Log = log if log is not None else (lambda _: None)
    if scenario not in SCENARIOS:
        raise InputValidationError(
            f"demo: unknown scenario {scenario!r}. Choose one of {sorted(SCENARIOS)}."
        )
    spec = SCENARIOS[scenario]
    if steps is None:
        steps = spec.default_steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputValidationError(f"demo: steps must be a positive int (got {steps!r}).")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputValidationError(f"demo: seed must be a non-negative int (got {seed!r}).")
    if not (isinstance(certify_seconds, (int, float)) and certify_seconds >= 0):
        raise InputValidationError(
            f"demo: certify_seconds must be a number >= 0 (got {certify_seconds!r})."
        )
    if isinstance(search_points, bool) or not isinstance(search_points, int) or search_points < 1:
        raise InputValidationError(
            f"demo: search_points must be a positive int (got {search_points!r})."
        )
    check_threads(threads, "demo")
    dev = check_device(device)
    out = prepare_out_dir(out_dir)
    ctx = _Context(steps, seed, dev, progress, out, float(certify_seconds), search_points, say)
    with torch_threads(threads, "demo"):
        return _run(spec, ctx)


def _run(spec: Scenario, ctx: _Context) -> DemoResult:
    scenario, seed, dev, out, steps, say = (
        spec.name,
        ctx.seed,
        ctx.device,
        ctx.out_dir,
        ctx.steps,
        ctx.log,
    )
    say(f"constrained-grad demo [{scenario}]: {spec.title}")
    start = time.perf_counter()
    outcome = spec.run(ctx)
    history = outcome.fit.history
    history.meta.update(scenario=scenario, seed=seed, steps=steps, device=str(dev))
    files: dict[str, Path] = {}
    for name in OUTPUT_NAMES[:4]:
        files[name] = out / name
    history.save_json(files["history.json"])
    history.save_csv(files["history.csv"])
    cg.plot_history(history, path=files["history.png"], title=spec.title)
    state = {k: v.detach().cpu() for k, v in outcome.model.state_dict().items()}
    with atomic_writer(files["model.pt"], "wb") as fh:
        torch.save(state, fh)
    files.update(outcome.files)
    constraints = _constraint_rows(outcome.fit.problem, history, outcome.heldout, seed)
    health = cg.diagnose(history)
    for row in constraints:
        h = health[row["name"]]
        row["training"] = {"status": h.status, "message": h.message, "read_by": "cg.diagnose"}
    wall = time.perf_counter() - start
    metrics = {**outcome.metrics, "wall_time_s": wall}
    files["report.md"], files["report.json"] = out / "report.md", out / "report.json"
    report: dict[str, Any] = {
        "scenario": scenario,
        "title": spec.title,
        "question": spec.question,
        "seed": seed,
        "steps": outcome.fit.steps,
        "stopped": outcome.fit.stopped,
        "device": str(dev),
        "wall_time_s": wall,
        "versions": {
            "constrained_grad": cg.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "setup": outcome.setup,
        "metrics": metrics,
        "constraints": constraints,
        "verification": outcome.verification,
        "notes": outcome.notes,
        "files": sorted(files),
    }
    _write_json(files["report.json"], report)
    with atomic_writer(files["report.md"]) as fh:
        fh.write(_report_markdown(_finite(report)))
    summary = [f"{spec.title} ({outcome.fit.steps} steps, {wall:.1f} s)", *outcome.summary]
    summary.append(
        "multipliers         "
        + ", ".join(f"{n}: {h.status}" for n, h in health.items())
        + " (cg.diagnose; details in report.md)"
    )
    summary.append(f"files in {out}: {', '.join(sorted(files))}")
    return DemoResult(scenario, out, files, metrics, report, summary)
