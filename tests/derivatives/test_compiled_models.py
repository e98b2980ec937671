"""torch.compile'd models: a compiled model given directly is differentiated through the
module it compiles (same parameters); compiled code the engine cannot unwrap is refused with
a CompiledModelError naming the fix; the BatchNorm watch's global hook never makes torch
warn about compiled modules. Warnings are errors in this suite, so a FallbackWarning or
torch's hook warning fails these tests."""

from __future__ import annotations

import warnings

import pytest
import torch
from derivative_oracles import DTYPE, batch, mlp, oracle_hessian_diagonal, oracle_jacobian
from torch import nn

import constrained_grad as cg
from constrained_grad.derivatives import evaluate
from constrained_grad.derivatives._common import unwrap_compiled, watch_coupling
from constrained_grad.errors import CompiledModelError


def compiled(module: nn.Module) -> nn.Module:
    # aot_eager: the same autograd as the default backend (no double backward, donated
    # buffers) without generating C++ code, so the test stays fast
    return torch.compile(module, backend="aot_eager")


def test_unwrap_reaches_the_module_and_shares_its_parameters():
    model = mlp(3, 2)
    cm = compiled(model)
    assert unwrap_compiled(cm) is model
    assert unwrap_compiled(model) is model
    assert [p for p in cm.parameters()] == [p for p in model.parameters()]


def test_derivatives_of_a_compiled_model_equal_the_oracle():
    model = mlp(3, 2, seed=4)
    x = batch(5, 3, seed=5)
    cm = compiled(model)
    jac = oracle_jacobian(model, x)  # (B, m, d), float64 autograd, one sample at a time
    torch.testing.assert_close(cg.jacobian_columns(cm, x, [0, 2]), jac[:, :, [0, 2]])
    torch.testing.assert_close(cg.jacobian_rows(cm, x, [1]), jac[:, [1], :])
    torch.testing.assert_close(cg.batch_jacobian(cm, x), jac)
    torch.testing.assert_close(
        cg.jacobian_fro_norm_sq(cm, x, estimator="exact"), jac.pow(2).sum(dim=(1, 2))
    )
    torch.testing.assert_close(
        cg.second_derivatives(cm, x, [1]), oracle_hessian_diagonal(model, x)[:, :, [1]]
    )
    values = evaluate(cm, x, cg.Needs(columns=frozenset({0})))
    torch.testing.assert_close(values.columns([0]), jac[:, :, [0]])
    # differentiable in the shared parameters (what training needs)
    col = cg.jacobian_columns(cm, x, [0])
    (g,) = torch.autograd.grad(col.sum(), model[0].weight)
    assert g.abs().sum() > 0


def _nested() -> nn.Module:
    torch.manual_seed(0)
    inner = compiled(nn.Sequential(nn.Linear(3, 8), nn.Tanh()).to(DTYPE))
    return nn.Sequential(inner, nn.Linear(8, 2).to(DTYPE))


def test_compiled_submodule_is_refused_with_the_fix():
    with pytest.raises(
        CompiledModelError,
        match=r"jacobian_columns: .*torch\.compile'd code.*"
        r"\(got: .*\)\. Pass the uncompiled module",
    ):
        cg.jacobian_columns(_nested(), batch(4, 3), [0])


def test_batchnorm_watch_does_not_make_torch_warn_about_compiled_modules():
    cm = compiled(mlp(3, 2))
    x = batch(4, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with watch_coupling() as seen:
            cm(x)
        assert seen == []
    # outside the watch torch's own warning is untouched (the filter is scoped)
    with pytest.warns(UserWarning, match="global hooks"):
        handle = torch.nn.modules.module.register_module_forward_pre_hook(lambda m, a: None)
        try:
            cm(x)
        finally:
            handle.remove()
