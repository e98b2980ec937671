"""The Cooper problem: states per constraint, shared evaluation, batches, seeds."""

from __future__ import annotations

import cooper
import pytest
import torch
from cg_train_helpers import mlp
from torch import nn
from torch.autograd.functional import jacobian

import constrained_grad as cg
from constrained_grad.errors import InputValidationError
from constrained_grad.problem import as_batch


class _Counting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = mlp(3, 2, hidden=8)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.net(x)


def _batch(b: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, generator=g), torch.randn(b, 2, generator=g)


def _columns(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.stack([jacobian(lambda v: model(v[None])[0], xb) for xb in x])  # (B, m, d)


def test_states_carry_primal_and_dual_views_of_each_reduction() -> None:
    model = mlp(3, 2, hidden=8)
    points = torch.rand(5, 3, generator=torch.Generator().manual_seed(1))
    problem = cg.DerivativeProblem(
        model,
        nn.functional.mse_loss,
        [
            cg.Monotonic(inputs=[0], margin=0.1, name="hinge"),
            cg.Monotonic(inputs=[0], margin=0.1, reduction="max", name="worst"),
            cg.Monotonic(
                inputs=[0], margin=0.1, reduction="pointwise", where=cg.AtPoints(points), name="pw"
            ),
        ],
    )
    x, y = _batch()
    state = problem.compute_cmp_state((x, y))
    assert isinstance(state, cooper.CMPState)
    assert state.loss.item() == pytest.approx(nn.functional.mse_loss(model(x), y).item())
    g = 0.1 - _columns(model, x)[:, :, 0]  # (B, 2)
    cons = dict(problem.named_constraints())
    s = state.observed_constraints[cons["hinge"]]
    torch.testing.assert_close(s.violation, g.clamp_min(0).mean(0))
    torch.testing.assert_close(s.strict_violation, g.amax(0))
    assert s.violation.requires_grad and not s.strict_violation.requires_grad
    s = state.observed_constraints[cons["worst"]]
    torch.testing.assert_close(s.violation, g.amax(0))
    s = state.observed_constraints[cons["pw"]]
    g_pts = 0.1 - _columns(model, points)[:, :, 0]
    torch.testing.assert_close(s.violation, g_pts.reshape(-1))
    assert s.constraint_features.tolist() == list(range(10))  # point p, component c -> 2p + c
    torch.testing.assert_close(problem.last_evals["hinge"].violations, g)
    torch.testing.assert_close(problem.violations("pw", points), g_pts)


def test_constraints_at_the_same_points_share_one_forward_pass() -> None:
    model = _Counting()
    box = cg.InBox(([0.0] * 3, [1.0] * 3), n=5)
    problem = cg.DerivativeProblem(
        model,
        nn.functional.mse_loss,
        [
            cg.Monotonic(inputs=[0], name="a"),
            cg.Monotonic(inputs=[1], name="b"),
            cg.Lipschitz(1.0, name="c"),  # these three reuse the loss's forward pass
            cg.Monotonic(inputs=[2], where=box, name="d"),
            cg.Lipschitz(2.0, where=box, name="e"),
        ],
        input_shape=(3,),
    )
    model.calls = 0
    problem.compute_cmp_state(_batch())
    assert model.calls == 2  # the batch once, the shared box points once
    assert problem.last_evals["d"].violations.shape == (5, 2)
    assert problem.last_evals["e"].violations.shape == (5, 2)


def test_problem_seed_makes_random_points_reproducible() -> None:
    def points(seed: int) -> torch.Tensor:
        model = mlp(3, 2, hidden=8)
        c = cg.Monotonic(inputs=[0], where=cg.InBox(([0.0] * 3, [1.0] * 3), n=7), name="box")
        problem = cg.DerivativeProblem(model, nn.functional.mse_loss, [c], seed=seed)
        problem.compute_cmp_state(_batch())
        return problem.last_evals["box"].violations

    assert torch.equal(points(3), points(3))
    assert not torch.equal(points(3), points(4))


def test_batch_formats() -> None:
    x, y = _batch()
    assert as_batch(x).y is None
    b = as_batch((x, y, "extra"))
    assert b.x is x and b.y is y and b.extras == {"2": "extra"}
    b = as_batch({"inputs": x, "targets": y, "index": [0, 1, 2, 3, 4, 5], "w": 1})
    assert b.x is x and b.y is y and b.index.tolist() == list(range(6)) and b.extras == {"w": 1}
    assert b.field("w") == 1 and b.field("targets") is y
    with pytest.raises(
        InputValidationError,
        match=r"the batch has no field 'v' \(got fields "
        r"\['x', 'y', 'w'\]\)",
    ):
        b.field("v")
    with pytest.raises(InputValidationError, match=r"dict batch has no 'x' or 'inputs' key"):
        as_batch({"features": x})
    with pytest.raises(InputValidationError, match=r"cannot read a batch of type int"):
        as_batch(3)
    with pytest.raises(InputValidationError, match=r"the batch has no targets field"):
        as_batch(x).field("y")


def test_with_indices_items() -> None:
    x, y = _batch()
    ds = cg.with_indices(torch.utils.data.TensorDataset(x, y))
    item = ds[4]
    assert len(ds) == 6 and item["index"].item() == 4 and item["index"].dtype == torch.long
    assert torch.equal(item["x"], x[4]) and torch.equal(item["y"], y[4])
    loader = torch.utils.data.DataLoader(ds, batch_size=3)
    batch = as_batch(next(iter(loader)))
    assert batch.index.tolist() == [0, 1, 2] and torch.equal(batch.x, x[:3])


def test_gradient_match_reads_a_named_extra_field_of_a_dict_batch() -> None:
    model = mlp(3, 1, hidden=8)
    problem = cg.DerivativeProblem(model, None, [cg.GradientMatch("grads", name="gm")])
    x, _ = _batch()
    grads = torch.randn(6, 3, generator=torch.Generator().manual_seed(9))
    state = problem.compute_cmp_state({"x": x, "grads": grads})
    expected = (_columns(model, x)[:, 0, :] - grads).pow(2).mean()
    assert state.loss is None
    violation = next(iter(state.observed_constraints.values())).violation
    torch.testing.assert_close(violation, expected.reshape(1))


def test_model_mode_is_kept_and_sizes_inferred() -> None:
    model = mlp(3, 2, hidden=8)
    model.train()
    problem = cg.DerivativeProblem(model, nn.functional.mse_loss, [cg.Monotonic(inputs=[0])])
    assert model.training
    assert (problem.in_shape, problem.out_shape) == ((3,), (2,))
    model.eval()
    cg.DerivativeProblem(model, nn.functional.mse_loss, [cg.Monotonic(inputs=[0])])
    assert not model.training
