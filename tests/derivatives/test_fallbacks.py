"""Fallback paths: which path ran, that it warned, and that the value is still right.

Every model here defeats some torch.func path: BatchNorm in training mode (samples coupled),
in-place updates of captured state, dropout under vmap, ``nn.LSTM`` under vmap over the batch,
ops without forward-mode AD (``torch.cdist``, an autograd.Function without ``jvp``), and a
backward pass that cannot be vmapped.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from derivative_oracles import DTYPE, batch, full_jacobian, mlp, oracle_jacobian
from torch import nn
from torch.func import functional_call

from constrained_grad.derivatives._common import FallbackWarning, forward
from constrained_grad.derivatives.columns import columns_with_path
from constrained_grad.derivatives.jacobian import jacobian_with_path
from constrained_grad.derivatives.norms import fro_sq_with_path, sphere_vectors
from constrained_grad.derivatives.rows import input_gradient, jacobian_rows, rows_with_path
from constrained_grad.derivatives.second import second_with_path
from constrained_grad.errors import EngineError

COLUMN_METHODS = ["double_backward", "forward", "reverse", "auto"]
JACOBIAN_MODES = ["forward", "reverse", "autograd", "auto"]
COUPLED = "couples the samples"


def assert_warned(record: pytest.WarningsRecorder, *patterns: str) -> None:
    """Every pattern matches one of the recorded warnings (several fallbacks in one call)."""
    messages = [str(w.message) for w in record]
    for pattern in patterns:
        assert any(re.search(pattern, msg) for msg in messages), (pattern, messages)


# -- BatchNorm in training mode ---------------------------------------------------------------


def bn_net(m: int = 2) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, m)).to(DTYPE)


def coupled_hessian_diagonal(f: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """∂²f(x)_{b,i}/∂x_{b,j}² with the other samples held fixed: ``(B, m, d)``."""
    b_size, d = x.shape
    m = f(x).shape[1]
    out = torch.empty(b_size, m, d, dtype=x.dtype)
    for b in range(b_size):
        for i in range(m):

            def scalar(z: torch.Tensor, b: int = b, i: int = i) -> torch.Tensor:
                return f(torch.cat([x[:b], z[None], x[b + 1 :]]))[b, i]

            out[b, i] = torch.autograd.functional.hessian(scalar, x[b]).diagonal()
    return out


def test_batchnorm_oracle_is_coupled() -> None:
    # the per-sample blocks differ from the batch-summed shortcuts, so the tests below can fail
    net, x = bn_net(), batch(5, 3)
    full = full_jacobian(net, x)  # (B, m, B, d)
    diag = oracle_jacobian(net, x)
    off = full.permute(0, 2, 1, 3)[~torch.eye(5, dtype=torch.bool)]
    assert float(off.abs().max()) > 1e-2
    assert float((full.sum(dim=2) - diag).abs().max()) > 1e-2  # tangent shared by all samples
    summed = full.sum(dim=0).permute(1, 0, 2)
    assert float((summed - diag).abs().max()) > 1e-2  # cotangent shared by all samples


@pytest.mark.parametrize("method", COLUMN_METHODS)
def test_batchnorm_columns_are_exact_per_sample_blocks(method: str) -> None:
    net, x = bn_net(), batch(5, 3)
    with pytest.warns(FallbackWarning, match=COUPLED):
        cols, path = columns_with_path(net, x, [0, 2], method=method)
    # reverse mode whatever the method: torch's 3rd-order BatchNorm derivatives are wrong
    assert path == "diagonal_reverse_vmap"
    torch.testing.assert_close(cols, oracle_jacobian(net, x)[:, :, [0, 2]])


@pytest.mark.parametrize("mode", JACOBIAN_MODES)
@pytest.mark.parametrize("chunk_size", [None, 2])
def test_batchnorm_jacobian_falls_back_to_autograd(mode: str, chunk_size: int | None) -> None:
    net, x = bn_net(), batch(5, 3)
    with pytest.warns(FallbackWarning, match=COUPLED):
        jac, path = jacobian_with_path(net, x, mode=mode, chunk_size=chunk_size)
    assert path.startswith("autograd_diagonal_")
    torch.testing.assert_close(jac, oracle_jacobian(net, x))


def test_batchnorm_rows_and_input_gradient() -> None:
    net, x = bn_net(m=1), batch(5, 3)
    with pytest.warns(FallbackWarning, match=COUPLED):
        rows, path = rows_with_path(forward(net, x, "test"), None, create_graph=True)
    assert path == "diagonal_reverse_vmap"  # one cotangent per sample, vmapped
    torch.testing.assert_close(rows, oracle_jacobian(net, x))
    with pytest.warns(FallbackWarning, match=COUPLED):
        g = input_gradient(net, x)
    torch.testing.assert_close(g, oracle_jacobian(net, x)[:, 0])


def test_batchnorm_fro_norms() -> None:
    net, x = bn_net(m=3), batch(5, 3)
    exact = oracle_jacobian(net, x)
    with pytest.warns(FallbackWarning, match=COUPLED):
        fro, path = fro_sq_with_path(
            net, x, estimator="exact", samples=1, generator=None, create_graph=True
        )
    assert path.startswith("autograd_diagonal_")
    torch.testing.assert_close(fro, exact.pow(2).sum(dim=(1, 2)))
    # the sphere estimate with the same projections v: mean_s ||v_{s,b}^T J_b||^2
    v = sphere_vectors(4, 5, 3, exact, torch.Generator().manual_seed(7))
    expected = torch.einsum("sbm,bmd->sbd", v, exact).pow(2).sum(-1).mean(0)
    with pytest.warns(FallbackWarning, match=COUPLED):
        est, path = fro_sq_with_path(
            net,
            x,
            estimator="vjp_sphere",
            samples=4,
            generator=torch.Generator().manual_seed(7),
            create_graph=True,
        )
    assert path == "vjp_sphere_diagonal_reverse_vmap"
    torch.testing.assert_close(est, expected)
    with pytest.warns(FallbackWarning) as record:
        _, path = fro_sq_with_path(
            net, x, estimator="jvp_gaussian", samples=2, generator=None, create_graph=True
        )
    assert_warned(record, "the vjp_sphere estimator", COUPLED)
    assert path.startswith("vjp_sphere_diagonal_")


@pytest.mark.parametrize("method", ["forward", "autograd", "auto"])
def test_batchnorm_second_derivative_values(method: str) -> None:
    net, x = bn_net(), batch(4, 3)
    with pytest.warns(FallbackWarning, match=COUPLED):
        sec, path = second_with_path(net, x, [0, 1], method=method, create_graph=False)
    assert path == "autograd_diagonal_reverse"
    torch.testing.assert_close(sec, coupled_hessian_diagonal(net, x)[:, :, [0, 1]])


def test_batchnorm_second_derivatives_refuse_to_build_a_wrong_graph() -> None:
    # d/dθ of a curvature is a third derivative of BatchNorm: wrong in torch (#186256)
    with pytest.raises(EngineError, match=r"BatchNorm.*model.eval\(\).*create_graph=False"):
        second_with_path(bn_net(), batch(4, 3), [0], method="autograd", create_graph=True)


@pytest.mark.parametrize("method", COLUMN_METHODS)
def test_batchnorm_columns_train_the_parameters(method: str) -> None:
    net, x = bn_net(), batch(5, 3)
    params = dict(net.named_parameters())
    with pytest.warns(FallbackWarning, match=COUPLED):
        cols = columns_with_path(net, x, [0], method=method)[0]
    grads = torch.autograd.grad(cols.pow(2).sum(), list(params.values()), materialize_grads=True)

    def penalty(p: dict[str, torch.Tensor]) -> torch.Tensor:
        def f(z: torch.Tensor) -> torch.Tensor:
            return functional_call(net, p, (z,))

        jac = torch.autograd.functional.jacobian(f, x, create_graph=True)
        return jac.reshape(5, 2, 5, 3).diagonal(dim1=0, dim2=2)[:, 0].pow(2).sum()

    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    expected = torch.autograd.grad(penalty(leaves), list(leaves.values()), materialize_grads=True)
    for g, e in zip(grads, expected, strict=True):
        torch.testing.assert_close(g, e)
    assert bool(grads[2].abs().sum() > 0)  # BatchNorm's gamma


def test_batchnorm_runs_the_model_once_per_call() -> None:
    net, x = bn_net(), batch(5, 3)
    bn = net[1]
    before = int(bn.num_batches_tracked)
    with pytest.warns(FallbackWarning):
        jacobian_with_path(net, x, mode="forward")
        columns_with_path(net, x, [0, 1], method="forward")
        second_with_path(net, x, [0], method="forward", create_graph=False)
    assert int(bn.num_batches_tracked) - before == 3


def test_batchnorm_inside_a_plain_function_is_detected() -> None:
    net, x = bn_net(), batch(5, 3)
    bn = net[1]

    def f(z: torch.Tensor) -> torch.Tensor:  # not a Module: only the forward hook can tell
        return net(z)

    before = int(bn.num_batches_tracked)
    with pytest.warns(FallbackWarning) as record:
        cols, path = columns_with_path(f, x, [0, 2], method="forward")
    assert_warned(record, "cannot run under torch.func", COUPLED)
    assert path == "diagonal_reverse_vmap"
    torch.testing.assert_close(cols, oracle_jacobian(net, x)[:, :, [0, 2]])
    with pytest.warns(FallbackWarning) as record:
        jac, path = jacobian_with_path(f, x, mode="auto")
    assert_warned(record, "cannot run under torch.func", COUPLED)
    assert path.startswith("autograd_diagonal_")
    torch.testing.assert_close(jac, oracle_jacobian(net, x))
    # the refused torch.func attempts never ran the layer: one update per engine call
    assert int(bn.num_batches_tracked) - before == 2 + 2  # + the two oracle calls


def test_batchnorm_in_eval_mode_stays_on_torch_func() -> None:
    net, x = bn_net(), batch(5, 3)
    net(x)  # some running statistics
    net.eval()
    jac, path = jacobian_with_path(net, x, mode="reverse")  # no warning (filterwarnings=error)
    assert path == "reverse"
    torch.testing.assert_close(jac, oracle_jacobian(net, x))
    cols, path = columns_with_path(net, x, [1], method="forward")
    assert path == "forward"
    torch.testing.assert_close(cols[:, :, 0], oracle_jacobian(net, x)[:, :, 1])


# -- in-place update of captured state --------------------------------------------------------


class RunningMean(nn.Module):
    """Updates a buffer in place from its input: breaks every torch.func transform."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.lin = nn.Linear(3, 2).double()
        self.register_buffer("seen", torch.zeros(2, dtype=DTYPE))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.tanh(self.lin(x))
        self.seen.add_(y.detach().mean(0))
        return y


IN_PLACE = "in-place operation"


def test_in_place_columns_fall_back_to_double_backward() -> None:
    net, x = RunningMean(), batch(4, 3)
    with pytest.warns(FallbackWarning, match=IN_PLACE):
        cols, path = columns_with_path(net, x, [0, 2], method="forward")
    assert path == "double_backward_vmap"
    torch.testing.assert_close(cols, oracle_jacobian(net, x)[:, :, [0, 2]])


@pytest.mark.parametrize("mode", ["forward", "reverse", "auto"])
def test_in_place_jacobian_falls_back_to_autograd(mode: str) -> None:
    net, x = RunningMean(), batch(4, 3)
    with pytest.warns(FallbackWarning, match=IN_PLACE):
        jac, path = jacobian_with_path(net, x, mode=mode)
    assert path == "autograd_reverse_vmap"
    torch.testing.assert_close(jac, oracle_jacobian(net, x))


def test_in_place_second_and_gaussian_estimator_fall_back() -> None:
    net, x = RunningMean(), batch(4, 3)
    with pytest.warns(FallbackWarning, match=IN_PLACE):
        sec, path = second_with_path(net, x, [0, 1])
    assert path == "autograd_double_backward"
    torch.testing.assert_close(sec, _hessian_diag(net, x)[:, :, :2])
    with pytest.warns(FallbackWarning, match=IN_PLACE):
        _, path = fro_sq_with_path(
            net, x, estimator="jvp_gaussian", samples=1, generator=None, create_graph=False
        )
    assert path == "vjp_sphere_reverse"


def _hessian_diag(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    from derivative_oracles import oracle_hessian_diagonal

    return oracle_hessian_diagonal(net, x)


# -- dropout: random ops under vmap -----------------------------------------------------------


def dropout_net() -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.5), nn.Tanh(), nn.Linear(8, 2)).to(DTYPE)


def _oracle_with_seed(net: nn.Module, x: torch.Tensor, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)  # the same dropout mask as the engine's single forward pass
    return oracle_jacobian(net, x)


RANDOM = "random operation"


def test_dropout_columns_fall_back_with_the_same_mask() -> None:
    net, x = dropout_net(), batch(4, 3)
    torch.manual_seed(5)
    with pytest.warns(FallbackWarning, match=RANDOM):
        cols, path = columns_with_path(net, x, [0, 1], method="forward")
    assert path == "double_backward_vmap"
    expected = _oracle_with_seed(net, x, 5)[:, :, :2]
    torch.testing.assert_close(cols, expected)
    torch.manual_seed(6)  # a different mask gives a different answer: the check has teeth
    assert not torch.allclose(columns_with_path(net, x, [0, 1], method="reverse")[0], expected)


def test_dropout_single_forward_column_needs_no_vmap() -> None:
    net, x = dropout_net(), batch(4, 3)
    torch.manual_seed(8)
    cols, path = columns_with_path(net, x, [2], method="forward")  # no warning
    assert path == "forward"
    torch.testing.assert_close(cols, _oracle_with_seed(net, x, 8)[:, :, [2]])


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_dropout_jacobian_falls_back(mode: str) -> None:
    net, x = dropout_net(), batch(4, 3)
    torch.manual_seed(9)
    with pytest.warns(FallbackWarning, match=RANDOM):
        jac, path = jacobian_with_path(net, x, mode=mode)
    assert path == "autograd_reverse_vmap"
    torch.testing.assert_close(jac, _oracle_with_seed(net, x, 9))


def test_dropout_second_derivatives_fall_back() -> None:
    net, x = dropout_net(), batch(3, 3)
    torch.manual_seed(10)
    with pytest.warns(FallbackWarning, match=RANDOM):
        sec, path = second_with_path(net, x, [0, 2])
    assert path == "autograd_double_backward"
    torch.manual_seed(10)
    scaled_mask = net[1](torch.ones(3, 8, dtype=DTYPE))  # the same draw as the engine's pass

    def sample(z: torch.Tensor, b: int) -> torch.Tensor:
        return net[3](torch.tanh(net[0](z) * scaled_mask[b]))

    expected = torch.stack(
        [
            torch.stack(
                [
                    torch.autograd.functional.hessian(
                        lambda z, b=b, i=i: sample(z, b)[i], x[b]
                    ).diagonal()
                    for i in range(2)
                ]
            )
            for b in range(3)
        ]
    )
    torch.testing.assert_close(sec, expected[:, :, [0, 2]])


# -- nn.LSTM ---------------------------------------------------------------------------------


class LastStep(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.lstm = nn.LSTM(1, 4, batch_first=True).double()
        self.head = nn.Linear(4, 1).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, 1)
        h, _ = self.lstm(x.unsqueeze(-1))
        return self.head(h[:, -1])


def test_lstm_forward_mode_works_on_cpu() -> None:
    # On torch 2.13 CPU, forward-mode AD through nn.LSTM works: no fallback is needed.
    net, x = LastStep(), batch(3, 5)
    cols, path = columns_with_path(net, x, [0, 4], method="forward")
    assert path == "forward"
    torch.testing.assert_close(cols, oracle_jacobian(net, x)[:, :, [0, 4]])


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_lstm_under_vmap_over_the_batch_falls_back(mode: str) -> None:
    net, x = LastStep(), batch(3, 5)
    with pytest.warns(FallbackWarning, match=f"torch.func \\({mode} mode\\)"):
        jac, path = jacobian_with_path(net, x, mode=mode)
    assert path == "autograd_reverse"
    torch.testing.assert_close(jac, oracle_jacobian(net, x))


# -- ops without forward-mode AD --------------------------------------------------------------


class RBF(nn.Module):
    """torch.cdist has neither forward-mode AD nor a double backward (torch 2.13)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.centres = nn.Parameter(torch.randn(5, 3, dtype=DTYPE))
        self.out = nn.Linear(5, 2).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.exp(-(torch.cdist(x, self.centres) ** 2)))


def test_op_without_forward_ad_columns_fall_back_to_reverse() -> None:
    net, x = RBF(), batch(4, 3)
    with pytest.warns(FallbackWarning) as record:
        cols, path = columns_with_path(net, x, [0, 2], method="forward", create_graph=False)
    assert_warned(record, "_cdist_forward", "double backward is not available")
    assert path == "reverse_vmap"
    torch.testing.assert_close(cols, oracle_jacobian(net, x)[:, :, [0, 2]])


def test_op_without_forward_ad_jacobian_falls_back_to_autograd() -> None:
    net, x = RBF(), batch(4, 3)
    with pytest.warns(FallbackWarning, match="_cdist_forward"):
        jac, path = jacobian_with_path(net, x, mode="forward")
    assert path == "autograd_reverse_vmap"
    torch.testing.assert_close(jac, oracle_jacobian(net, x))


def test_op_without_forward_ad_gaussian_estimator_falls_back_and_stays_unbiased() -> None:
    net, n = RBF(), 4000
    x0 = batch(1, 3, seed=3)
    with pytest.warns(FallbackWarning, match="forward AD"):
        est, path = fro_sq_with_path(
            net,
            x0.expand(n, -1),
            estimator="jvp_gaussian",
            samples=1,
            generator=torch.Generator().manual_seed(0),
            create_graph=False,
        )
    assert path == "vjp_sphere_reverse"
    jac = oracle_jacobian(net, x0)[0]
    a = jac @ jac.T
    var = 2 / 4 * (2 * float((a @ a).trace()) - float(a.trace()) ** 2)  # sphere, m = 2
    assert abs(float(est.mean()) - float(a.trace())) < 4 * math.sqrt(var / n)


class Cube(torch.autograd.Function):
    """x ↦ x³ with a differentiable backward and a vmap rule, but no ``jvp``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return x**3

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[no-untyped-def]
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def]
        (x,) = ctx.saved_tensors
        return grad * 3 * x**2


def cube_net() -> nn.Module:
    torch.manual_seed(5)
    lin = nn.Linear(3, 2).double()

    class CubeNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = lin

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return Cube.apply(torch.tanh(self.lin(x)))

    return CubeNet()


def test_function_without_jvp_falls_back_to_double_backward() -> None:
    net, x = cube_net(), batch(4, 3)
    with pytest.warns(FallbackWarning, match="jvp"):
        cols, path = columns_with_path(net, x, [0, 1], method="forward")
    assert path == "double_backward_vmap"
    torch.testing.assert_close(cols, oracle_jacobian(net, x)[:, :, :2])
    with pytest.warns(FallbackWarning, match="jvp"):
        sec, path = second_with_path(net, x, [1], method="forward")
    assert path == "autograd_double_backward"
    torch.testing.assert_close(sec, _hessian_diag(net, x)[:, :, [1]])
    jac, path = jacobian_with_path(net, x, mode="reverse")  # reverse mode needs no jvp
    assert path == "reverse"
    torch.testing.assert_close(jac, oracle_jacobian(net, x))


# -- a backward pass that cannot be vmapped ---------------------------------------------------


class NumpyCube(torch.autograd.Function):
    """Backward computed through NumPy: neither vmappable nor differentiable."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[no-untyped-def]
        ctx.save_for_backward(x)
        return x**3

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def]
        (x,) = ctx.saved_tensors
        return torch.from_numpy(grad.detach().numpy() * 3) * x**2


def test_unvmappable_backward_falls_back_to_a_loop() -> None:
    torch.manual_seed(6)
    lin = nn.Linear(3, 2).double()

    def f(z: torch.Tensor) -> torch.Tensor:
        return NumpyCube.apply(torch.tanh(lin(z)))

    x = batch(4, 3)
    with pytest.warns(FallbackWarning, match="vmapped backward is not available"):
        rows = jacobian_rows(f, x, create_graph=False)
    torch.testing.assert_close(rows, oracle_jacobian(f, x))
    with pytest.warns(FallbackWarning) as record:
        cols, path = columns_with_path(f, x, [0, 2], method="double_backward", create_graph=False)
    assert_warned(record, "backward pass of this model is not differentiable", "vmapped backward")
    assert path == "reverse_loop"
    torch.testing.assert_close(cols, oracle_jacobian(f, x)[:, :, [0, 2]])


# -- inputs that are fine and must not trigger a fallback --------------------------------------


def test_expanded_inputs_need_no_fallback() -> None:
    net = mlp(3, 2)
    x = batch(1, 3).expand(4, -1)  # stride-0 batch: forward AD needs a contiguous primal
    gen = torch.Generator().manual_seed(0)
    expected = oracle_jacobian(net, x.contiguous())
    assert columns_with_path(net, x, [0, 1], method="forward")[1] == "forward"
    jac, path = jacobian_with_path(net, x, mode="forward", chunk_size=2)
    assert path == "forward"
    torch.testing.assert_close(jac, expected)
    _, path = fro_sq_with_path(
        net, x, estimator="jvp_gaussian", samples=2, generator=gen, create_graph=True
    )
    assert path == "jvp_gaussian"
    assert second_with_path(net, x, [0])[1] == "forward_over_forward"


@pytest.mark.slow  # a fresh interpreter: ~7 s on this machine
def test_forward_mode_does_not_leak_torch_deprecation_warnings() -> None:
    # torch.func.jvp lazily scripts decompositions, which warns DeprecationWarning (torch 2.9+);
    # a fresh interpreter under -W error shows whether the engine silences it.
    src = Path(__file__).resolve().parents[2] / "src"
    code = textwrap.dedent("""
        import torch
        from constrained_grad.derivatives.second import second_derivatives
        sec = second_derivatives(lambda z: z ** 3, torch.ones(2, 2, dtype=torch.float64), [0])
        assert torch.equal(sec[:, 0, 0], torch.full((2,), 6.0, dtype=torch.float64))
    """)
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(src)},
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
