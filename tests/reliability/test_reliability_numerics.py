"""Numerical robustness: multipliers under absurd dual step sizes, dtypes, NaN detection
with the last finite state kept on disk, and memory that does not grow over a long run."""

from __future__ import annotations

import gc
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import constrained_grad as cg
from constrained_grad.errors import NonFiniteError
from constrained_grad.training import checkpoint

D, M = 3, 2


def _data(n: int = 64, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, D, generator=g, dtype=dtype) * 2 - 1
    y = torch.stack([torch.sin(2 * x[:, 0]) - x[:, 1], x[:, 2] ** 2], dim=1)
    return x, y


def _mlp(dtype: torch.dtype = torch.float32, hidden: int = 16) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D, hidden), nn.Tanh(), nn.Linear(hidden, M)).to(dtype)


def _loader(
    dtype: torch.dtype = torch.float32, n: int = 64, batch: int = 16, indices: bool = False
) -> DataLoader:
    ds: Any = TensorDataset(*_data(n, dtype))
    return DataLoader(
        cg.with_indices(ds) if indices else ds,
        batch_size=batch,
        shuffle=True,
        generator=torch.Generator().manual_seed(1),
    )


def _inequalities(pointwise: bool) -> list[cg.DerivativeConstraint]:
    g = torch.Generator().manual_seed(3)
    out = [
        cg.Monotonic(inputs=[0], margin=0.5, name="mono"),  # violated at the start
        cg.Lipschitz(0.1, outputs=[1], name="lip"),
        cg.DerivativeBound(inputs=[1], outputs=[0], upper=-0.5, reduction="max", name="bound"),
        cg.JacobianNormBound(
            0.2,
            estimator="vjp_sphere",
            samples=2,
            name="jac",
            where=cg.InBox(cg.Box([-1.0] * D, [1.0] * D), n=8),
        ),
    ]
    if pointwise:
        pts = torch.rand(10, D, generator=g) * 2 - 1
        out.append(
            cg.Monotonic(
                inputs=[2],
                direction="decreasing",
                margin=0.2,
                name="pw",
                where=cg.AtPoints(pts, batch_size=4),
                reduction="pointwise",
            )
        )
    return out


@pytest.mark.parametrize("on_nonfinite", ["raise", "skip"])
@pytest.mark.parametrize("update", ["simultaneous", "alternating"])
@pytest.mark.parametrize("dual_optimizer", ["sgd", "adam"])
def test_huge_dual_lr_keeps_inequality_multipliers_finite_and_nonnegative(
    update: str, dual_optimizer: str, on_nonfinite: str
) -> None:
    """dual_lr=1e6: the multipliers jump to ~1e6 and keep moving by that much, but every
    logged and current multiplier of an inequality stays finite and >= 0 (Cooper's
    projection after each dual step) — or the run stops with a NonFiniteError. With
    on_nonfinite="skip" it never stops."""
    model = _mlp()
    problem = cg.DerivativeProblem(
        model, nn.functional.mse_loss, _inequalities(pointwise=dual_optimizer == "sgd"), seed=0
    )
    seen: list[dict[str, torch.Tensor]] = []

    def record(info: cg.StepInfo) -> None:
        seen.append({k: v.clone() for k, v in info.problem.multiplier_values().items()})

    try:
        result = cg.fit(
            problem,
            _loader(),
            torch.optim.SGD(model.parameters(), lr=1e-2),
            dual_lr=1e6,
            dual_optimizer=dual_optimizer,
            update=update,
            steps=20,
            epochs=8,
            callbacks=[record],
            progress=False,
            on_nonfinite=on_nonfinite,
        )
        history = result.history
    except NonFiniteError as err:  # allowed, if it says what and when
        assert on_nonfinite == "raise"
        assert re.search(r"non-finite .* step \d+ \(epoch \d+\)", str(err)), str(err)
        history = None
    assert len(seen) >= 3
    for step in seen:
        for name, values in step.items():
            assert bool(torch.isfinite(values).all()), name
            assert float(values.min()) >= 0.0, name
    assert max(float(v.max()) for v in seen[0].values()) >= 1e4  # the huge step was taken
    if history is not None:
        for name in history.constraint_names:
            assert min(history.column(f"{name}/multiplier_min")) >= 0.0


def test_multiplier_overflow_raises_naming_what_and_keeps_a_finite_checkpoint(
    tmp_path: Path,
) -> None:
    """float32 multipliers driven towards 3.4e38 by dual_lr=1e38: the weighted violation
    overflows first; a NonFiniteError names the Lagrangian (or a multiplier statistic) and
    the step, and the checkpoint on disk holds the last finite state."""
    model = _mlp()
    problem = cg.DerivativeProblem(
        model, nn.functional.mse_loss, [cg.Monotonic(inputs=[0], margin=2.0, name="mono")]
    )
    pattern = r"non-finite .*step \d+.*(Lagrangian|mono/multiplier)"
    with pytest.raises(NonFiniteError, match=pattern) as info:
        cg.fit(
            problem,
            _loader(),
            torch.optim.SGD(model.parameters(), lr=1e-30),
            dual_lr=1e38,
            steps=50,
            epochs=100,
            progress=False,
            checkpoint_dir=tmp_path,
            checkpoint_every=1,
        )
    step = int(re.search(r"step (\d+)", str(info.value)).group(1))  # type: ignore[union-attr]
    saved = checkpoint.load(tmp_path / "checkpoint.pt")
    assert 1 <= saved["step"] <= step
    assert all(bool(torch.isfinite(v).all()) for v in saved["model"].values())
    for group in saved["cmp"]["multipliers"].values():
        assert all(
            bool(torch.isfinite(t).all()) for t in group.values() if isinstance(t, torch.Tensor)
        )


def test_float64_model_gives_float64_multipliers_penalties_and_checkpoints(
    tmp_path: Path,
) -> None:
    def build() -> tuple[nn.Module, cg.DerivativeProblem]:
        model = _mlp(torch.float64)
        pts = torch.rand(6, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        constraints = [
            cg.Monotonic(inputs=[0], name="dense"),
            cg.Monotonic(
                inputs=[1], name="pointwise", where=cg.AtPoints(pts), reduction="pointwise"
            ),
            cg.Lipschitz(0.5, name="al", formulation=cg.AugmentedLagrangian(2.0)),
            cg.DerivativeBound(
                inputs=[2], upper=0.1, name="fixed", formulation=cg.FixedPenalty(0.3)
            ),
        ]
        return model, cg.DerivativeProblem(model, nn.functional.mse_loss, constraints)

    model, problem = build()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loader = _loader(torch.float64)
    cg.fit(
        problem,
        loader,
        opt,
        dual_lr=0.5,
        steps=3,
        epochs=10,
        progress=False,
        checkpoint_dir=tmp_path,
    )
    values = problem.multiplier_values()
    assert set(values) == {"dense", "pointwise", "al", "fixed"}
    assert all(v.dtype == torch.float64 for v in values.values())
    assert float(values["dense"].max()) > 0  # the dual steps happened in float64
    assert torch.equal(values["fixed"], torch.full((M,), 0.3, dtype=torch.float64))
    penalties = dict(problem.named_penalty_coefficients())
    assert penalties and all(p.value.dtype == torch.float64 for p in penalties.values())
    saved = checkpoint.load(tmp_path / "checkpoint.pt")
    for group in saved["cmp"]["multipliers"].values():
        assert all(t.dtype == torch.float64 for t in group.values() if isinstance(t, torch.Tensor))
    # a fresh process-like rebuild resumes in float64 with the same multipliers
    model2, problem2 = build()
    cg.fit(
        problem2,
        _loader(torch.float64),
        torch.optim.Adam(model2.parameters(), lr=1e-2),
        dual_lr=0.5,
        steps=3,
        epochs=10,
        progress=False,
        checkpoint_dir=tmp_path,
    )
    for name, v in problem2.multiplier_values().items():
        assert v.dtype == torch.float64 and torch.equal(v, values[name]), name


def _poisoned_run(tmp_path: Path, where: str) -> tuple[NonFiniteError, nn.Sequential]:
    """Train with checkpoints every step; put a NaN in ``0.weight`` after step 3 — from a
    callback (after that step's checkpoint) or from eval_fn (before it)."""
    model = _mlp()
    problem = cg.DerivativeProblem(
        model, nn.functional.mse_loss, [cg.Monotonic(inputs=[0], name="mono")]
    )

    first = model[0]
    assert isinstance(first, nn.Linear)

    def poison(_: Any) -> Any:
        with torch.no_grad():
            first.weight[1, 2] = float("nan")
        return {}

    def callback(info: cg.StepInfo) -> None:
        if info.step == 4:
            poison(None)

    evals = [0]

    def eval_fn(_: Any) -> dict[str, float]:
        evals[0] += 1  # called after every step, before that step's checkpoint
        if evals[0] == 4:
            poison(None)
        return {"calls": float(evals[0])}

    kw: dict[str, Any] = (
        {"callbacks": [callback]} if where == "callback" else {"eval_fn": eval_fn, "eval_every": 1}
    )
    with pytest.raises(NonFiniteError) as info:
        cg.fit(
            problem,
            _loader(),
            torch.optim.SGD(model.parameters(), lr=1e-2),
            steps=20,
            epochs=100,
            progress=False,
            checkpoint_dir=tmp_path,
            checkpoint_every=1,
            **kw,
        )
    return info.value, model


def test_nan_parameter_after_a_step_is_named_and_the_last_good_checkpoint_kept(
    tmp_path: Path,
) -> None:
    err, model = _poisoned_run(tmp_path, "callback")
    msg = str(err)
    assert "parameter 0.weight" in msg and "parameter 2.weight" not in msg
    assert "at step 4 (epoch 1)" in msg and "loss" in msg
    saved = checkpoint.load(tmp_path / "checkpoint.pt")
    assert saved["step"] == 4
    assert all(bool(torch.isfinite(v).all()) for v in saved["model"].values())
    first = model[0]
    assert isinstance(first, nn.Linear)
    assert not bool(torch.isfinite(first.weight).all())  # the live model is the broken one


def test_nan_parameter_before_a_checkpoint_is_refused_and_named(tmp_path: Path) -> None:
    """A NaN appearing before a periodic save (eval_fn runs first) is not written: the
    save raises naming the parameter and the older checkpoint stays."""
    err, _ = _poisoned_run(tmp_path, "eval_fn")
    msg = str(err)
    assert "non-finite parameter 0.weight after step 3" in msg and "last finite state" in msg
    saved = checkpoint.load(tmp_path / "checkpoint.pt")
    assert saved["step"] == 3
    assert all(bool(torch.isfinite(v).all()) for v in saved["model"].values())


def test_nan_multiplier_is_named() -> None:
    model = _mlp()
    problem = cg.DerivativeProblem(
        model,
        nn.functional.mse_loss,
        [cg.Monotonic(inputs=[0], name="mono"), cg.Lipschitz(1.0, name="lip")],
    )

    def poison(info: cg.StepInfo) -> None:
        if info.step == 2:
            with torch.no_grad():
                weight = dict(problem.named_multipliers())["lip"].weight
                assert isinstance(weight, torch.Tensor)
                weight.fill_(float("inf"))

    with pytest.raises(NonFiniteError, match=r"at step 2 .*lip/multiplier_mean") as info:
        cg.fit(
            problem,
            _loader(),
            torch.optim.SGD(model.parameters(), lr=1e-2),
            steps=10,
            epochs=10,
            progress=False,
            callbacks=[poison],
        )
    assert "mono/" not in str(info.value)


def _rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_resident_memory_is_flat_over_1000_steps() -> None:
    """1,000 steps of a monotone constraint on the batch (double backward, create_graph)
    and at random box points: after a 100-step warm-up, RSS grows by < 5 %."""
    model = _mlp(hidden=64)
    problem = cg.DerivativeProblem(
        model,
        nn.functional.mse_loss,
        [
            cg.Monotonic(inputs=[0, 1], name="mono"),
            cg.Monotonic(
                inputs=[2],
                direction="decreasing",
                name="box",
                where=cg.InBox(cg.Box([-1.0] * D, [1.0] * D), n=64),
            ),
        ],
    )
    rss: dict[int, int] = {}

    def measure(info: cg.StepInfo) -> None:
        if info.step in (100, 1000):
            gc.collect()
            rss[info.step] = _rss_bytes()

    result = cg.fit(
        problem,
        _loader(n=512, batch=128),
        torch.optim.Adam(model.parameters(), lr=1e-3),
        dual_lr=0.1,
        steps=1000,
        epochs=10**6,
        callbacks=[measure],
        progress=False,
    )
    assert result.steps == 1000 and set(rss) == {100, 1000}
    growth = (rss[1000] - rss[100]) / rss[100]
    print(f"RSS {rss[100] / 2**20:.1f} MB -> {rss[1000] / 2**20:.1f} MB ({100 * growth:+.2f}%)")
    assert growth < 0.05, f"RSS grew by {100 * growth:.1f}% ({rss[100]} -> {rss[1000]} bytes)"
