"""No silent wrong answers (issue 15): each case once gave a plausible result with no error.

Every test here failed on the code before its fix; each checks against an oracle (the
model's own structure, float64 autograd, or the value the library is documented to give).
"""

from __future__ import annotations

import inspect
import pydoc
import subprocess
import sys

import pytest
import torch
from torch import nn

import constrained_grad as cg
from constrained_grad.history import plots


def test_plot_functions_keep_their_signatures_and_docstrings() -> None:
    for name in ("plot_history", "plot_partial_dependence"):
        public = getattr(cg, name)
        real = getattr(plots, name)
        assert inspect.signature(public) == inspect.signature(real)
        assert public.__doc__ == real.__doc__
        assert "*args" not in pydoc.render_doc(public)
        assert getattr(cg.history, name) is real


def test_importing_the_package_does_not_import_matplotlib() -> None:
    code = (
        "import sys, constrained_grad as cg\n"
        "assert 'matplotlib' not in sys.modules, 'imported at package import'\n"
        "cg.plot_history\n"
        "assert 'matplotlib' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- 4: batch_jacobian of a function closing over the whole batch --------------------------
def test_batch_jacobian_of_a_closure_over_the_batch_is_per_sample() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(3, 2).double()
    xb, h0 = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)

    def f(h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(lin(xb) + h)

    oracle = torch.stack(  # float64 autograd, one sample at a time
        [
            torch.autograd.functional.jacobian(lambda hb, b=b: torch.tanh(lin(xb[b]) + hb), h0[b])
            for b in range(5)
        ]
    )
    with pytest.warns(cg.derivatives.FallbackWarning, match="rows for 1 input row"):
        auto = cg.batch_jacobian(f, h0)
    assert auto.shape == (5, 2, 2)
    torch.testing.assert_close(auto, oracle)
    torch.testing.assert_close(cg.batch_jacobian(f, h0, mode="autograd"), oracle)


# --- 19: a problem without a loss says so in the progress bar (not "loss=nan") -------------
def test_progress_bar_says_no_loss_for_a_problem_without_loss(
    capsys: pytest.CaptureFixture[str],
) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
    problem = cg.DerivativeProblem(model, None, [cg.Monotonic(inputs=[0])])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cg.fit(problem, [(torch.rand(8, 3),)], opt, steps=3, progress=True)
    err = capsys.readouterr().err
    assert "loss=no loss" in err and "loss=nan" not in err


# --- 7: a declaration shared by two problems ----------------------------------------------
def test_a_constraint_shared_by_two_problems_keeps_the_first_problems_input() -> None:
    torch.manual_seed(0)
    shared = cg.Monotonic(inputs=[-1], name="m")  # the last input: x1 of 2, x2 of 3
    net2 = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    first = cg.DerivativeProblem(net2, nn.functional.mse_loss, [shared])
    second = cg.DerivativeProblem(nn.Linear(3, 1).double(), nn.functional.mse_loss, [shared])
    x = torch.rand(6, 2, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(net2(x).sum(), x)  # float64 autograd oracle
    torch.testing.assert_close(first.violations("m", x.detach()), -grad[:, 1:])
    assert second.specs["m"] is not first.specs["m"]
    assert second.violations("m", torch.rand(4, 3, dtype=torch.float64)).shape == (4, 1)


# --- 9: bf16 / fp16 models keep float32 multipliers -----------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_dual_ascent_in_half_precision_climbs_past_one_half(dtype: torch.dtype) -> None:
    lin = nn.Linear(3, 1).to(dtype)
    with torch.no_grad():  # df/dx0 = -1: Monotonic increasing violated by exactly 1
        lin.weight.copy_(torch.tensor([[-1.0, 0.0, 0.0]]))
        lin.bias.zero_()
    problem = cg.DerivativeProblem(lin, None, [cg.Monotonic(inputs=[0], name="m")])
    assert problem.multiplier_values()["m"].dtype == torch.float32
    x = torch.rand(8, 3).to(dtype)
    opt = torch.optim.SGD(lin.parameters(), lr=0.0)  # weights fixed: the violation stays 1
    result = cg.fit(problem, [(x,)] * 800, opt, dual_lr=1e-3, progress=False)
    lam = problem.multiplier_values()["m"]
    # analytic: 800 ascent steps of 1e-3 * 1 (in bf16 the sum used to stall at 0.5)
    torch.testing.assert_close(lam, torch.tensor([0.8]), rtol=1e-4, atol=0)
    assert result.dual_optimizer is not None
    assert all(
        p.dtype == torch.float32 for g in result.dual_optimizer.param_groups for p in g["params"]
    )


# --- 1: Convex / Concave on a piecewise-linear net -----------------------------------------
def _relu_net(act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(1, 16), act(), nn.Linear(16, 1))


def test_verify_cannot_decide_convexity_of_a_relu_net() -> None:
    net = _relu_net()
    with torch.no_grad():  # y = -|x|, plainly concave: sampling sees zero curvature anyway
        net[0].weight.zero_()
        net[0].bias.zero_()
        net[0].weight[:2, 0] = torch.tensor([1.0, -1.0])
        net[2].weight.zero_()
        net[2].bias.zero_()
        net[2].weight[0, :2] = -1.0
    x = torch.linspace(-1, 1, 5).reshape(-1, 1)
    torch.testing.assert_close(net(x), -x.abs())
    report = cg.verify(net, [cg.Convex(inputs=[0], name="cvx")], cg.Box([-1.0], [1.0]), samples=64)
    assert report["cvx"].status == "unknown"
    assert "piecewise linear" in report["cvx"].note and not report.ok
    smooth = cg.verify(
        _relu_net(nn.Softplus), [cg.Convex(inputs=[0], name="cvx")], cg.Box([-1.0], [1.0])
    )
    assert smooth["cvx"].status in ("violated", "no violation found")


# --- 5: diagnose reads each constraint by what it bounds ----------------------------------
def _fixed_weights_fit(
    model: nn.Module, constraint: cg.DerivativeConstraint, steps: int = 40, dual_lr: float = 0.1
) -> cg.FitResult:
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.rand(64, 4, generator=gen),) for _ in range(steps)]
    problem = cg.DerivativeProblem(model, None, [constraint], seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # weights fixed: known violations
    return cg.fit(problem, batches, opt, dual_lr=dual_lr, progress=False)


def test_diagnose_reads_an_estimated_mean_norm_bound_by_its_mean() -> None:
    lin = nn.Linear(4, 4)
    with torch.no_grad():  # ||J||_F^2 = 7^2 = 49 <= 100, one direction only
        lin.weight.zero_()
        lin.weight[0, 0] = 7.0
    bound = cg.JacobianNormBound(10.0, estimator="vjp_sphere", name="jac")  # mean E||J||^2
    result = _fixed_weights_fit(lin, bound)
    h = result.history
    assert max(h.column("jac/violation_max")) > 0  # single projections reach 4 * 49
    assert max(h.column("jac/violation_mean")) < 0  # their mean does not
    health = cg.diagnose(h)["jac"]
    assert health.status in ("inactive", "satisfied"), str(health)
    assert "mean_hinge" not in str(health)


def test_diagnose_never_advises_a_reduction_the_constraint_refuses() -> None:
    h = cg.History(["jac"], meta={"constraint_reductions": {"jac": "mean/estimated"}})
    for k in range(40):  # the mean is violated, the multiplier stays 0 (no dual step)
        h.log_step(k, 0, 0.0, [0.0, 0.0, 0.5, 2.0, 1.0] + [0.0] * 5)
    text = str(cg.diagnose(h)["jac"])
    assert "mean_hinge" not in text and "'max'" not in text and "dual_lr" in text
    with pytest.raises(cg.errors.ConstraintSpecError):  # what the old advice proposed
        cg.JacobianNormBound(10.0, estimator="vjp_sphere", reduction="mean_hinge")


def test_diagnose_runaway_of_a_constraint_the_weights_cannot_move_says_so() -> None:
    lin = nn.Linear(4, 1)
    with torch.no_grad():  # df/dx0 = -1 everywhere: Monotonic violated by 1, fixed
        lin.weight.copy_(torch.tensor([[-1.0, 0.0, 0.0, 0.0]]))
    result = _fixed_weights_fit(lin, cg.Monotonic(inputs=[0], name="m"))
    health = cg.diagnose(result.history)["m"]
    assert health.status == "runaway"
    assert "does not move at all" in health.message
    assert "margin" not in health.message
