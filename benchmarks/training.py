"""Per-step overhead of the library's training loop against hand-written primal-dual loops.

Scenario ``fit_overhead``: MLP 7→64→64→1 (tanh), batch 64, MSE, one monotonicity constraint
``∂f/∂x_6 ≥ 0`` on the batch with a mean-hinge violation (max violation for the dual
update), Lagrangian formulation, Adam on the weights, SGD ascent on the multiplier. Methods
(one full step each):

``plain``               unconstrained: forward, MSE, backward, Adam.
``ours``                ``cg.Trainer(problem, adam, dual_lr=η).step(batch)``, history included.
``hand_written``        the same maths with Cooper: a ``ConstrainedMinimizationProblem`` with
                        one ``Constraint`` (``DenseMultiplier``) and
                        ``SimultaneousOptimizer(...).roll()``.
``hand_written_plain``  no Cooper: ``L = loss + λ·hinge``, backward, Adam,
                        ``λ ← relu(λ + η·max violation)``.

The column ``∂f/∂x_6`` of the scalar output is one ``autograd.grad(..., create_graph=True)``
in the hand-written loops (what the engine's automatic choice does for one output), and the
penalty's gradient is a double backward.

Timing: ``--blocks`` rounds of ``--steps`` consecutive steps per method, methods interleaved
block by block in one process, median over blocks. The verdicts use *paired* figures: the
median over rounds of ``ours`` minus (or over) the other method's block of the same round.

Scenario ``tiny_gradient_match`` (the forum's gradient-matching question): MLP 2→64→64→1
(softplus), the 100 points of a 10×10 grid of [-3, 3]² with targets ∇V = 2Px (scaled to unit
RMS), full batch, Adam(lr=1e-2), 300 steps per run, optimizer (and problem) built before the
timed region. Methods (one whole 300-step training each):

``forum_loop``    ``autograd.grad(f(x), x, create_graph=True)``, ``mse_loss`` to the targets,
                  backward, Adam (the accepted forum answer).
``ours``          ``cg.fit(problem, [(x, S)], adam, dual_lr=1.0, epochs=300, progress=False,
                  threads=N)`` with ``GradientMatch(targets="y", normalize=True,
                  tolerance=1e-4)``, history included.
``hand_written``  the same constraint written against Cooper: one ``Constraint``
                  (``DenseMultiplier``), ``SimultaneousOptimizer(...).roll()``.

Each configuration (threads 1 or 2; ``contention``: a busy Python process pinned to the
last CPU for the duration) runs ``--tiny-rounds`` rounds, the three methods in an order
that rotates per round; figures are medians over rounds, ``ratio_to_forum_loop`` the
median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import _timing as T

if __name__ == "__main__":
    T.preconfigure(sys.argv)  # OpenMP reads OMP_WAIT_POLICY when torch loads

import cooper
import torch
import torch.nn.functional as F
from torch import nn

import constrained_grad as cg
from constrained_grad.demo import quadratic_samples

Z = 6  # the monotone input (last of 7)
LR = 1e-3
DUAL_LR = 1e-2


def make_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(7, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1)
    )


def make_data(batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(batch, 7, generator=g) * 2 - 1
    y = -x[:, Z:] + 0.3 * torch.sin(3 * x[:, :1]) + 0.1 * torch.randn(batch, 1, generator=g)
    return x, y


def column(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(outputs, ∂f/∂x_Z)`` for a scalar-output model; the column stays differentiable."""
    out = model(x)
    (g,) = torch.autograd.grad(out, x, torch.ones_like(out), create_graph=True)
    return out, g[:, Z]


def plain_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.Adam(model.parameters(), lr=LR)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.mse_loss(model(x), y).backward()
        opt.step()

    return step


def ours_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
) -> tuple[Callable[[], None], cg.Trainer]:
    problem = cg.DerivativeProblem(
        model, F.mse_loss, [cg.Monotonic(inputs=[Z], direction="increasing")]
    )
    trainer = cg.Trainer(problem, torch.optim.Adam(model.parameters(), lr=LR), dual_lr=DUAL_LR)
    batch = (x, y)

    def step() -> None:
        trainer.step(batch)

    return step, trainer


class HandCMP(cooper.ConstrainedMinimizationProblem):
    """The monotone problem written directly against Cooper."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.monotone = cooper.Constraint(
            constraint_type=cooper.ConstraintType.INEQUALITY,
            formulation_type=cooper.formulations.Lagrangian,
            multiplier=cooper.multipliers.DenseMultiplier(num_constraints=1),
        )

    def compute_cmp_state(self, x: torch.Tensor, y: torch.Tensor) -> cooper.CMPState:
        x = x.detach().requires_grad_(True)
        out, col = column(self.model, x)
        g = -col  # signed violation, > 0 where decreasing
        state = cooper.ConstraintState(
            violation=torch.relu(g).mean().reshape(1), strict_violation=g.detach().amax().reshape(1)
        )
        return cooper.CMPState(loss=F.mse_loss(out, y), observed_constraints={self.monotone: state})


def hand_written_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
) -> tuple[Callable[[], None], HandCMP]:
    cmp = HandCMP(model)
    optimizer = cooper.optim.SimultaneousOptimizer(
        cmp=cmp,
        primal_optimizers=torch.optim.Adam(model.parameters(), lr=LR),
        dual_optimizers=torch.optim.SGD(cmp.dual_parameters(), lr=DUAL_LR, maximize=True),
    )
    kwargs = {"x": x, "y": y}

    def step() -> None:
        optimizer.roll(compute_cmp_state_kwargs=kwargs)

    return step, cmp


def hand_written_plain_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
) -> tuple[Callable[[], None], dict[str, torch.Tensor]]:
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    state = {"lam": torch.zeros(())}

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        xr = x.detach().requires_grad_(True)
        out, col = column(model, xr)
        g = -col
        lagrangian = F.mse_loss(out, y) + state["lam"] * torch.relu(g).mean()
        lagrangian.backward()
        opt.step()
        with torch.no_grad():
            state["lam"] = torch.relu(state["lam"] + DUAL_LR * g.amax())

    return step, state


# -- tiny_gradient_match ---------------------------------------------------------------------

TINY_STEPS = 300
TINY_LR = 1e-2


def tiny_data() -> tuple[torch.Tensor, torch.Tensor]:
    x, _, s = quadratic_samples(10)
    return x, s / s.pow(2).mean().sqrt()


def tiny_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(2, 64), nn.Softplus(), nn.Linear(64, 64), nn.Softplus(), nn.Linear(64, 1)
    )


def tiny_forum(model: nn.Module, x: torch.Tensor, s: torch.Tensor) -> Callable[[], float]:
    opt = torch.optim.Adam(model.parameters(), lr=TINY_LR)
    xr = x.clone().requires_grad_(True)

    def run() -> float:
        t0 = time.perf_counter()
        for _ in range(TINY_STEPS):
            v = model(xr)
            (g,) = torch.autograd.grad(v, xr, torch.ones_like(v), create_graph=True)
            loss = F.mse_loss(g, s)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return time.perf_counter() - t0

    return run


def tiny_ours(
    model: nn.Module, x: torch.Tensor, s: torch.Tensor, threads: int
) -> Callable[[], float]:
    match = cg.GradientMatch(targets="y", normalize=True, tolerance=1e-4)
    problem = cg.DerivativeProblem(model, None, [match])
    opt = torch.optim.Adam(model.parameters(), lr=TINY_LR)
    loader = [(x, s)]

    def run() -> float:
        t0 = time.perf_counter()
        cg.fit(
            problem, loader, opt, dual_lr=1.0, epochs=TINY_STEPS, progress=False, threads=threads
        )
        return time.perf_counter() - t0

    return run


class TinyCMP(cooper.ConstrainedMinimizationProblem):
    """Normalised gradient matching <= 1e-4 written directly against Cooper."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.match = cooper.Constraint(
            constraint_type=cooper.ConstraintType.INEQUALITY,
            formulation_type=cooper.formulations.Lagrangian,
            multiplier=cooper.multipliers.DenseMultiplier(num_constraints=1),
        )

    def compute_cmp_state(self, x: torch.Tensor, s: torch.Tensor) -> cooper.CMPState:
        v = self.model(x)
        (g,) = torch.autograd.grad(v, x, torch.ones_like(v), create_graph=True)
        err = (g - s).pow(2).sum(1).mean() / s.shape[1] / s.pow(2).mean()
        state = cooper.ConstraintState(violation=(err - 1e-4).reshape(1))
        return cooper.CMPState(loss=None, observed_constraints={self.match: state})


def tiny_hand_written(model: nn.Module, x: torch.Tensor, s: torch.Tensor) -> Callable[[], float]:
    cmp = TinyCMP(model)
    optimizer = cooper.optim.SimultaneousOptimizer(
        cmp=cmp,
        primal_optimizers=torch.optim.Adam(model.parameters(), lr=TINY_LR),
        dual_optimizers=torch.optim.SGD(cmp.dual_parameters(), lr=1.0, maximize=True),
    )
    kwargs = {"x": x.clone().requires_grad_(True), "s": s}

    def run() -> float:
        t0 = time.perf_counter()
        for _ in range(TINY_STEPS):
            optimizer.roll(compute_cmp_state_kwargs=kwargs)
        return time.perf_counter() - t0

    return run


def _die_with_parent() -> None:
    """In the spinning child: be killed when the benchmark dies (even by SIGKILL; Linux)."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@contextlib.contextmanager
def busy_other_core(enabled: bool) -> Iterator[None]:
    """A spinning Python process pinned to the last CPU while the block runs."""
    if not enabled:
        yield
        return
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=_die_with_parent)
    try:
        with contextlib.suppress(AttributeError, OSError):  # not Linux: unpinned
            os.sched_setaffinity(proc.pid, {max(os.sched_getaffinity(0))})
        time.sleep(0.2)  # let it start spinning
        yield
    finally:
        proc.kill()
        proc.wait()


def tiny_gradient_match(rounds: int, configs: list[tuple[int, bool]]) -> list[dict[str, Any]]:
    x, s = tiny_data()
    base = tiny_model()
    records: list[dict[str, Any]] = []
    for threads, contention in configs:
        T.set_threads(threads)
        times: dict[str, list[float]] = {"forum_loop": [], "ours": [], "hand_written": []}
        with busy_other_core(contention):
            # one untimed warm-up run each (first-call costs), then interleaved rounds
            for build in (tiny_forum, tiny_hand_written):
                build(copy.deepcopy(base), x, s)()
            tiny_ours(copy.deepcopy(base), x, s, threads)()
            names = list(times)
            for r in range(rounds):
                for name in names[r % 3 :] + names[: r % 3]:
                    model = copy.deepcopy(base)
                    run = (
                        tiny_ours(model, x, s, threads)
                        if name == "ours"
                        else (tiny_forum if name == "forum_loop" else tiny_hand_written)(
                            model, x, s
                        )
                    )
                    times[name].append(run())
        forum = times["forum_loop"]
        for name, ts in times.items():
            records.append(
                {
                    "scenario": "tiny_gradient_match",
                    "method": name,
                    "threads": threads,
                    "contention": contention,
                    "steps": TINY_STEPS,
                    "seconds": round(T.median(ts), 4),
                    "ms_per_step": round(1e3 * T.median(ts) / TINY_STEPS, 4),
                    "seconds_all": [round(t, 4) for t in ts],
                    "ratio_to_forum_loop": round(
                        T.median([a / b for a, b in zip(ts, forum, strict=True)]), 3
                    ),
                    "load_average": list(os.getloadavg()),
                }
            )
        print(
            f"  tiny_gradient_match threads={threads} contention={contention}: "
            + ", ".join(f"{n} {T.median(t):.3f} s" for n, t in times.items()),
            flush=True,
        )
    return records


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small run (seconds)")
    ap.add_argument("--json", default="bench_out/training.json", help="output records")
    ap.add_argument("--blocks", type=int, default=None, help="timed blocks per method")
    ap.add_argument("--steps", type=int, default=None, help="steps per block")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument(
        "--omp-wait-policy",
        choices=T.OMP_POLICIES,
        default="passive",
        help="OMP_WAIT_POLICY for torch's OpenMP threads (see _timing.preconfigure)",
    )
    ap.add_argument(
        "--tiny-rounds", type=int, default=None, help="rounds per tiny_gradient_match config"
    )
    ap.add_argument(
        "--only",
        choices=("fit_overhead", "tiny_gradient_match"),
        default=None,
        help="run one scenario only",
    )
    args = ap.parse_args(argv)
    T.set_threads(args.threads)
    blocks = args.blocks or (10 if args.quick else 20)
    steps = args.steps or (30 if args.quick else 50)
    t0 = time.perf_counter()
    meta = T.machine_info(
        args.threads,
        script="training",
        quick=args.quick,
        blocks=blocks,
        steps_per_block=steps,
        command=" ".join(["python", *sys.argv]),
    )
    print(
        f"torch {meta['torch']}, {meta['threads']} threads, {meta['cpu']}, load "
        f"{meta['load_average_start'][0]:.2f}; {blocks} blocks x {steps} steps",
        flush=True,
    )

    records: list[dict[str, Any]] = []
    verdicts: list[str] = []
    if args.only != "tiny_gradient_match":
        fit_records, fit_verdicts = fit_overhead(blocks, steps)
        records += fit_records
        verdicts += fit_verdicts
    if args.only != "fit_overhead":
        rounds = args.tiny_rounds or (9 if args.quick else 15)  # fewer: ratios swing by 30 %
        configs = [(1, False), (2, False), (1, True), (2, True)]
        tiny = tiny_gradient_match(rounds, configs)
        records += tiny
        print(
            T.table(
                tiny,
                [
                    ("method", "method", ""),
                    ("threads", "threads", ""),
                    ("contention", "busy core", ""),
                    ("seconds", "s / 300 steps", ".3f"),
                    ("ratio_to_forum_loop", "× forum loop", ".2f"),
                ],
            )
        )

        def ratio(threads: int, contention: bool) -> float:
            return next(
                r["ratio_to_forum_loop"]
                for r in tiny
                if r["method"] == "ours"
                and r["threads"] == threads
                and r["contention"] == contention
            )

        verdicts += [
            T.verdict(
                ratio(1, False) <= 1.3,
                f"tiny_gradient_match ours vs forum loop, 1 thread: {ratio(1, False):.2f}x "
                f"(busy core: {ratio(1, True):.2f}x; target <= 1.3x)",
            ),
            T.verdict(
                ratio(2, True) <= 1.5,
                f"tiny_gradient_match ours vs forum loop, 2 threads, busy core: "
                f"{ratio(2, True):.2f}x (idle: {ratio(2, False):.2f}x; target <= 1.5x)",
            ),
        ]
    T.set_threads(args.threads)
    meta["load_average_end"] = list(os.getloadavg())
    meta["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"load avg {meta['load_average_start'][0]:.2f} -> {meta['load_average_end'][0]:.2f}")
    print("\n".join(verdicts))
    T.write_json(args.json, [meta, *records, {"scenario": "targets", "verdicts": verdicts}])
    print(f"wrote {args.json} ({meta['seconds']} s)")
    return 0


def fit_overhead(blocks: int, steps: int) -> tuple[list[dict[str, Any]], list[str]]:
    x, y = make_data()
    base = make_model()
    ours, trainer = ours_step(copy.deepcopy(base), x, y)
    hand, cmp = hand_written_step(copy.deepcopy(base), x, y)
    hand_plain, hp_state = hand_written_plain_step(copy.deepcopy(base), x, y)
    methods = [
        T.Method("plain", plain_step(copy.deepcopy(base), x, y)),
        T.Method("ours", ours),
        T.Method("hand_written", hand),
        T.Method("hand_written_plain", hand_plain),
    ]
    timings = T.interleaved(methods, rounds=blocks, warmup_steps=20, steps_per_block=steps)
    # the three constrained loops run the same maths from the same start: same multiplier
    lam = {
        "ours": float(trainer.problem.multiplier_values()["monotonic_0"][0]),
        "hand_written": float(next(iter(cmp.dual_parameters())).detach().reshape(-1)[0]),
        "hand_written_plain": float(hp_state["lam"]),
    }
    plain = timings["plain"].median_ms
    records: list[dict[str, Any]] = []
    for name, t in timings.items():
        rec: dict[str, Any] = {
            "scenario": "fit_overhead",
            "method": name,
            "ms": round(t.median_ms, 4),
            "ratio_to_plain": round(t.median_ms / plain, 4),
            "ms_min": round(t.min_ms, 4),
            "blocks": len(t.samples_ms),
            "steps_per_block": t.steps_per_block,
            "spread_pct": round(t.spread_pct, 2),
        }
        if name in lam:
            rec["final_multiplier"] = lam[name]
        records.append(rec)
    ours_ms = timings["ours"].median_ms
    hw, hwp = timings["hand_written"].median_ms, timings["hand_written_plain"].median_ms
    ours_rec = next(r for r in records if r["method"] == "ours")
    ours_rec["overhead_vs_hand_written_pct"] = round(100 * (ours_ms / hw - 1), 2)
    ours_rec["ms_over_hand_written_plain"] = round(ours_ms - hwp, 4)
    # paired per-block differences (ours against the other method's block of the same round):
    # they cancel slow phases of the machine, so the verdicts use them
    pairs_hw = [
        100 * (o / h - 1)
        for o, h in zip(timings["ours"].samples_ms, timings["hand_written"].samples_ms, strict=True)
    ]
    pairs_hwp = [
        o - h
        for o, h in zip(
            timings["ours"].samples_ms, timings["hand_written_plain"].samples_ms, strict=True
        )
    ]
    ours_rec["overhead_vs_hand_written_pct_paired_median"] = round(T.median(pairs_hw), 2)
    ours_rec["ms_over_hand_written_plain_paired_median"] = round(T.median(pairs_hwp), 4)

    print(
        T.table(
            records,
            [
                ("method", "method", ""),
                ("ms", "ms/step", ".3f"),
                ("ratio_to_plain", "× plain", ".2f"),
                ("spread_pct", "± %", ".1f"),
                ("final_multiplier", "λ at end", ".4f"),
            ],
        )
    )
    verdicts = [
        T.verdict(
            ours_rec["overhead_vs_hand_written_pct_paired_median"] <= 5.0,
            "ours vs hand_written (Cooper roll): paired "
            f"{ours_rec['overhead_vs_hand_written_pct_paired_median']:+.1f}% (medians "
            f"{ours_rec['overhead_vs_hand_written_pct']:+.1f}%; target <= +5%)",
        ),
        T.verdict(
            ours_rec["ms_over_hand_written_plain_paired_median"] <= 0.2,
            "ours vs hand_written_plain: paired "
            f"{ours_rec['ms_over_hand_written_plain_paired_median']:+.3f} ms (medians "
            f"{ours_rec['ms_over_hand_written_plain']:+.3f} ms; target <= +0.2 ms)",
        ),
    ]
    return records, verdicts


if __name__ == "__main__":
    raise SystemExit(main())
