r"""Pointwise multipliers: one per point and component, stepped only where observed.

For every step the test records which point ids were observed and their violations
``g`` (B, C), and checks the whole multiplier vector against projected dual ascent on the
observed entries only: :math:`\lambda_{pC+c} \leftarrow [\lambda_{pC+c} + \eta g_{bc}]_+`
for observed point ``p`` at batch row ``b``; every other entry unchanged (bit for bit),
so values persist across epochs and change only when their point is seen.
"""

from __future__ import annotations

import copy

import pytest
import torch
from cg_train_helpers import mlp
from torch import nn
from torch.autograd.functional import jacobian

import constrained_grad as cg
from constrained_grad.errors import InputValidationError

ETA = 0.5


class _Recorder:
    def __init__(self, name: str) -> None:
        self.name = name
        self.index: list[torch.Tensor] = []
        self.g: list[torch.Tensor] = []
        self.after: list[torch.Tensor] = []
        self.epochs: list[int] = []

    def __call__(self, info: cg.StepInfo) -> None:
        ev = info.problem.last_evals[self.name]
        self.index.append(ev.index.clone())
        self.g.append(ev.violations.clone())
        self.after.append(info.problem.multiplier_values()[self.name].clone())
        self.epochs.append(info.epoch)


def _check_projected_ascent(rec: _Recorder, n_points: int, n_comp: int) -> None:
    before = torch.zeros(n_points * n_comp)
    for t, (idx, g, after) in enumerate(zip(rec.index, rec.g, rec.after, strict=True)):
        assert after.shape == (n_points * n_comp,)
        assert bool((after >= 0).all()), f"negative multiplier at step {t}"
        flat = (idx[:, None] * n_comp + torch.arange(n_comp)).reshape(-1)
        expected = before.clone()
        expected[flat] = (before[flat] + ETA * g.reshape(-1)).clamp_min(0)
        torch.testing.assert_close(after, expected, rtol=1e-6, atol=1e-7)
        untouched = torch.ones(n_points * n_comp, dtype=torch.bool)
        untouched[flat] = False
        assert torch.equal(after[untouched], before[untouched]), f"step {t} moved unseen points"
        before = after


def test_pointwise_at_fixed_points_persist_and_step_only_where_observed() -> None:
    n_points, n_comp = 20, 2
    points = torch.rand(n_points, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 3, generator=g), torch.randn(64, 2, generator=g)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    model = mlp(3, 2, hidden=8)
    problem = cg.DerivativeProblem(
        model,
        nn.functional.mse_loss,
        [
            cg.Monotonic(
                inputs=[0],
                margin=0.3,
                reduction="pointwise",
                where=cg.AtPoints(points, batch_size=5),
                name="pw",
            )
        ],
    )
    assert problem.multiplier_values()["pw"].shape == (n_points * n_comp,)
    rec = _Recorder("pw")
    result = cg.fit(
        problem,
        loader,
        torch.optim.SGD(model.parameters(), lr=0.05),
        dual_lr=ETA,
        epochs=3,
        callbacks=[rec],
        progress=False,
    )
    assert result.steps == 12 and sorted(set(rec.epochs)) == [0, 1, 2]
    for idx in rec.index:
        assert idx.shape == (5,) and len(set(idx.tolist())) == 5
    _check_projected_ascent(rec, n_points, n_comp)
    # not vacuous: entries rose where violated and some were projected back to zero
    assert any(bool((gi > 0).any()) for gi in rec.g)
    assert problem.multiplier_values()["pw"].max() > 0.1
    assert any(bool((gi < 0).any()) for gi in rec.g)
    # history: per-step summaries of the multipliers each step started from
    h = result.history
    before = [torch.zeros(n_points * n_comp), *rec.after[:-1]]
    torch.testing.assert_close(
        torch.tensor(h.column("pw/multiplier_max"), dtype=torch.float64),
        torch.stack(before).amax(1).double(),
        rtol=1e-6,
        atol=1e-7,
    )
    assert min(h.column("pw/multiplier_min")) >= 0.0


def test_pointwise_on_the_batch_with_indices_persist_across_epochs() -> None:
    n_points, n_comp = 16, 3
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(n_points, 4, generator=g), torch.randn(n_points, 3, generator=g)
    loader = torch.utils.data.DataLoader(
        cg.with_indices(torch.utils.data.TensorDataset(x, y)),
        batch_size=4,
        shuffle=True,
        generator=torch.Generator().manual_seed(3),
    )
    model = mlp(4, 3, hidden=8)
    initial = copy.deepcopy(model)
    problem = cg.DerivativeProblem(
        model,
        nn.functional.mse_loss,
        [
            cg.Monotonic(
                inputs=[1],
                margin=0.3,
                reduction="pointwise",
                where=cg.OnBatch(num_points=n_points),
                name="pw",
            )
        ],
    )
    rec = _Recorder("pw")
    cg.fit(
        problem,
        loader,
        torch.optim.SGD(model.parameters(), lr=0.05),
        dual_lr=ETA,
        epochs=3,
        callbacks=[rec],
        progress=False,
    )
    assert len(rec.index) == 12
    # each epoch observes every point exactly once, in a shuffled order
    for epoch in range(3):
        ids = torch.cat(rec.index[4 * epoch : 4 * epoch + 4])
        assert sorted(ids.tolist()) == list(range(n_points))
    assert torch.cat(rec.index[:4]).tolist() != torch.cat(rec.index[4:8]).tolist()
    _check_projected_ascent(rec, n_points, n_comp)
    # the ids are those of the batch rows, in batch order: step 0's violations are
    # margin - df/dx1 of the initial model at x[ids] (float32 autograd oracle)
    xb = x[rec.index[0]]
    dx1 = torch.stack([jacobian(lambda v: initial(v[None])[0], xi)[:, 1] for xi in xb])
    torch.testing.assert_close(rec.g[0], 0.3 - dx1, rtol=1e-5, atol=1e-6)


def test_pointwise_with_augmented_lagrangian_stays_nonnegative() -> None:
    n_points = 10
    points = torch.rand(n_points, 2, generator=torch.Generator().manual_seed(4))
    x = torch.rand(32, 2, generator=torch.Generator().manual_seed(5))
    y = -x.sum(1, keepdim=True)  # decreasing data against an increasing constraint
    model = mlp(2, 1, hidden=8)
    problem = cg.DerivativeProblem(
        model,
        nn.functional.mse_loss,
        [
            cg.Monotonic(
                inputs=[0],
                reduction="pointwise",
                where=cg.AtPoints(points, batch_size=4),
                formulation=cg.AugmentedLagrangian(0.5),
                name="pw",
            )
        ],
    )
    rec = _Recorder("pw")
    cg.fit(
        problem,
        [(x, y)],
        torch.optim.SGD(model.parameters(), lr=0.05),
        epochs=30,
        callbacks=[rec],
        progress=False,
    )
    _check_projected_ascent(rec, n_points, 1)  # dual step = penalty = 0.5 = ETA
    assert rec.after[-1].max() > 0


def test_pointwise_on_batch_rejects_bad_ids() -> None:
    x, y = torch.randn(8, 2), torch.randn(8, 1)
    model = mlp(2, 1, hidden=4)
    problem = cg.DerivativeProblem(
        model,
        nn.functional.mse_loss,
        [
            cg.Monotonic(
                inputs=[0], reduction="pointwise", where=cg.OnBatch(num_points=4), name="pw"
            )
        ],
    )
    loader = torch.utils.data.DataLoader(
        cg.with_indices(torch.utils.data.TensorDataset(x, y)), batch_size=8
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(
        InputValidationError,
        match=r"pw: sample index out of range \[0, 4\) "
        r"\(got 0\.\.7\)\. Set OnBatch\(num_points="
        r"len\(dataset\)\)",
    ):
        cg.fit(problem, loader, opt, progress=False)
    with pytest.raises(
        InputValidationError,
        match=r"pw: pointwise reduction on the batch needs "
        r"each sample's index, but the loader yields "
        r"none",
    ):
        cg.fit(problem, [(x[:4], y[:4])], opt, progress=False)


def test_adam_dual_optimizer_refuses_pointwise_multipliers() -> None:
    points = torch.rand(6, 2)
    model = mlp(2, 1, hidden=4)
    problem = cg.DerivativeProblem(
        model,
        nn.functional.mse_loss,
        [
            cg.Monotonic(inputs=[0], reduction="pointwise", where=cg.AtPoints(points), name="pw"),
            cg.Monotonic(inputs=[1], name="agg"),
        ],
    )
    with pytest.raises(
        InputValidationError,
        match=r"fit: dual_optimizer='adam' cannot step "
        r"pointwise multipliers \(sparse gradients\) of "
        r"\['pw'\]\. Use dual_optimizer='sgd'",
    ):
        cg.fit(
            problem,
            [(torch.rand(4, 2), torch.rand(4, 1))],
            torch.optim.SGD(model.parameters(), lr=0.1),
            dual_optimizer="adam",
            progress=False,
        )
