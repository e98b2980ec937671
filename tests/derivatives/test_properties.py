"""Property tests over shapes and index choices (hypothesis, derandomized)."""

from __future__ import annotations

import torch
from derivative_oracles import batch, mlp, oracle_hessian_diagonal, oracle_jacobian
from hypothesis import given, settings
from hypothesis import strategies as st

from constrained_grad.derivatives.columns import jacobian_columns
from constrained_grad.derivatives.jacobian import batch_jacobian
from constrained_grad.derivatives.norms import jacobian_fro_norm_sq
from constrained_grad.derivatives.rows import jacobian_rows
from constrained_grad.derivatives.second import second_derivatives

SETTINGS = settings(derandomize=True, deadline=None, max_examples=15)


@st.composite
def problems(draw: st.DrawFn) -> tuple[int, int, int, list[int]]:
    """Batch size, input dim, output dim and 1-3 valid (possibly negative) input indices."""
    b = draw(st.integers(1, 4))
    d = draw(st.integers(1, 4))
    m = draw(st.integers(1, 3))
    idx = draw(st.lists(st.integers(-d, d - 1), min_size=1, max_size=3))
    return b, d, m, idx


@SETTINGS
@given(problems(), st.sampled_from(["double_backward", "forward", "reverse", "auto"]))
def test_columns_agree_with_the_oracle(
    problem: tuple[int, int, int, list[int]], method: str
) -> None:
    b, d, m, idx = problem
    net, x = mlp(d, m, seed=b + 10 * d), batch(b, d, seed=m)
    cols = jacobian_columns(net, x, idx, method=method)
    assert cols.shape == (b, m, len(idx))
    torch.testing.assert_close(cols, oracle_jacobian(net, x)[:, :, [j % d for j in idx]])


@SETTINGS
@given(problems(), st.data())
def test_rows_agree_with_the_oracle(
    problem: tuple[int, int, int, list[int]], data: st.DataObject
) -> None:
    b, d, m, _ = problem
    outputs = data.draw(st.lists(st.integers(-m, m - 1), min_size=1, max_size=3))
    net, x = mlp(d, m, seed=b), batch(b, d)
    rows = jacobian_rows(net, x, outputs)
    assert rows.shape == (b, len(outputs), d)
    torch.testing.assert_close(rows, oracle_jacobian(net, x)[:, [i % m for i in outputs]])


@SETTINGS
@given(
    problems(),
    st.sampled_from(["forward", "reverse", "autograd", "auto"]),
    st.sampled_from([None, 1, 3]),
)
def test_jacobian_and_fro_norm_agree_with_the_oracle(
    problem: tuple[int, int, int, list[int]], mode: str, chunk_size: int | None
) -> None:
    b, d, m, _ = problem
    net, x = mlp(d, m, seed=d * m), batch(b, d)
    expected = oracle_jacobian(net, x)
    jac = batch_jacobian(net, x, mode=mode, chunk_size=chunk_size)  # type: ignore[arg-type]
    torch.testing.assert_close(jac, expected)
    torch.testing.assert_close(jacobian_fro_norm_sq(net, x), expected.pow(2).sum(dim=(1, 2)))


@SETTINGS
@given(problems(), st.sampled_from(["forward", "autograd"]))
def test_second_derivatives_agree_with_the_oracle(
    problem: tuple[int, int, int, list[int]], method: str
) -> None:
    b, d, m, idx = problem
    net, x = mlp(d, m, seed=b * d), batch(b, d, seed=d)
    sec = second_derivatives(net, x, idx, method=method)  # type: ignore[arg-type]
    torch.testing.assert_close(sec, oracle_hessian_diagonal(net, x)[:, :, [j % d for j in idx]])


@SETTINGS
@given(problems(), st.sampled_from(["double_backward", "forward", "reverse"]))
def test_columns_are_slices_of_the_jacobian_and_independent_of_batch_mates(
    problem: tuple[int, int, int, list[int]], method: str
) -> None:
    # sample b's columns do not change when the other samples do (samples are independent)
    b, d, m, idx = problem
    net, x = mlp(d, m, seed=7), batch(b, d, seed=b)
    cols = jacobian_columns(net, x, idx, method=method, create_graph=False)
    jac = batch_jacobian(net, x, create_graph=False)
    torch.testing.assert_close(cols, jac[:, :, [j % d for j in idx]])
    other = torch.cat([x[:1], batch(b - 1, d, seed=99)]) if b > 1 else x
    cols_other = jacobian_columns(net, other, idx, method=method, create_graph=False)
    torch.testing.assert_close(cols_other[0], cols[0])
