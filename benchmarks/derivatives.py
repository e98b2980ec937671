"""Cost of derivative constraints in a full training step, against the plain step.

Scenarios (every method times one whole step: forward, loss, penalty, backward, Adam):

``monotone``
    MLP 6→256→256→256→D (tanh), batch 512, MSE plus the hinge penalty
    ``relu(-∂f_i/∂z).mean()`` on the column of the last input ``z``. Methods: ``plain`` (no
    penalty), ``ours`` (the engine on the loss's forward pass, as a ``DerivativeProblem``
    computes it), ``naive_loop`` (one ``autograd.grad`` per output), ``forward_jvp``
    (``cg.jacobian_columns(method="forward")``) and ``jacfwd_vmap`` (``vmap(jacfwd)``).
``jacobian_fro``
    MLP 784→512→512→D (ReLU), batch 128, cross-entropy plus ``1e-3 · mean ‖J‖_F²``. Methods:
    ``plain``, ``exact``, ``projection_1`` / ``projection_4`` (``vjp_sphere`` estimator with
    1 or 4 projections per sample), ``naive_loop``; plus each estimator's relative error.

Also: resident memory over many constrained monotone steps (growth %).

Run ``python benchmarks/derivatives.py --help``; JSON records go to ``--json`` (default
``bench_out/derivatives.json``, gitignored).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import _timing as T

if __name__ == "__main__":
    T.preconfigure(sys.argv)  # OpenMP reads OMP_WAIT_POLICY when torch loads

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import jacfwd, jvp, vmap

import constrained_grad as cg

Z = 5  # the monotone input (last of 6)
LR = 1e-3
FRO_WEIGHT = 1e-3


def timing_record(scenario: str, d_out: int, name: str, t: Any, plain: Any) -> dict[str, Any]:
    """The JSON record of one method's timing, with its ratios to the plain step."""
    return {
        "scenario": scenario,
        "d_out": d_out,
        "method": name,
        "ms": round(t.median_ms, 4),
        "ratio_to_plain": round(t.median_ms / plain.median_ms, 4),
        "ms_min": round(t.min_ms, 4),
        "ratio_to_plain_min": round(t.min_ms / plain.min_ms, 4),
        "rounds": len(t.samples_ms),
        "steps_per_block": t.steps_per_block,
        "spread_pct": round(t.spread_pct, 2),
    }


def mlp(sizes: list[int], act: type[nn.Module], seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


# -- monotone ---------------------------------------------------------------------------------
ColumnFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def col_ours(model: nn.Module, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    values = cg.derivatives.evaluate(model, x, cg.Needs(columns=frozenset({Z})), outputs=out)
    return values.columns([Z])[:, :, 0]


def col_naive(model: nn.Module, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    cols = [
        torch.autograd.grad(out[:, i].sum(), x, create_graph=True)[0][:, Z]
        for i in range(out.shape[1])
    ]
    return torch.stack(cols, dim=1)


def col_forward(model: nn.Module, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return cg.jacobian_columns(model, x.detach(), [Z], method="forward")[:, :, 0]


def col_jacfwd(model: nn.Module, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return vmap(jacfwd(model))(x.detach())[:, :, Z]


MONO_COLUMNS: dict[str, ColumnFn | None] = {
    "plain": None,
    "ours": col_ours,
    "naive_loop": col_naive,
    "forward_jvp": col_forward,
    "jacfwd_vmap": col_jacfwd,
}


def monotone_step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    x0: torch.Tensor,
    y: torch.Tensor,
    column: ColumnFn | None,
) -> Callable[[], None]:
    def step() -> None:
        opt.zero_grad(set_to_none=True)
        x = x0.detach().requires_grad_(column is not None)
        out = model(x)
        loss = F.mse_loss(out, y)
        if column is not None:
            loss = loss + torch.relu(-column(model, x, out)).mean()
        loss.backward()
        opt.step()

    return step


def monotone_data(d_out: int, batch: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(batch, 6, generator=g) * 2 - 1
    y = x[:, Z : Z + 1] * torch.linspace(0.5, 1.5, d_out) + 0.1 * torch.randn(
        batch, d_out, generator=g
    )
    return x, y


def column_error(base: nn.Module, x: torch.Tensor, fn: ColumnFn) -> float:
    """Max abs error of a method's column against a float64 forward-mode reference."""
    model = copy.deepcopy(base)
    x1 = x.detach().clone().requires_grad_(True)
    out = model(x1)
    col = fn(model, x1, out).detach().double()
    m64 = copy.deepcopy(base).double()
    tangent = torch.zeros_like(x, dtype=torch.float64)
    tangent[:, Z] = 1
    with torch.no_grad():
        ref = jvp(m64, (x.double(),), (tangent,))[1]
    return float((col - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


def bench_monotone(
    d_outs: list[int],
    args: argparse.Namespace,
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for d_out in d_outs:
        log(f"monotone D_out={d_out}")
        x, y = monotone_data(d_out)
        base = mlp([6, 256, 256, 256, d_out], nn.Tanh, seed=0)
        methods, errors = [], {}
        for name, col in MONO_COLUMNS.items():
            if name == "naive_loop" and d_out > args.max_loop_outputs:
                continue
            if col is not None:
                errors[name] = column_error(base, x, col)
            model = copy.deepcopy(base)
            opt = torch.optim.Adam(model.parameters(), lr=LR)
            slow = name == "naive_loop" and d_out >= args.slow_from
            methods.append(
                T.Method(
                    name,
                    monotone_step(model, opt, x, y, col),
                    max_rounds=args.slow_rounds if slow else None,
                    warmup_steps=1 if slow else None,
                )
            )
        timings = T.interleaved(
            methods,
            rounds=args.repeats,
            warmup_steps=args.warmup,
            block_seconds=args.block_seconds,
            log=log,
        )
        for name, t in timings.items():
            rec = timing_record("monotone", d_out, name, t, timings["plain"])
            if name in errors:
                rec["column_rel_error"] = errors[name]
            records.append(rec)
    return records


# -- jacobian_fro -----------------------------------------------------------------------------
FroFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]


def fro_engine(estimator: str, samples: int) -> FroFn:
    """``‖J_b‖_F²`` by the engine on the loss's forward pass (how a problem computes it)."""
    needs = (
        cg.Needs(fro=frozenset({(estimator, samples)}))
        if estimator == "exact"
        else cg.Needs(projections=samples, fro=frozenset({(estimator, samples)}))
    )

    def fn(
        model: nn.Module, x: torch.Tensor, out: torch.Tensor, gen: torch.Generator
    ) -> torch.Tensor:
        values = cg.derivatives.evaluate(model, x, needs, outputs=out, generator=gen)
        return values.fro_sq(estimator, samples)

    return fn


def fro_naive(
    model: nn.Module, x: torch.Tensor, out: torch.Tensor, gen: torch.Generator
) -> torch.Tensor:
    total = torch.zeros(x.shape[0], dtype=x.dtype)
    for i in range(out.shape[1]):
        g = torch.autograd.grad(out[:, i].sum(), x, create_graph=True)[0]
        total = total + g.pow(2).sum(1)
    return total


FRO_METHODS: dict[str, FroFn | None] = {
    "plain": None,
    "exact": fro_engine("exact", 1),
    "projection_1": fro_engine("vjp_sphere", 1),
    "projection_4": fro_engine("vjp_sphere", 4),
    "naive_loop": fro_naive,
}


def fro_step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    x0: torch.Tensor,
    y: torch.Tensor,
    fro: FroFn | None,
) -> Callable[[], None]:
    gen = torch.Generator().manual_seed(2)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        x = x0.detach().requires_grad_(fro is not None)
        out = model(x)
        loss = F.cross_entropy(out, y)
        if fro is not None:
            loss = loss + FRO_WEIGHT * fro(model, x, out, gen).mean()
        loss.backward()
        opt.step()

    return step


def estimator_errors(base: nn.Module, x: torch.Tensor, draws: int) -> dict[str, dict[str, float]]:
    """Relative errors of the estimators against the exact ``‖J_b‖_F²`` (mean over draws)."""
    model = copy.deepcopy(base)
    exact = cg.jacobian_fro_norm_sq(model, x, estimator="exact", create_graph=False)
    out: dict[str, dict[str, float]] = {}
    gen = torch.Generator().manual_seed(3)
    for name, samples in (("projection_1", 1), ("projection_4", 4)):
        per_point, of_mean = [], []
        for _ in range(draws):
            est = cg.jacobian_fro_norm_sq(
                model, x, estimator="vjp_sphere", samples=samples, generator=gen, create_graph=False
            )
            per_point.append(float(((est - exact).abs() / exact).mean()))
            of_mean.append(float((est.mean() - exact.mean()).abs() / exact.mean()))
        out[name] = {
            "rel_error": statistics.mean(per_point),
            "rel_error_batch_mean": statistics.mean(of_mean),
        }
    return out


def bench_fro(
    d_outs: list[int],
    args: argparse.Namespace,
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for d_out in d_outs:
        log(f"jacobian_fro D_out={d_out}")
        g = torch.Generator().manual_seed(4)
        x = torch.randn(128, 784, generator=g)
        y = torch.randint(0, d_out, (128,), generator=g)
        base = mlp([784, 512, 512, d_out], nn.ReLU, seed=0)
        errs = estimator_errors(base, x[: args.error_points], args.error_draws)
        methods = []
        for name, fn in FRO_METHODS.items():
            if name in ("naive_loop", "exact") and d_out > args.max_loop_outputs:
                continue
            model = copy.deepcopy(base)
            opt = torch.optim.Adam(model.parameters(), lr=LR)
            slow = name in ("naive_loop", "exact") and d_out >= args.slow_from
            methods.append(
                T.Method(
                    name,
                    fro_step(model, opt, x, y, fn),
                    max_rounds=args.slow_rounds if slow else None,
                    warmup_steps=1 if slow else None,
                )
            )
        timings = T.interleaved(
            methods,
            rounds=args.repeats,
            warmup_steps=args.warmup,
            block_seconds=args.block_seconds,
            log=log,
        )
        for name, t in timings.items():
            rec = timing_record("jacobian_fro", d_out, name, t, timings["plain"])
            if name in ("exact", "naive_loop"):
                rec["rel_error"] = 0.0
                rec["rel_error_batch_mean"] = 0.0
            rec.update(errs.get(name, {}))
            if name in errs:
                rec["error_points"] = min(args.error_points, x.shape[0])
                rec["error_draws"] = args.error_draws
            records.append(rec)
    return records


# -- memory -----------------------------------------------------------------------------------
def bench_memory(steps: int, warmup: int, log: Callable[[str], None]) -> dict[str, Any]:
    """VmRSS over ``steps`` constrained monotone steps (D_out=100, ``ours``) after warm-up."""
    x, y = monotone_data(100)
    model = mlp([6, 256, 256, 256, 100], nn.Tanh, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    step = monotone_step(model, opt, x, y, col_ours)
    for _ in range(warmup):
        step()
    samples = [T.rss_mb()]
    every = max(1, steps // 10)
    for k in range(1, steps + 1):
        step()
        if k % every == 0:
            samples.append(T.rss_mb())
    start, end = samples[0], samples[-1]
    steps_at = [k * every for k in range(len(samples))]
    mean_s, mean_r = statistics.mean(steps_at), statistics.mean(samples)
    slope = sum((s - mean_s) * (r - mean_r) for s, r in zip(steps_at, samples, strict=True)) / sum(
        (s - mean_s) ** 2 for s in steps_at
    )
    half = samples[len(samples) // 2]
    rec = {
        "scenario": "memory",
        "d_out": 100,
        "method": "ours",
        "steps": steps,
        "warmup_steps": warmup,
        "rss_start_mb": round(start, 2),
        "rss_end_mb": round(end, 2),
        "rss_max_mb": round(max(samples), 2),
        "growth_pct": round(100 * (end - start) / start, 3),
        "growth_second_half_pct": round(100 * (end - half) / half, 3),
        "slope_mb_per_100_steps": round(100 * slope, 3),
        "rss_trace_mb": [round(s, 2) for s in samples],
    }
    log(f"memory: {start:.1f} MiB -> {end:.1f} MiB over {steps} steps ({rec['growth_pct']:+.2f}%)")
    return rec


# -- targets ----------------------------------------------------------------------------------
def check_targets(records: list[dict[str, Any]], memory: dict[str, Any] | None) -> list[str]:
    def get(scenario: str, d_out: int, method: str) -> dict[str, Any] | None:
        return next(
            (
                r
                for r in records
                if r["scenario"] == scenario and r["d_out"] == d_out and r["method"] == method
            ),
            None,
        )

    lines = []
    for d in sorted({r["d_out"] for r in records if r["scenario"] == "monotone"}):
        ours = get("monotone", d, "ours")
        if ours is None:
            continue
        limit = 2.5 if d < 100 else 2.3
        lines.append(
            T.verdict(
                ours["ratio_to_plain"] <= limit,
                f"monotone D_out={d}: ours {ours['ratio_to_plain']:.2f}x plain "
                f"(target <= {limit}x)",
            )
        )
        loop = get("monotone", d, "naive_loop")
        need = {100: 30, 1000: 300}.get(d)
        if loop is not None and need is not None:
            speedup = loop["ms"] / ours["ms"]
            lines.append(
                T.verdict(
                    speedup >= need,
                    f"monotone D_out={d}: ours {speedup:.0f}x faster than "
                    f"naive_loop (target >= {need}x)",
                )
            )
    p1 = get("jacobian_fro", 1000, "projection_1")
    if p1 is not None:
        lines.append(
            T.verdict(
                p1["ratio_to_plain"] <= 2.5,
                f"jacobian_fro D_out=1000: projection_1 "
                f"{p1['ratio_to_plain']:.2f}x plain (target <= 2.5x)",
            )
        )
    if memory is not None:
        lines.append(
            T.verdict(
                memory["growth_pct"] <= 2.0,
                f"memory: RSS growth {memory['growth_pct']:+.2f}% over "
                f"{memory['steps']} steps (target: flat, <= 2%)",
            )
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small run (under a minute)")
    ap.add_argument("--json", default="bench_out/derivatives.json", help="output records")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds per scenario")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument(
        "--omp-wait-policy",
        choices=T.OMP_POLICIES,
        default="passive",
        help="OMP_WAIT_POLICY for torch's OpenMP threads (see _timing.preconfigure)",
    )
    ap.add_argument(
        "--scenario", choices=["all", "monotone", "jacobian_fro", "memory"], default="all"
    )
    ap.add_argument("--d-out", type=int, nargs="+", default=None, help="only these output sizes")
    args = ap.parse_args(argv)
    T.set_threads(args.threads)
    if args.repeats is None:
        args.repeats = 5 if args.quick else 11
    args.warmup = 2 if args.quick else 3
    args.block_seconds = 0.05 if args.quick else 0.15
    args.slow_rounds = 2  # timed rounds of methods taking seconds per step
    args.slow_from = 100 if args.quick else 1000  # ... from this D_out on
    args.max_loop_outputs = 100 if args.quick else 1000
    args.error_draws = 5 if args.quick else 20
    args.error_points = 32 if args.quick else 128
    mono_d = [7, 100] if args.quick else [7, 100, 1000]
    fro_d = [10, 1000]
    if args.d_out:
        mono_d = [d for d in mono_d if d in args.d_out] or args.d_out
        fro_d = [d for d in fro_d if d in args.d_out] or args.d_out
    mem_steps, mem_warmup = (100, 10) if args.quick else (500, 50)

    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", flush=True)

    meta = T.machine_info(
        args.threads,
        script="derivatives",
        quick=args.quick,
        repeats=args.repeats,
        command=" ".join(["python", *sys.argv]),
    )
    log(
        f"torch {meta['torch']}, {meta['threads']} threads, {meta['cpu']}, "
        f"load {meta['load_average_start'][0]:.2f}"
    )
    records: list[dict[str, Any]] = []
    memory = None
    if args.scenario in ("all", "memory"):  # first: the exact Jacobians below take GiBs
        memory = bench_memory(mem_steps, mem_warmup, log)
    if args.scenario in ("all", "monotone"):
        records += bench_monotone(mono_d, args, log)
    if args.scenario in ("all", "jacobian_fro"):
        records += bench_fro(fro_d, args, log)
    meta["load_average_end"] = list(os.getloadavg())
    meta["seconds"] = round(time.perf_counter() - t0, 1)

    print()
    print(
        f"torch {meta['torch']} | threads {meta['threads']} | {meta['cpu']} | "
        f"load avg {meta['load_average_start'][0]:.2f} -> {meta['load_average_end'][0]:.2f}"
    )
    cols = [
        ("scenario", "scenario", ""),
        ("d_out", "D_out", ""),
        ("method", "method", ""),
        ("ms", "ms/step", ".2f"),
        ("ratio_to_plain", "× plain", ".2f"),
        ("spread_pct", "± %", ".1f"),
        ("column_rel_error", "col err", ".1e"),
        ("rel_error", "rel err", ".3f"),
        ("rel_error_batch_mean", "rel err (mean)", ".4f"),
    ]
    print(T.table(records, cols))
    if memory is not None:
        print(
            f"\nmemory (D_out=100, ours): {memory['rss_start_mb']:.1f} -> "
            f"{memory['rss_end_mb']:.1f} MiB over {memory['steps']} steps "
            f"({memory['growth_pct']:+.2f}%, "
            f"second half {memory['growth_second_half_pct']:+.2f}%)"
        )
    verdicts = check_targets(records, memory)
    if verdicts:
        print()
        print("\n".join(verdicts))
    out = [meta, *records] + ([memory] if memory is not None else [])
    if verdicts:
        out.append({"scenario": "targets", "verdicts": verdicts})
    T.write_json(args.json, out)
    print(f"\nwrote {args.json} ({meta['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
